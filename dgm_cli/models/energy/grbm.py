"""Gaussian-Bernoulli RBM for real-valued pixels (Hinton & Salakhutdinov 2006; the parametrisation of
Cho, Ilin & Raiko 2011, eq. 2):

    E(v, h) = Σ_i (v_i - b_i)^2 / (2σ_i^2) - h·c - Σ_ij (v_i / σ_i^2) W_ij h_j
    F(v)    = Σ_i (v_i - b_i)^2 / (2σ_i^2) - Σ_j softplus(c_j + Σ_i (v_i / σ_i^2) W_ij)
    p(h_j = 1 | v) = σ(c_j + Σ_i v_i W_ij / σ_i^2),    p(v | h) = N(b + W h, diag σ^2)

σ is one fixed number (``model.sigma``) or learned per pixel (``model.learn_sigma``, as log σ).
The density lives on R^D; on dequantized data (k + u)/256 its mass outside [0,1)^D is lost, so the
reported discrete NLL stays an upper bound.

log Z = (D/2) log 2π + Σ_i log σ_i + log Σ_h exp(h·c + Σ_i (m_i^2 - b_i^2) / (2σ_i^2)), m = b + W h, is
enumerated over h when H <= 20. AIS runs from a base model of independent Gaussians N(mean_i, var_i)
fitted to the training data, along the geometric path (1-β) E_A + β E_B (Gaussian conditionals with
precision (1-β)/σ_A^2 + β/σ^2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import UserError
from ...rules import POSITIVE, checked
from ..base import DataSpec
from ..objectives import Objective
from ..registry import register
from . import ais
from .rbm import RBM, RBMConfig

MIN_BASE_STD = 0.01  # the base model's per-pixel std never goes below this (constant border pixels)


class GaussianPath:
    """The geometric path between independent Gaussians (b_A, σ_A) and the GRBM (W, b, c, σ)."""

    def __init__(self, W: Tensor, b: Tensor, c: Tensor, sigma: Tensor, base_mean: Tensor, base_std: Tensor):
        self.W, self.b, self.c, self.var = W, b, c, sigma**2
        self.base_mean, self.base_var = base_mean.to(W), base_std.to(W) ** 2

    def log_z_base(self) -> float:
        return float((0.5 * torch.log(2 * math.pi * self.base_var.double())).sum() + self.W.shape[1] * math.log(2))

    def sample_base(self, n: int) -> Tensor:
        return self.base_mean + self.base_var.sqrt() * torch.randn(n, len(self.base_mean), device=self.W.device)

    def step(self, v: Tensor, beta_from: float, beta_to: float) -> tuple[Tensor, Tensor]:
        a = (v / self.var) @ self.W + self.c
        q_a = ((v - self.base_mean) ** 2 / (2 * self.base_var)).sum(-1).double()
        q_b = ((v - self.b) ** 2 / (2 * self.var)).sum(-1).double()
        ad = a.double()
        delta = (beta_to - beta_from) * (q_a - q_b) + (F.softplus(beta_to * ad) - F.softplus(beta_from * ad)).sum(-1)
        h = torch.bernoulli(torch.sigmoid(beta_to * a))
        precision = (1 - beta_to) / self.base_var + beta_to / self.var
        mean = (
            (1 - beta_to) * self.base_mean / self.base_var + beta_to * (self.b + h @ self.W.t()) / self.var
        ) / precision
        return delta, mean + torch.randn_like(mean) / precision.sqrt()

    def sample_target(self, v: Tensor, sweeps: int) -> Tensor:
        for _ in range(sweeps):
            v = self.step(v, 1.0, 1.0)[1]
        return v


@dataclass
class GRBMConfig(RBMConfig):
    sigma: float = checked(0.2, POSITIVE)  # the visible units' standard deviation (initial value when learned)
    learn_sigma: bool = False  # learn log σ per pixel (Cho et al. 2011)
    init_std: float = 0.001  # W ~ N(0, init_std^2): v/σ^2 is large, so smaller than a binary RBM's


@register("grbm")
class GRBM(RBM):
    representations = ("dequantized", "continuous")
    Config = GRBMConfig

    @classmethod
    def check_settings(cls, config: GRBMConfig, objective: Objective, data: Optional[DataSpec] = None) -> None:
        super().check_settings(config, objective, data)
        if config.centering:
            raise UserError("model.centering is for binary RBMs; a GRBM does not take it.")

    def __init__(self, config: GRBMConfig, data, objective: Objective):
        super().__init__(config, data, objective)
        log_sigma = torch.full((data.dim,), math.log(config.sigma))
        if config.learn_sigma:
            self.log_sigma = nn.Parameter(log_sigma)
        else:
            self.register_buffer("log_sigma", log_sigma)

    def sigma(self) -> Tensor:
        return self.log_sigma.exp()

    def free_energy(self, v: Tensor) -> Tensor:
        var = self.sigma() ** 2
        return ((v - self.b) ** 2 / (2 * var)).sum(-1) - F.softplus((v / var) @ self.W + self.c).sum(-1)

    def hidden_probs(self, v: Tensor) -> Tensor:
        return torch.sigmoid((v / self.sigma() ** 2) @ self.W + self.c)

    def visible_mean(self, h: Tensor) -> Tensor:
        return h @ self.W.t() + self.b

    def gibbs(self, v: Tensor, sweeps: int) -> Tensor:
        for _ in range(sweeps):
            h = torch.bernoulli(self.hidden_probs(v))
            v = self.visible_mean(h) + self.sigma() * torch.randn_like(v)
        return v

    def chain_start(self, like: Tensor) -> Tensor:
        return torch.rand_like(like)

    @torch.no_grad()
    def initialize(self, x: Tensor, y: Optional[Tensor]) -> None:
        if self.config.data_init_visible_bias:
            self.b.copy_(x.reshape(len(x), -1).mean(0))

    def base_std(self) -> Tensor:
        return (self.data_sq_mean - self.data_mean**2).clamp(min=0).sqrt().clamp(min=MIN_BASE_STD)

    def ais_path(self):
        return GaussianPath(self.W, self.b, self.c, self.sigma(), self.data_mean, self.base_std())

    @torch.no_grad()
    def exact_log_z(self) -> Optional[float]:
        V, H = self.W.shape
        if not ais.enumerable(H):
            return None
        W, b, c, var = self.W.double(), self.b.double(), self.c.double(), self.sigma().double() ** 2
        parts = []
        for start in range(0, 2**H, 1 << 14):
            h = ais.all_states(H, W.device, start=start, stop=start + (1 << 14))
            m = h @ W.t() + b
            parts.append(torch.logsumexp(h @ c + ((m**2 - b**2) / (2 * var)).sum(-1), 0))
        return float(torch.logsumexp(torch.stack(parts), 0) + 0.5 * torch.log(2 * math.pi * var).sum())

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, label: Optional[int] = None) -> Tensor:
        x = super().sample(n, temperature, label)
        return x.clamp(0, 1) if self.data.is_image else x
