"""Representations: what a model sees of the data, in one table, name -> ``Representation``.

``data.representation`` is validated against this table, `dgm train --help` lists its names, and
``pipeline.transform`` applies its entries, so a new representation is one function and one entry here.
Pure Python at import (torch is not imported: the transforms use the tensor's own methods), so that
validation and `--help` read the names without loading torch.

Only 8-bit images (uint8) are transformed: points and sequences (binary ones too) are used as given
(``pipeline.transform``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

if TYPE_CHECKING:
    from torch import Generator, Tensor

#: the kinds of data a representation may be asked of (pipeline.spec decides which one a dataset is)
IMAGES, BINARY_SEQUENCES, REAL = "8-bit images", "sequences of 0/1 values", "points and real sequences"


@dataclass(frozen=True)
class Representation:
    name: str
    meaning: str  # what the values are, in words
    fits: tuple[str, ...]  # the kinds of data it may be asked of (IMAGES, BINARY_SEQUENCES, REAL)
    eight_bit: bool  # the 256 levels of an 8-bit image (likelihoods comparable in bits/dim with each other)
    transform: Callable[["Tensor", Optional["Generator"]], "Tensor"]  # uint8 batch, noise generator -> floats
    scored: str  # what dgm eval's likelihood is a number about, in words ({seed}: the evaluation's noise seed)
    nll_offset_per_dim: float = 0.0  # nats dgm eval adds per dimension to a density's -log p to report a discrete NLL


def uniform(like: "Tensor", generator: Optional["Generator"]) -> "Tensor":
    """U[0,1) noise shaped like ``like``, drawn on the generator's own device and moved to ``like``'s:
    on MPS the generator is a CPU one (its state is what checkpoints hold), never the device's global one.
    (``empty(...).uniform_`` is what ``torch.rand`` runs: the same numbers from the same generator.)"""
    device = generator.device if generator is not None else like.device
    return like.new_empty(like.shape, device=device).uniform_(generator=generator).to(like.device)


def binary(x: "Tensor", generator: Optional["Generator"]) -> "Tensor":
    """x in {0, 1}: a Bernoulli draw of each pixel's intensity k/255 (Burda et al. 2015's dynamic
    binarization); a generator on another device than the batch draws U[0,1) there and compares."""
    p = x.float() / 255.0
    if generator is None or generator.device == p.device:
        return p.bernoulli(generator=generator)
    return (uniform(p, generator) < p).float()


def eight_bit(x: "Tensor", generator: Optional["Generator"]) -> "Tensor":
    """x = k/255, the 256 discrete values."""
    return x.float() / 255.0


def dequantized(x: "Tensor", generator: Optional["Generator"]) -> "Tensor":
    """x = (k + u)/256 with u ~ U[0,1)^D (uniform dequantization, Theis et al. 2016), for continuous densities."""
    xf = x.float()
    return (xf + uniform(xf, generator)) / 256.0


def continuous(x: "Tensor", generator: Optional["Generator"]) -> "Tensor":
    """Real values, used as they are."""
    return x.float()


#: data.representation -> its Representation; the order is the order --help and refusals list them in
REPRESENTATIONS: dict[str, Representation] = {
    r.name: r
    for r in (
        Representation(
            "binary",
            "x in {0,1}: a Bernoulli draw of each intensity (data.binarize: fresh per batch or once)",
            fits=(IMAGES, BINARY_SEQUENCES),
            eight_bit=False,
            transform=binary,
            scored="binary values (pixels, or a piano roll's keys)",
        ),
        Representation(
            "8bit",
            "x = k/255, the 256 discrete values",
            fits=(IMAGES,),
            eight_bit=True,
            transform=eight_bit,
            scored="discrete 8-bit pixel values",
        ),
        # a density p(y) of y = (k + u)/256 on [0,1)^D is p(y)/256^D on the 0..256 scale, and E_u[log p] bounds
        # log P(k) from below (Theis et al. 2016): -log p(y) + D ln 256 is an upper bound on the discrete NLL
        Representation(
            "dequantized",
            "x = (k + u)/256, u ~ U[0,1): 8-bit values made continuous",
            fits=(IMAGES,),
            eight_bit=True,
            transform=dequantized,
            nll_offset_per_dim=math.log(256),
            scored="8-bit values with uniform dequantization (seed {seed}); NLL includes D ln 256, an upper bound "
            "on the discrete NLL",
        ),
        Representation(
            "continuous",
            "real vectors (2-D toys, real sequences), used as they are",
            fits=(BINARY_SEQUENCES, REAL),
            eight_bit=False,
            transform=continuous,
            scored="continuous data (a density; bits/dim not comparable with image likelihoods)",
        ),
    )
}


def fitting(kind: str) -> tuple[str, ...]:
    """The representations data of ``kind`` may be asked for, in the table's order."""
    return tuple(name for name, r in REPRESENTATIONS.items() if kind in r.fits)


def eight_bit_names() -> tuple[str, ...]:
    """The representations of 8-bit values (8bit, dequantized)."""
    return tuple(name for name, r in REPRESENTATIONS.items() if r.eight_bit)


#: data.binarize -> how the binary representation draws 8-bit images: afresh for every batch (dynamic, as
#: Burda et al. 2015 train) or once with a fixed seed (static); evaluation splits are always drawn once
BINARIZATIONS: dict[str, str] = {
    "dynamic": "a fresh Bernoulli draw of the intensities per batch",
    "static": "one fixed Bernoulli draw of the intensities",
}
