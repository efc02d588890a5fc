"""Deep Boltzmann machine with two hidden layers (Salakhutdinov & Hinton 2009).

    E(v, h1, h2) = -v·b - h1·c1 - h2·c2 - vᵀ W1 h1 - h1ᵀ W2 h2

v and h2 are independent given h1, so with h1 summed out the DBM is an RBM whose "visible" layer is
(v, h2) and whose hidden layer is h1: weights [W1; W2ᵀ], visible biases [b; c2], hidden biases c1.
Gibbs sweeps, exact enumeration (when h1 has <= 20 units) and AIS (base model: the base-rate visible
biases and uniform h2; Salakhutdinov & Hinton 2009, Sec. 4) all use that view (``joint``).

Training (their Sec. 3): the data term at the mean-field posterior q(h1) q(h2) (fixed-point updates
μ1 = σ(v W1 + μ2 W2ᵀ + c1), μ2 = σ(μ1 W2 + c2)), the model term from persistent chains (PCD) or from
k sweeps started at (v, h2 ~ q) (CD). The loss mean E(v, μ1, μ2) - mean F(v⁻, h2⁻) has the DBM's
stochastic-approximation gradient (F: the joint view's free energy, h1 summed out).

Pretraining (their Sec. 3.1), with ``model.pretrain_steps`` > 0, in the same run before the joint
training, one optimizer per phase as the DBN's layers have (``pretrain1``, ``pretrain2``, then
``model``): the first RBM (v, h1) has its visible layer doubled with tied weights, so
p(h1|v) = σ(2 v W1 + c1) while p(v|h1) = σ(W1 h1 + b); the second (h1, h2), trained on samples of
that p(h1|v), has its hidden layer doubled, so p(h1|h2) = σ(2 W2 h2 + b') and p(h2|h1) = σ(h1 W2 + c2).
Each is a plain RBM over its doubled layer (weights [W1; W1], resp. [W2, W2]), trained by CD-k. When
the two are composed into the DBM, h1's input from each side is halved: p(h1|v, h2) = σ(v W1 + W2 h2 +
(c1 + b')/2), i.e. the DBM takes W1, W2 as they are and the mean of the two biases of h1. This makes
the pretrained DBM's h1 see as much input as each RBM's did, neither double-counted nor lost.

Likelihood: the mean-field lower bound log p(v) >= -E(v, μ1, μ2) + H(μ1) + H(μ2) - log Z, with log Z
estimated by AIS: a variational bound with an estimated constant, named so by ``dgm eval``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch
from torch import Tensor, nn

from ...rules import NON_NEGATIVE, POSITIVE, SIZES, Rule, checked, checked_list
from ..base import Metrics, PhaseLoss
from ..nn.host_flags import known_set, set_known
from ..objectives import Objective
from ..registry import register
from . import ais
from .base import BoltzmannMachine, filter_images, flat, weight_decay_groups
from .rbm import bernoulli_free_energy, gibbs_sweeps, reconstruction_error


def bernoulli_entropy(mu: Tensor) -> Tensor:
    mu = mu.clamp(1e-7, 1 - 1e-7)
    return -(mu * mu.log() + (1 - mu) * (1 - mu).log()).sum(-1)


#: the two hidden layers' sizes
TWO_LAYERS: Rule = (lambda v: len(v) == 2 and SIZES[0](v), "two layer sizes [h1, h2], each >= 1")
#: the pretraining's own learning rate, or null for the optimizer's
LEARNING_RATE: Rule = (lambda v: v is None or v > 0, "null or > 0")


@dataclass
class DBMConfig:
    hidden_units: List[int] = checked_list([500, 1000], TWO_LAYERS)  # Salakhutdinov & Hinton 2009
    mean_field_steps: int = checked(10, POSITIVE)  # fixed-point updates of the mean-field posterior
    init_std: float = checked(0.01, NON_NEGATIVE)  # W ~ N(0, init_std^2) in both layers
    data_init_visible_bias: bool = True
    sample_steps: int = checked(1000, POSITIVE)  # Gibbs sweeps per image of dgm sample
    pretrain_steps: int = checked(0, NON_NEGATIVE)  # > 0: batches of greedy pretraining for each of the two RBMs
    #   (Salakhutdinov & Hinton 2009)
    pretrain_k: int = checked(1, POSITIVE)  # Gibbs sweeps of the pretraining RBMs' CD
    pretrain_lr: Optional[float] = checked(None, LEARNING_RATE)  # the pretraining optimizers' learning rate (null:
    #   optimizer.lr)


@register("dbm")
class DBM(BoltzmannMachine):
    representations = ("binary",)
    objectives = ("pcd", "cd")
    likelihood = "vlb"
    Config = DBMConfig

    def __init__(self, config: DBMConfig, data, objective: Objective):
        super().__init__(config, data, objective)
        V, (H1, H2) = data.dim, config.hidden_units
        self.W1 = nn.Parameter(torch.randn(V, H1) * config.init_std)
        self.W2 = nn.Parameter(torch.randn(H1, H2) * config.init_std)
        self.b, self.c1, self.c2 = (nn.Parameter(torch.zeros(n)) for n in (V, H1, H2))
        self.register_buffer("chains", torch.zeros(self.num_chains, V + H2))  # states of (v, h2)
        self.register_buffer("chains_started", torch.zeros((), dtype=torch.bool))
        self.register_statistics(V)
        if config.pretrain_steps:
            self.pretrain_b2 = nn.Parameter(torch.zeros(H1))  # the second RBM's biases of h1
            self.register_buffer("composed", torch.zeros((), dtype=torch.bool))

    def joint(self) -> tuple[Tensor, Tensor, Tensor]:
        """The RBM over (v, h2) x h1 that this DBM is once h1 is summed out."""
        return torch.cat([self.W1, self.W2.t()]), torch.cat([self.b, self.c2]), self.c1

    def mean_field(self, v: Tensor) -> tuple[Tensor, Tensor]:
        mu1 = torch.sigmoid(v @ self.W1 + self.c1)
        mu2 = torch.sigmoid(mu1 @ self.W2 + self.c2)
        for _ in range(self.config.mean_field_steps):
            mu1 = torch.sigmoid(v @ self.W1 + mu2 @ self.W2.t() + self.c1)
            mu2 = torch.sigmoid(mu1 @ self.W2 + self.c2)
        return mu1, mu2

    def energy(self, v: Tensor, h1: Tensor, h2: Tensor) -> Tensor:
        return (
            -(v @ self.b) - h1 @ self.c1 - h2 @ self.c2 - ((v @ self.W1) * h1).sum(-1) - ((h1 @ self.W2) * h2).sum(-1)
        )

    # --- greedy pretraining (Salakhutdinov & Hinton 2009, Sec. 3.1) ------------------------------------
    PRETRAIN_PHASES = ("pretrain1", "pretrain2")

    def configure_optimizers(self, build) -> dict[str, torch.optim.Optimizer]:
        joint = [p for n, p in self.named_parameters() if n != "pretrain_b2"]
        optimizers = {"model": build(weight_decay_groups(joint))}
        if self.config.pretrain_steps:
            lr = {} if self.config.pretrain_lr is None else {"lr": self.config.pretrain_lr}
            for phase in self.PRETRAIN_PHASES:
                optimizers[phase] = build(weight_decay_groups(self.pretrain_params(phase)), **lr)
        return optimizers

    def phases(self, step: int) -> tuple[str, ...]:
        stage = (step - 1) // self.config.pretrain_steps if self.config.pretrain_steps else 2
        return (self.PRETRAIN_PHASES[stage],) if stage < 2 else ("model",)

    def pretrain_params(self, phase: str) -> list[Tensor]:
        return [self.W1, self.b, self.c1] if phase == "pretrain1" else [self.W2, self.pretrain_b2, self.c2]

    def pretrain_rbm(self, phase: str) -> tuple[Tensor, Tensor, Tensor]:
        """(W, b, c) of the pretraining RBM over its doubled layer: [W1; W1] over (v, v) x h1, or
        [W2, W2] over h1 x (h2, h2')."""
        if phase == "pretrain1":
            return torch.cat([self.W1, self.W1]), torch.cat([self.b, self.b]), self.c1
        return torch.cat([self.W2, self.W2], 1), self.pretrain_b2, torch.cat([self.c2, self.c2])

    def pretrain_loss(self, v: Tensor, phase: str) -> PhaseLoss:
        """CD-k on the doubled RBM; the second one's data are samples of the first's p(h1|v) = σ(2 v W1 + c1)."""
        with torch.no_grad():
            inputs = (
                torch.cat([v, v], 1)
                if phase == "pretrain1"
                else torch.bernoulli(torch.sigmoid(2 * v @ self.W1 + self.c1))
            )
            negative = gibbs_sweeps(inputs, *self.pretrain_rbm(phase), self.config.pretrain_k)
        W, b, c = self.pretrain_rbm(phase)
        loss = bernoulli_free_energy(inputs, W, b, c).mean() - bernoulli_free_energy(negative, W, b, c).mean()
        with torch.no_grad():
            hidden = torch.sigmoid(inputs @ W + c)
            rec = reconstruction_error(inputs, hidden, W, b).mean()
        return loss, {
            f"{phase}_loss": loss.detach(),
            f"{phase}_reconstruction_error": rec,
            f"{phase}_hidden_mean": hidden.mean(),
        }

    @torch.no_grad()
    def compose(self) -> None:
        """The pretrained RBMs as one DBM: W1, W2 as they are (each doubled input halved), h1's bias the
        mean of the two RBMs' (c1 + b') / 2. Once, when the joint training starts."""
        self.c1.copy_((self.c1 + self.pretrain_b2) / 2)
        set_known(self.composed)

    # --- training -----------------------------------------------------------------------------------
    @torch.no_grad()
    def initialize(self, x: Tensor, y: Optional[Tensor]) -> None:
        if self.config.data_init_visible_bias:
            v = flat(x)
            self.b.copy_(ais.base_rate_biases(v.mean(0), len(v)).to(v))

    def training_loss(self, x: Tensor, y: Optional[Tensor], phase: str) -> PhaseLoss:
        v = flat(x)
        self.observe(v)
        if phase in self.PRETRAIN_PHASES:
            return self.pretrain_loss(v, phase)
        if self.config.pretrain_steps and not known_set(self.composed):
            self.compose()
        with torch.no_grad():
            mu1, mu2 = self.mean_field(v)
            start = torch.cat([v, torch.bernoulli(mu2)], 1)
        negative = self.negatives(
            start, self.chains, self.chains_started, lambda s, k: gibbs_sweeps(s, *self.joint(), k)
        )
        e_data = self.energy(v, mu1, mu2)
        f_model = bernoulli_free_energy(negative, *self.joint())
        loss = e_data.mean() - f_model.mean()
        return loss, {
            "loss": loss.detach(),
            "h1_mean": mu1.mean(),
            "h2_mean": mu2.mean(),
            "mean_field_bound_unnormalized": (
                -e_data.detach() + bernoulli_entropy(mu1) + bernoulli_entropy(mu2)
            ).mean(),
        }

    @torch.no_grad()
    def validation_step(self, x: Tensor, y: Optional[Tensor]) -> Metrics:
        """The mean-field bound without log Z, and its gap to the training reference set."""
        bound = self.unnormalized_log_prob(x)
        metrics = {
            "mean_field_bound_unnormalized": bound.mean(),
            **self.free_energy_gap(-bound, lambda r: -self.unnormalized_log_prob(r)),
        }
        if "free_energy_gap" in metrics:
            metrics["bound_gap"] = metrics.pop("free_energy_gap")
        return metrics

    # --- likelihood ---------------------------------------------------------------------------------
    def estimate_kind(self) -> str:
        return "mean-field variational lower bound on log p(x) (Salakhutdinov & Hinton 2009) with log Z estimated"

    def ais_path(self):
        base = torch.cat([self.base_rate(), torch.zeros_like(self.c2)])  # uniform h2 in the base model
        return ais.BernoulliPath(*self.joint(), base)

    @torch.no_grad()
    def exact_log_z(self) -> Optional[float]:
        return ais.exact_log_z(*self.joint())

    @torch.no_grad()
    def unnormalized_log_prob(self, x: Tensor, **_) -> Tensor:
        v = flat(x)
        mu1, mu2 = self.mean_field(v)
        return -self.energy(v, mu1, mu2) + bernoulli_entropy(mu1) + bernoulli_entropy(mu2)

    # --- sampling -----------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, label: Optional[int] = None) -> Tensor:
        """Gibbs sweeps of (v, h2) | h1 from the AIS base model; shows p(v | h1) of the last sweep."""
        self.check_temperature(temperature, label)
        path = self.ais_path()
        W, b, c = self.joint()
        x = gibbs_sweeps(path.sample_base(n), W, b, c, self.config.sample_steps - 1)
        h1 = torch.bernoulli(torch.sigmoid(x @ W + c))
        return torch.sigmoid(h1 @ self.W1.t() + self.b).view(n, *self.data.shape)

    @torch.no_grad()
    def sample_for_logging(self, n: int) -> Tensor:
        if self.persistent and bool(self.chains_started) and n <= self.num_chains:
            return self.chains[:n, : self.data.dim].view(n, *self.data.shape)
        return self.sample(n)

    @torch.no_grad()
    def images(self, n: int) -> dict[str, Tensor]:
        """The first layer's weights W1 as filter images."""
        return filter_images(self.W1, self.data, n)
