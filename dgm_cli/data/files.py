"""Readers of image datasets on disk, each returning uint8 images (N, C, H, W) and labels.

MNIST and Fashion-MNIST use torchvision's folder layout and our reader of LeCun's IDX files (importing
torchvision would cost every command seconds of start-up: it pulls in torch._dynamo); CIFAR-10
is read from torchvision's layout (``cifar-10-batches-py``) by our own reader of its
pickle files, so that small files a test writes in that format load too. That reader
is a restricted unpickler: it builds only the dicts, lists, strings, numbers and numpy
arrays those files hold, so a tampered file cannot run code. Binarized MNIST is the
fixed binarization of Larochelle & Murray 2011 (``binarized_mnist/*.amat``, text).
"""

from __future__ import annotations

import math
import os
import pickle
import urllib.request
import zipfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from ..errors import UserError, describe_file

IDX_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
BINARIZED_MNIST_SPLITS = {"train": 50000, "valid": 10000, "test": 10000}
BINARIZED_MNIST_FILES = [f"binarized_mnist_{s}.amat" for s in BINARIZED_MNIST_SPLITS]
BINARIZED_MNIST_URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}

Split = tuple[Tensor, Optional[Tensor]]


def cache_root() -> Path:
    """``$DGM_CACHE``, default ``~/.cache/dgm``: what dgm computes once and keeps (feature networks, parsed
    music), never in the repository."""
    return Path(os.environ.get("DGM_CACHE") or Path.home() / ".cache" / "dgm")


def _missing(folder: Path, names: list[str]) -> list[str]:
    return [n for n in names if not (folder / n).exists()]


def _download_or_explain(name: str, folder: Path, missing: list[str], download: bool, fetch) -> None:
    if download:
        try:
            fetch()
            return
        except Exception as exc:  # no network, a proxy, a mirror down: explain below
            reason = f"downloading failed ({type(exc).__name__}: {exc})"
    else:
        reason = "data.download=false"
    raise UserError(
        f"{name} files are missing under data.root and {reason}. Missing in {folder}: "
        f"{', '.join(missing)}. Put them there, or point data.root "
        f"(or the environment variable DGM_DATA_ROOT) at a folder that has them."
    )


def read_idx(path: Path) -> Tensor:
    """An IDX file of unsigned bytes (LeCun et al.'s MNIST format, also Fashion-MNIST's): the magic
    ``00 00 08 <ndim>``, ``ndim`` big-endian int32 sizes, then the bytes in C order."""
    data = path.read_bytes()
    if len(data) < 4 or data[:3] != b"\x00\x00\x08" or data[3] == 0:
        raise UserError(
            f"{path} is not an IDX file of unsigned bytes (it must start with 00 00 08 and a "
            f"dimension count); replace it with the original MNIST/Fashion-MNIST file."
        )
    ndim = data[3]
    sizes = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = data[4 + 4 * ndim :]
    if len(body) != math.prod(sizes):
        raise UserError(
            f"{path} is truncated or padded: its header says {' x '.join(map(str, sizes))} = "
            f"{math.prod(sizes)} bytes, it holds {len(body)}; replace it with the original file."
        )
    return torch.frombuffer(bytearray(body), dtype=torch.uint8).reshape(sizes)


def load_idx(root: str, name: str, download: bool) -> tuple[Split, Split]:
    """MNIST or FashionMNIST in torchvision's layout (``<root>/<name>/raw/*-ubyte``)."""
    raw = Path(root) / name / "raw"
    missing = _missing(raw, IDX_FILES)
    if missing:

        def fetch():
            import torchvision

            getattr(torchvision.datasets, name)(root, train=True, download=True)

        _download_or_explain(name, raw, missing, download, fetch)
    out = []
    for prefix in ("train", "t10k"):
        x, y = read_idx(raw / f"{prefix}-images-idx3-ubyte"), read_idx(raw / f"{prefix}-labels-idx1-ubyte")
        if x.dim() != 3 or y.dim() != 1 or len(x) != len(y):
            raise UserError(
                f"{raw}: {prefix}-images holds {tuple(x.shape)} and {prefix}-labels {tuple(y.shape)}; "
                "expected (N, H, W) images and N labels."
            )
        out.append((x.unsqueeze(1).contiguous(), y.long()))
    return out[0], out[1]


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR-10's python batches hold: containers, strings and numbers (no
    globals needed) and numpy arrays and scalars. Any other global a pickle names (``os.system``,
    ``builtins.eval``, a class with a ``__reduce__``) is refused before it is looked up."""

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # how protocol 2 spells bytes written by Python 3
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused to load the global {module}.{name}")
        return super().find_class(module, name)


def read_array_pickle(path: Path) -> dict:
    """A python-pickled dict of arrays and lists (CIFAR-10's batch format), read without running code."""
    try:
        with open(path, "rb") as f:
            entry = _ArrayUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise UserError(
            f"{path} is not a CIFAR-10 python batch dgm can read ({exc}); such files hold only "
            "arrays, lists and strings. Replace it with the original file."
        ) from None
    if not isinstance(entry, dict) or "data" not in entry:
        raise UserError(f"{path} is not a CIFAR-10 python batch (no 'data' array).")
    return entry


def load_cifar10(root: str, download: bool) -> tuple[Split, Split]:
    folder = Path(root) / "cifar-10-batches-py"
    missing = _missing(folder, CIFAR_FILES)
    if missing:
        import torchvision

        _download_or_explain(
            "CIFAR-10", folder, missing, download, lambda: torchvision.datasets.CIFAR10(root, train=True, download=True)
        )

    def read(names: list[str]) -> Split:
        xs, ys = [], []
        for n in names:
            entry = read_array_pickle(folder / n)
            xs.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(entry.get("labels", entry.get("fine_labels")), dtype=np.int64))
        return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))

    return read(CIFAR_FILES[:5]), read(CIFAR_FILES[5:])


def read_amat(path: Path, dim: int = 784) -> Tensor:
    """A Larochelle & Murray ``.amat`` file (one example per line, ``dim`` space-separated 0/1 values)
    as uint8 images (N, 1, 28, 28) holding 0 and 255, so that every representation reads them as they are."""
    raw = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    digits = raw[(raw == ord("0")) | (raw == ord("1"))]
    lines = int((raw == ord("\n")).sum()) + (1 if len(raw) and raw[-1] != ord("\n") else 0)
    others = raw[~np.isin(raw, np.frombuffer(b"01 \t\r\n", dtype=np.uint8))]
    if len(others) or len(digits) != lines * dim:
        raise UserError(
            f"{path} is not a binarized MNIST .amat file: expected lines of {dim} space-separated "
            f"0/1 values, found {len(digits)} values on {lines} lines"
            + (" and other characters" if len(others) else "")
            + "."
        )
    side = int(round(dim**0.5))
    return torch.from_numpy((digits - ord("0")).astype(np.uint8) * 255).view(-1, 1, side, side)


def load_binarized_mnist(root: str, download: bool, val_size: int) -> tuple[Split, Split, Split]:
    """The fixed binarization of MNIST of Larochelle & Murray 2011 (50,000 / 10,000 / 10,000), from
    ``<root>/binarized_mnist/binarized_mnist_{train,valid,test}.amat``; no labels. ``val_size``
    10000 keeps the published validation split, 0 trains on train + valid (60,000)."""
    folder = Path(root) / "binarized_mnist"
    missing = _missing(folder, BINARIZED_MNIST_FILES)
    if missing:

        def fetch():
            folder.mkdir(parents=True, exist_ok=True)
            for name in missing:
                tmp = folder / (name + ".part")
                try:
                    urllib.request.urlretrieve(BINARIZED_MNIST_URL + name, tmp)
                    tmp.replace(folder / name)
                finally:
                    tmp.unlink(missing_ok=True)

        _download_or_explain("Binarized MNIST", folder, missing, download, fetch)
    train, valid, test = (read_amat(folder / name) for name in BINARIZED_MNIST_FILES)
    if val_size not in (0, len(valid)):
        raise UserError(
            f"data.val_size={val_size} is not allowed for dataset=binarized_mnist: its validation "
            f"split is fixed; use {len(valid)} (the published split) or 0 (train on train + valid)."
        )
    if val_size == 0:
        train, valid = torch.cat([train, valid]), valid[:0]
    return (train, None), (valid, None), (test, None)


#: what an .npz of images may hold: its images array's ranks, and the values each kind of number may take
NPZ_ACCEPTED = (
    "uint8 (or other integers) in [0, 255], or floats in [0, 1]; shaped N x H x W, N x H x W x C or "
    "N x C x H x W with C 1 or 3"
)


def _npz_refusal(path, key: str, found: str, fix: str = "") -> UserError:
    return UserError(
        f"data.path={path}: array '{key}' {found}; dgm reads images as {NPZ_ACCEPTED}"
        + (f". {fix}" if fix else "")
        + ". Labels, if any, go in 'y' (or 'labels'): N integers."
    )


def _checked_images(path, key: str, a: np.ndarray) -> tuple[Tensor, dict]:
    """The images of an .npz as uint8 (N, C, H, W), and what was done to them; anything that is not images
    as NPZ_ACCEPTED says is refused, naming the file, the array and what it holds, never clipped or cast."""
    if a.dtype.kind not in "biuf":
        raise _npz_refusal(path, key, f"holds {a.dtype} values, not numbers")
    if a.ndim == 3:
        a = a[:, None]
    elif a.ndim == 4 and a.shape[-1] in (1, 3) and a.shape[1] not in (1, 3):
        a = a.transpose(0, 3, 1, 2)
    if a.ndim != 4 or a.shape[1] not in (1, 3) or not a.size:
        raise _npz_refusal(path, key, f"has shape {a.shape} (rank {a.ndim})")
    note: dict = {"array": key, "dtype": str(a.dtype)}
    if a.dtype.kind == "f":
        bad = int((~np.isfinite(a)).sum())
        if bad:
            raise _npz_refusal(path, key, f"holds {bad:,} NaN or infinite values", "Remove or repair those examples")
        lo, hi = float(a.min()), float(a.max())
        if lo < 0 or hi > 1:
            fix = (
                "For data in [-1, 1], save (x + 1) / 2"
                if lo >= -1 and hi <= 1
                else "For floats in [0, 255], save x / 255 or x.astype(np.uint8)"
                if lo >= 0 and hi <= 255
                else "Scale them into [0, 1] first"
            )
            raise _npz_refusal(path, key, f"holds floats from {lo:.4g} to {hi:.4g}", fix)
        note["quantized"] = "floats in [0, 1] rounded to 256 levels (k/255)"
        a = np.rint(a * 255.0).astype(np.uint8)
    elif a.dtype != np.uint8:
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > 255:
            raise _npz_refusal(
                path,
                key,
                f"holds {a.dtype} integers from {lo:,} to {hi:,}",
                "For 16-bit images, save (x // 256).astype(np.uint8)" if lo >= 0 and hi < 2**16 else "",
            )
        a = a.astype(np.uint8) * (255 if a.dtype.kind == "b" else 1)
    return torch.from_numpy(np.ascontiguousarray(a)), note


def _checked_labels(path, key: str, y: np.ndarray, n: int) -> Tensor:
    if y.dtype.kind not in "biu" and not (y.dtype.kind == "f" and np.isfinite(y).all() and (y == np.rint(y)).all()):
        raise UserError(
            f"data.path={path}: labels '{key}' hold {y.dtype} values; labels are N whole numbers >= 0 "
            "(class indices), or leave the array out."
        )
    if y.shape != (n,) or (len(y) and y.min() < 0):
        raise UserError(
            f"data.path={path}: labels '{key}' have shape {y.shape}"
            + (f" and values down to {y.min()}" if y.size and y.min() < 0 else "")
            + f"; they must be {n} whole numbers >= 0, one per image, or leave the array out."
        )
    return torch.from_numpy(y.astype(np.int64))


def _resize(x: Tensor, size: Optional[int]) -> Tensor:
    if size is None or x.shape[-1] == size and x.shape[-2] == size:
        return x
    y = torch.nn.functional.interpolate(
        x.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    return y.round().clamp(0, 255).to(torch.uint8)


def load_npz(
    path: Optional[str], image_size: Optional[int], channels: Optional[int]
) -> tuple[Tensor, Optional[Tensor], dict]:
    """Images (and labels) from an .npz, checked (``_checked_images``), with what was read and done to
    them (``source``: the file, its size in bytes, the array, its dtype, rounding, resizing, conversion)."""
    if not path or not Path(path).is_file():
        raise UserError(
            "dataset=npz needs data.path=<file.npz>; " + (f"{path!r} is not a file." if path else "it is not set.")
        )

    def unreadable(reason: str) -> UserError:
        return UserError(
            f"dataset=npz cannot read data.path={path}: {reason}. dgm reads an .npz of numeric arrays: "
            "images in 'x' (or 'images', 'arr_0'), labels in 'y' (or 'labels')."
        )

    if not zipfile.is_zipfile(path):
        raise unreadable(f"it seems to be {describe_file(path)}")
    try:
        with np.load(path, allow_pickle=False) as f:  # a pickled (object) array could run code: refused
            keys = list(f.keys())
            ikey = next((k for k in ("x", "images", "arr_0") if k in keys), None)
            if ikey is None:
                raise UserError(
                    f"{path} has arrays {keys}; dgm reads images from 'x', 'images' or 'arr_0' "
                    "and labels from 'y' or 'labels'."
                )
            x, source = _checked_images(path, ikey, f[ikey])
            lkey = next((k for k in ("y", "labels") if k in keys), None)
            y = _checked_labels(path, lkey, f[lkey], len(x)) if lkey else None
    except ValueError as exc:
        if "pickle" not in str(exc):
            raise unreadable(f"{exc}") from None
        raise unreadable(
            "it holds an array of Python objects, which numpy stores pickled, and unpickling can run "
            "code; save numbers instead, e.g. np.savez(path, x=np.asarray(images, dtype=np.uint8))"
        ) from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise unreadable(f"it is a damaged zip archive ({exc})") from None
    source.update(
        path=str(Path(path).resolve()),
        bytes=Path(path).stat().st_size,
        sizes={f"{x.shape[-2]}x{x.shape[-1]}": len(x)},
        modes={_MODE_OF_CHANNELS[x.shape[1]]: len(x)},
    )
    out = _convert_channels(_resize(x, image_size), channels)
    return out, y, _note_changes(source, x.shape[1:], out.shape[1:])


_MODE_OF_CHANNELS = {1: "L", 3: "RGB"}


def _note_changes(source: dict, before, after) -> dict:
    """Adds to ``source`` the resizing and colour conversion that made images of shape ``before`` ``after``."""
    if tuple(before[1:]) != tuple(after[1:]) or len(source.get("sizes", {})) > 1:
        source["resized_to"] = f"{after[1]}x{after[2]}"
    if before[0] != after[0] or len(source.get("modes", {})) > 1:
        source["converted_to"] = _MODE_OF_CHANNELS[after[0]]
    return source


def _convert_channels(x: Tensor, channels: Optional[int]) -> Tensor:
    if channels is None or x.shape[1] == channels:
        return x
    if channels == 3:
        return x.expand(-1, 3, -1, -1).contiguous()
    w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (x.float() * w).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)


GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
#: at most this many unreadable files are named in one message (the rest are counted)
LISTED = 20


def _files_refusal(folder: Path, bad: list[tuple[Path, str]]) -> UserError:
    named = "; ".join(f"{p} ({why})" for p, why in bad[:LISTED])
    more = f"; and {len(bad) - LISTED:,} more" if len(bad) > LISTED else ""
    what = "1 file is not an image" if len(bad) == 1 else f"{len(bad):,} files are not images"
    return UserError(
        f"data.path={folder}: {what} dgm can read: {named}{more}. Remove them from the folder or "
        f"replace them; dgm reads {', '.join(sorted(IMAGE_SUFFIXES))} files."
    )


def load_image_folder(
    path: Optional[str], image_size: Optional[int], channels: Optional[int]
) -> tuple[Tensor, Optional[Tensor], dict]:
    """PNG/JPEG files in ``path``, or in one sub-folder per class (torchvision's ImageFolder), and what
    was read and done to them (``source``: the folder, how many files, a digest of their names, their sizes
    and colour modes, what they were resized and converted to). Every file that cannot be read is named."""
    import hashlib

    from PIL import Image

    folder = Path(path) if path else None
    if folder is None or not folder.is_dir():
        raise UserError(
            "dataset=image_folder needs data.path=<folder of images>; "
            + (f"{path!r} is not a folder." if path else "it is not set.")
        )
    folder = folder.resolve()
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    files: list[tuple[Path, int]] = []
    if classes:
        for label, c in enumerate(classes):
            files += [(p, label) for p in sorted((folder / c).rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES]
    else:
        files = [(p, -1) for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise UserError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found in {folder}.")
    bad, sizes, modes = [], {}, {}
    for p, _ in files:  # the headers first: sizes and colour modes, before anything is converted
        try:
            with Image.open(p) as im:
                size, mode = f"{im.size[0]}x{im.size[1]}", im.mode
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            bad.append((p, f"{describe_file(p)}: {exc}"))
            continue
        sizes[size], modes[mode] = sizes.get(size, 0) + 1, modes.get(mode, 0) + 1
    colour = any(m not in GREY_MODES for m in modes)
    mode = {1: "L", 3: "RGB"}.get(channels or 0, "RGB" if colour else "L")
    size = image_size or min((min(map(int, s.split("x"))) for s in sizes), default=1)
    arrays, broken = [], {p for p, _ in bad}
    for p, _ in files:  # then every image decoded: one truncated half way is named too, with the others
        if p in broken:
            continue
        try:
            with Image.open(p) as im:
                im = im.convert(mode)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            bad.append((p, f"{describe_file(p)}: {exc}"))
            continue
        if im.size != (size, size):
            im = im.resize((size, size), Image.BILINEAR)
        a = np.asarray(im, dtype=np.uint8)
        arrays.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    if bad:
        raise _files_refusal(folder, sorted(bad))
    x = torch.from_numpy(np.stack(arrays))
    y = torch.tensor([label for _, label in files]) if classes else None
    names = hashlib.sha256("\n".join(p.relative_to(folder).as_posix() for p, _ in files).encode()).hexdigest()[:16]
    source = {"path": str(folder), "files": len(files), "names": names, "sizes": sizes, "modes": modes}
    if len(sizes) > 1 or next(iter(sizes)) != f"{size}x{size}":
        source["resized_to"] = f"{size}x{size}"
    if len(modes) > 1 or next(iter(modes)) != mode:
        source["converted_to"] = mode
    return x, y, source
