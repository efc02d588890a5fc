"""Affine coupling layers (Dinh et al. 2017) with their masks, and the networks that compute their scale and shift."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...nn.mlp import mlp
from .base import _per_channel, soft_clamp, sum_except_batch


def checkerboard_mask(x: Tensor, parity: int) -> Tensor:
    """(1, 1, H, W) with 1 where (i + j) % 2 == parity (Dinh et al. 2017, Fig. 3)."""
    h, w = x.shape[-2:]
    i = torch.arange(h, device=x.device).view(-1, 1)
    j = torch.arange(w, device=x.device).view(1, -1)
    return ((i + j) % 2 == parity).to(x.dtype).view(1, 1, h, w)


def channel_mask(x: Tensor, parity: int) -> Tensor:
    """1 on the first (parity 0) or second (parity 1) half of the channels / features."""
    c = x.shape[1]
    first = (torch.arange(c, device=x.device) < c // 2).to(x.dtype)
    mask = first if parity == 0 else 1 - first
    return _per_channel(mask, x)


class AffineCoupling(nn.Module):
    """Affine coupling (Dinh et al. 2017, eqs. 8-9, masked form):

        y = b*x + (1-b) * (x * exp(s(b*x)) + t(b*x)),   log_det = sum((1-b) * s),

    with mask b ("checkerboard" or "channel", ``parity`` 0/1 picks which half is
    kept). ``net`` maps (B, C, ...) to (B, 2C, ...) = (raw scale, shift).

    scale="tanh": s = scale * tanh(raw), a learned per-channel scale (RealNVP code);
    scale="sigmoid": s = log sigmoid(raw + 2) (Glow, Kingma & Dhariwal 2018, code),
    so each step can only contract, which keeps deep stacks stable. Either way s is then
    soft-clamped to (-MAX_LOG_SCALE, MAX_LOG_SCALE) (``soft_clamp``): log sigmoid alone is
    unbounded below, so the inverse, x = (y - t) exp(-s), could still blow up when sampling.
    """

    def __init__(self, net: nn.Module, num_channels: int, mask: str = "channel", parity: int = 0,
                 scale: str = "tanh"):
        super().__init__()
        if mask not in ("checkerboard", "channel"):
            raise ValueError(f"unknown coupling mask {mask!r}")
        if scale not in ("tanh", "sigmoid"):
            raise ValueError(f"unknown coupling scale {scale!r}")
        self.net, self.mask_type, self.parity, self.scale_type = net, mask, parity, scale
        self.tanh_scale = nn.Parameter(torch.ones(num_channels)) if scale == "tanh" else None

    def _mask(self, x: Tensor) -> Tensor:
        return checkerboard_mask(x, self.parity) if self.mask_type == "checkerboard" else channel_mask(x, self.parity)

    def _scale_shift(self, x_kept: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        raw, shift = self.net(x_kept).chunk(2, dim=1)
        if self.scale_type == "tanh":
            log_s = _per_channel(self.tanh_scale, raw) * torch.tanh(raw)
        else:
            log_s = F.logsigmoid(raw + 2.0)
        return soft_clamp(log_s) * (1 - mask), shift * (1 - mask)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mask = self._mask(x)
        log_s, shift = self._scale_shift(x * mask, mask)
        return x * torch.exp(log_s) + shift, sum_except_batch(log_s)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        mask = self._mask(z)
        log_s, shift = self._scale_shift(z * mask, mask)  # kept half is unchanged: z*b == x*b
        return (z - shift) * torch.exp(-log_s), -sum_except_batch(log_s)


def zero_initialized(layer: nn.Module) -> nn.Module:
    """A network's last layer starts at zero, so each coupling starts near the
    identity (Kingma & Dhariwal 2018, Sec. 3.3)."""
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def coupling_mlp(dim: int, hidden: int, depth: int = 2, act: str = "relu") -> nn.Sequential:
    """s, t = MLP(b*x) for vector data (2-D toys): dim -> hidden x depth -> 2*dim."""
    net = mlp([dim, *([hidden] * depth), 2 * dim], act)
    zero_initialized(net[-1])
    return net
