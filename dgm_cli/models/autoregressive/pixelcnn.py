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
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor, nn

from ...errors import UserError
from ..nn.masked_conv import MaskedConv2d
from ..registry import register
from .common import AutoregressiveModel


class ResidualBlock(nn.Module):
    """van den Oord et al. 2016a, Fig. 5 (left): 2h -> h -> h -> 2h channels, plus the input."""

    def __init__(self, h: int, kernel_size: int, data_channels: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.ReLU(),
            MaskedConv2d(2 * h, h, 1, "B", data_channels),
            nn.ReLU(),
            MaskedConv2d(h, h, kernel_size, "B", data_channels),
            nn.ReLU(),
            MaskedConv2d(h, 2 * h, 1, "B", data_channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.net(x)


def output_layers(channels: int, head_channels: int, data_channels: int, bins: int) -> nn.Sequential:
    """ReLU, 1x1 mask B, ReLU, 1x1 mask B to ``bins`` logits per data channel
    (van den Oord et al. 2016a, Table 1); shared with Gated PixelCNN."""
    return nn.Sequential(
        nn.ReLU(),
        MaskedConv2d(channels, head_channels, 1, "B", data_channels),
        nn.ReLU(),
        MaskedConv2d(head_channels, data_channels * bins, 1, "B", data_channels),
    )


def check_divisible(data_channels: int, **channels: int) -> None:
    """Feature channels split into one group per data channel (R, G, B)."""
    for key, n in channels.items():
        if n % data_channels:
            raise UserError(f"model.{key}={n} must be divisible by the data's {data_channels} channels.")


@register("pixelcnn")
class PixelCNN(AutoregressiveModel):
    @dataclass
    class Config:
        hidden_channels: int = 16  # h: the residual stream has 2h channels
        num_blocks: int = 5  # residual blocks (15 in the paper)
        kernel_size: int = 3  # the blocks' masked convolutions (mask B)
        input_kernel_size: int = 7  # the first layer's masked convolution (mask A)
        head_channels: int = 32  # channels of the 1x1 output layers

    def __init__(self, config: Config, data, objective):
        super().__init__(config, data, objective)
        if not data.is_image:
            raise UserError("pixelcnn needs image data (C, H, W).")
        c, h = data.shape[0], config.hidden_channels
        check_divisible(c, hidden_channels=h, head_channels=config.head_channels)
        self.input = MaskedConv2d(c, 2 * h, config.input_kernel_size, "A", c)
        self.blocks = nn.Sequential(*[ResidualBlock(h, config.kernel_size, c) for _ in range(config.num_blocks)])
        self.output = output_layers(2 * h, config.head_channels, c, self.bins)

    def logits(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        return self.image_logits(self.output(self.blocks(self.input(x))))
