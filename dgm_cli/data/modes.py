"""Mode coverage of samples from a 2-D Gaussian mixture (eight_gaussians, twenty_five_gaussians).

The protocol of Srivastava et al. 2017 (VEEGAN, sec. 5.1), after Metz et al. 2017 and
Dumoulin et al. 2017: assign every sample to its nearest mode center; a sample is
*high quality* if it lies within 3 standard deviations of that center; a mode is
*covered* if it receives at least ``min_share`` of the high-quality samples.
VEEGAN draws 2,500 samples. A generator that matches the data covers every mode, and
its high-quality share is that of the data: P(||e|| <= 3 sigma) = 1 - exp(-9/2) = 0.989
for 2-D isotropic Gaussian noise e.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import toy

NUM_SAMPLES = 2500  # Srivastava et al. 2017

# dataset config name -> (mode centers, per-coordinate std of each mode), as drawn by dgm_cli.data.toy
MIXTURES = {
    "eight_gaussians": (toy.eight_gaussians_centers, 0.05 * 2),
    "twenty_five_gaussians": (toy.grid_gaussians_centers, 0.05 * 1.5),
}


def toy_mixture(dataset: str) -> Optional[tuple[Tensor, float]]:
    """(centers (K, 2), std) of a mixture toy, or None for any other dataset."""
    if dataset not in MIXTURES:
        return None
    centers, std = MIXTURES[dataset]
    return centers(), std


def mode_coverage(samples: Tensor, centers: Tensor, std: float, min_share: float = 0.01) -> dict[str, Tensor]:
    """``modes_covered``: modes receiving at least ``min_share`` of the high-quality samples
    (and at least one); ``high_quality_share``: share of samples within 3 std of their
    nearest center. Both are 0-dim float tensors."""
    distance, nearest = torch.cdist(samples.float(), centers.to(samples.device, torch.float32)).min(dim=1)
    high_quality = distance <= 3 * std
    counts = torch.bincount(nearest[high_quality], minlength=len(centers))
    covered = (counts > 0) & (counts >= min_share * high_quality.sum())
    return {"modes_covered": covered.sum().float(), "high_quality_share": high_quality.float().mean()}
