"""Image grids and 2-D plots as tensors, written as PNG without matplotlib."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor
from torchvision.utils import make_grid, save_image

PLOT_RANGE = 4.0  # 2-D toys are drawn on [-4, 4]^2


def grid(images: Tensor, nrow: Optional[int] = None) -> Tensor:
    """(N, C, H, W) or (rows, cols, C, H, W) in [0, 1] -> one (3 or C, H', W') grid image."""
    if images.dim() == 5:
        nrow = images.shape[1]
        images = images.flatten(0, 1)
    nrow = nrow or max(1, int(math.ceil(math.sqrt(images.shape[0]))))
    return make_grid(images.float().clamp(0, 1).cpu(), nrow=nrow, padding=2, pad_value=0.5)


def histogram(points: Tensor, bins: int = 200, extent: float = PLOT_RANGE) -> Tensor:
    """A 2-D histogram of points on [-extent, extent]^2 as a (1, bins, bins) image, y axis up,
    brightness proportional to the square root of the counts."""
    p = points.detach().float().cpu()
    h, _ = torch.histogramdd(p, bins=[bins, bins], range=[-extent, extent, -extent, extent])
    img = h.T.flip(0).sqrt()
    return (img / img.max().clamp(min=1e-12)).unsqueeze(0)


def heatmap(values: Tensor) -> Tensor:
    """A (bins, bins) grid of densities (x-major, as ``density_grid`` makes it) -> (1, bins, bins) image."""
    img = values.T.flip(0)
    return (img / img.max().clamp(min=1e-12)).unsqueeze(0)


def density_grid(bins: int = 200, extent: float = PLOT_RANGE) -> tuple[Tensor, float]:
    """Points at the centres of a bins x bins grid on [-extent, extent]^2 (x-major), and the cell area."""
    width = 2 * extent / bins
    centres = -extent + width * (torch.arange(bins) + 0.5)
    return torch.cartesian_prod(centres, centres), width * width


def side_by_side(*panels: Tensor) -> Tensor:
    return make_grid(torch.stack([p.expand(3, -1, -1) for p in panels]), nrow=len(panels), padding=4, pad_value=1.0)


def save_png(image: Tensor, path: Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_image(image, str(path))
