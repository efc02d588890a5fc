"""Layers that move values between dimensions: squeeze, flatten and the multi-scale split."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .base import soft_clamp, sum_except_batch


class Squeeze(nn.Module):
    """(B, C, H, W) -> (B, 4C, H/2, W/2): each 2x2 block of a channel becomes 4
    channels (Dinh et al. 2017, Sec. 3.6). A permutation: log_det = 0."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        b, c, h, w = x.shape
        x = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
        return x.reshape(b, c * 4, h // 2, w // 2), x.new_zeros(b)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        b, c, h, w = z.shape
        z = z.view(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
        return z.reshape(b, c // 4, h * 2, w * 2), z.new_zeros(b)


class Unsqueeze(Squeeze):
    """The inverse of Squeeze, so that a multi-scale flow's z has the shape of x."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return super().inverse(x)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return super().forward(z)


class Flatten(nn.Module):
    """(B, *shape) -> (B, D), for flows defined on vectors (MAF on images)."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x.reshape(x.shape[0], -1), x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return z.reshape(z.shape[0], *self.shape), z.new_zeros(z.shape[0])


class Split(nn.Module):
    """Multi-scale factoring out (Dinh et al. 2017, Sec. 3.6, eq. 16): half of the
    channels leave the flow here and go straight to the base distribution; the
    other half go on through ``inner`` (the next, coarser scale).

    With ``prior`` (Glow's learned split prior, Kingma & Dhariwal 2018, Sec. 3 and
    code ``split2d``) the factored-out half is N(mu(h), sigma(h)^2) given the other
    half h; written as the affine map out -> (out - mu(h)) / sigma(h) it is one more
    invertible layer, and the base distribution stays N(0, I). Sampling at
    temperature T then scales sigma(h) by T, as in Glow.

    z = concat(factored-out half, inner(kept half)) along channels, so z has x's shape.
    """

    def __init__(self, inner: nn.Module, prior: Optional[nn.Module] = None):
        super().__init__()
        self.inner = inner
        self.prior = prior  # h (B, C/2, ...) -> (mu, log_sigma) stacked along channels

    def _conditional(self, h: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_std = self.prior(h).chunk(2, dim=1)
        return mean, soft_clamp(log_std)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out, kept = x.chunk(2, dim=1)
        log_det = x.new_zeros(x.shape[0])
        if self.prior is not None:
            mean, log_std = self._conditional(kept)
            out = (out - mean) * torch.exp(-log_std)
            log_det = log_det - sum_except_batch(log_std)
        kept, ld = self.inner(kept)
        return torch.cat([out, kept], dim=1), log_det + ld

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        out, kept = z.chunk(2, dim=1)
        kept, log_det = self.inner.inverse(kept)
        if self.prior is not None:
            mean, log_std = self._conditional(kept)
            out = out * torch.exp(log_std) + mean
            log_det = log_det + sum_except_batch(log_std)
        return torch.cat([out, kept], dim=1), log_det
