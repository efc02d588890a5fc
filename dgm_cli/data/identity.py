"""Which data a run used: recorded in every checkpoint (``"data"``) and every eval.json protocol, so
that every number says which data it is about, and ``dgm eval`` can tell when the data changed.

A split's fingerprint is a SHA-256 of its tensors' bytes as the run holds them (dtype and shape
included): 16 hex digits, cheap (MNIST's 70,000 images, 55 MB, hash in a few hundredths of a second)
and blind to how the data is stored (a folder copied elsewhere keeps its fingerprints; one image
added, removed or changed, a test split redrawn, changes them). For a folder or an ``.npz`` of your
own the identity also keeps what says *what* changed: the folder's file count and a digest of the
file names, the file's size in bytes.
"""

from __future__ import annotations

import hashlib
from typing import Optional

import torch

from .representations import BINARIZATIONS

#: datasets read from a user's folder or file (data.path): their path is part of their identity
USER_DATA = ("image_folder", "npz")
SPLITS = ("train", "val", "test")
#: what of a reader's ``source`` the identity keeps: enough to say what changed
SOURCE_KEYS = ("files", "names", "bytes", "array", "dtype")
MODES = {
    "L": "greyscale",
    "1": "black-and-white",
    "RGB": "RGB",
    "RGBA": "RGBA",
    "P": "palette",
    "LA": "greyscale+alpha",
}


def fingerprint(split) -> str:
    """SHA-256 of a split's tensors (images, then labels or a second domain), 16 hex digits."""
    h = hashlib.sha256()
    for t in split:
        if t is None:
            h.update(b"-")
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(memoryview(t.numpy()).cast("B"))
    return h.hexdigest()[:16]


def _value_range(ds) -> list:
    values = [getattr(ds, s)[0] for s in SPLITS if len(getattr(ds, s)[0])]
    lo = min(v[torch.isfinite(v)].min().item() if v.is_floating_point() else v.min().item() for v in values)
    hi = max(v[torch.isfinite(v)].max().item() if v.is_floating_point() else v.max().item() for v in values)
    return [lo, hi]


def identity(ds, data_cfg, representation: str) -> dict:
    """What a checkpoint and an eval.json record about the data: name, path (a user's folder or file,
    absolute), one example's shape, dtype and value range, representation, split sizes, fingerprints."""
    x = ds.train[0]
    return {
        "dataset": str(data_cfg.name),
        "path": ds.source.get("path"),
        **({"domain_b": ds.domain_names[1]} if ds.domains else {}),
        "shape": list(x.shape[1:]),
        "dtype": str(x.dtype).replace("torch.", ""),
        "value_range": _value_range(ds),
        "representation": representation,
        "num_classes": ds.num_classes,
        "sizes": {s: len(getattr(ds, s)[0]) for s in SPLITS},
        "fingerprints": {s: fingerprint(getattr(ds, s)) for s in SPLITS},
        "source": {k: ds.source[k] for k in SOURCE_KEYS if k in ds.source},
    }


def _counts(counts: dict, name=lambda k: k) -> str:
    if len(counts) == 1:
        return name(next(iter(counts)))
    return ", ".join(f"{name(k)} ({n:,})" for k, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def summary(ident: dict, source: dict, binarize: str = "", asked: Optional[str] = None) -> str:
    """The run log's line on its data: what was read, from where, what was done to it, the splits and
    the representation, e.g. "3,000 images 64x64 RGB from /data/patches, resized to 32x32; 2,430 / 270 /
    300 train/val/test; representation 8bit". ``asked``: the model's default representation, named when
    the run got another (binary photos are never chosen in silence)."""
    sizes = ident["sizes"]
    total = sum(sizes.values())
    shape = ident["shape"]
    if len(shape) == 3 and ident["dtype"] == "uint8":
        if source.get("sizes"):
            what = f"{total:,} images {_counts(source['sizes'])} {_counts(source['modes'], lambda m: MODES.get(m, m))}"
        else:
            what = f"{total:,} images {shape[1]}x{shape[2]} {'RGB' if shape[0] == 3 else 'greyscale'}"
        what += f" from {source['path']}" if source.get("path") else f" ({ident['dataset']})"
        done = [
            f"resized to {source['resized_to']}" if "resized_to" in source else "",
            f"converted to {MODES.get(source['converted_to'], source['converted_to'])}"
            if "converted_to" in source
            else "",
            source.get("quantized", ""),
        ]
        what += "".join(f", {d}" for d in done if d)
    else:
        what = f"{total:,} examples of shape {'x'.join(map(str, shape))} ({ident['dataset']}" + (
            f" from {source['path']})" if source.get("path") else ")"
        )
    if ident.get("domain_b"):
        what += f"; domain B: {ident['domain_b']}"
    rep = ident["representation"]
    how = f"representation {rep}"
    if rep == "binary" and ident["dtype"] == "uint8":  # sequences of 0/1 values are used as they are
        how += f" ({binarize} binarization: {BINARIZATIONS.get(binarize, binarize)})"
    if asked and asked != rep:
        how += (
            f", not the model's default {asked}: these are not black-and-white images, and binarizing them would "
            f"throw away most of each pixel (data.representation={asked} does it on purpose)"
        )
    return f"{what}; {sizes['train']:,} / {sizes['val']:,} / {sizes['test']:,} train/val/test; {how}"


def what_changed(saved: dict, now: dict, split: str) -> str:
    """In words, how the data ``now`` differs from the data a run ``saved`` in its checkpoint."""
    said = []
    if saved.get("path") != now.get("path"):
        said.append(
            f"it was read from {saved.get('path') or saved['dataset']} at training time and from "
            f"{now.get('path') or now['dataset']} now"
        )
    old, new = saved.get("source", {}), now.get("source", {})
    if "files" in old and "files" in new:
        if new["files"] != old["files"]:
            diff = new["files"] - old["files"]
            said.append(
                f"{abs(diff):,} image file(s) were {'added' if diff > 0 else 'removed'} "
                f"({old['files']:,} at training time, {new['files']:,} now)"
            )
        elif new.get("names") != old.get("names"):
            said.append(f"image files were renamed or replaced (the same count, {new['files']:,}, under other names)")
        else:
            said.append("the images' contents differ (the same file names)")
    elif "bytes" in old and "bytes" in new and new["bytes"] != old["bytes"]:
        said.append(f"it is a different file ({old['bytes']:,} bytes at training time, {new['bytes']:,} now)")
    if saved.get("sizes") != now.get("sizes"):
        fmt = lambda s: " / ".join(f"{s.get(k, 0):,}" for k in SPLITS)  # noqa: E731
        said.append(
            f"the train/val/test splits hold {fmt(now['sizes'])} examples, {fmt(saved['sizes'])} at training "
            f"time, so the {split} split is drawn anew and can hold examples the model trained on"
        )
    if len(said) <= (1 if "read from" in (said[0] if said else "") else 0):
        said.append(
            f"the {split} split's contents differ (its fingerprint was {saved['fingerprints'][split]}, "
            f"it is {now['fingerprints'][split]} now)"
        )
    return "; ".join(said)
