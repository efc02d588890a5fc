"""Masked linear layers and the MADE connectivity (Germain et al. 2015), shared by
MADE (autoregressive family) and MAF (flow family)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MaskedLinear(nn.Linear):
    """y = x @ (W * M)^T + b, with a fixed binary mask M (out_features, in_features)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__(in_features, out_features, bias)
        self.register_buffer("mask", torch.ones(out_features, in_features))

    def set_mask(self, mask: Tensor) -> None:
        self.mask.copy_(mask.to(self.mask.dtype))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


def made_degrees(
    d: int, hidden: list[int], order: Tensor, generator: Optional[torch.Generator] = None, random_hidden: bool = True
) -> list[Tensor]:
    """Degrees m(k) of the input, hidden and output units (Germain et al. 2015, Sec. 4).

    ``order`` gives each input its position (1..d) in the autoregressive order. Hidden units
    get degrees in [min previous degree, d-1], so that unit k only sees inputs with degree <= m(k).
    """
    degrees = [order]
    for h in hidden:
        low = int(degrees[-1].min().item())
        if random_hidden:
            degrees.append(torch.randint(low, d, (h,), generator=generator))
        else:
            degrees.append(torch.arange(h) % max(1, d - low) + low)
    return degrees


def made_masks(degrees: list[Tensor], order: Tensor) -> list[Tensor]:
    """Masks for hidden layers (m_out >= m_in) and the output layer (order_out > m_in),
    eqs. (12)-(13) of Germain et al. 2015."""
    masks = [(d_out[:, None] >= d_in[None, :]).float() for d_in, d_out in zip(degrees[:-1], degrees[1:])]
    masks.append((order[:, None] > degrees[-1][None, :]).float())
    return masks
