"""From a data config to tensors on the training device and batches drawn by indexing.

The whole dataset is held as one uint8 tensor (on the training device when it
fits); a batch is an index into it followed by the representation's transform.
There is no per-image PIL transform and no DataLoader worker on the hot path.

Representations (what a model sees) are one table, data/representations.py: binary (x in {0,1};
``binarize=dynamic`` draws a fresh Bernoulli sample of the pixel intensities for every training batch,
Burda et al. 2015, ``static`` binarizes once), 8bit (k/255), dequantized ((k + u)/256, u fresh for every
training batch) and continuous (real vectors, used as they are). Validation and test sets are
transformed once with a fixed seed (``fixed``), so every evaluation sees the same data.

Unpaired two-domain data (``data.domain_b``, for translation models such as CycleGAN): every split
holds (domain A images, domain B images) in the (x, y) slots, and ``BatchIterator`` draws the B
batch by its own permutation, independently of A's, with the same representation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Optional

import torch
from torch import Tensor

from ..errors import UserError
from . import files, music, sequences, toy
from .representations import BINARY_SEQUENCES, IMAGES, REAL, REPRESENTATIONS, eight_bit_names, fitting
from .spec import DataSpec

EVAL_SEED = 1234  # fixed: the binarization/dequantization noise of the val and test sets
SPLIT_SEED = 4321  # fixed: which training examples are held out for validation
DOMAIN_B_SEED = 1_000_003  # offsets the seed of domain B's permutations from domain A's
NOISE_STREAM = 7  # sets the data noise's seeds apart from the permutations'
IMAGE_DATASETS = ("mnist", "fashion_mnist", "binarized_mnist", "cifar10", "image_folder", "npz")
#: drawn by code with fixed seeds rather than read from files
GENERATED = tuple(toy.TOYS) + tuple(sequences.TOY_SEQUENCES)
DATASETS = (
    IMAGE_DATASETS
    + tuple(toy.TOYS)
    + tuple(sequences.TOY_SEQUENCES)
    + sequences.PIANO_ROLLS
    + (sequences.OWN_SEQUENCES,)
)


@dataclass
class Dataset:
    """Raw splits: uint8 images (N, C, H, W) or float points (N, 2), optional labels."""

    train: tuple[Tensor, Optional[Tensor]]
    val: tuple[Tensor, Optional[Tensor]]
    test: tuple[Tensor, Optional[Tensor]]
    num_classes: int
    #: two-domain data (data.domain_b): each domain's own splits, labels included, and its name;
    #: then train/val/test hold (domain A images, domain B images)
    domains: tuple["Dataset", "Dataset"] | tuple = ()
    domain_names: tuple[str, str] | tuple = ()
    #: what the reader found and did (a user's folder or file: its absolute path, file count, sizes and
    #: colour modes, resizing, conversion; data/files.py), for the run's data summary and identity
    source: dict = field(default_factory=dict)
    #: data/identity.identity of this data as a run uses it (set by dgm train; saved in checkpoints)
    identity: dict = field(default_factory=dict)

    @property
    def is_image(self) -> bool:
        return self.train[0].dtype == torch.uint8


VAL_FRACTION, VAL_MAX = 0.1, 5000  # data.val_size=null: a tenth of the training examples, at most 5,000


def default_val_size(n: int) -> int:
    """The validation examples held out of ``n`` training examples when data.val_size is null: a tenth,
    at most 5,000 (so MNIST's 60,000 and CIFAR-10's 50,000 hold out 5,000), and at least one where there
    are two or more, so that a few hundred images of your own are validated too."""
    return min(VAL_MAX, max(int(n * VAL_FRACTION), 1 if n >= 2 else 0))


def _holdout(x: Tensor, y: Optional[Tensor], n: int, seed: int) -> tuple[tuple, tuple]:
    if n <= 0:
        return (x, y), (x[:0], None if y is None else y[:0])
    if n >= len(x):
        raise UserError(f"data.val_size={n} is not below the {len(x)} training examples; use 0 <= val_size < {len(x)}.")
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    keep, held = perm[n:].sort().values, perm[:n].sort().values
    pick = lambda t, i: None if t is None else t[i]  # noqa: E731
    return (x[keep], pick(y, keep)), (x[held], pick(y, held))


def load(cfg) -> Dataset:
    """Read the dataset named by ``cfg.name`` (a data config) into memory; with ``cfg.domain_b``, the
    two domains of unpaired translation (see the module docstring)."""
    if cfg.get("domain_b"):
        return load_two_domains(cfg)
    return load_one(cfg)


def domain_b_config_name(value: str) -> str:
    """The dataset config that reads ``data.domain_b``: a dataset name, or image_folder / npz for a path."""
    if value in IMAGE_DATASETS and value not in ("image_folder", "npz"):
        return value
    return "npz" if value.endswith(".npz") else "image_folder"


def _domain_b_config(cfg):
    """The data config of domain B: a dataset, or an image folder / .npz file read at A's size."""
    from omegaconf import OmegaConf

    value = str(cfg.domain_b)
    name = domain_b_config_name(value)
    keys = {"name": name, "path": None if name == value else value, "domain_b": None}
    return OmegaConf.merge(cfg, keys), value


def load_two_domains(cfg) -> Dataset:
    """Domain A (``cfg.name``) and domain B (``cfg.domain_b``), each split as it would be alone; their
    images must have the same channels and size."""
    a_cfg = cfg.copy()
    a_cfg.domain_b = None
    b_cfg, b_name = _domain_b_config(cfg)
    a, b = load_one(a_cfg), load_one(b_cfg)
    if not (a.is_image and b.is_image) or a.train[0].shape[1:] != b.train[0].shape[1:]:
        shape = lambda ds: "x".join(map(str, ds.train[0].shape[1:])) if ds.is_image else "points"  # noqa: E731
        raise UserError(
            f"data.domain_b: the two domains of an unpaired translation must be images of the same "
            f"channels and size; dataset={cfg.name} has {shape(a)}, data.domain_b={b_name} has "
            f"{shape(b)} (channels x height x width). Pick two matching datasets, or read image folders at one size "
            "(data.image_size, data.channels)."
        )
    pair = lambda split: (getattr(a, split)[0], getattr(b, split)[0])  # noqa: E731
    return Dataset(
        train=pair("train"),
        val=pair("val"),
        test=pair("test"),
        num_classes=0,
        domains=(a, b),
        domain_names=(str(cfg.name), b_name),
        source=a.source,
    )


def load_one(cfg) -> Dataset:
    """One dataset, ``cfg.name``."""
    name, source = cfg.name, {}
    if name == "mnist":
        train, test = files.load_idx(cfg.root, "MNIST", cfg.download)
    elif name == "fashion_mnist":
        train, test = files.load_idx(cfg.root, "FashionMNIST", cfg.download)
    elif name == "cifar10":
        train, test = files.load_cifar10(cfg.root, cfg.download)
    elif name == "binarized_mnist":  # its validation split is fixed: no hold-out
        val_size = files.BINARIZED_MNIST_SPLITS["valid"] if cfg.val_size is None else cfg.val_size
        train, val, test = files.load_binarized_mnist(cfg.root, cfg.download, val_size)
        return Dataset(train=train, val=val, test=test, num_classes=0)
    elif name in sequences.PIANO_ROLLS or name == sequences.OWN_SEQUENCES:
        # split by piece in the files; bach_chorales, midi_folder and one's own sequences with a fixed seed
        splits = (
            music.load_bach_chorales()
            if name == "bach_chorales"
            else music.load_midi_folder(cfg.path, cfg.steps_per_quarter)
            if name == "midi_folder"
            else sequences.load_own_sequences(cfg.path)
            if name == sequences.OWN_SEQUENCES
            else sequences.load_polyphonic(name, cfg.root, cfg.path)
        )
        return piano_roll_dataset(name, splits, cfg.val_size, sequences.source_of(name, cfg.path))
    elif name in ("image_folder", "npz"):
        reader = files.load_image_folder if name == "image_folder" else files.load_npz
        x, y, source = reader(cfg.path, cfg.image_size, cfg.channels)
        n_test = max(1, len(x) // 10)
        train, test = _holdout(x, y, n_test, SPLIT_SEED + 1)
    elif name in toy.TOYS or name in sequences.TOY_SEQUENCES:  # drawn with fixed seeds
        draw = toy.TOYS.get(name) or sequences.TOY_SEQUENCES[name]
        train = (draw(cfg.train_size, torch.Generator().manual_seed(0)), None)
        test = (draw(cfg.test_size, torch.Generator().manual_seed(1)), None)
    else:
        raise UserError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}.")
    val_size = default_val_size(len(train[0])) if cfg.val_size is None else cfg.val_size
    train, val = _holdout(*train, val_size, SPLIT_SEED)
    y = train[1]
    num_classes = int(y.max().item()) + 1 if y is not None and len(y) else 0
    return Dataset(train=train, val=val, test=test, num_classes=num_classes, source=source)


def piano_roll_dataset(
    name: str, splits: dict[str, list[Tensor]], val_size: Optional[int], source: Optional[dict] = None
) -> Dataset:
    """Rolls (or any sequences) padded with NaN (data/sequences.py) per split. The pieces' own valid split
    validates (data.val_size=null), or joins the training split (data.val_size=0)."""
    if val_size not in (None, 0):
        raise UserError(
            f"data.val_size={val_size}: dataset={name} has a fixed split by piece; use data.val_size=null "
            "(validate on its valid pieces) or 0 (train on train and valid)."
        )
    train = splits["train"] + (splits["valid"] if val_size == 0 else [])

    width = next((s[0].shape[-1] for s in splits.values() if s), sequences.KEYS)

    def padded(rolls: list[Tensor]) -> tuple[Tensor, None]:
        return (sequences.pad(rolls) if rolls else torch.zeros(0, 1, width)), None

    return Dataset(
        train=padded(train),
        val=padded([] if val_size == 0 else splits["valid"]),
        test=padded(splits["test"]),
        num_classes=0,
        source=source or {},
    )


def is_binary(x: Tensor) -> bool:
    """Images whose every value is 0 or 255: black-and-white already, so binarizing them loses nothing."""
    return bool(((x == 0) | (x == 255)).all())


def resolve_representation(data_cfg, model_cfg, ds: Dataset, allowed: Optional[tuple] = None) -> str:
    """The representation asked for, else the model's own for images, or ``continuous`` for 2-D toys.
    Given the model's ``allowed`` representations, a binary default is never chosen for colour images:
    the model's first of 8bit / dequantized instead (the run's data summary says so), or, for a model of
    binary data only, a refusal naming the override that binarizes on purpose. (Greyscale images keep
    the binary default, the convention on MNIST; `dgm train` warns when they are not black-and-white.)"""
    if data_cfg.representation:
        return data_cfg.representation
    if not ds.is_image:  # sequences of 0/1 values (piano rolls) are binary; other sequences and points continuous
        return "binary" if binary_sequences(ds) else "continuous"
    rep = model_cfg.representation
    x = ds.train[0]
    if rep != "binary" or allowed is None or x.shape[1] != 3 or is_binary(x):
        return rep
    other = next((r for r in allowed if r in eight_bit_names()), None)
    if other is None:
        raise UserError(
            f"dataset={data_cfg.name} holds colour images with values other than 0 and 255, and "
            f"model={model_cfg.name} models binary data only ({', '.join(allowed)}): dgm does not binarize "
            "photos without a word. To binarize them on purpose (each pixel a Bernoulli draw of its "
            "intensity), add data.representation=binary; or pick a model of 8-bit or dequantized values "
            "(vae, pixelcnn, glow, dcgan, ...)."
        )
    return other


def binary_sequences(ds: Dataset) -> bool:
    """Sequences (N, T, D) whose values are all 0 or 1, such as piano rolls."""
    x = ds.train[0]
    return not ds.is_image and x.dim() == 3 and sequences.binary_values(x)


def spec(ds: Dataset, representation: str, dataset: str = "") -> DataSpec:
    x = ds.train[0]
    allowed = fitting(IMAGES if ds.is_image else BINARY_SEQUENCES if binary_sequences(ds) else REAL)
    if representation not in allowed:
        allowed = ", ".join(allowed)
        raise UserError(f"data.representation={representation} does not fit this dataset; allowed: {allowed}.")
    return DataSpec(
        shape=tuple(x.shape[1:]),
        representation=representation,
        num_classes=ds.num_classes,
        dataset=dataset,
        domain_b=ds.domain_names[1] if ds.domains else "",
    )


def transform(x: Tensor, representation: str, generator: Optional[torch.Generator]) -> Tensor:
    """Raw batch -> what the model sees (the table in data/representations.py). ``generator`` draws
    binarization/dequantization noise. Only 8-bit images (uint8) are binarized or dequantized: points and
    sequences (binary ones too) are used as given."""
    if x.dtype != torch.uint8:
        return x.float()
    if representation not in REPRESENTATIONS:
        raise UserError(f"unknown representation {representation!r}; available: {', '.join(REPRESENTATIONS)}.")
    return REPRESENTATIONS[representation].transform(x, generator)


def fixed(x: Tensor, representation: str) -> Tensor:
    """An evaluation split, transformed once with a fixed seed (on the CPU, so the
    result does not depend on the device)."""
    return transform(x.cpu(), representation, torch.Generator().manual_seed(EVAL_SEED))


def noise_seed(seed: int, epoch: int, position: int) -> int:
    """The seed of the data noise of batch ``position`` of epoch ``epoch``."""
    return hash((seed, NOISE_STREAM, epoch, position)) & 0x7FFF_FFFF_FFFF_FFFF


#: the share of a GPU's free memory the training set may take on it; the rest is the model's
DEVICE_SHARE = 0.5


def data_placement(nbytes: int, device: torch.device, on_device: bool, free: Optional[int]) -> tuple[bool, str]:
    """Whether the training set goes on ``device`` (every batch then an index into it) or stays in host
    memory (each batch copied over, from page-locked memory on a GPU), and that choice in words for the
    run's log. It goes on a GPU only when it takes at most DEVICE_SHARE of the ``free`` bytes there."""
    size = f"{nbytes / 2**20:,.0f} MiB" if nbytes < 2**30 else f"{nbytes / 2**30:,.1f} GiB"
    if device.type == "cpu":
        return True, f"training data: {size} in memory"
    if not on_device:
        return False, f"training data: {size} in host memory (data.on_device=false), each batch copied to {device}"
    if free is not None and nbytes > DEVICE_SHARE * free:
        return False, (
            f"training data: {size} kept in pinned host memory, each batch copied to {device} without "
            f"blocking: it is more than {DEVICE_SHARE:.0%} of the {free / 2**30:.1f} GiB free there"
        )
    return True, f"training data: {size} on {device}"


class BatchIterator:
    """Draws training batches by indexing a tensor held on ``device``.

    The permutation of epoch e comes from ``seed + e``, and the noise of each batch (dynamic
    binarization, dequantization) from a generator re-seeded from (seed, epoch, position): a
    resumed run draws the same batches from nothing but its position, whatever device the
    generator lives on (a CPU generator's state does not fit a CUDA one, so a state would not
    move between devices). Static binarization is applied once, here.
    """

    def __init__(
        self,
        x: Tensor,
        y: Optional[Tensor],
        representation: str,
        binarize: str,
        batch_size: int,
        device: torch.device,
        seed: int,
        on_device: bool = True,
    ):
        if len(x) < batch_size:
            raise UserError(f"trainer.batch_size={batch_size} is larger than the {len(x)} training examples.")
        #: y holds a second image domain (unpaired: drawn by its own permutation, see the module docstring)
        self.two_domains = y is not None and y.dim() == 4
        if self.two_domains and len(y) < batch_size:
            raise UserError(
                f"trainer.batch_size={batch_size} is larger than the {len(y)} training images of data.domain_b."
            )
        #: binarized once here (data.binarize=static): x holds the final 0/1 values (as uint8, a quarter of
        #: float's memory), so a batch is only made float
        self.binarized = representation == "binary" and binarize == "static" and x.dtype == torch.uint8
        if self.binarized:
            x = fixed(x, "binary").to(torch.uint8)
            y = fixed(y, "binary").to(torch.uint8) if self.two_domains else y
        nbytes = x.element_size() * x.nelement() + (0 if y is None else y.element_size() * y.nelement())
        free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" and on_device else None
        on_device, self.placement = data_placement(nbytes, device, on_device, free)
        store = device if on_device else torch.device("cpu")
        pin = device.type == "cuda" and not on_device  # page-locked: its copies to the GPU overlap compute
        self.x = x.pin_memory() if pin else x.to(store)
        self.y = None if y is None else (y.pin_memory() if pin else y.to(store))
        self.representation = representation
        self.batch_size = batch_size
        self.device = device
        self.seed = seed
        self.steps_per_epoch = len(x) // batch_size  # the last partial batch is dropped
        self.noise = torch.Generator(device=device if device.type != "mps" else "cpu")
        self.epoch = 0
        self.position = 0
        self._perm: Optional[Tensor] = None
        self.epoch_b, self.position_b, self._perm_b = 0, 0, None  # domain B's own pass (two_domains)

    def _permutation(self) -> Tensor:
        if self._perm is None:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            self._perm = torch.randperm(len(self.x), generator=g).to(self.x.device)
        return self._perm

    def _domain_b_indices(self) -> Tensor:
        """The next batch of domain B: its own epochs over its own permutations (seeded apart from A's),
        so that which B images meet which A images changes from epoch to epoch."""
        if self.position_b >= len(self.y) // self.batch_size:
            self.epoch_b, self.position_b, self._perm_b = self.epoch_b + 1, 0, None
        if self._perm_b is None:
            g = torch.Generator().manual_seed(self.seed + DOMAIN_B_SEED + self.epoch_b)
            self._perm_b = torch.randperm(len(self.y), generator=g).to(self.y.device)
        self.position_b += 1
        return self._perm_b[(self.position_b - 1) * self.batch_size : self.position_b * self.batch_size]

    def _represent(self, x: Tensor) -> Tensor:
        return x.float() if self.binarized else transform(x, self.representation, self.noise)

    def __iter__(self) -> Iterator[tuple[Tensor, Optional[Tensor]]]:
        return self

    def __next__(self) -> tuple[Tensor, Optional[Tensor]]:
        if self.position >= self.steps_per_epoch:
            self.epoch, self.position, self._perm = self.epoch + 1, 0, None
        idx = self._permutation()[self.position * self.batch_size : (self.position + 1) * self.batch_size]
        self.noise.manual_seed(noise_seed(self.seed, self.epoch, self.position))
        self.position += 1
        xb = self._represent(self.x[idx].to(self.device, non_blocking=True))
        if self.two_domains:
            return xb, self._represent(self.y[self._domain_b_indices()].to(self.device, non_blocking=True))
        yb = None if self.y is None else self.y[idx].to(self.device, non_blocking=True)
        return xb, yb

    def state_dict(self) -> dict:
        state = {"epoch": self.epoch, "position": self.position}
        if self.two_domains:
            state.update(epoch_b=self.epoch_b, position_b=self.position_b)
        return state

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position, self._perm = int(state["epoch"]), int(state["position"]), None
        self.epoch_b, self.position_b, self._perm_b = (
            int(state.get("epoch_b", 0)),
            int(state.get("position_b", 0)),
            None,
        )
        # a checkpoint from before the noise was re-seeded per batch also holds a generator state ("noise"),
        # of the device it was saved on: not needed, and left unread


def eval_batches(x: Tensor, y: Optional[Tensor], batch_size: int, device: torch.device):
    """Fixed-order batches of an already transformed evaluation split."""
    for i in range(0, len(x), batch_size):
        yield x[i : i + batch_size].to(device), None if y is None else y[i : i + batch_size].to(device)
