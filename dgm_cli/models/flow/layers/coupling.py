"""Affine coupling layers (Dinh et al. 2017): the partitions of the input into a conditioning and a
transformed half, the layer, and the networks that compute its scale and shift."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ....errors import UserError
from ...nn.mlp import mlp
from .base import per_channel, soft_clamp, sum_except_batch

PARTITIONS = ("channel", "checkerboard")


def coupling_halves(num_channels: int, *, mask: str, parity: int) -> tuple[int, int]:
    """(conditioning, transformed) channels of a coupling on ``num_channels`` channels (features): a
    channel-wise coupling conditions on one half of the channels and transforms the other (parity 0:
    conditions on the first C // 2); a checkerboard coupling conditions on half of the pixels of every
    channel and transforms the other half, so both count C channels. The coupling network maps
    ``conditioning`` channels to 2 * ``transformed`` (raw scale, shift)."""
    if mask == "checkerboard":
        return num_channels, num_channels
    first = num_channels // 2
    return (first, num_channels - first) if parity == 0 else (num_channels - first, first)


def checkerboard_mask(x: Tensor, *, parity: int) -> Tensor:
    """(1, 1, H, W) with 1 where (i + j) % 2 == parity (Dinh et al. 2017, Fig. 3)."""
    h, w = x.shape[-2:]
    i = torch.arange(h, device=x.device).view(-1, 1)
    j = torch.arange(w, device=x.device).view(1, -1)
    return ((i + j) % 2 == parity).to(x.dtype).view(1, 1, h, w)


class AffineCoupling(nn.Module):
    """Affine coupling (Dinh et al. 2017, eqs. 4-6): with x_a the conditioning half and x_b the other,

        y_a = x_a,   y_b = x_b * exp(s(x_a)) + t(x_a),   log_det = sum(s(x_a)).

    mask="channel": x_a is the first (parity 0) or second (parity 1) half of the channels (features),
    and the network ``net`` sees only x_a and computes s and t only for x_b, as Kingma & Dhariwal 2018
    (Sec. 3.3) and their code do: it maps (B, C_a, ...) to (B, 2 C_b, ...) = (raw scale, shift), with
    (C_a, C_b) = ``coupling_halves(num_channels, mask=mask, parity=parity)``.

    mask="checkerboard": x_a is the pixels with (i + j) % 2 == parity (Dinh et al. 2017, Fig. 3), in
    the masked form of eq. 9, y = b*x + (1-b) * (x * exp(s(b*x)) + t(b*x)): the network maps (B, C, H, W)
    to (B, 2C, H, W) and keeps its hidden features at every position. Packing each half into H x W/2
    (normflows' checkerboard split) halves the network's work, but the packed rows zig-zag (a kernel
    tap that means down-left on one row means down-right on the next) and the hidden features are half
    as many: RealNVP trained to a worse bound that way (docs/results.md has the runs).

    A convolutional network's weights are kept channels-last (``to(memory_format=channels_last)``), so
    its convolutions run on (B, H, W, C) data, the layout oneDNN runs fastest on a CPU.

    scale="tanh": s = scale * tanh(raw), a learned per-channel scale (RealNVP code);
    scale="sigmoid": s = log sigmoid(raw + 2) (Glow, Kingma & Dhariwal 2018, code),
    so each step can only contract, which keeps deep stacks stable. Either way s is then
    soft-clamped to (-MAX_LOG_SCALE, MAX_LOG_SCALE) (``soft_clamp``): log sigmoid alone is
    unbounded below, so the inverse, x = (y - t) exp(-s), could still blow up when sampling.
    """

    # 2: a channel-wise coupling's network maps the conditioning half to the transformed half's parameters.
    # Version 1 (dgm before 2026-12-07) fed it all channels, the other half masked to zero, and read 2C back.
    _version = 2

    def __init__(
        self, net: nn.Module, num_channels: int, *, mask: str = "channel", parity: int = 0, scale: str = "tanh"
    ):
        super().__init__()
        if mask not in PARTITIONS:
            raise ValueError(f"unknown coupling mask {mask!r}")
        if scale not in ("tanh", "sigmoid"):
            raise ValueError(f"unknown coupling scale {scale!r}")
        self.net = net.to(memory_format=torch.channels_last)  # converts 4-D weights only; MLPs stay as they are
        self.mask_type, self.parity, self.scale_type = mask, parity, scale
        self.conditioning, self.transformed = coupling_halves(num_channels, mask=mask, parity=parity)
        self.tanh_scale = nn.Parameter(torch.ones(self.transformed)) if scale == "tanh" else None

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args, **kwargs):
        if self.mask_type == "channel" and local_metadata.get("version", self._version) < 2:
            raise UserError(
                "This checkpoint was written by an earlier dgm (commit a642301 or before) whose channel-wise "
                "affine couplings fed their network all channels with the other half masked to zero (RealNVP, "
                "Glow); today's network sees only the conditioning half and computes the scale and shift of the "
                f"transformed half alone (Kingma & Dhariwal 2018), so the weights at '{prefix}net' do not fit. "
                "Retrain the model with this version of dgm, or sample and evaluate the checkpoint with the dgm "
                "that wrote it."
            )
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args, **kwargs)

    def _log_scale(self, raw: Tensor) -> Tensor:
        if self.scale_type == "tanh":
            log_s = per_channel(self.tanh_scale, raw) * torch.tanh(raw)
        else:
            log_s = F.logsigmoid(raw + 2.0)
        return soft_clamp(log_s)

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(x_a, x_b) of a channel-wise coupling."""
        if self.parity == 0:
            return x[:, : self.conditioning], x[:, self.conditioning :]
        x_b, x_a = x[:, : self.transformed], x[:, self.transformed :]
        return x_a, x_b

    def _merge(self, x_a: Tensor, y_b: Tensor) -> Tensor:
        return torch.cat((x_a, y_b) if self.parity == 0 else (y_b, x_a), dim=1)

    def _masked_scale_shift(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Eq. 9's s and t of a checkerboard coupling, zero on the conditioning pixels."""
        mask = checkerboard_mask(x, parity=self.parity)
        raw, shift = self.net(x * mask).chunk(2, dim=1)
        return self._log_scale(raw) * (1 - mask), shift * (1 - mask)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.mask_type == "checkerboard":
            log_s, shift = self._masked_scale_shift(x)
            return x * torch.exp(log_s) + shift, sum_except_batch(log_s)
        x_a, x_b = self._split(x)
        raw, shift = self.net(x_a).chunk(2, dim=1)
        log_s = self._log_scale(raw)
        return self._merge(x_a, x_b * torch.exp(log_s) + shift), sum_except_batch(log_s)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        if self.mask_type == "checkerboard":
            log_s, shift = self._masked_scale_shift(y)  # the conditioning half is unchanged: y*b == x*b
            return (y - shift) * torch.exp(-log_s), -sum_except_batch(log_s)
        y_a, y_b = self._split(y)
        raw, shift = self.net(y_a).chunk(2, dim=1)
        log_s = self._log_scale(raw)
        return self._merge(y_a, (y_b - shift) * torch.exp(-log_s)), -sum_except_batch(log_s)


def zero_initialized(layer: nn.Module) -> nn.Module:
    """A network's last layer starts at zero, so each coupling starts near the
    identity (Kingma & Dhariwal 2018, Sec. 3.3)."""
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def coupling_mlp(in_features: int, out_features: int, hidden: int, depth: int = 2, act: str = "relu") -> nn.Sequential:
    """s, t = MLP(x_a) for vector data (2-D toys): the conditioning half's features -> hidden x depth ->
    the transformed half's raw scale and shift (``out_features`` = twice its features)."""
    net = mlp([in_features, *([hidden] * depth), out_features], act=act)
    zero_initialized(net[-1])
    return net
