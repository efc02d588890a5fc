"""Bernoulli-Bernoulli restricted Boltzmann machine (Smolensky 1986; Hinton 2002).

    E(v, h) = -v·b - h·c - vᵀ W h,            v ∈ {0,1}^V, h ∈ {0,1}^H
    F(v)    = -v·b - Σ_j softplus(c_j + v·W_j)        (free energy: h summed out; Hinton 2010, Sec. 16.1)
    p(h_j = 1 | v) = σ(c_j + v·W_j),   p(v_i = 1 | h) = σ(b_i + W_i·h)

Training: CD-k or PCD (base.py) on the surrogate mean F(v_data) - mean F(v_model), with SGD, momentum
and weight decay on W from the optimizer config (model=rbm's settings of optimizer=sgd,
configs/model/optimizer/rbm_sgd.yaml; Hinton 2010, Sec. 9-10), an optional sparsity penalty (Hinton 2010,
Sec. 11: cross-entropy between a target and the mean hidden activation), and optional centering (Melchior,
Fischer & Wiskott 2016): the energy is written with offsets μ (visible) and λ (hidden),

    E(v, h) = -(v-μ)·b - (h-λ)·c - (v-μ)ᵀ W (h-λ),

which is the plain RBM (W, b - Wλ, c - Wᵀμ); gradients taken in the centered parameters are the
centered gradient. μ and λ track the data mean and the mean hidden activation as sliding averages, and
b, c are shifted with them so that the model itself does not change when the offsets move.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...rules import NON_NEGATIVE, POSITIVE, Rule, checked
from ..base import Metrics, PhaseLoss, alternating_rows
from ..objectives import Objective
from ..registry import register
from . import ais
from .base import BoltzmannMachine, filter_images, flat


def bernoulli_free_energy(v: Tensor, W: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """F(v) = -v·b - Σ_j softplus(c_j + v·W_j), per row."""
    return -(v @ b) - F.softplus(v @ W + c).sum(-1)


def gibbs_sweeps(v: Tensor, W: Tensor, b: Tensor, c: Tensor, sweeps: int) -> Tensor:
    """``sweeps`` block-Gibbs sweeps v -> h ~ p(h|v) -> v ~ p(v|h) of the Bernoulli RBM."""
    for _ in range(sweeps):
        h = torch.bernoulli(torch.sigmoid(v @ W + c))
        v = torch.bernoulli(torch.sigmoid(h @ W.t() + b))
    return v


def reconstruction_error(v: Tensor, hidden_probs: Tensor, W: Tensor, b: Tensor) -> Tensor:
    """Σ_i (v_i - p(v_i=1 | h = p(h|v)))^2 per example: the mean-field up-down reconstruction."""
    return ((v - torch.sigmoid(hidden_probs @ W.t() + b)) ** 2).sum(-1)


def sparsity_penalty(hidden_probs: Tensor, target: float) -> Tensor:
    """Σ_j cross-entropy(target, mean activation of unit j) (Hinton 2010, Sec. 11)."""
    q = hidden_probs.mean(0).clamp(1e-6, 1 - 1e-6)
    return -(target * q.log() + (1 - target) * (1 - q).log()).sum()


#: a sliding average's rate: 1 keeps only the newest value, 0 would never move
RATE: Rule = (lambda v: 0 < v <= 1, "in (0, 1]")
#: a mean activation a unit can have and its cross-entropy penalty can aim at
ACTIVATION_TARGET: Rule = (lambda v: 0 < v < 1, "in (0, 1)")


@dataclass
class RBMConfig:
    hidden_units: int = checked(500, POSITIVE)  # H (Salakhutdinov & Murray 2008: 500; <= 20 gives exact log Z)
    init_std: float = checked(0.01, NON_NEGATIVE)  # W ~ N(0, init_std^2) (Hinton 2010, Sec. 8)
    data_init_visible_bias: bool = True  # b = log-odds of the first batch's pixel means (Hinton 2010, Sec. 8)
    centering: bool = False  # centered RBM (Melchior et al. 2016)
    centering_rate: float = checked(0.01, RATE)  # sliding-average rate of the offsets μ, λ
    sparsity_target: float = checked(0.1, ACTIVATION_TARGET)  # target mean hidden activation
    sparsity_cost: float = checked(0.0, NON_NEGATIVE)  # > 0 turns the sparsity penalty on (Hinton 2010: e.g. 1e-4 ..
    #   1e-2)
    sample_steps: int = checked(1000, POSITIVE)  # Gibbs sweeps from the base-rate model per `dgm sample` image


@register("rbm")
class RBM(BoltzmannMachine):
    representations = ("binary",)
    sample_modes = ("sample", "reconstruct")
    Config = RBMConfig

    def __init__(self, config: RBMConfig, data, objective: Objective):
        super().__init__(config, data, objective)
        V, H = data.dim, config.hidden_units
        self.W = nn.Parameter(torch.randn(V, H) * config.init_std)
        self.b = nn.Parameter(torch.zeros(V))
        self.c = nn.Parameter(torch.zeros(H))
        self.register_buffer("offset_v", torch.zeros(V))  # μ (centering; zero for the plain RBM)
        self.register_buffer("offset_h", torch.zeros(H))  # λ
        self.register_buffer("chains", torch.zeros(self.num_chains, V))
        self.register_buffer("chains_started", torch.zeros((), dtype=torch.bool))
        self.register_statistics(V)
        self._batch_means: Optional[tuple[Tensor, Tensor]] = None

    # --- the energy ---------------------------------------------------------------------------------
    def params(self) -> tuple[Tensor, Tensor, Tensor]:
        """(W, b, c) of the plain RBM this (possibly centered) RBM is."""
        return self.W, self.b - self.W @ self.offset_h, self.c - self.offset_v @ self.W

    def free_energy(self, v: Tensor) -> Tensor:
        return bernoulli_free_energy(v, *self.params())

    def hidden_probs(self, v: Tensor) -> Tensor:
        W, _, c = self.params()
        return torch.sigmoid(v @ W + c)

    def visible_mean(self, h: Tensor) -> Tensor:
        """E[v | h]: p(v_i = 1 | h) for binary units."""
        W, b, _ = self.params()
        return torch.sigmoid(h @ W.t() + b)

    @torch.no_grad()
    def reconstruction_error(self, v: Tensor, hidden_probs: Tensor) -> Tensor:
        """Σ_i (v_i - E[v_i | h = p(h|v)])^2 per example: the mean-field up-down reconstruction."""
        return ((v - self.visible_mean(hidden_probs)) ** 2).sum(-1)

    def gibbs(self, v: Tensor, sweeps: int) -> Tensor:
        return gibbs_sweeps(v, *self.params(), sweeps)

    # --- training -----------------------------------------------------------------------------------
    @torch.no_grad()
    def initialize(self, x: Tensor, y: Optional[Tensor]) -> None:
        v = flat(x)
        if self.config.centering:
            self.move_offsets(v.mean(0), torch.full_like(self.offset_h, 0.5))
        if self.config.data_init_visible_bias:
            # b such that the plain RBM's visible bias is the log-odds of the batch's smoothed pixel means
            self.b.copy_(ais.base_rate_biases(v.mean(0), len(v)).to(self.b) + self.W @ self.offset_h)

    @torch.no_grad()
    def move_offsets(self, mu: Tensor, lam: Tensor) -> None:
        """New offsets, with b and c shifted so that the plain RBM (W, b - Wλ, c - Wᵀμ) stays the same."""
        self.b += self.W @ (lam - self.offset_h)
        self.c += (mu - self.offset_v) @ self.W
        self.offset_v.copy_(mu)
        self.offset_h.copy_(lam)

    def training_loss(self, x: Tensor, y: Optional[Tensor], phase: str) -> PhaseLoss:
        v = flat(x)
        self.observe(v)
        negative = self.negatives(v, self.chains, self.chains_started, self.gibbs)
        f_data, f_model = self.free_energy(v), self.free_energy(negative)
        loss = f_data.mean() - f_model.mean()  # the CD surrogate: its gradient is the CD update
        hidden = self.hidden_probs(v)
        metrics = {
            "free_energy_data": f_data.mean().detach(),
            "free_energy_model": f_model.mean().detach(),
            "hidden_mean": hidden.mean().detach(),
        }
        if self.config.sparsity_cost > 0:
            penalty = sparsity_penalty(hidden, self.config.sparsity_target)
            loss = loss + self.config.sparsity_cost * penalty
            metrics["sparsity_penalty"] = penalty.detach()
        metrics["reconstruction_error"] = self.reconstruction_error(v, hidden.detach()).mean()
        metrics["loss"] = loss.detach()
        self._batch_means = (v.mean(0).detach(), hidden.mean(0).detach())
        return loss, metrics

    @torch.no_grad()
    def after_step(self, phase: str) -> None:
        if self.config.centering and self._batch_means is not None:
            r = self.config.centering_rate
            mu, lam = self._batch_means
            self.move_offsets((1 - r) * self.offset_v + r * mu, (1 - r) * self.offset_h + r * lam)
        self._batch_means = None

    @torch.no_grad()
    def validation_step(self, x: Tensor, y: Optional[Tensor]) -> Metrics:
        """Free energy, the free-energy gap to the training reference set, reconstruction error, mean
        hidden activation; on an enumerable RBM also the exact NLL, which is then the ``loss``."""
        v = flat(x)
        fe, hidden = self.free_energy(v), self.hidden_probs(v)
        metrics = {
            "free_energy": fe.mean(),
            "reconstruction_error": self.reconstruction_error(v, hidden).mean(),
            "hidden_mean": hidden.mean(),
            **self.free_energy_gap(fe, self.free_energy),
        }
        exact = self.cached_exact_log_z()
        if exact is not None:
            metrics["exact_nll"] = fe.mean() + exact
            metrics["loss"] = metrics["exact_nll"]
        return metrics

    def cached_exact_log_z(self) -> Optional[float]:
        """The exact log Z, enumerated again only when the weights have changed."""
        if not ais.enumerable(*self.W.shape):
            return None
        key = tuple(t._version for t in (*self.parameters(), self.offset_v, self.offset_h))
        if getattr(self, "_exact", (None,))[0] != key:
            self._exact = (key, self.exact_log_z())
        return self._exact[1]

    # --- likelihood ---------------------------------------------------------------------------------
    def ais_path(self):
        return ais.BernoulliPath(*self.params(), self.base_rate())

    def unnormalized_log_prob(self, x: Tensor, **settings) -> Tensor:
        return -self.free_energy(flat(x))

    @torch.no_grad()
    def exact_log_z(self) -> Optional[float]:
        return ais.exact_log_z(*self.params())

    # --- sampling -----------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, label: Optional[int] = None) -> Tensor:
        """``model.sample_steps`` Gibbs sweeps from the AIS base model; shows E[v|h] of the last sweep."""
        self.check_temperature(temperature, label)
        v = self.gibbs(self.ais_path().sample_base(n), self.config.sample_steps - 1)
        return self.visible_mean(torch.bernoulli(self.hidden_probs(v))).view(n, *self.data.shape)

    @torch.no_grad()
    def sample_for_logging(self, n: int) -> Tensor:
        """PCD: the persistent chains' current states (what the gradient sees); CD: fresh samples."""
        if self.persistent and bool(self.chains_started) and n <= self.num_chains:
            return self.chains[:n].view(n, *self.data.shape)
        return self.sample(n)

    @torch.no_grad()
    def sample_reconstruct(self, x: Tensor, y: Optional[Tensor] = None, **_) -> Tensor:
        """Rows alternate: 8 inputs, then their mean-field reconstructions p(v | h = p(h|v))."""
        return alternating_rows(x, lambda x: self.visible_mean(self.hidden_probs(flat(x))))

    @torch.no_grad()
    def images(self, n: int) -> dict[str, Tensor]:
        """The first ``n`` hidden units' weights as filter images (Hinton 2010, Sec. 15)."""
        return filter_images(self.W, self.data, n)
