"""PixelRNN (van den Oord, Kalchbrenner & Kavukcuoglu 2016, "Pixel Recurrent Neural Networks"):
``model=row_lstm`` and ``model=diagonal_bilstm``.

Both are stacks of residual LSTM layers between a 7x7 mask-A convolution and the 1x1 mask-B output
layers of PixelCNN (Sec. 3.5, Table 1). Every LSTM layer computes, at each position,

    [o, f, i, g] = sigma(K_ss (*) h_prev + K_is (*) x),  c = f c_prev + i g,  h = o tanh(c)   (Sec. 3.1, eq. 3)

(sigma: sigmoid for o, f, i; tanh for g), with the input-to-state convolution K_is masked (mask B:
feature group g sees the data channels <= g of its own pixel, nn/masked_conv.py) and computed for the
whole map at once; the state-to-state convolution K_ss runs sequentially. A residual block maps 2h
features to the LSTM's h and back with a masked 1x1 convolution, plus its input (Sec. 3.4, Fig. 5).

Row LSTM (Sec. 3.1): rows top to bottom; K_is is a 1 x k masked convolution along the row, K_ss a
1-D convolution of width k over the previous row's state: a triangular receptive field above.

Diagonal BiLSTM (Sec. 3.2): the map is skewed (row i shifted right by i), so that the diagonals become
columns; columns left to right, K_is is 1x1 and K_ss a 2x1 convolution over the previous column's state
(in image terms: the left neighbour and the pixel above). The second direction runs on the mirrored
image; its output map is shifted down by one row before the two are added, so that no pixel sees its
own row's later pixels. Every output sees the whole context above and to the left, with one exception
the stack implies: the last pixel of row i-1 reaches row i only through the k x k mask-A input layer,
so the first W - 1 - k//2 pixels of row i do not see it (tests/test_pixelrnn.py checks exactly this).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import UserError
from ...rules import POSITIVE, Rule, checked
from ..base import DataSpec
from ..nn.masked_conv import MaskedConv2d
from ..objectives import Objective
from ..registry import register
from .base import AutoregressiveModel
from .pixelcnn import check_divisible, output_layers


def lstm_update(gates: Tensor, c: Tensor, groups: int = 1) -> tuple[Tensor, Tensor]:
    """(h, c) from the pre-activations [o, f, i, g] stacked along dim 1 (van den Oord et al. 2016a, eq. 3);
    ``groups`` independent LSTMs side by side: gates [o, f, i, g] of the first, then of the second, ..."""
    gates = gates.unflatten(1, (groups, 4, -1))
    o, f, i = torch.sigmoid(gates[:, :, :3]).unbind(2)
    c = f * c.unflatten(1, (groups, -1)) + i * torch.tanh(gates[:, :, 3])
    return (o * torch.tanh(c)).flatten(1, 2), c.flatten(1, 2)


def skew(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, C, H, W + H - 1), row i shifted right by i (Sec. 3.2, Fig. 3)."""
    b, c, h, w = x.shape
    out = x.new_zeros(b, c, h, w + h - 1)
    for i in range(h):
        out[:, :, i, i : i + w] = x[:, :, i]
    return out


def unskew(x: Tensor, width: int) -> Tensor:
    """The inverse of ``skew``."""
    return torch.stack([x[:, :, i, i : i + width] for i in range(x.shape[2])], dim=2)


class RowLSTM(nn.Module):
    """One Row LSTM over a feature map (B, h_in, H, W) -> (B, h, H, W)."""

    def __init__(self, in_channels: int, hidden: int, kernel_size: int, data_channels: int):
        super().__init__()
        self.hidden = hidden
        self.input_to_state = MaskedConv2d(
            in_channels, 4 * hidden, (1, kernel_size), mask_type="B", data_channels=data_channels, out_chunks=4
        )
        self.state_to_state = nn.Conv1d(hidden, 4 * hidden, kernel_size, padding=kernel_size // 2)

    def forward(self, x: Tensor) -> Tensor:
        inputs = self.input_to_state(x)
        b, _, rows, w = x.shape
        h = c = x.new_zeros(b, self.hidden, w)
        out = []
        for i in range(rows):
            h, c = lstm_update(inputs[:, :, i] + self.state_to_state(h), c)
            out.append(h)
        return torch.stack(out, dim=2)


class DiagonalBiLSTM(nn.Module):
    """Both directions of a Diagonal BiLSTM layer, run side by side over the skewed map, left to right
    on the image and on its mirror; the mirrored one's output is shifted down one row (Sec. 3.2)."""

    def __init__(self, in_channels: int, hidden: int, data_channels: int):
        super().__init__()
        self.hidden = hidden
        self.input_to_state = nn.ModuleList(
            [
                MaskedConv2d(in_channels, 4 * hidden, 1, mask_type="B", data_channels=data_channels, out_chunks=4)
                for _ in range(2)
            ]
        )
        # rows i-1 and i of the previous column, one group per direction
        self.state_to_state = nn.Conv1d(2 * hidden, 8 * hidden, 2, padding=1, groups=2)

    def forward(self, x: Tensor) -> Tensor:
        inputs = skew(torch.cat([self.input_to_state[0](x), self.input_to_state[1](x.flip(-1))], dim=1))
        b, _, rows, w = x.shape
        h = c = x.new_zeros(b, 2 * self.hidden, rows)
        out = []
        for t in range(inputs.shape[-1]):
            h, c = lstm_update(inputs[..., t] + self.state_to_state(h)[..., :rows], c, groups=2)
            out.append(h)
        forward, mirrored = unskew(torch.stack(out, dim=3), w).chunk(2, dim=1)
        shifted = F.pad(mirrored.flip(-1), (0, 0, 1, 0))[:, :, :-1]  # row i gets row i-1's output
        return forward + shifted


class ResidualLSTM(nn.Module):
    """2h features -> LSTM (h) -> masked 1x1 convolution to 2h, plus the input (Sec. 3.4, Fig. 5)."""

    def __init__(self, lstm: nn.Module, hidden: int, data_channels: int):
        super().__init__()
        self.lstm = lstm
        self.out = MaskedConv2d(hidden, 2 * hidden, 1, mask_type="B", data_channels=data_channels)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.out(self.lstm(x))


#: a kernel width centred on its pixel
ODD: Rule = (lambda v: v >= 1 and v % 2 == 1, "odd and >= 1")


@dataclass
class PixelRNNConfig:
    hidden_channels: int = checked(16, POSITIVE)  # h: LSTM state size; the residual stream has 2h channels
    num_layers: int = checked(2, POSITIVE)  # residual LSTM layers
    input_kernel_size: int = checked(7, POSITIVE)  # the first masked convolution (mask A)
    kernel_size: int = checked(3, ODD)  # Row LSTM: width of the input-to-state and state-to-state convolutions
    head_channels: int = checked(32, POSITIVE)  # channels of the 1x1 output layers


class PixelRNN(AutoregressiveModel):
    Config = PixelRNNConfig
    grid_samples = 8  # a sample costs D sequential LSTM passes: small training grids keep them a small share of a run

    @classmethod
    def check_settings(cls, config: PixelRNNConfig, objective: Objective, data: Optional[DataSpec] = None) -> None:
        super().check_settings(config, objective, data)
        if data is None:
            return
        if not data.is_image:
            raise UserError(f"{cls.name} needs image data (C, H, W).")
        check_divisible(data.shape[0], hidden_channels=config.hidden_channels, head_channels=config.head_channels)

    def __init__(self, config: PixelRNNConfig, data, objective: Objective):
        super().__init__(config, data, objective)
        c, h = data.shape[0], config.hidden_channels
        self.input = MaskedConv2d(c, 2 * h, config.input_kernel_size, mask_type="A", data_channels=c)
        self.layers = nn.Sequential(*[ResidualLSTM(self.lstm(2 * h, h, c), h, c) for _ in range(config.num_layers)])
        self.output = output_layers(2 * h, config.head_channels, c, self.bins)

    def lstm(self, in_channels: int, hidden: int, data_channels: int) -> nn.Module:
        raise NotImplementedError

    def logits(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        return self.image_logits(self.output(self.layers(self.input(x))))


@register("row_lstm")
class RowLSTMModel(PixelRNN):
    def lstm(self, in_channels: int, hidden: int, data_channels: int) -> nn.Module:
        return RowLSTM(in_channels, hidden, self.config.kernel_size, data_channels)


@register("diagonal_bilstm")
class DiagonalBiLSTMModel(PixelRNN):
    def lstm(self, in_channels: int, hidden: int, data_channels: int) -> nn.Module:
        return DiagonalBiLSTM(in_channels, hidden, data_channels)
