"""Image grids and 2-D plots as tensors, written as PNG without matplotlib (or torchvision: importing it
pulls in torch._dynamo, about 3 s of every dgm command's start-up)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

PLOT_RANGE = 4.0  # 2-D toys are drawn on [-4, 4]^2
MARK = (1.0, 0.0, 0.0)  # the colour of a grid cell whose sample holds NaN or inf


def non_finite(samples: Tensor) -> Tensor:
    """(N,) bool: which samples (images or points, along the first dimension) hold a NaN or inf."""
    return ~torch.isfinite(samples.detach()).reshape(samples.shape[0], -1).all(dim=1)


def check_finite(samples: Tensor, where: str) -> Optional[str]:
    """None when every sample is finite; else one paragraph for the user that says how many are not,
    how they are shown, and what to do. ``where`` names the samples ("dgm sample", "step 400")."""
    if samples.dim() == 5:
        samples = samples.flatten(0, 1)
    bad = int(non_finite(samples).sum())
    if bad == 0:
        return None
    shown = "drawn as red cells" if samples.dim() == 4 else "left out of the plot"
    return (
        f"{where}: {bad} of {len(samples)} samples hold NaN or inf values ({shown}): the model's sampler "
        f"overflowed on them. Early in training this is common and goes away with training; sampling at "
        f"a lower temperature (dgm sample temperature=0.7) keeps the sampler in the region the model was "
        f"trained on."
    )


def _mark_non_finite(images: Tensor) -> Tensor:
    """Images (N, C, H, W) with every one that holds a NaN or inf replaced by a red cell."""
    bad = non_finite(images)
    if not bad.any():
        return images
    images = images.expand(-1, 3, -1, -1).clone() if images.shape[1] == 1 else images.clone()
    images[bad] = torch.tensor(MARK[: images.shape[1]], dtype=images.dtype).view(1, -1, 1, 1)
    return images


def tile(images: Tensor, nrow: int, padding: int, pad_value: float) -> Tensor:
    """(N, C, H, W) -> one (C', H', W') image: rows of ``nrow`` images, ``padding`` pixels of ``pad_value``
    around each; grayscale becomes RGB (torchvision's make_grid layout)."""
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    n, c, h, w = images.shape
    if n == 1:
        return images[0].clone()
    rows = math.ceil(n / nrow)
    cols = min(nrow, n)
    out = images.new_full((c, rows * (h + padding) + padding, cols * (w + padding) + padding), pad_value)
    for i in range(n):
        top, left = (i // nrow) * (h + padding) + padding, (i % nrow) * (w + padding) + padding
        out[:, top : top + h, left : left + w] = images[i]
    return out


def grid(images: Tensor, nrow: Optional[int] = None) -> Tensor:
    """(N, C, H, W) or (rows, cols, C, H, W) in [0, 1] -> one (3 or C, H', W') grid image. A sample that
    holds NaN or inf is drawn as a red cell (``check_finite`` says how many there were)."""
    if images.dim() == 5:
        nrow = images.shape[1]
        images = images.flatten(0, 1)
    nrow = nrow or max(1, int(math.ceil(math.sqrt(images.shape[0]))))
    images = _mark_non_finite(images.detach().float().cpu())
    return tile(images.clamp(0, 1), nrow, padding=2, pad_value=0.5)


def piano_rolls(rolls: Tensor) -> Tensor:
    """(N, T, 88) piano rolls -> (N, 1, 88, T) images: time to the right, the highest key at the top, a
    sounding key white."""
    return rolls.detach().float().cpu().transpose(1, 2).flip(1).unsqueeze(1)


def trajectories(sequences: Tensor, bins: int = 200, extent: float = PLOT_RANGE, between: int = 16) -> Tensor:
    """(N, T, D) sequences -> a (1, bins, bins) histogram of the paths their first two coordinates trace
    (``between`` points on each segment from one step to the next; NaN padding ends a path)."""
    p = sequences.detach().float().cpu()[..., :2]
    w = torch.linspace(0, 1, between + 1)[:-1].view(1, 1, -1, 1)
    path = p[:, :-1, None] * (1 - w) + p[:, 1:, None] * w  # (N, T-1, between, 2)
    return histogram(torch.cat([path.reshape(-1, 2), p.reshape(-1, 2)]), bins, extent)


def of_samples(samples: Tensor, piano_roll: bool = False, nrow: Optional[int] = None) -> Tensor:
    """The picture of a batch of samples: images as a grid, piano rolls as a grid of time x keys pictures
    (``piano_roll``: the caller knows, from data.sequences.is_piano_roll), other sequences (N, T, D) as their
    trajectories, 2-D points as a histogram."""
    if samples.dim() in (4, 5):
        return grid(samples, nrow)
    if piano_roll:
        return grid(piano_rolls(samples), nrow or max(1, int(math.ceil(math.sqrt(samples.shape[0] / 2)))))
    if samples.dim() == 3:
        return trajectories(samples)
    return histogram(samples[:, :2])


def histogram(points: Tensor, bins: int = 200, extent: float = PLOT_RANGE) -> Tensor:
    """A 2-D histogram of points on [-extent, extent]^2 as a (1, bins, bins) image, y axis up,
    brightness proportional to the square root of the counts."""
    p = points.detach().float().cpu()
    p = p[~non_finite(p)]  # NaN or inf points have no place on the plot (check_finite counts them)
    h, _ = torch.histogramdd(p, bins=[bins, bins], range=[-extent, extent, -extent, extent])
    img = h.T.flip(0).sqrt()
    return (img / img.max().clamp(min=1e-12)).unsqueeze(0)


def heatmap(values: Tensor) -> Tensor:
    """A (bins, bins) grid of densities (x-major, as ``density_grid`` makes it) -> (1, bins, bins) image."""
    img = torch.nan_to_num(values.T.flip(0), nan=0.0, posinf=0.0, neginf=0.0)
    return (img / img.max().clamp(min=1e-12)).unsqueeze(0)


def density_grid(bins: int = 200, extent: float = PLOT_RANGE) -> tuple[Tensor, float]:
    """Points at the centres of a bins x bins grid on [-extent, extent]^2 (x-major), and the cell area."""
    width = 2 * extent / bins
    centres = -extent + width * (torch.arange(bins) + 0.5)
    return torch.cartesian_prod(centres, centres), width * width


def side_by_side(*panels: Tensor) -> Tensor:
    return tile(torch.stack([p.expand(3, -1, -1) for p in panels]), len(panels), padding=4, pad_value=1.0)


#: the image file formats ``save_image`` writes, by suffix
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".pdf": "PDF"}


def save_image(image: Tensor, path: Path) -> None:
    """A (C, H, W) image in [0, 1] as an 8-bit image (rounded to the nearest level) in the format its
    suffix names: PNG (lossless), JPEG at quality 95 (smaller, with compression artefacts), or a
    one-page PDF holding the picture (for a paper draft)."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = image.detach().float().cpu().mul(255).add(0.5).clamp(0, 255).to(torch.uint8)
    pixels = pixels.expand(3, -1, -1) if pixels.shape[0] == 1 else pixels
    fmt = IMAGE_FORMATS[path.suffix.lower()]
    Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(
        path, format=fmt, **({"quality": 95} if fmt == "JPEG" else {})
    )
