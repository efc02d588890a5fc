"""Masked convolutions for PixelCNN-style models (van den Oord et al. 2016, "Pixel
Recurrent Neural Networks", Sec. 3.4 and Fig. 2).

Pixels are generated in raster order and, within a pixel, channel by channel
(R, then G, then B). A kernel tap may therefore see every pixel before the output
pixel in raster order; at the output pixel itself ("the anchor") it may see:

  mask A (first layer): only the data channels before the output's channel,
  mask B (later layers): the data channels up to and including the output's.

Feature channels are split into ``data_channels`` contiguous groups, group g
carrying the information allowed to channel g (Fig. 2, right, of the paper). A
tensor made of several equal chunks (the two halves of a gated activation,
tanh * sigmoid) uses ``out_chunks`` so that each chunk is grouped the same way.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def channel_groups(n: int, data_channels: int, chunks: int = 1) -> Tensor:
    """The data channel (0..data_channels-1) that each of ``n`` feature channels serves:
    contiguous groups within each of ``chunks`` equal chunks."""
    per_chunk = n // chunks
    if per_chunk * chunks != n or per_chunk % data_channels:
        raise ValueError(f"{n} feature channels cannot be split into {chunks} chunk(s) of {data_channels} equal groups")
    return (torch.arange(n) % per_chunk) * data_channels // per_chunk


def causal_mask(
    in_channels: int,
    out_channels: int,
    kernel_size: tuple[int, int],
    anchor: tuple[int, int],
    *,
    mask_type: str,
    data_channels: int = 1,
    out_chunks: int = 1,
) -> Tensor:
    """Mask (out, in, kh, kw): 1 on taps before the anchor in raster order, the channel
    mask of type A (group_out > group_in) or B (group_out >= group_in) on the anchor, 0 after."""
    if mask_type not in ("A", "B"):
        raise ValueError(f"mask_type must be 'A' or 'B', not {mask_type!r}")
    kh, kw = kernel_size
    ay, ax = anchor
    mask = torch.zeros(out_channels, in_channels, kh, kw)
    mask[:, :, :ay, :] = 1.0  # rows above the anchor
    mask[:, :, ay, :ax] = 1.0  # left of the anchor in its row
    g_out = channel_groups(out_channels, data_channels, out_chunks)[:, None]
    g_in = channel_groups(in_channels, data_channels)[None, :]
    sees = g_out > g_in if mask_type == "A" else g_out >= g_in
    mask[:, :, ay, ax] = sees.float()
    return mask


class MaskedConv2d(nn.Conv2d):
    """A convolution whose output at pixel (i, j) sees only what the raster/channel order
    allows (see the module docstring). Zero padding keeps the spatial size.

    ``anchor`` is the kernel tap over the output pixel; by default the centre (a
    PixelCNN kernel). Gated PixelCNN's horizontal stack uses a 1 x k kernel anchored
    at its last column, so that no weight is spent on masked-out taps."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Union[int, tuple[int, int]],
        *,
        mask_type: str,
        data_channels: int = 1,
        anchor: Optional[tuple[int, int]] = None,
        out_chunks: int = 1,
    ):
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        ay, ax = anchor if anchor is not None else (kh // 2, kw // 2)
        centred = (2 * ay, 2 * ax) == (kh - 1, kw - 1)
        # A centred kernel pads inside the convolution; an off-centre one pads first.
        super().__init__(in_channels, out_channels, (kh, kw), padding=(ay, ax) if centred else 0)
        self.pad = None if centred else (ax, kw - 1 - ax, ay, kh - 1 - ay)  # left, right, top, bottom
        self.anchor = (ay, ax)
        mask = causal_mask(
            in_channels,
            out_channels,
            (kh, kw),
            (ay, ax),
            mask_type=mask_type,
            data_channels=data_channels,
            out_chunks=out_chunks,
        )
        self.register_buffer("mask", mask)

    def forward(self, x: Tensor) -> Tensor:
        if self.pad is not None:
            x = F.pad(x, self.pad)
        return self._conv_forward(x, self.weight * self.mask, self.bias)


# --- one pixel at a time: generation from cached activations --------------------------------------
# Sampling draws one pixel after another. Ramachandran et al. 2017 ("Fast Generation for
# Convolutional Autoregressive Models", Sec. 3) keep every layer's activations and compute, for each
# new pixel, only the outputs that depend on it; the naive sampler recomputes the whole network.
# Below: a feature map in zero padding, filled in as generation proceeds, and a convolution
# evaluated at one output pixel (or one output row) from it. Both work for any convolution whose
# output at (i, j) sees no input row below i (masked ones, and Gated PixelCNN's vertical stack).


class PaddedMap:
    """A feature map (B, C, H, W), ``inner``, inside zero padding: ``top`` rows above, ``left`` and
    ``right`` columns beside (no rows below: no convolution here reads them). Stored channels-last,
    so that a pixel's features, and a kernel window's, are contiguous runs."""

    def __init__(self, like: Tensor, channels: int, height: int, width: int, top: int, left: int, right: int):
        self.data = like.new_zeros(like.shape[0], top + height, left + width + right, channels)
        self.top, self.left, self.width = top, left, width
        self.inner = self.data[:, top:, left : left + width].permute(0, 3, 1, 2)


class PixelConv:
    """A convolution (masked or not) evaluated at single output pixels, or single output rows, from
    a PaddedMap of its input; ``anchor`` is the kernel tap over the output pixel. Rows of the kernel
    below the anchor are dropped: a causal convolution has zero weights there."""

    def __init__(self, conv: nn.Conv2d, anchor: Optional[tuple[int, int]] = None):
        ay, ax = anchor if anchor is not None else conv.anchor
        weight = conv.weight * conv.mask if isinstance(conv, MaskedConv2d) else conv.weight
        if weight[:, :, ay + 1 :].any():
            raise ValueError("PixelConv needs a causal convolution: no weights below the anchor row")
        self.weight = weight[:, :, : ay + 1].detach()  # (out, in, ay + 1, kw)
        self.flat = self.weight.permute(0, 2, 3, 1).flatten(1)  # (out, (ay + 1) * kw * in): a window's order
        self.bias = None if conv.bias is None else conv.bias.detach()
        self.anchor, self.kw = (ay, ax), weight.shape[-1]

    def _origin(self, m: PaddedMap, r: int, c: int) -> tuple[int, int]:
        return r + m.top - self.anchor[0], c + m.left - self.anchor[1]

    def at(self, m: PaddedMap, r: int, c: int) -> Tensor:
        """Output pixel (r, c): (B, out)."""
        r0, c0 = self._origin(m, r, c)
        window = m.data[:, r0 : r0 + self.anchor[0] + 1, c0 : c0 + self.kw]
        return F.linear(window.reshape(window.shape[0], -1), self.flat, self.bias)

    def row(self, m: PaddedMap, r: int) -> Tensor:
        """Output row r: (B, out, W)."""
        r0, c0 = self._origin(m, r, 0)
        strip = m.data[:, r0 : r0 + self.anchor[0] + 1, c0 : c0 + m.width + self.kw - 1]
        return F.conv2d(strip.permute(0, 3, 1, 2), self.weight, self.bias)[:, :, 0]


def pointwise(conv: nn.Conv2d) -> tuple[Tensor, Optional[Tensor]]:
    """A 1x1 convolution (masked or not) as ``F.linear`` arguments for one pixel's features."""
    weight = conv.weight * conv.mask if isinstance(conv, MaskedConv2d) else conv.weight
    return weight[:, :, 0, 0].detach(), None if conv.bias is None else conv.bias.detach()
