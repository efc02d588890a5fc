"""NICE (Dinh, Krueger & Bengio 2015, "NICE: Non-linear Independent Components Estimation").

Images are flattened to vectors of D = C*H*W. The flow is a stack of additive coupling
layers (Sec. 3.2, eq. 5) whose partition alternates between the odd and even components
(Sec. 5.1), then a diagonal scaling layer (Sec. 3.3), over a factorised logistic prior for
MNIST (Sec. 5.1; Gaussian for the other datasets there):

    y_I2 = x_I2 + m(x_I1),  y_I1 = x_I1                       log_det = 0    (eq. 5)
    h = exp(s) * y                                             log_det = sum(s)  (Sec. 3.3)
    log p_H(h) = -sum_d log(1 + e^{h_d}) + log(1 + e^{-h_d})   (logistic, Sec. 5.1)

The paper's data are dequantized and rescaled to [0, 1]^D, as ``dequantized`` is here
((k + u)/256), so the density is comparable with the paper's log-likelihood. The default
preprocessing is the volume-preserving centring x - 0.5 (no Jacobian term), not a logit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import UserError
from ...rules import POSITIVE, checked, checked_choice
from ..base import DataSpec
from ..nn.mlp import mlp
from ..objectives import Objective
from ..registry import register
from .base import FlowConfig, VectorFlow
from .layers import zero_initialized

PRIORS = ("logistic", "gaussian")


def logistic_log_prob(h: Tensor) -> Tensor:
    """log of the standard logistic density, summed per example: log p(h) = -softplus(h) - softplus(-h)
    (Dinh et al. 2015, Sec. 5.1)."""
    return -(F.softplus(h) + F.softplus(-h)).reshape(h.shape[0], -1).sum(dim=1)


def logistic_sample(shape: tuple[int, ...], like: Tensor) -> Tensor:
    """Standard logistic draws by inverting its CDF: h = log u - log(1 - u), u ~ U(0, 1)."""
    tiny = torch.finfo(like.dtype).tiny
    u = torch.rand(shape, device=like.device, dtype=like.dtype).clamp(tiny, 1 - 1e-7)
    return torch.log(u) - torch.log1p(-u)


class AdditiveCoupling(nn.Module):
    """y_I2 = x_I2 + m(x_I1), y_I1 = x_I1 (Dinh et al. 2015, eq. 5) on vectors (B, D), with I1 the
    components of index parity ``parity`` (0: even, 1: odd) and I2 the others. Volume preserving:
    log_det = 0; the inverse subtracts m(y_I1)."""

    def __init__(self, dim: int, *, parity: int, hidden: int, hidden_layers: int):
        super().__init__()
        if dim < 2:
            raise ValueError("an additive coupling needs at least 2 dimensions")
        self.register_buffer("kept", torch.arange(parity, dim, 2), persistent=False)
        self.register_buffer("changed", torch.arange(1 - parity, dim, 2), persistent=False)
        self.net = mlp([len(self.kept), *([hidden] * hidden_layers), len(self.changed)], act="relu")
        zero_initialized(self.net[-1])  # each coupling starts as the identity

    def _couple(self, x: Tensor, sign: float) -> Tensor:
        out = x.clone()
        out[:, self.changed] = x[:, self.changed] + sign * self.net(x[:, self.kept])
        return out

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._couple(x, 1.0), x.new_zeros(x.shape[0])

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return self._couple(y, -1.0), y.new_zeros(y.shape[0])


class DiagonalScaling(nn.Module):
    """h = exp(s) * y with a learned s per dimension (Dinh et al. 2015, Sec. 3.3): log_det = sum(s).
    Dimensions with a large s carry little (the paper reads it as a spectrum of importance)."""

    def __init__(self, dim: int):
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x * torch.exp(self.log_scale), self.log_scale.sum().expand(x.shape[0])

    def inverse(self, h: Tensor) -> tuple[Tensor, Tensor]:
        return h * torch.exp(-self.log_scale), (-self.log_scale.sum()).expand(h.shape[0])


@dataclass
class NICEConfig(FlowConfig):
    preprocess: str = "center"  # center: x - 0.5 (volume preserving) | logit
    alpha: float = 0.05  # logit transform's alpha (only with preprocess=logit)
    num_couplings: int = checked(4, POSITIVE)  # additive coupling layers, partition alternating (4 in the paper)
    hidden_features: int = checked(400, POSITIVE)  # width of each coupling MLP (1000 in the paper)
    hidden_layers: int = checked(4, POSITIVE)  # ReLU hidden layers per coupling MLP (5 in the paper)
    prior: str = checked_choice("logistic", PRIORS)  # {choices}: logistic (the paper's MNIST prior), gaussian


@register("nice")
class NICE(VectorFlow):
    Config = NICEConfig

    @classmethod
    def check_settings(cls, config: NICEConfig, objective: Objective, data: Optional[DataSpec] = None) -> None:
        super().check_settings(config, objective, data)
        if data is not None and data.dim < 2:
            raise UserError(f"NICE needs data of at least 2 dimensions to partition; got shape {data.shape}.")

    def build_layers(self) -> list[nn.Module]:
        c, d = self.config, self.data.dim
        couplings = [
            AdditiveCoupling(d, parity=i % 2, hidden=c.hidden_features, hidden_layers=c.hidden_layers)
            for i in range(c.num_couplings)
        ]
        return [*couplings, DiagonalScaling(d)]

    def base_log_prob(self, z: Tensor) -> Tensor:
        return logistic_log_prob(z) if self.config.prior == "logistic" else super().base_log_prob(z)

    def base_sample(self, n: int, temperature: float) -> Tensor:
        if self.config.prior == "gaussian":
            return super().base_sample(n, temperature)
        return logistic_sample((n, *self.latent_shape), next(self.parameters())) * temperature

    def estimator(self, **settings) -> str:
        return f"{super().estimator(**settings)}; {self.config.prior} prior"
