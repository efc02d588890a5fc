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
        raise ValueError(
            f"{n} feature channels cannot be split into {chunks} chunk(s) of {data_channels} equal groups"
        )
    return (torch.arange(n) % per_chunk) * data_channels // per_chunk


def causal_mask(
    in_channels: int,
    out_channels: int,
    kernel_size: tuple[int, int],
    anchor: tuple[int, int],
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
        mask = causal_mask(in_channels, out_channels, (kh, kw), (ay, ax), mask_type, data_channels, out_chunks)
        self.register_buffer("mask", mask)

    def forward(self, x: Tensor) -> Tensor:
        if self.pad is not None:
            x = F.pad(x, self.pad)
        return self._conv_forward(x, self.weight * self.mask, self.bias)
