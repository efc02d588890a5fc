"""Glow (Kingma & Dhariwal 2018, "Glow: Generative Flow with Invertible 1x1 Convolutions").

One step of flow (Sec. 3, Fig. 2a) is actnorm -> invertible 1x1 convolution (LU
parameterised) -> affine coupling. Images use the multi-scale architecture of
Fig. 2b: L levels, each a squeeze and K steps; every level but the last factors
out half of its channels, modelled by a learned conditional prior (``split_prior``)
or by N(0, I). The coupling network is conv3x3 -> ReLU -> conv1x1 -> ReLU ->
zero-initialised conv3x3 from the conditioning half of the channels to the scale and shift of the
other half (Sec. 3.3), with scale sigmoid(raw + 2) (Glow code), its log soft-clamped
(layers.soft_clamp) so that sampling at temperature 1 stays finite.

2-D toys: K steps of actnorm -> invertible linear map -> affine coupling with an MLP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from torch import nn

from ...errors import UserError
from ...rules import POSITIVE, checked
from ..base import DataSpec
from ..objectives import Objective
from ..registry import register
from .base import Flow, FlowConfig
from .layers import (
    ActNorm,
    AffineCoupling,
    FlowSequential,
    InvertibleConv1x1,
    Split,
    Squeeze,
    Unsqueeze,
    coupling_halves,
    coupling_mlp,
    zero_initialized,
)


@dataclass
class GlowConfig(FlowConfig):
    preprocess: str = "logit"  # {choices}: the paper centres (x - 0.5); the logit transform learns faster on MNIST
    alpha: float = 0.05
    num_levels: int = checked(2, POSITIVE)  # images: L, levels of the multi-scale architecture
    #   (each squeezes H, W by 2)
    depth: int = checked(4, POSITIVE)  # K, steps of flow per level (toys: steps in all)
    hidden_channels: int = checked(64, POSITIVE)  # images: width of the coupling networks (512 in the paper)
    split_prior: bool = True  # learned N(mu(h), sigma(h)) for factored-out channels (Glow code)
    hidden_features: int = checked(64, POSITIVE)  # 2-D toys: width of the coupling MLPs


def coupling_cnn(in_channels: int, hidden: int, out_channels: int) -> nn.Sequential:
    """NN() of Glow's affine coupling (Sec. 3.3)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, hidden, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(hidden, hidden, 1),
        nn.ReLU(),
        zero_initialized(nn.Conv2d(hidden, out_channels, 3, padding=1)),
    )


@register("glow")
class Glow(Flow):
    # a CPU run this long earns back trainer.compile's cold compilation (measured: docs/results.md, trainer.compile)
    compile_pays_after = 2000
    Config = GlowConfig

    @classmethod
    def check_settings(cls, config: GlowConfig, objective: Objective, data: Optional[DataSpec] = None) -> None:
        super().check_settings(config, objective, data)
        if data is not None and data.is_image:
            h, w = data.shape[1:]
            factor = 2**config.num_levels
            if h % factor or w % factor:
                raise UserError(
                    f"model.num_levels={config.num_levels} needs H and W divisible by {factor}; the data is {h}x{w}."
                )

    def _step(self, channels: int, network: Callable[[int, int], nn.Module]) -> list[nn.Module]:
        """One step of flow (Table 1): actnorm, invertible 1x1 conv, affine coupling, whose NN() maps
        the conditioning half's channels a to the transformed half's scale and shift, ``network(a, 2b)``."""
        a, b = coupling_halves(channels, mask="channel", parity=0)
        coupling = AffineCoupling(network(a, 2 * b), channels, mask="channel", parity=0, scale="sigmoid")
        return [ActNorm(channels), InvertibleConv1x1(channels), coupling]

    def _level(self, channels: int, index: int) -> FlowSequential:
        """Squeeze, K steps, and (but for the last level) split off half the channels."""
        c, width = self.config, 4 * channels
        layers: list[nn.Module] = [Squeeze()]
        for _ in range(c.depth):
            layers += self._step(width, lambda n_in, n_out: coupling_cnn(n_in, c.hidden_channels, n_out))
        if index < c.num_levels - 1:
            prior = zero_initialized(nn.Conv2d(width // 2, width, 3, padding=1)) if c.split_prior else None
            layers.append(Split(self._level(width // 2, index + 1), prior))
        layers.append(Unsqueeze())
        return FlowSequential(layers)

    def build_layers(self) -> list[nn.Module]:
        c = self.config
        if not self.data.is_image:
            d = self.data.dim
            return [
                layer
                for _ in range(c.depth)
                for layer in self._step(d, lambda n_in, n_out: coupling_mlp(n_in, n_out, c.hidden_features))
            ]
        return [self._level(self.data.shape[0], 0)]
