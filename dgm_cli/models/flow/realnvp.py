"""RealNVP (Dinh, Sohl-Dickstein & Bengio 2017, "Density estimation using Real NVP").

Images: the multi-scale architecture of Sec. 3.6. Each scale but the last is
3 checkerboard couplings, a squeeze, 3 channel-wise couplings, after which half of
the channels are factored out; the last scale is 4 checkerboard couplings. Mask
parities alternate so that every dimension is transformed. Coupling networks are
ResNets (Sec. 4.1); a channel-wise coupling's sees only the conditioning half of the
channels and computes s and t of the other half, a checkerboard coupling's sees the
masked image (layers.AffineCoupling says why); s = scale * tanh(raw). Batch
normalisation of the coupling outputs (Sec. 3.7) is optional.

2-D toys: a stack of affine couplings with MLP networks, masks alternating.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import UserError
from ...rules import NON_NEGATIVE, POSITIVE, checked
from ..base import DataSpec
from ..objectives import Objective
from ..registry import register
from .base import Flow, FlowConfig
from .layers import (
    AffineCoupling,
    BatchNorm,
    FlowSequential,
    Split,
    Squeeze,
    Unsqueeze,
    coupling_halves,
    coupling_mlp,
    zero_initialized,
)


@dataclass
class RealNVPConfig(FlowConfig):
    preprocess: str = "logit"
    alpha: float = 0.05
    num_scales: int = checked(2, POSITIVE)  # images: each scale but the last halves H and W
    hidden_channels: int = checked(16, POSITIVE)  # images: features of the coupling ResNets
    num_blocks: int = checked(2, NON_NEGATIVE)  # images: residual blocks per coupling ResNet
    batch_norm: bool = False  # batch-norm flow layer after each coupling (Sec. 3.7)
    num_couplings: int = checked(8, POSITIVE)  # 2-D toys: coupling layers
    hidden_features: int = checked(64, POSITIVE)  # 2-D toys: width of the coupling MLPs


class ResNetBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, h: Tensor) -> Tensor:
        return h + self.conv2(F.relu(self.conv1(F.relu(h))))


class ResNet(nn.Module):
    """The coupling network (s, t) = NN(x_a): conv, residual blocks, zero-initialised conv."""

    def __init__(self, in_channels: int, hidden: int, out_channels: int, num_blocks: int):
        super().__init__()
        self.inp = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.blocks = nn.Sequential(*[ResNetBlock(hidden) for _ in range(num_blocks)])
        self.out = zero_initialized(nn.Conv2d(hidden, out_channels, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.out(F.relu(self.blocks(self.inp(x))))


@register("realnvp")
class RealNVP(Flow):
    Config = RealNVPConfig

    @classmethod
    def check_settings(cls, config: RealNVPConfig, objective: Objective, data: Optional[DataSpec] = None) -> None:
        super().check_settings(config, objective, data)
        if data is not None and data.is_image:
            h, w = data.shape[1:]
            factor = 2 ** (config.num_scales - 1)
            if h % factor or w % factor:
                raise UserError(
                    f"model.num_scales={config.num_scales} needs H and W divisible by {factor}; the data is {h}x{w}."
                )

    def _coupling(
        self, channels: int, network: Callable[[int, int], nn.Module], *, mask: str, parity: int
    ) -> list[nn.Module]:
        """A coupling whose network, ``network(a, 2b)``, maps the conditioning half's a channels to the
        transformed half's scale and shift (2b channels)."""
        a, b = coupling_halves(channels, mask=mask, parity=parity)
        layers: list[nn.Module] = [AffineCoupling(network(a, 2 * b), channels, mask=mask, parity=parity, scale="tanh")]
        if self.config.batch_norm:
            layers.append(BatchNorm(channels))
        return layers

    def _image_couplings(self, channels: int, count: int, *, mask: str) -> list[nn.Module]:
        """``count`` couplings with ResNet networks, mask parity alternating."""
        c = self.config
        return [
            layer
            for i in range(count)
            for layer in self._coupling(
                channels,
                lambda n_in, n_out: ResNet(n_in, c.hidden_channels, n_out, c.num_blocks),
                mask=mask,
                parity=i % 2,
            )
        ]

    def _scale(self, channels: int, index: int) -> FlowSequential:
        """One scale of the multi-scale architecture (Sec. 3.6) on ``channels`` channels."""
        if index == self.config.num_scales - 1:
            return FlowSequential(self._image_couplings(channels, 4, mask="checkerboard"))
        return FlowSequential(
            [
                *self._image_couplings(channels, 3, mask="checkerboard"),
                Squeeze(),
                *self._image_couplings(4 * channels, 3, mask="channel"),
                Split(self._scale(2 * channels, index + 1)),  # factor out half, the rest goes to the next scale
                Unsqueeze(),
            ]
        )

    def build_layers(self) -> list[nn.Module]:
        c = self.config
        if not self.data.is_image:
            d = self.data.dim
            return [
                layer
                for i in range(c.num_couplings)
                for layer in self._coupling(
                    d, lambda n_in, n_out: coupling_mlp(n_in, n_out, c.hidden_features), mask="channel", parity=i % 2
                )
            ]
        return [self._scale(self.data.shape[0], 0)]
