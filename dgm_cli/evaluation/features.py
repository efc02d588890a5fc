"""The feature network that sample-quality metrics (FID, KID, precision/recall, IS) look through.

FID and its relatives compare generated and real images in the feature space of a
classifier (Heusel et al. 2017 use Inception-v3's 2048-d pool features). Inception
weights must be downloaded, and an ImageNet network says little about 28x28 digits,
so dgm trains its own small CNN on each labelled image dataset's training split,
once, and caches it:

* MNIST, Fashion-MNIST, any labelled image dataset: `SmallCNN`, trained on the
  training labels; its 128-d penultimate activations are the features.
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
from ..progress import Progress
from ..data import files
from ..errors import UserError

log = logging.getLogger(__name__)

#: bump when SmallCNN or train_classifier change in a way that changes the network
RECIPE_VERSION = 1
FEATURE_DIM = 128
INCEPTION_ENV = "DGM_INCEPTION_WEIGHTS"
INCEPTION_DATASETS = ("cifar10",)
PRETTY_NAMES = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "cifar10": "CIFAR-10"}


class SmallCNN(nn.Module):
    """conv(32)-pool-conv(64)-pool-fc(128)-fc(classes): ~99% on MNIST in two epochs.

    ``body`` maps images in [0, 1] to the 128-d post-ReLU features; ``head`` maps
    features to class logits.
    """

    def __init__(self, shape: tuple[int, int, int], num_classes: int, feature_dim: int = FEATURE_DIM):
        super().__init__()
        c, h, w = shape
        if h < 4 or w < 4:
            raise UserError(f"images of shape {tuple(shape)} are too small for dgm's feature network (needs 4x4 or more).")
        self.body = nn.Sequential(
            nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * (h // 4) * (w // 4), feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


class FeatureNetwork:
    """A frozen network seen through ``features(x)`` and ``logits(x)``, x in [0, 1]."""

    def __init__(self, body: nn.Module, head: nn.Module, description: str, test_accuracy: Optional[float],
                 device, batch_size: int = 500, preprocess=None):
        self.body = body.to(device).eval().requires_grad_(False)
        self.head = head.to(device).eval().requires_grad_(False)
        self.description = description
        self.test_accuracy = test_accuracy
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.preprocess = preprocess or (lambda x: x)

    @torch.no_grad()
    def features(self, x: Tensor) -> Tensor:
        """(N, F) float32 features on ``self.device``; ``x`` is (N, C, H, W), floats in [0, 1] or uint8."""
        out = [self.body(self.preprocess(_unit_float(b).to(self.device))).float()
               for b in x.split(self.batch_size)]
        return torch.cat(out) if out else torch.empty(0, 0, device=self.device)

    @torch.no_grad()
    def logits_from_features(self, f: Tensor) -> Tensor:
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
    return {"version": RECIPE_VERSION, "arch": "SmallCNN", "shape": list(shape), "num_classes": num_classes,
            "feature_dim": FEATURE_DIM, "epochs": epochs, "batch_size": 128, "lr": 1e-3, "seed": 0,
            "schedule": "cosine", "binarize_prob": 0.5, "data": data_hash}


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
            log.info("feature classifier epoch %d/%d: loss %.4f (%.0fs)", epoch + 1, rec["epochs"], loss.item(),
                     time.time() - start)
    model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, device, batch_size: int = 1000) -> float:
    model.eval()
    correct = sum((model(_unit_float(xb).to(device)).argmax(1).cpu() == yb).sum().item()
                  for xb, yb in zip(x.split(batch_size), y.split(batch_size)))
    return correct / max(len(x), 1)


def _load_cached(path: Path, rec: dict, model: SmallCNN) -> Optional[float]:
    """The cached test accuracy after loading the weights into ``model``, or None if the file is unusable."""
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob.get("recipe") != json.loads(json.dumps(rec)):
            raise ValueError("recipe differs")
        model.load_state_dict(blob["state_dict"])
        return float(blob["test_accuracy"])
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


def own_classifier(dataset_name: str, train_x: Tensor, train_y: Optional[Tensor], test_x: Tensor,
                   test_y: Optional[Tensor], device, epochs: int, cache: Optional[Path] = None) -> FeatureNetwork:
    if train_y is None or test_y is None:
        raise UserError(
            f"sample-quality metrics on dataset={dataset_name} need class labels to train dgm's feature "
            "network, and this dataset has none (an image folder without class sub-folders, an npz without "
            "'y'). Give the data labels, or evaluate with metrics that need no features (parzen)."
        )
    train_y, test_y = train_y.long(), test_y.long()
    shape = tuple(train_x.shape[1:])
    num_classes = int(max(train_y.max().item(), test_y.max().item())) + 1
    rec = recipe(shape, num_classes, epochs, _fingerprint(train_x, train_y))
    key = hashlib.sha256(json.dumps(rec, sort_keys=True).encode()).hexdigest()[:16]
    path = (cache or cache_dir()) / f"{dataset_name}-{key}.pt"
    dev = torch.device(device)
    # a network that depends on the recipe only, and a caller's random stream left untouched
    with _one_trainer(path), torch.random.fork_rng(devices=[dev.index or 0] if dev.type == "cuda" else []):
        torch.manual_seed(rec["seed"])
        model = SmallCNN(shape, num_classes)
        acc = _load_cached(path, rec, model)
        if acc is None:
            log.info("training dgm's %s feature classifier (%d epochs; once, cached in %s)", dataset_name, epochs, path)
            train_classifier(model, train_x, train_y, rec, device)
            acc = accuracy(model, test_x, test_y, device)
            state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            try:
                _save_atomic(path, {"recipe": rec, "state_dict": state, "test_accuracy": acc, "dataset": dataset_name})
            except OSError as exc:  # a read-only home: the network still works, it is just not cached
                log.warning("could not cache the feature network in %s (%s); it will be retrained next time.", path, exc)
    name = PRETTY_NAMES.get(dataset_name, dataset_name)
    description = f"dgm {name} classifier ({FEATURE_DIM}-d features), {100 * acc:.1f}% test accuracy"
    return FeatureNetwork(model.body, model.head, description, acc, device)


# --- Inception-v3, only from weights already on disk ---------------------------------
def inception_weights_path() -> Optional[Path]:
    """``$DGM_INCEPTION_WEIGHTS`` if set (it must exist), else torchvision's file in the hub cache if present."""
    env = os.environ.get(INCEPTION_ENV)
    if env:
        if not Path(env).is_file():
            raise UserError(f"{INCEPTION_ENV}={env} is not a file; point it at torchvision's inception_v3 weights (.pth) or unset it.")
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
            f"Point {INCEPTION_ENV} at that file (inception_v3_google-0cc3c7bd.pth), or unset it to use dgm's own classifier."
        ) from exc
    head, net.fc = net.fc, nn.Identity()

    def preprocess(x: Tensor) -> Tensor:  # grey to RGB, 299x299, [-1, 1] as the Google weights expect
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return 2 * x - 1

    description = f"torchvision Inception-v3 pool3 (2048-d; {path.name}; not the TF-Inception of published FIDs)"
    return FeatureNetwork(net, head, description, None, device, batch_size=50, preprocess=preprocess)


def get_feature_network(dataset_name: str, train_x: Tensor, train_y: Optional[Tensor], test_x: Tensor,
                        test_y: Optional[Tensor], device="cpu", epochs: int = 2,
                        cache: Optional[Path] = None) -> FeatureNetwork:
    """The feature network for ``dataset_name`` (see the module docstring).

    train_x/test_x: uint8 images (N, C, H, W); train_y/test_y: integer labels.
    ``cache`` overrides the cache folder (default ``$DGM_CACHE/feature_nets``).
    """
    if dataset_name in INCEPTION_DATASETS:
        path = inception_weights_path()
        if path is not None:
            return inception_network(path, device)
        log.info("no local Inception-v3 weights (%s or the torch hub cache); using dgm's own %s classifier.",
                 INCEPTION_ENV, dataset_name)
    return own_classifier(dataset_name, train_x, train_y, test_x, test_y, device, epochs, cache)
