"""Gated PixelCNN (van den Oord et al. 2016b, "Conditional Image Generation with
PixelCNN Decoders", Sec. 2.1-2.3, Fig. 2).

Two stacks remove PixelCNN's blind spot:

  vertical stack:   a (k//2 + 1) x k convolution over the rows at and above each pixel;
                    its output, shifted down one row, sees only the rows above;
  horizontal stack: a 1 x (k//2 + 1) convolution over the pixels left of (and, after
                    the first layer, at) each pixel in its row, plus a 1x1 map of the
                    shifted vertical stack, plus a residual connection.

Each stack uses gated activations (eq. 2):  y = tanh(W_f * x) . sigmoid(W_g * x),
and a class-conditional model adds a per-class bias V^T h to both halves (eq. 4, h a
one-hot label). The horizontal stack's skip outputs are summed into PixelCNN's
output layers. Within a pixel the horizontal stack's taps on the pixel itself carry
the R, G, B channel masks (nn/masked_conv.py; mask A in the first layer, B after).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import UserError
from ..nn.masked_conv import MaskedConv2d
from ..registry import register
from .common import AutoregressiveModel
from .pixelcnn import check_divisible, output_layers


def gate(t: Tensor) -> Tensor:
    """tanh(f) * sigmoid(g) over the two halves of the channels (van den Oord et al. 2016b, eq. 2)."""
    f, g = t.chunk(2, dim=1)
    return torch.tanh(f) * torch.sigmoid(g)


def shift_down(t: Tensor) -> Tensor:
    """Row i takes row i - 1 (zeros on top): what sees rows <= i now sees rows < i."""
    return F.pad(t, (0, 0, 1, 0))[:, :, :-1, :]


class GatedLayer(nn.Module):
    def __init__(self, in_channels: int, channels: int, kernel_size: int, first: bool,
                 data_channels: int, num_classes: int = 0):
        super().__init__()
        k, n = kernel_size, channels
        self.pad_vertical = (k // 2, k // 2, k // 2, 0)  # rows i - k//2 .. i, columns j +- k//2
        self.vertical = nn.Conv2d(in_channels, 2 * n, (k // 2 + 1, k))
        self.vertical_to_horizontal = nn.Conv2d(2 * n, 2 * n, 1)
        self.horizontal = MaskedConv2d(in_channels, 2 * n, (1, k // 2 + 1), "A" if first else "B",
                                       data_channels, anchor=(0, k // 2), out_chunks=2)
        self.skip = MaskedConv2d(n, n, 1, "B", data_channels)
        self.residual = None if first else MaskedConv2d(n, n, 1, "B", data_channels)
        if num_classes:
            self.class_vertical = nn.Embedding(num_classes, 2 * n)  # V^T h for a one-hot h
            self.class_horizontal = nn.Embedding(num_classes, 2 * n)

    def forward(self, v: Tensor, h: Tensor, y: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        v_pre = self.vertical(F.pad(v, self.pad_vertical))  # sees rows <= i
        h_pre = self.horizontal(h) + self.vertical_to_horizontal(shift_down(v_pre))
        if y is not None:
            v_pre = v_pre + self.class_vertical(y)[:, :, None, None]
            h_pre = h_pre + self.class_horizontal(y)[:, :, None, None]
        v_out, h_gated = gate(v_pre), gate(h_pre)
        # The first layer's input is x itself, which holds the pixel being predicted:
        # it gets no residual connection.
        h_out = h_gated if self.residual is None else h + self.residual(h_gated)
        return v_out, h_out, self.skip(h_gated)


@register("gated_pixelcnn")
class GatedPixelCNN(AutoregressiveModel):
    @dataclass
    class Config:
        channels: int = 16  # n: channels of each stack (the gates see 2n)
        num_layers: int = 5  # gated layers, the first included
        kernel_size: int = 3  # the gated layers' kernel (after the first)
        input_kernel_size: int = 7  # the first gated layer's kernel
        head_channels: int = 32  # channels of the 1x1 output layers
        conditional: bool = False  # p(x | class label), the labels from the dataset

    def __init__(self, config: Config, data, objective):
        super().__init__(config, data, objective)
        if not data.is_image:
            raise UserError("gated_pixelcnn needs image data (C, H, W).")
        if config.conditional and data.num_classes == 0:
            raise UserError("model.conditional=true needs a dataset with class labels.")
        self.conditional = bool(config.conditional)
        c, n = data.shape[0], config.channels
        check_divisible(c, channels=n, head_channels=config.head_channels)
        classes = data.num_classes if self.conditional else 0
        self.layers = nn.ModuleList(
            GatedLayer(c if i == 0 else n, n, config.input_kernel_size if i == 0 else config.kernel_size,
                       first=i == 0, data_channels=c, num_classes=classes)
            for i in range(config.num_layers)
        )
        self.output = output_layers(n, config.head_channels, c, self.bins)

    def logits(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        v, h, skips = x, x, 0
        for layer in self.layers:
            v, h, skip = layer(v, h, y)
            skips = skips + skip
        return self.image_logits(self.output(skips))
