"""PixelCNN (van den Oord et al. 2016a, "Pixel Recurrent Neural Networks", Sec. 3.5, Table 1).

  7x7 convolution, mask A                                   (the input layer)
  residual blocks: ReLU, 1x1 conv 2h -> h, ReLU, 3x3 conv mask B, ReLU, 1x1 conv h -> 2h,
                   plus the block's input                   (Fig. 5, left)
  ReLU, 1x1 conv mask B, ReLU, 1x1 conv mask B              (the output layers)
  -> a sigmoid (binary) or a 256-way softmax (8-bit) per channel of each pixel.

The masks (nn/masked_conv.py) give raster order with R, G, B in turn inside a pixel;
every layer, the 1x1 ones included, is masked so that feature group g only carries
what channel g may see. A stack of masked 3x3 convolutions has a blind spot: some
pixels above and to the right never reach the output (Gated PixelCNN removes it).

Sampling (``PixelCNNStepper``) keeps the input of every spatial convolution and computes each new pixel
through the network at that pixel only (Ramachandran et al. 2017): 2 + 4 * num_blocks small matrix
products per pixel instead of a pass over the whole image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import UserError
from ...rules import NON_NEGATIVE, POSITIVE, checked
from ..base import DataSpec
from ..nn.masked_conv import MaskedConv2d, PaddedMap, PixelConv, pointwise
from ..objectives import Objective
from ..registry import register
from .base import AutoregressiveModel, PixelStepper


class MaskedResidualBlock(nn.Module):
    """van den Oord et al. 2016a, Fig. 5 (left): 2h -> h -> h -> 2h channels, plus the input."""

    def __init__(self, h: int, kernel_size: int, data_channels: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.ReLU(),
            MaskedConv2d(2 * h, h, 1, mask_type="B", data_channels=data_channels),
            nn.ReLU(),
            MaskedConv2d(h, h, kernel_size, mask_type="B", data_channels=data_channels),
            nn.ReLU(),
            MaskedConv2d(h, 2 * h, 1, mask_type="B", data_channels=data_channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.net(x)


def output_layers(channels: int, head_channels: int, data_channels: int, bins: int) -> nn.Sequential:
    """ReLU, 1x1 mask B, ReLU, 1x1 mask B to ``bins`` logits per data channel
    (van den Oord et al. 2016a, Table 1); shared with Gated PixelCNN."""
    return nn.Sequential(
        nn.ReLU(),
        MaskedConv2d(channels, head_channels, 1, mask_type="B", data_channels=data_channels),
        nn.ReLU(),
        MaskedConv2d(head_channels, data_channels * bins, 1, mask_type="B", data_channels=data_channels),
    )


class Head:
    """``output_layers`` at one pixel: (B, channels) -> logits as ``image_logits`` lays them out."""

    def __init__(self, layers: nn.Sequential, data_channels: int, bins: int):
        self.hidden, self.out = pointwise(layers[1]), pointwise(layers[3])
        self.data_channels, self.bins = data_channels, bins

    def __call__(self, features: Tensor) -> Tensor:
        out = F.linear(F.relu(F.linear(F.relu(features), *self.hidden)), *self.out)  # (B, C * bins)
        return out if self.bins == 1 else out.view(-1, self.data_channels, self.bins).transpose(1, 2)


def padded_input(conv: nn.Conv2d, x: Tensor, channels: int) -> PaddedMap:
    """A zero map shaped for ``conv``'s input, for a batch like ``x`` (B, C, H, W)."""
    kw, (ay, ax) = conv.kernel_size[1], conv.anchor  # the mask zeroes the rows below the anchor: no pad below
    return PaddedMap(x, channels, x.shape[2], x.shape[3], top=ay, left=ax, right=kw - 1 - ax)


class PixelCNNStepper(PixelStepper):
    """PixelCNN at one pixel at a time from cached activations: the input image and, for every
    residual block, the input of its masked k x k convolution (see ``PixelStepper``)."""

    def __init__(self, model: "PixelCNN", x: Tensor):
        c = model.data.shape[0]
        self.x = padded_input(model.input, x, c)
        self.x.inner.copy_(x)
        self.image = self.x.inner
        self.input = PixelConv(model.input)
        self.blocks = [
            (
                pointwise(b.net[1]),
                padded_input(b.net[3], x, b.net[3].in_channels),
                PixelConv(b.net[3]),
                pointwise(b.net[5]),
            )
            for b in model.blocks
        ]
        self.head = Head(model.output, c, model.bins)

    def logits_at(self, r: int, c: int) -> Tensor:
        z = self.input.at(self.x, r, c)  # the residual stream at (r, c): (B, 2h)
        for reduce, cache, conv, expand in self.blocks:  # van den Oord et al. 2016a, Fig. 5 (left)
            cache.inner[:, :, r, c] = F.relu(F.linear(F.relu(z), *reduce))
            z = z + F.linear(F.relu(conv.at(cache, r, c)), *expand)
        return self.head(z)


def check_divisible(data_channels: int, **channels: int) -> None:
    """Feature channels split into one group per data channel (R, G, B): every size that does not divide
    is named in one message, each with the nearest size above it that does."""
    bad = {key: n for key, n in channels.items() if n % data_channels}
    if bad:
        fits = " ".join(f"model.{key}={-(-n // data_channels) * data_channels}" for key, n in bad.items())
        raise UserError(
            f"{' and '.join(f'model.{key}={n}' for key, n in bad.items())} must be divisible by the data's "
            f"{data_channels} channels (the feature channels split into one group per colour, each seeing "
            f"only the colours before it); sizes that work: {fits}."
        )


@register("pixelcnn")
class PixelCNN(AutoregressiveModel):
    # a CPU run this long earns back trainer.compile's cold compilation (measured: docs/results.md, trainer.compile)
    compile_pays_after = 500

    @dataclass
    class Config:
        hidden_channels: int = checked(16, POSITIVE)  # h: the residual stream has 2h channels
        num_blocks: int = checked(5, NON_NEGATIVE)  # residual blocks (15 in the paper)
        kernel_size: int = checked(3, POSITIVE)  # the blocks' masked convolutions (mask B)
        input_kernel_size: int = checked(7, POSITIVE)  # the first layer's masked convolution (mask A)
        head_channels: int = checked(32, POSITIVE)  # channels of the 1x1 output layers

    @classmethod
    def check_settings(cls, config: Config, objective: Objective, data: Optional[DataSpec] = None) -> None:
        super().check_settings(config, objective, data)
        if data is None:
            return
        if not data.is_image:
            raise UserError("pixelcnn needs image data (C, H, W).")
        check_divisible(data.shape[0], hidden_channels=config.hidden_channels, head_channels=config.head_channels)

    def __init__(self, config: Config, data, objective: Objective):
        super().__init__(config, data, objective)
        c, h = data.shape[0], config.hidden_channels
        self.input = MaskedConv2d(c, 2 * h, config.input_kernel_size, mask_type="A", data_channels=c)
        self.blocks = nn.Sequential(*[MaskedResidualBlock(h, config.kernel_size, c) for _ in range(config.num_blocks)])
        self.output = output_layers(2 * h, config.head_channels, c, self.bins)

    def logits(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        return self.image_logits(self.output(self.blocks(self.input(x))))

    def stepper(self, x: Tensor, y: Optional[Tensor]) -> PixelCNNStepper:
        return PixelCNNStepper(self, x)
