"""What a model needs to know about its data; the data layer produces it, models read it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DataSpec:
    """What a model needs to know about its data.

    shape: one example's shape, (C, H, W) for images, (2,) for 2-D toys.
    representation: a name in data/representations.py's table: "binary" (values in {0, 1}), "8bit"
        (k/255 for k in 0..255), "dequantized" ((k + u)/256 with u ~ U[0,1)), or "continuous" (real vectors).
    num_classes: number of labels (0 when the data has none).
    domain_b: the second domain of unpaired two-domain data (data.domain_b), "" for one dataset.
    """

    shape: tuple[int, ...]
    representation: str
    num_classes: int = 0
    dataset: str = ""  # the dataset's config name (mnist, eight_gaussians, ...)
    domain_b: str = ""  # data.domain_b: the second image domain (fashion_mnist, a folder, ...)

    @property
    def dim(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 3
