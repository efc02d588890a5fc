"""What every normalizing flow shares: preprocessing, the base distribution, exact
log-likelihood, training step and sampling at a temperature. A model only builds
its stack of invertible layers (``build_layers``).

The flow is one bijection f from data x to z, with z ~ N(0, I) (Dinh et al. 2017,
eq. 3; Rezende & Mohamed 2015):

    log p(x) = log N(f(x); 0, I) + log|det df/dx|.

Images arrive dequantized, x = (k + u)/256 in [0, 1)^D, and the preprocessing
(logit transform or centring) is the flow's first layer, so its Jacobian is part of
log|det df/dx| and ``log_likelihood`` is the density of x on [0, 1)^D. The evaluator
turns it into the discrete 8-bit bound by adding D ln 256 (Theis et al. 2016), so

    bits/dim = (-log p(x) / D + ln 256) / ln 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from ...errors import UserError
from ...rules import Rule, checked, checked_choice
from ..base import DataSpec, GenerativeModel, Metrics, PhaseLoss
from ..nn.distributions import standard_normal_log_prob
from ..objectives import Objective
from .layers import Flatten, FlowSequential, LogitTransform, Shift

LOG_256 = math.log(256.0)
PREPROCESSING = ("logit", "center")
#: the logit transform's alpha: at 0 a dequantized pixel of exactly 0 maps to logit(0) = -inf
ALPHA: Rule = (lambda v: 0 < v < 0.5, "in (0, 0.5)")


@dataclass
class FlowConfig:
    preprocess: str = checked_choice("logit", PREPROCESSING)  # {choices}: images: logit (Dinh et al. 2017),
    #   center (x - 0.5, Glow)
    alpha: float = checked(0.05, ALPHA)  # logit transform: y = logit(alpha + (1 - 2 alpha) x)


def bits_per_dim(nll: Tensor, dim: int) -> Tensor:
    """Bits per dimension of 8-bit data from the NLL (nats) of its dequantized density on [0,1)^D."""
    return (nll / dim + LOG_256) / math.log(2.0)


class Flow(GenerativeModel):
    family = "flow"
    objectives = ("nll",)
    representations = ("dequantized", "continuous")
    likelihood = "exact"

    @classmethod
    def check_settings(cls, config: FlowConfig, objective: Objective, data: Optional[DataSpec] = None) -> None:
        super().check_settings(config, objective, data)
        if data is not None and not data.is_image and len(data.shape) != 1:
            raise UserError(f"{cls.__name__} models images (C, H, W) or vectors (D,), not shape {data.shape}.")

    def __init__(self, config: FlowConfig, data: DataSpec, objective: Objective):
        super().__init__(config, data, objective)
        self.flow = FlowSequential([*self.preprocessing(), *self.build_layers()])

    # --- what a model provides ------------------------------------------------------------
    def build_layers(self) -> list[nn.Module]:
        """The invertible layers after preprocessing, data -> z."""
        raise NotImplementedError

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """Shape of one z; the data's own unless the flow reshapes."""
        return tuple(self.data.shape)

    # --- shared -------------------------------------------------------------------------------
    def preprocessing(self) -> list[nn.Module]:
        if not self.data.is_image:
            return []
        if self.config.preprocess == "logit":
            return [LogitTransform(self.config.alpha)]
        return [Shift(-0.5)]

    def base_log_prob(self, z: Tensor) -> Tensor:
        """log p_Z(z) per example: N(0, I) unless a model names another base density (NICE: logistic)."""
        return standard_normal_log_prob(z)

    def base_sample(self, n: int, temperature: float) -> Tensor:
        """n draws of z from the base density with its scale multiplied by ``temperature``."""
        ref = next(self.parameters())
        return torch.randn(n, *self.latent_shape, device=ref.device, dtype=ref.dtype) * temperature

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x) in nats per example, by the change of variables."""
        z, log_det = self.flow(x)
        return self.base_log_prob(z) + log_det

    def _metrics(self, x: Tensor) -> tuple[Tensor, Metrics]:
        nll = -self.log_prob(x).mean()
        # -log p(x) of the density on [0,1)^D (or R^D): negative on images, and not the discrete NLL that
        # `dgm eval` reports as nll_nats (which adds D ln 256); bits_per_dim is the discrete one, as in eval
        metrics = {"nll_continuous": nll.detach()}
        loss = nll
        if self.data.is_image:  # optimise bits/dim, as Glow does: the same optimum, a size-independent scale
            loss = bits_per_dim(nll, self.data.dim)
            metrics["bits_per_dim"] = loss.detach()
        metrics["loss"] = loss.detach()
        return loss, metrics

    def training_loss(self, x: Tensor, y: Optional[Tensor], phase: str) -> PhaseLoss:
        return self._metrics(x)

    @torch.no_grad()
    def initialize(self, x: Tensor, y: Optional[Tensor]) -> None:
        """Run the data-dependent initialisation of layers that have one (ActNorm) on ``x``."""
        if any(not bool(getattr(m, "initialized", True)) for m in self.modules()):
            self.flow(x)

    @torch.no_grad()
    def validation_step(self, x: Tensor, y: Optional[Tensor]) -> Metrics:
        return self._metrics(x)[1]

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, y: Optional[Tensor] = None, **settings) -> Tensor:
        return self.log_prob(x)

    def density_support(self, **_) -> Optional[str]:
        """Where the density of images is normalised: the logit transform's preimage of R,
        (-a/(1-2a), 1 + a/(1-2a)) per pixel, a little wider than [0, 1]; centring leaves all of R^D."""
        if not self.data.is_image:
            return None
        if self.config.preprocess == "center":
            return "R^D"
        a = self.config.alpha / (1 - 2 * self.config.alpha)
        return f"(-{a:.3g}, {1 + a:.4g})^D"

    def estimator(self, **settings) -> str:
        name = "exact (change of variables)"
        if not self.data.is_image:
            return name
        if self.config.preprocess == "logit":
            return f"{name}; uniform dequantization, logit transform alpha={self.config.alpha:g}"
        return f"{name}; uniform dequantization, centred x - 0.5"

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, label: Optional[int] = None) -> Tensor:
        """x = f^{-1}(z), z ~ N(0, T^2 I) (or the model's base density, scaled by T): Glow's
        reduced-temperature sampling (Kingma & Dhariwal 2018, Sec. 5) scales the base's std by T."""
        if label is not None:
            raise UserError(f"{type(self).__name__} is unconditional; sample without label=.")
        x, _ = self.flow.inverse(self.base_sample(n, temperature))
        return x.clamp(0.0, 1.0) if self.data.is_image else x


class VectorFlow(Flow):
    """A flow over vectors (MAF, NICE): an image is flattened after preprocessing, so its layers and
    z ~ p_Z have shape (D,)."""

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (self.data.dim,)

    def preprocessing(self) -> list[nn.Module]:
        layers = super().preprocessing()
        return [*layers, Flatten(self.data.shape)] if self.data.is_image else layers
