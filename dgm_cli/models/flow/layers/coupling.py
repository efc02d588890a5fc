"""Affine coupling layers (Dinh et al. 2017): the partitions of the input into a conditioning and a
transformed half, the layer, and the networks that compute its scale and shift."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ....errors import UserError
from ...nn.mlp import mlp
from .base import _per_channel, soft_clamp, sum_except_batch

PARTITIONS = ("channel", "checkerboard")


def coupling_halves(num_channels: int, mask: str, parity: int) -> tuple[int, int]:
    """(conditioning, transformed) channels of a coupling on ``num_channels`` channels (features): a
    channel-wise coupling conditions on one half of the channels and transforms the other (parity 0:
    conditions on the first C // 2); a checkerboard coupling conditions on half of the pixels of every
    channel and transforms the other half, so both have C channels. The coupling network maps
    ``conditioning`` channels to 2 * ``transformed`` (raw scale, shift)."""
    if mask == "checkerboard":
        return num_channels, num_channels
    first = num_channels // 2
    return (first, num_channels - first) if parity == 0 else (num_channels - first, first)


def checkerboard_mask(x: Tensor, parity: int) -> Tensor:
    """(1, 1, H, W) with 1 where (i + j) % 2 == parity (Dinh et al. 2017, Fig. 3)."""
    h, w = x.shape[-2:]
    i = torch.arange(h, device=x.device).view(-1, 1)
    j = torch.arange(w, device=x.device).view(1, -1)
    return ((i + j) % 2 == parity).to(x.dtype).view(1, 1, h, w)


def _odd_rows(x: Tensor) -> Tensor:
    """(H, 1): True on odd rows, to broadcast over (B, C, H, W/2)."""
    return (torch.arange(x.shape[-2], device=x.device) % 2 == 1).view(-1, 1)


def checkerboard_split(x: Tensor, parity: int) -> tuple[Tensor, Tensor]:
    """(B, C, H, W), W even -> its two checkerboard halves, each (B, C, H, W/2): the pixels with
    (i + j) % 2 == parity, and the others. Each row's pairs of columns (2k, 2k + 1) hold one pixel of
    each half, so ``[..., i, k]`` of both halves is pair k of row i: the first half's element is column
    2k + (i + parity) % 2, the second half's its neighbour in that row (normflows packs its checkerboard
    halves the same way, row by row)."""
    b, c, h, w = x.shape
    pairs = x.view(b, c, h, w // 2, 2)
    even_row_first, even_row_second = pairs[..., parity], pairs[..., 1 - parity]
    odd = _odd_rows(x)
    return torch.where(odd, even_row_second, even_row_first), torch.where(odd, even_row_first, even_row_second)


def checkerboard_merge(first: Tensor, second: Tensor, parity: int) -> Tensor:
    """The inverse of ``checkerboard_split``: (B, C, H, W/2) twice -> (B, C, H, W)."""
    b, c, h, half = first.shape
    odd = _odd_rows(first)
    in_first, in_second = torch.where(odd, second, first), torch.where(odd, first, second)
    pairs = (in_first, in_second) if parity == 0 else (in_second, in_first)
    return torch.stack(pairs, dim=-1).view(b, c, h, 2 * half)


class AffineCoupling(nn.Module):
    """Affine coupling (Dinh et al. 2017, eqs. 4-6): with x_a the conditioning half and x_b the other,

        y_a = x_a,   y_b = x_b * exp(s(x_a)) + t(x_a),   log_det = sum(s(x_a)),

    so the network ``net`` sees only x_a and computes s and t only for x_b: it maps (B, C_a, ...) to
    (B, 2 C_b, ...) = (raw scale, shift), with (C_a, C_b) = ``coupling_halves(num_channels, mask,
    parity)``. As in Kingma & Dhariwal 2018 (Sec. 3.3) and their code.

    mask="channel": x_a is the first (parity 0) or second (parity 1) half of the channels (features).
    mask="checkerboard": x_a is the pixels with (i + j) % 2 == parity (Dinh et al. 2017, Fig. 3), and
    the network works on them packed into (B, C, H, W/2) (``checkerboard_split``), half of the
    positions. Where W is odd no such packing exists and the masked form of eq. 9 is used instead,
    y = b*x + (1-b) * (x * exp(s(b*x)) + t(b*x)) with the network over all H x W positions.

    A convolutional network's weights are kept channels-last (``to(memory_format=channels_last)``), so
    its convolutions run on (B, H, W, C) data: on the 2-core development CPU (oneDNN, one thread),
    forward and backward of RealNVP's 16-channel 3x3 convolutions on 128 x 28 x 14 took 17 ms that way
    against 108 ms in the default layout, and whole training steps of RealNVP and Glow 1.1-1.5x less.

    scale="tanh": s = scale * tanh(raw), a learned per-channel scale (RealNVP code);
    scale="sigmoid": s = log sigmoid(raw + 2) (Glow, Kingma & Dhariwal 2018, code),
    so each step can only contract, which keeps deep stacks stable. Either way s is then
    soft-clamped to (-MAX_LOG_SCALE, MAX_LOG_SCALE) (``soft_clamp``): log sigmoid alone is
    unbounded below, so the inverse, x = (y - t) exp(-s), could still blow up when sampling.
    """

    # 2: the network maps the conditioning half to the transformed half's parameters. Version 1 (dgm
    # before 2026-12-07) fed it all channels, the other half masked to zero, and read 2C channels back.
    _version = 2

    def __init__(self, net: nn.Module, num_channels: int, mask: str = "channel", parity: int = 0,
                 scale: str = "tanh"):
        super().__init__()
        if mask not in PARTITIONS:
            raise ValueError(f"unknown coupling mask {mask!r}")
        if scale not in ("tanh", "sigmoid"):
            raise ValueError(f"unknown coupling scale {scale!r}")
        self.net = net.to(memory_format=torch.channels_last)  # converts 4-D weights only; MLPs stay as they are
        self.mask_type, self.parity, self.scale_type = mask, parity, scale
        self.conditioning, self.transformed = coupling_halves(num_channels, mask, parity)
        self.tanh_scale = nn.Parameter(torch.ones(self.transformed)) if scale == "tanh" else None

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args, **kwargs):
        if local_metadata.get("version", self._version) < 2:
            raise UserError(
                "This checkpoint was written by an earlier dgm whose affine couplings fed their network all "
                "channels with the other half masked to zero (RealNVP, Glow); today's network sees only the "
                "conditioning half and computes the scale and shift of the transformed half alone (Kingma & "
                "Dhariwal 2018), and its checkerboard couplings work on the packed half of the pixels, so "
                f"the weights at '{prefix}net' do not fit. Retrain the model with this version of dgm, or "
                "sample and evaluate the checkpoint with the dgm that wrote it.")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args, **kwargs)

    def _log_scale(self, raw: Tensor) -> Tensor:
        if self.scale_type == "tanh":
            log_s = _per_channel(self.tanh_scale, raw) * torch.tanh(raw)
        else:
            log_s = F.logsigmoid(raw + 2.0)
        return soft_clamp(log_s)

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(x_a, x_b)."""
        if self.mask_type == "checkerboard":
            return checkerboard_split(x, self.parity)
        if self.parity == 0:
            return x[:, :self.conditioning], x[:, self.conditioning:]
        x_b, x_a = x[:, :self.transformed], x[:, self.transformed:]
        return x_a, x_b

    def _merge(self, x_a: Tensor, y_b: Tensor) -> Tensor:
        if self.mask_type == "checkerboard":
            return checkerboard_merge(x_a, y_b, self.parity)
        return torch.cat((x_a, y_b) if self.parity == 0 else (y_b, x_a), dim=1)

    def _masked(self, x: Tensor) -> bool:
        return self.mask_type == "checkerboard" and x.shape[-1] % 2 == 1

    def _masked_scale_shift(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Eq. 9's s and t, zero on the conditioning pixels (an odd width: no packed form)."""
        mask = checkerboard_mask(x, self.parity)
        raw, shift = self.net(x * mask).chunk(2, dim=1)
        return self._log_scale(raw) * (1 - mask), shift * (1 - mask)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self._masked(x):
            log_s, shift = self._masked_scale_shift(x)
            return x * torch.exp(log_s) + shift, sum_except_batch(log_s)
        x_a, x_b = self._split(x)
        raw, shift = self.net(x_a).chunk(2, dim=1)
        log_s = self._log_scale(raw)
        return self._merge(x_a, x_b * torch.exp(log_s) + shift), sum_except_batch(log_s)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        if self._masked(y):
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
    net = mlp([in_features, *([hidden] * depth), out_features], act)
    zero_initialized(net[-1])
    return net
