"""The feature network that sample-quality metrics (FID, KID, precision/recall, IS) look through.

FID and its relatives compare generated and real images in the feature space of a
classifier (Heusel et al. 2017 use Inception-v3's 2048-d pool features). Inception
weights must be downloaded, and an ImageNet network says little about 28x28 digits,
so dgm trains its own small CNN on each image dataset's training split, once, and
caches it (``dgm eval features=``; ``auto``, the default, picks the first two):

* ``classifier``: MNIST, Fashion-MNIST, any labelled image dataset: `SmallCNN`, trained
  on the training labels; its 128-d penultimate activations are the features, its
  held-out accuracy their quality.
* ``autoencoder``: any image dataset, labels or not (an unlabelled image folder):
  `ConvAutoencoder`, the same encoder trained to reconstruct the training images; its
  128-d code is the features, the share of held-out pixel variance it reconstructs
  their quality. It has no class probabilities, so no Inception score.
* ``inception``: the standard FID network, TF-Inception-v3 (2015-12-05) pool3, through
  torch-fidelity's ``FeatureExtractorInceptionV3`` from a weights file on disk
  (``inception_fid_network``): the numbers papers quote.

A network whose quality is below ``WEAK_QUALITY`` (a classifier right on fewer than 80%
of held-out images, an autoencoder that reconstructs less than 70% of their variance; docs/own_data.md
has MNIST's) comes with a warning beside every number computed through it.
* CIFAR-10: torchvision's Inception-v3 (2048-d pool features, 1000 ImageNet logits)
  if its weights are already on this machine (the path in ``DGM_INCEPTION_WEIGHTS``,
  or torchvision's file in the torch hub cache); nothing is ever downloaded.
  Otherwise the project's own classifier, as for the other datasets.

Numbers computed with dgm's classifiers are comparable between dgm runs on the same
dataset (the cache key pins the recipe), never with published FIDs, which use the
TF-Inception network; the report names the network (``FeatureNetwork.description``).

The cache file (``$DGM_CACHE``, default ``~/.cache/dgm``, in ``feature_nets/``) is named
by the dataset and a hash of the recipe and the training data, written atomically
(temporary file + ``os.replace``) and read with ``torch.load(weights_only=True)``; a
file that cannot be read is retrained, not crashed on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..atomic import write_atomically
from ..data import files
from ..errors import UserError
from ..progress import Progress

log = logging.getLogger(__name__)

#: bump when SmallCNN or train_classifier change in a way that changes the network
RECIPE_VERSION = 1
AUTOENCODER_VERSION = 1
FEATURE_DIM = 128
#: below these, features are too weak for FID & co. to mean much: a classifier's held-out accuracy,
#: an autoencoder's held-out share of pixel variance reconstructed
WEAK_QUALITY = {"test_accuracy": 0.8, "reconstructed_variance": 0.7}
#: dgm eval features=: which feature network scores samples
FEATURE_KINDS = ("auto", "classifier", "autoencoder", "inception")
INCEPTION_ENV = "DGM_INCEPTION_WEIGHTS"
INCEPTION_DATASETS = ("cifar10",)
PRETTY_NAMES = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "cifar10": "CIFAR-10"}


class SmallCNN(nn.Module):
    """conv(32)-pool-conv(64)-pool-fc(128)-fc(classes): dgm's feature classifier (its held-out accuracy is
    measured and reported with every number computed through it).

    ``body`` maps images in [0, 1] to the 128-d post-ReLU features; ``head`` maps
    features to class logits.
    """

    def __init__(self, shape: tuple[int, int, int], num_classes: int, feature_dim: int = FEATURE_DIM):
        super().__init__()
        self.body = encoder(shape, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def encoder(shape: tuple[int, int, int], feature_dim: int = FEATURE_DIM, relu: bool = True) -> nn.Sequential:
    """conv(32)-pool-conv(64)-pool-fc(feature_dim), ReLU (``relu``: also after the last layer): images in [0, 1]
    -> features."""
    c, h, w = shape
    if h < 4 or w < 4:
        raise UserError(f"images of shape {tuple(shape)} are too small for dgm's feature network (needs 4x4 or more).")
    return nn.Sequential(
        nn.Conv2d(c, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * (h // 4) * (w // 4), feature_dim),
        *([nn.ReLU()] if relu else []),
    )


class ConvAutoencoder(nn.Module):
    """SmallCNN's encoder (``body``, the features; a linear code, as a ReLU there can die and leave the
    code constant) and a decoder back to the image, trained on squared error: a feature network that
    needs no labels."""

    def __init__(self, shape: tuple[int, int, int], feature_dim: int = FEATURE_DIM):
        super().__init__()
        c, h, w = shape
        self.body = encoder(shape, feature_dim, relu=False)
        self.decoder = nn.Sequential(
            nn.Linear(feature_dim, 64 * (h // 4) * (w // 4)),
            nn.ReLU(),
            nn.Unflatten(1, (64, h // 4, w // 4)),
            nn.Upsample(size=(h // 2, w // 2)),
            nn.Conv2d(64, 32, 3, padding=1),
            nn.ReLU(),
            nn.Upsample(size=(h, w)),
            nn.Conv2d(32, c, 3, padding=1),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.body(x))


class FeatureNetwork:
    """A frozen network seen through ``features(x)`` and ``logits(x)``, x in [0, 1]; ``head`` None: a network
    without class probabilities (the autoencoder). ``quality``: {measure: value} on held-out data, None
    where dgm cannot measure it (Inception)."""

    def __init__(
        self,
        body: nn.Module,
        head: Optional[nn.Module],
        description: str,
        test_accuracy: Optional[float],
        device,
        batch_size: int = 500,
        preprocess=None,
        kind: str = "classifier",
        quality: Optional[dict] = None,
    ):
        self.body = body.to(device).eval().requires_grad_(False)
        self.head = None if head is None else head.to(device).eval().requires_grad_(False)
        self.description = description
        self.test_accuracy = test_accuracy
        self.kind = kind
        self.quality = (
            quality
            if quality is not None
            else ({"test_accuracy": test_accuracy} if test_accuracy is not None else None)
        )
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.preprocess = preprocess or (lambda x: x)

    @property
    def warning(self) -> Optional[str]:
        """A sentence when the features are too weak for FID & co. to mean much, else None."""
        weak = {k: v for k, v in (self.quality or {}).items() if k in WEAK_QUALITY and v < WEAK_QUALITY[k]}
        if not weak:
            return None
        ((measure, value),) = weak.items()
        what = {
            "test_accuracy": "classifies {v:.1%} of held-out images correctly",
            "reconstructed_variance": "reconstructs {v:.1%} of the held-out images' pixel variance",
        }[measure]
        return (
            f"weak features: the {self.description.split(' (')[0]} {what.format(v=value)} (below "
            f"{WEAK_QUALITY[measure]:.0%}), so FID, KID and precision/recall through it measure little; do not "
            "read small differences as real. Label the data (features=classifier), or use features=inception."
        )

    @torch.no_grad()
    def features(self, x: Tensor) -> Tensor:
        """(N, F) float32 features on ``self.device``; ``x`` is (N, C, H, W), floats in [0, 1] or uint8."""
        out = [self.body(self.preprocess(_unit_float(b).to(self.device))).float() for b in x.split(self.batch_size)]
        return torch.cat(out) if out else torch.empty(0, 0, device=self.device)

    @torch.no_grad()
    def logits_from_features(self, f: Tensor) -> Tensor:
        if self.head is None:
            raise UserError(
                f"the Inception score reads a classifier's class probabilities, and the {self.description} "
                "has none; leave 'is' out of metrics=, or use features=classifier (labelled data) or "
                "features=inception."
            )
        return self.head(f.to(self.device)).float()

    @torch.no_grad()
    def logits(self, x: Tensor) -> Tensor:
        return self.logits_from_features(self.features(x))


def _unit_float(x: Tensor) -> Tensor:
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


# --- the project's own classifier ---------------------------------------------------
def cache_dir() -> Path:
    return files.cache_root() / "feature_nets"


def _fingerprint(*tensors: Tensor) -> str:
    """sha256 of the training data, so that two image folders both called `image_folder` do not share a network."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def recipe(shape, num_classes: int, epochs: int, data_hash: str) -> dict:
    return {
        "version": RECIPE_VERSION,
        "arch": "SmallCNN",
        "shape": list(shape),
        "num_classes": num_classes,
        "feature_dim": FEATURE_DIM,
        "epochs": epochs,
        "batch_size": 128,
        "lr": 1e-3,
        "seed": 0,
        "schedule": "cosine",
        "binarize_prob": 0.5,
        "data": data_hash,
    }


def train_classifier(model: SmallCNN, train_x: Tensor, train_y: Tensor, rec: dict, device) -> None:
    """Adam on cross-entropy, learning rate decayed to 0 on a cosine. Half the batches are
    stochastically binarized (x ~ Bernoulli(pixel)), so that features of binary samples (from
    models of binarized MNIST) are in-distribution: binarizing barely moves FID."""
    g = torch.Generator().manual_seed(rec["seed"])
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=rec["lr"])
    n, bs = len(train_x), rec["batch_size"]
    total = rec["epochs"] * math.ceil(n / bs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / total)))  # cosine to 0
    start = time.time()
    with Progress(total, "training the feature classifier", "steps", logger=log.name) as progress:
        for epoch in range(rec["epochs"]):
            for idx in torch.randperm(n, generator=g).split(bs):
                x = _unit_float(train_x[idx]).to(device)
                if torch.rand((), generator=g) < rec["binarize_prob"]:
                    x = torch.bernoulli(x)
                loss = F.cross_entropy(model(x), train_y[idx].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                progress.update()
            log.info(
                "feature classifier epoch %d/%d: loss %.4f (%.0fs)",
                epoch + 1,
                rec["epochs"],
                loss.item(),
                time.time() - start,
            )
    model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, device, batch_size: int = 1000) -> float:
    model.eval()
    correct = sum(
        (model(_unit_float(xb).to(device)).argmax(1).cpu() == yb).sum().item()
        for xb, yb in zip(x.split(batch_size), y.split(batch_size))
    )
    return correct / max(len(x), 1)


def _load_cached(path: Path, rec: dict, model: nn.Module, measure: str = "test_accuracy") -> Optional[float]:
    """The cached quality (a classifier's test accuracy) after loading the weights into ``model``, or None if
    the file is unusable."""
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob.get("recipe") != json.loads(json.dumps(rec)):
            raise ValueError("recipe differs")
        model.load_state_dict(blob["state_dict"])
        return float(blob[measure])
    except Exception as exc:  # truncated write, another version's file, garbage: retrain
        log.warning("feature network cache %s is unusable (%s: %s); retraining.", path, type(exc).__name__, exc)
        return None


def _save_atomic(path: Path, blob: dict) -> None:
    write_atomically(path, lambda f: torch.save(blob, f))


@contextlib.contextmanager
def _one_trainer(path: Path):
    """Held while this process loads or trains-and-caches the network at ``path``: another process
    that needs the same network (a parallel sweep's jobs evaluating at once) waits and then loads
    it, instead of training it too. Where the cache cannot be written, nothing is held."""
    from filelock import FileLock

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(f"{path}.lock")
        lock.acquire()
    except OSError:
        yield
        return
    try:
        yield
    finally:
        lock.release()


def _cached_network(
    dataset_name: str, rec: dict, build, train, measure: str, quality, device, cache: Optional[Path], what: str
) -> tuple[nn.Module, float]:
    """(network, its held-out quality ``measure``): from the cache file of ``rec``, or built (``build()``),
    trained (``train(model)``), measured (``quality(model)``) and cached, once per recipe and data."""
    key = hashlib.sha256(json.dumps(rec, sort_keys=True).encode()).hexdigest()[:16]
    path = (cache or cache_dir()) / f"{dataset_name}-{key}.pt"
    dev = torch.device(device)
    # a network that depends on the recipe only, and a caller's random stream left untouched
    with _one_trainer(path), torch.random.fork_rng(devices=[dev.index or 0] if dev.type == "cuda" else []):
        torch.manual_seed(rec["seed"])
        model = build()
        value = _load_cached(path, rec, model, measure)
        if value is None:
            log.info("training dgm's %s %s (once, cached in %s)", dataset_name, what, path)
            train(model)
            value = quality(model)
            state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            try:
                _save_atomic(path, {"recipe": rec, "state_dict": state, measure: value, "dataset": dataset_name})
            except OSError as exc:  # a read-only home: the network still works, it is just not cached
                log.warning(
                    "could not cache the feature network in %s (%s); it will be retrained next time.", path, exc
                )
    return model, value


def own_classifier(
    dataset_name: str,
    train_x: Tensor,
    train_y: Optional[Tensor],
    test_x: Tensor,
    test_y: Optional[Tensor],
    device,
    epochs: int,
    cache: Optional[Path] = None,
) -> FeatureNetwork:
    if train_y is None or test_y is None:
        raise UserError(
            f"features=classifier on dataset={dataset_name} needs class labels to train dgm's feature "
            "classifier, and this dataset has none (an image folder without class sub-folders, an npz without "
            "'y'). Use features=autoencoder (trained on the images alone), features=inception, or give the data labels."
        )
    train_y, test_y = train_y.long(), test_y.long()
    shape = tuple(train_x.shape[1:])
    num_classes = int(max(train_y.max().item(), test_y.max().item())) + 1
    rec = recipe(shape, num_classes, epochs, _fingerprint(train_x, train_y))
    model, acc = _cached_network(
        dataset_name,
        rec,
        lambda: SmallCNN(shape, num_classes),
        lambda m: train_classifier(m, train_x, train_y, rec, device),
        "test_accuracy",
        lambda m: accuracy(m, test_x, test_y, device),
        device,
        cache,
        "feature classifier",
    )
    name = PRETTY_NAMES.get(dataset_name, dataset_name)
    description = f"dgm {name} classifier ({FEATURE_DIM}-d features), {100 * acc:.1f}% test accuracy"
    return FeatureNetwork(model.body, model.head, description, acc, device)


# --- the label-free network: an autoencoder ----------------------------------------------------
def autoencoder_recipe(shape, steps: int, data_hash: str) -> dict:
    return {
        "version": AUTOENCODER_VERSION,
        "arch": "ConvAutoencoder",
        "shape": list(shape),
        "feature_dim": FEATURE_DIM,
        "steps": steps,
        "batch_size": 128,
        "lr": 1e-3,
        "seed": 0,
        "schedule": "cosine",
        "loss": "squared error",
        "binarize_prob": 0.5,
        "data": data_hash,
    }


#: the autoencoder trains for at least this many steps (a few hundred images still get a usable network)
AUTOENCODER_MIN_STEPS = 600


def train_autoencoder(model: ConvAutoencoder, train_x: Tensor, rec: dict, device) -> None:
    """Adam on the squared reconstruction error, learning rate on a cosine to 0; as the classifier, half the
    batches are binarized, so the features of binary samples are in-distribution."""
    g = torch.Generator().manual_seed(rec["seed"])
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=rec["lr"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / rec["steps"])))
    n, bs, step = len(train_x), rec["batch_size"], 0
    with Progress(
        rec["steps"], "training the label-free feature network (autoencoder)", "steps", logger=log.name
    ) as progress:
        while step < rec["steps"]:
            for idx in torch.randperm(n, generator=g).split(bs):
                x = _unit_float(train_x[idx]).to(device)
                if torch.rand((), generator=g) < rec["binarize_prob"]:
                    x = torch.bernoulli(x)
                loss = F.mse_loss(model(x), x)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                progress.update()
                step += 1
                if step == rec["steps"]:
                    break
    log.info("feature autoencoder: squared error %.5f after %d steps", loss.item(), step)
    model.eval()


@torch.no_grad()
def reconstructed_variance(model: ConvAutoencoder, x: Tensor, device, batch_size: int = 1000) -> float:
    """1 - (squared reconstruction error) / (pixel variance about the mean image), on held-out images ``x``:
    the share of their variance the code keeps (1 perfect, 0 no better than the mean image)."""
    model.eval()
    xs = _unit_float(x)
    err = sum(float(((model(b.to(device)).cpu() - b) ** 2).sum()) for b in xs.split(batch_size))
    var = float(((xs - xs.mean(0)) ** 2).sum())
    return 1.0 - err / var if var > 0 else 0.0


def own_autoencoder(
    dataset_name: str, train_x: Tensor, test_x: Tensor, device, epochs: int, cache: Optional[Path] = None
) -> FeatureNetwork:
    """The label-free feature network of a dataset: ``ConvAutoencoder`` trained on its training images (at
    least AUTOENCODER_MIN_STEPS steps), its quality the held-out share of pixel variance it reconstructs."""
    shape = tuple(train_x.shape[1:])
    steps = max(AUTOENCODER_MIN_STEPS, epochs * math.ceil(len(train_x) / 128))
    rec = autoencoder_recipe(shape, steps, _fingerprint(train_x))
    model, r2 = _cached_network(
        dataset_name,
        rec,
        lambda: ConvAutoencoder(shape),
        lambda m: train_autoencoder(m, train_x, rec, device),
        "reconstructed_variance",
        lambda m: reconstructed_variance(m, test_x, device),
        device,
        cache,
        "label-free feature network (autoencoder)",
    )
    name = PRETTY_NAMES.get(dataset_name, dataset_name)
    description = (
        f"dgm {name} autoencoder ({FEATURE_DIM}-d code, no labels), reconstructs {100 * r2:.1f}% of "
        "held-out pixel variance"
    )
    return FeatureNetwork(
        model.body, None, description, None, device, kind="autoencoder", quality={"reconstructed_variance": r2}
    )


# --- Inception-v3, only from weights already on disk ---------------------------------
def inception_weights_path() -> Optional[Path]:
    """``$DGM_INCEPTION_WEIGHTS`` if set (it must exist), else torchvision's file in the hub cache if present."""
    env = os.environ.get(INCEPTION_ENV)
    if env:
        if not Path(env).is_file():
            raise UserError(
                f"{INCEPTION_ENV}={env} is not a file; point it at torchvision's inception_v3 weights (.pth) "
                "or unset it."
            )
        return Path(env)
    from torchvision.models import Inception_V3_Weights

    url = Inception_V3_Weights.IMAGENET1K_V1.url
    hub = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    return hub if hub.is_file() else None


def inception_network(path: Path, device) -> FeatureNetwork:
    """torchvision's Inception-v3: 2048-d pool features and 1000 ImageNet logits, inputs resized to 299x299."""
    from torchvision.models import inception_v3

    net = inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=False)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    except Exception as exc:
        raise UserError(
            f"{path} does not hold torchvision's inception_v3 state dict ({type(exc).__name__}: {exc}). "
            f"Point {INCEPTION_ENV} at that file (inception_v3_google-0cc3c7bd.pth), or unset it to use dgm's own "
            "classifier."
        ) from exc
    head, net.fc = net.fc, nn.Identity()

    def preprocess(x: Tensor) -> Tensor:  # grey to RGB, 299x299, [-1, 1] as the Google weights expect
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return 2 * x - 1

    description = f"torchvision Inception-v3 pool3 (2048-d; {path.name}; not the TF-Inception of published FIDs)"
    return FeatureNetwork(
        net,
        head,
        description,
        None,
        device,
        batch_size=50,
        preprocess=preprocess,
        kind="torchvision-inception",
        quality={},
    )


# --- the standard FID network: TF-Inception-v3 through torch-fidelity ---------------------------------
#: pytorch-fid's name of the weights (torch-fidelity's copy: weights-inception-2015-12-05-6726825d.pth); the
#: hex is the start of the file's sha256 (torch.hub's convention)
FID_INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_INCEPTION_FILES = (FID_INCEPTION_FILE, "weights-inception-2015-12-05-6726825d.pth")
FID_INCEPTION_SHA256_PREFIX = "6726825d"
FID_INCEPTION_ENV = "DGM_FID_INCEPTION_WEIGHTS"
FID_INCEPTION_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + FID_INCEPTION_FILE


def fid_inception_path() -> Path:
    """``$DGM_FID_INCEPTION_WEIGHTS``, else pytorch-fid's (or torch-fidelity's) file in ``$DGM_CACHE``; refused in
    one paragraph where there is none: dgm never downloads it."""
    env = os.environ.get(FID_INCEPTION_ENV)
    if env:
        if Path(env).expanduser().is_file():
            return Path(env).expanduser()
        where = f"{FID_INCEPTION_ENV}={env}, which is not a file"
    else:
        found = [files.cache_root() / name for name in FID_INCEPTION_FILES if (files.cache_root() / name).is_file()]
        if found:
            return found[0]
        where = f"neither {FID_INCEPTION_ENV} nor {files.cache_root() / FID_INCEPTION_FILE} names one"
    raise UserError(
        f"features=inception needs the weights of the standard FID network (TF-Inception-v3 of 2015-12-05, as "
        f"pytorch-fid and torch-fidelity use it) on disk, and {where}. The file is {FID_INCEPTION_FILE} "
        f"(about 91 MB; its sha256 begins with {FID_INCEPTION_SHA256_PREFIX}), released with pytorch-fid at "
        f"{FID_INCEPTION_URL} (torch-fidelity's copy, weights-inception-2015-12-05-6726825d.pth, works too); dgm "
        f"never downloads it. Put it in $DGM_CACHE ({files.cache_root()}) or point {FID_INCEPTION_ENV} at it; "
        "or leave features= out for dgm's own offline feature networks."
    )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def quantize(x: Tensor) -> Tensor:
    """Images in [0, 1] -> uint8 as an 8-bit PNG holds them (torchvision's save_image: x * 255 + 0.5, clamped,
    truncated), 3 channels (grey repeated, as a greyscale PNG opened as RGB): what torch-fidelity and pytorch-fid
    read from image files."""
    q = x if x.dtype == torch.uint8 else (x.float() * 255 + 0.5).clamp(0, 255).to(torch.uint8)
    return q.expand(-1, 3, -1, -1) if q.shape[1] == 1 else q


class _FidelityInception(nn.Module):
    """torch-fidelity's extractor seen as dgm's body (images in [0, 1] -> 2048-d pool3 features) and head
    (pool3 -> the 1008 logits without bias, its 'logits_unbiased' that its Inception score reads)."""

    def __init__(self, extractor):
        super().__init__()
        self.extractor = extractor

    def forward(self, x: Tensor) -> Tensor:
        # the extractor resizes to 299x299 bilinearly as TensorFlow 1.x did and scales (x - 128) / 128
        return self.extractor(quantize(x))[0]


def inception_fid_network(device, path: Optional[Path] = None) -> FeatureNetwork:
    """The standard FID network: torch-fidelity's ``FeatureExtractorInceptionV3`` with the weights at ``path``
    (``fid_inception_path()``), loaded here with ``torch.load(weights_only=True)`` (torch-fidelity's own loader
    unpickles freely: opening a file must never run code) and handed to it."""
    path = path or fid_inception_path()
    try:
        import torch_fidelity.feature_extractor_inceptionv3 as fidelity
    except ImportError:
        raise UserError(
            "features=inception computes the standard FID through the torch-fidelity package, which is "
            "not installed: pip install 'dgm[inception]' (or pip install torch-fidelity)."
        ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise TypeError(f"it holds a {type(state).__name__}, not a state dict")

        class _Preloaded:  # the extractor's module sees torch, with torch.load giving the state read above
            def __getattr__(self, name):
                return getattr(torch, name)

            @staticmethod
            def load(*args, **kwargs):
                return state

        from unittest import mock

        with mock.patch.object(fidelity, "torch", _Preloaded()):
            extractor = fidelity.FeatureExtractorInceptionV3(
                "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path)
            )
    except Exception as exc:
        raise UserError(
            f"{path} does not hold the FID Inception weights ({type(exc).__name__}: {exc}); the file is "
            f"{FID_INCEPTION_FILE} from {FID_INCEPTION_URL}."
        ) from None
    digest = _sha256(path)
    head = nn.Linear(2048, extractor.fc.out_features, bias=False)
    head.weight = extractor.fc.weight
    published = digest.startswith(FID_INCEPTION_SHA256_PREFIX)
    description = (
        "TF-Inception-v3 pool3 (2048-d; the FID network of pytorch-fid and torch-fidelity, via torch-fidelity; "
        "8-bit images, bilinear to 299x299)"
        + (
            ""
            if published
            else f"; weights {path.name}, sha256 {digest[:12]}, NOT the published file: not comparable with papers"
        )
    )
    return FeatureNetwork(
        _FidelityInception(extractor), head, description, None, device, batch_size=50, kind="inception", quality={}
    )


def get_feature_network(
    dataset_name: str,
    train_x: Tensor,
    train_y: Optional[Tensor],
    test_x: Tensor,
    test_y: Optional[Tensor],
    device="cpu",
    epochs: int = 2,
    cache: Optional[Path] = None,
    kind: str = "auto",
) -> FeatureNetwork:
    """The feature network ``kind`` (FEATURE_KINDS; see the module docstring) for ``dataset_name``: ``auto`` is
    the classifier where the data has labels (CIFAR-10: torchvision's Inception-v3 where its weights are on
    disk), else the autoencoder.

    train_x/test_x: uint8 images (N, C, H, W); train_y/test_y: integer labels.
    ``cache`` overrides the cache folder (default ``$DGM_CACHE/feature_nets``).
    """
    if kind not in FEATURE_KINDS:
        raise UserError(f"features={kind} is not a feature network dgm has; allowed: {', '.join(FEATURE_KINDS)}.")
    if kind == "inception":
        return inception_fid_network(device)
    if kind == "autoencoder" or (kind == "auto" and (train_y is None or test_y is None)):
        return own_autoencoder(dataset_name, train_x, test_x, device, epochs, cache)
    if kind == "auto" and dataset_name in INCEPTION_DATASETS:
        path = inception_weights_path()
        if path is not None:
            return inception_network(path, device)
        log.info(
            "no local Inception-v3 weights (%s or the torch hub cache); using dgm's own %s classifier.",
            INCEPTION_ENV,
            dataset_name,
        )
    return own_classifier(dataset_name, train_x, train_y, test_x, test_y, device, epochs, cache)
