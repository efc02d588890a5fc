"""2-D toy densities for fast experiments (as in the FFJORD and WGAN-GP papers).

Each function draws ``n`` points with the given generator; all are roughly
standardised to lie in [-4, 4]^2, the square on which samples are plotted.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def two_moons(n: int, g: torch.Generator) -> Tensor:
    t = torch.rand(n, generator=g) * math.pi
    upper = torch.rand(n, generator=g) < 0.5
    x = torch.where(upper, torch.cos(t), 1 - torch.cos(t))
    y = torch.where(upper, torch.sin(t), 0.5 - torch.sin(t))
    pts = torch.stack([x - 0.5, y - 0.25], dim=1) * 2.0
    return pts + 0.1 * torch.randn(n, 2, generator=g)


def _gaussian_mixture(centers: Tensor, std: float, n: int, g: torch.Generator) -> Tensor:
    idx = torch.randint(len(centers), (n,), generator=g)
    return centers[idx] + std * torch.randn(n, 2, generator=g)


def eight_gaussians_centers(radius: float = 2.0) -> Tensor:
    angles = torch.arange(8) * (2 * math.pi / 8)
    return radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)


def grid_gaussians_centers(side: int = 5, spacing: float = 1.5) -> Tensor:
    coords = (torch.arange(side) - (side - 1) / 2) * spacing
    return torch.cartesian_prod(coords, coords)


def eight_gaussians(n: int, g: torch.Generator) -> Tensor:
    return _gaussian_mixture(eight_gaussians_centers(), 0.05 * 2, n, g)


def twenty_five_gaussians(n: int, g: torch.Generator) -> Tensor:
    return _gaussian_mixture(grid_gaussians_centers(), 0.05 * 1.5, n, g)


def checkerboard(n: int, g: torch.Generator) -> Tensor:
    x1 = torch.rand(n, generator=g) * 4 - 2
    x2 = torch.rand(n, generator=g) - torch.randint(0, 2, (n,), generator=g).float() * 2
    x2 = x2 + (torch.floor(x1) % 2)
    return torch.stack([x1, x2], dim=1) * 2


def pinwheel(n: int, g: torch.Generator, arms: int = 5, radial_std: float = 0.3, tangential_std: float = 0.1, rate: float = 0.25) -> Tensor:
    rads = torch.linspace(0, 2 * math.pi, arms + 1)[:-1]
    feats = torch.randn(n, 2, generator=g) * torch.tensor([radial_std, tangential_std])
    feats[:, 0] += 1.0
    labels = torch.randint(arms, (n,), generator=g)
    angles = rads[labels] + rate * torch.exp(feats[:, 0])
    rot = torch.stack([torch.cos(angles), -torch.sin(angles), torch.sin(angles), torch.cos(angles)], dim=1).view(n, 2, 2)
    return 2 * torch.einsum("ni,nji->nj", feats, rot)


TOYS = {
    "moons": two_moons,
    "eight_gaussians": eight_gaussians,
    "twenty_five_gaussians": twenty_five_gaussians,
    "checkerboard": checkerboard,
    "pinwheel": pinwheel,
}
