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

Sampling (``GatedPixelCNNStepper``) follows Ramachandran et al. 2017: the horizontal stack is computed at each
new pixel only, the vertical stack one row at a time once the row is complete (its output at row i
is used from row i + 1 on), both from cached inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import UserError
from ...rules import POSITIVE, checked
from ..base import DataSpec
from ..nn.masked_conv import MaskedConv2d, PaddedMap, PixelConv, pointwise
from ..objectives import Objective
from ..registry import register
from .base import AutoregressiveModel, PixelStepper
from .pixelcnn import Head, check_divisible, output_layers


def gate(t: Tensor) -> Tensor:
    """tanh(f) * sigmoid(g) over the two halves of the channels (van den Oord et al. 2016b, eq. 2)."""
    f, g = t.chunk(2, dim=1)
    return torch.tanh(f) * torch.sigmoid(g)


def shift_down(t: Tensor) -> Tensor:
    """Row i takes row i - 1 (zeros on top): what sees rows <= i now sees rows < i."""
    return F.pad(t, (0, 0, 1, 0))[:, :, :-1, :]


class GatedLayer(nn.Module):
    """One gated layer. The first takes x itself (mask A, no residual connection); the last feeds
    only the output layers through its skip connection, so it has no residual connection and no
    class bias on its vertical stack (they would feed nothing: parameters without gradient, which
    DistributedDataParallel refuses)."""

    def __init__(
        self,
        in_channels: int,
        channels: int,
        kernel_size: int,
        first: bool,
        data_channels: int,
        num_classes: int = 0,
        last: bool = False,
    ):
        super().__init__()
        k, n = kernel_size, channels
        self.last = last
        self.pad_vertical = (k // 2, k // 2, k // 2, 0)  # rows i - k//2 .. i, columns j +- k//2
        self.vertical = nn.Conv2d(in_channels, 2 * n, (k // 2 + 1, k))
        self.vertical_to_horizontal = nn.Conv2d(2 * n, 2 * n, 1)
        self.horizontal = MaskedConv2d(
            in_channels,
            2 * n,
            (1, k // 2 + 1),
            mask_type="A" if first else "B",
            data_channels=data_channels,
            anchor=(0, k // 2),
            out_chunks=2,
        )
        self.skip = MaskedConv2d(n, n, 1, mask_type="B", data_channels=data_channels)
        self.residual = None if first or last else MaskedConv2d(n, n, 1, mask_type="B", data_channels=data_channels)
        self.class_vertical = nn.Embedding(num_classes, 2 * n) if num_classes and not last else None  # V^T h, one-hot h
        self.class_horizontal = nn.Embedding(num_classes, 2 * n) if num_classes else None

    def forward(self, v: Tensor, h: Tensor, y: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        v_pre = self.vertical(F.pad(v, self.pad_vertical))  # sees rows <= i
        h_pre = self.horizontal(h) + self.vertical_to_horizontal(shift_down(v_pre))
        if y is not None:
            h_pre = h_pre + self.class_horizontal(y)[:, :, None, None]
        h_gated = gate(h_pre)
        if self.last:  # only the skip connection goes on
            return v, h, self.skip(h_gated)
        if y is not None:
            v_pre = v_pre + self.class_vertical(y)[:, :, None, None]
        # The first layer's input is x itself, which holds the pixel being predicted:
        # it gets no residual connection.
        h_out = h_gated if self.residual is None else h + self.residual(h_gated)
        return gate(v_pre), h_out, self.skip(h_gated)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A checkpoint from before the last layer lost them holds its residual connection and vertical
        # class bias, which fed nothing: dropping them leaves the model's function as it was.
        if self.last:
            for key in [k for k in state_dict if k.startswith((prefix + "residual.", prefix + "class_vertical."))]:
                del state_dict[key]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class LayerCache:
    """One gated layer at one pixel (horizontal stack) or one row (vertical stack) at a time: its
    cached inputs ``v`` and ``h``, and ``from_above``, the vertical stack's contribution to the
    horizontal one, vertical_to_horizontal(shift_down(v_pre)), filled in row by row."""

    def __init__(self, layer: GatedLayer, v: PaddedMap, h: PaddedMap, y: Optional[Tensor]):
        self.v, self.h = v, h
        k = layer.vertical.kernel_size[1]
        self.vertical = PixelConv(layer.vertical, anchor=(k // 2, k // 2))  # rows i - k//2 .. i
        self.horizontal = PixelConv(layer.horizontal)
        self.to_horizontal, self.skip = pointwise(layer.vertical_to_horizontal), pointwise(layer.skip)
        self.residual = None if layer.residual is None else pointwise(layer.residual)
        self.class_v = self.class_h = None
        if y is not None:
            self.class_h = layer.class_horizontal(y)
            self.class_v = None if layer.class_vertical is None else layer.class_vertical(y)
        weight, bias = self.to_horizontal
        b, _, rows, width = v.inner.shape
        self.from_above = v.data.new_zeros(b, rows, width, weight.shape[0])  # channels-last, like PaddedMap
        if bias is not None:  # row 0 sees only shift_down's zero padding
            self.from_above[:, 0] = bias


class GatedPixelCNNStepper(PixelStepper):
    """Gated PixelCNN from cached activations (see ``PixelStepper`` and the module docstring)."""

    def __init__(self, model: "GatedPixelCNN", x: Tensor, y: Optional[Tensor]):
        c, rows, width = model.data.shape
        self.layers: list[LayerCache] = []
        for i, layer in enumerate(model.layers):
            k = layer.vertical.kernel_size[1]
            if i == 0:  # x feeds both stacks: one map padded for both
                v = h = PaddedMap(x, c, rows, width, top=k // 2, left=k // 2, right=k // 2)
            else:
                n = layer.vertical.in_channels
                v = PaddedMap(x, n, rows, width, top=k // 2, left=k // 2, right=k // 2)
                h = PaddedMap(x, n, rows, width, top=0, left=k // 2, right=0)
            self.layers.append(LayerCache(layer, v, h, y))
        self.image = self.layers[0].v.inner
        self.image.copy_(x)
        self.head = Head(model.output, c, model.bins)

    def logits_at(self, r: int, c: int) -> Tensor:
        skips = 0
        for layer, above in zip(self.layers, self.layers[1:] + [None]):
            h_pre = layer.horizontal.at(layer.h, r, c) + layer.from_above[:, r, c]
            if layer.class_h is not None:
                h_pre = h_pre + layer.class_h
            h_gated = gate(h_pre)
            skips = skips + F.linear(h_gated, *layer.skip)
            if above is not None:  # the next layer's horizontal input at (r, c)
                h_out = (
                    h_gated
                    if layer.residual is None
                    else layer.h.inner[:, :, r, c] + F.linear(h_gated, *layer.residual)
                )
                above.h.inner[:, :, r, c] = h_out
        return self.head(skips)

    def row_done(self, r: int) -> None:
        for layer, above in zip(self.layers, self.layers[1:] + [None]):
            v_pre = layer.vertical.row(layer.v, r)  # (B, 2n, W)
            if r + 1 < layer.from_above.shape[1]:
                layer.from_above[:, r + 1] = F.linear(v_pre.transpose(1, 2), *layer.to_horizontal)
            if above is not None:
                if layer.class_v is not None:
                    v_pre = v_pre + layer.class_v[:, :, None]
                above.v.inner[:, :, r] = gate(v_pre)


@register("gated_pixelcnn")
class GatedPixelCNN(AutoregressiveModel):
    @dataclass
    class Config:
        channels: int = checked(16, POSITIVE)  # n: channels of each stack (the gates see 2n)
        num_layers: int = checked(5, POSITIVE)  # gated layers, the first included
        kernel_size: int = checked(3, POSITIVE)  # the gated layers' kernel (after the first)
        input_kernel_size: int = checked(7, POSITIVE)  # the first gated layer's kernel
        head_channels: int = checked(32, POSITIVE)  # channels of the 1x1 output layers
        conditional: bool = False  # p(x | class label), the labels from the dataset

    @classmethod
    def check_settings(cls, config: Config, objective: Objective, data: Optional[DataSpec] = None) -> None:
        super().check_settings(config, objective, data)
        if data is None:
            return
        if not data.is_image:
            raise UserError("gated_pixelcnn needs image data (C, H, W).")
        if config.conditional and data.num_classes == 0:
            raise UserError("model.conditional=true needs a dataset with class labels.")
        check_divisible(data.shape[0], channels=config.channels, head_channels=config.head_channels)

    def __init__(self, config: Config, data, objective: Objective):
        super().__init__(config, data, objective)
        self.conditional = bool(config.conditional)
        c, n = data.shape[0], config.channels
        classes = data.num_classes if self.conditional else 0
        self.layers = nn.ModuleList(
            GatedLayer(
                c if i == 0 else n,
                n,
                config.input_kernel_size if i == 0 else config.kernel_size,
                first=i == 0,
                data_channels=c,
                num_classes=classes,
                last=i == config.num_layers - 1,
            )
            for i in range(config.num_layers)
        )
        self.output = output_layers(n, config.head_channels, c, self.bins)

    def logits(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        v, h, skips = x, x, 0
        for layer in self.layers:
            v, h, skip = layer(v, h, y)
            skips = skips + skip
        return self.image_logits(self.output(skips))

    def stepper(self, x: Tensor, y: Optional[Tensor]) -> GatedPixelCNNStepper:
        return GatedPixelCNNStepper(self, x, y)
