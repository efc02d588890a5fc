"""Deep belief network by greedy layer-wise training (Hinton, Osindero & Teh 2006).

A stack of Bernoulli RBMs (W_l, b_l, c_l), l = 1..L. The DBN's generative model is the top RBM over
(h_{L-1}, h_L) followed by the directed layers p(h_{l-1} | h_l) = σ(b_l + W_l h_l) down to v.

Training, in one `dgm train` run: layer l trains for ``model.steps_per_layer`` batches (the top layer
until the run ends) with the objective (CD-k or PCD) on samples of h_{l-1} ~ q(h_{l-1} | v) passed up
through the frozen layers below (Hinton et al. 2006, Sec. 4). Each layer has its own optimizer
(``layer1``, ``layer2``, ...), and ``phases`` names the one training now, so the engine needs no DBN
case; each layer's metrics are logged under its name.

Likelihood (Salakhutdinov & Murray 2008, Sec. 5): with q(h_l | h_{l-1}) = Π σ(c_l + h_{l-1} W_l),

    log p(v) >= E_q[ Σ_{l<L} log p(h_{l-1} | h_l) - log q(h_l | h_{l-1}) ] + E_q[-F_top(h_{L-1})] - log Z_top

estimated with ``estimator.bound_samples`` draws from q per example, and log Z_top by AIS on the top
RBM (base rate: the smoothed means of the top RBM's training inputs). The reported number is this
variational lower bound with an estimated constant: ``dgm eval`` names it so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import UserError
from ...rules import NON_EMPTY_SIZES, NON_NEGATIVE, POSITIVE, checked, checked_list
from ..base import Metrics, PhaseLoss
from ..objectives import Objective
from ..registry import register
from . import ais
from .base import AISEstimator, BoltzmannMachine, filter_images, flat, weight_decay_groups
from .rbm import bernoulli_free_energy, gibbs_sweeps, reconstruction_error


class BernoulliLayer(nn.Module):
    """One RBM of the stack: weights (inputs x outputs), input biases b, output biases c."""

    def __init__(self, n_in: int, n_out: int, init_std: float):
        super().__init__()
        self.W = nn.Parameter(torch.randn(n_in, n_out) * init_std)
        self.b = nn.Parameter(torch.zeros(n_in))
        self.c = nn.Parameter(torch.zeros(n_out))

    def up(self, v: Tensor) -> Tensor:
        return torch.sigmoid(v @ self.W + self.c)

    def down(self, h: Tensor) -> Tensor:
        return torch.sigmoid(h @ self.W.t() + self.b)

    def params(self):
        return self.W, self.b, self.c


def bernoulli_log_prob(x: Tensor, logits: Tensor) -> Tensor:
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)


@dataclass
class DBNEstimator(AISEstimator):
    bound_samples: int = 10  # draws from q(h | v) per example for the variational bound

    def __post_init__(self):
        super().__post_init__()
        if self.bound_samples < 1:
            raise UserError(f"estimator.bound_samples={self.bound_samples} is not allowed: it must be >= 1.")


@dataclass
class DBNConfig:
    hidden_units: List[int] = checked_list([500, 2000], NON_EMPTY_SIZES)  # Salakhutdinov & Murray 2008
    steps_per_layer: int = checked(10000, POSITIVE)  # batches each layer below the top trains for; the top trains to
    #   the end
    init_std: float = checked(0.01, NON_NEGATIVE)  # W ~ N(0, init_std^2) in every layer
    data_init_visible_bias: bool = True
    sample_steps: int = checked(1000, POSITIVE)  # Gibbs sweeps in the top RBM per `dgm sample` image


@register("dbn")
class DBN(BoltzmannMachine):
    representations = ("binary",)
    likelihood = "vlb"
    Config = DBNConfig
    Estimator = DBNEstimator

    def __init__(self, config: DBNConfig, data, objective: Objective):
        super().__init__(config, data, objective)
        sizes = [data.dim, *config.hidden_units]
        self.layers = nn.ModuleList(BernoulliLayer(a, b, config.init_std) for a, b in zip(sizes[:-1], sizes[1:]))
        for i, n in enumerate(sizes[:-1]):
            self.register_buffer(f"chains{i + 1}", torch.zeros(self.num_chains, n))
            self.register_buffer(f"chains_started{i + 1}", torch.zeros((), dtype=torch.bool))
        self.register_statistics(sizes[-2])  # the top RBM's inputs: its AIS base-rate model

    # --- greedy training ----------------------------------------------------------------------------
    def configure_optimizers(self, build) -> dict[str, torch.optim.Optimizer]:
        return {f"layer{i + 1}": build(weight_decay_groups(layer.parameters())) for i, layer in enumerate(self.layers)}

    def phases(self, step: int) -> tuple[str, ...]:
        return (f"layer{min((step - 1) // self.config.steps_per_layer, len(self.layers) - 1) + 1}",)

    @torch.no_grad()
    def initialize(self, x: Tensor, y: Optional[Tensor]) -> None:
        if self.config.data_init_visible_bias:
            v = flat(x)
            self.layers[0].b.copy_(ais.base_rate_biases(v.mean(0), len(v)).to(v))

    @torch.no_grad()
    def inputs_of(self, v: Tensor, layer: int) -> Tensor:
        """Samples of h_{layer} ~ q(· | v) passed up through the layers below ``layer`` (0: v itself)."""
        for lower in self.layers[:layer]:
            v = torch.bernoulli(lower.up(v))
        return v

    def training_loss(self, x: Tensor, y: Optional[Tensor], phase: str) -> PhaseLoss:
        i = int(phase[len("layer") :]) - 1
        layer = self.layers[i]
        v = self.inputs_of(flat(x), i)
        if i == len(self.layers) - 1:
            self.observe(v)
        chains, started = getattr(self, f"chains{i + 1}"), getattr(self, f"chains_started{i + 1}")
        negative = self.negatives(v, chains, started, lambda s, k: gibbs_sweeps(s, *layer.params(), k))
        loss = (
            bernoulli_free_energy(v, *layer.params()).mean() - bernoulli_free_energy(negative, *layer.params()).mean()
        )
        with torch.no_grad():
            hidden = layer.up(v)
            rec = reconstruction_error(v, hidden, layer.W, layer.b).mean()
        return loss, {
            f"{phase}_loss": loss.detach(),
            f"{phase}_reconstruction_error": rec,
            f"{phase}_hidden_mean": hidden.mean(),
        }

    @torch.no_grad()
    def validation_step(self, x: Tensor, y: Optional[Tensor]) -> Metrics:
        """Each layer's reconstruction error on its (mean-field) inputs."""
        v, metrics = flat(x), {}
        for i, layer in enumerate(self.layers):
            hidden = layer.up(v)
            metrics[f"layer{i + 1}_reconstruction_error"] = reconstruction_error(v, hidden, layer.W, layer.b).mean()
            v = hidden
        return metrics

    # --- likelihood ---------------------------------------------------------------------------------
    def estimate_kind(self) -> str:
        return (
            "variational lower bound on log p(x) (q = the recognition pass, Salakhutdinov & Murray 2008) "
            "with the top RBM's log Z estimated"
        )

    def ais_path(self):
        return ais.BernoulliPath(*self.layers[-1].params(), self.base_rate())

    @torch.no_grad()
    def exact_log_z(self) -> Optional[float]:
        return ais.exact_log_z(*self.layers[-1].params())

    def bound_terms(self, v: Tensor) -> Tensor:
        """One draw of Σ_{l<L} [log p(h_{l-1}|h_l) - log q(h_l|h_{l-1})] - F_top(h_{L-1}), h ~ q."""
        total = torch.zeros(len(v), dtype=torch.float64, device=v.device)
        for layer in self.layers[:-1]:
            logits = v @ layer.W + layer.c
            h = torch.bernoulli(torch.sigmoid(logits))
            total += (bernoulli_log_prob(v, h @ layer.W.t() + layer.b) - bernoulli_log_prob(h, logits)).double()
            v = h
        return total - bernoulli_free_energy(v, *self.layers[-1].params()).double()

    @torch.no_grad()
    def unnormalized_log_prob(self, x: Tensor, bound_samples: int = DBNEstimator.bound_samples, **_) -> Tensor:
        v = flat(x)
        return torch.stack([self.bound_terms(v) for _ in range(bound_samples)]).mean(0)

    # --- sampling -----------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, label: Optional[int] = None) -> Tensor:
        """Gibbs sampling in the top RBM from its base-rate model, then one top-down pass."""
        self.check_temperature(temperature, label)
        top = self.layers[-1]
        h = torch.bernoulli(torch.sigmoid(self.base_rate()).expand(n, -1))
        h = gibbs_sweeps(h, *top.params(), self.config.sample_steps)
        for layer in reversed(list(self.layers)[1:-1]):
            h = torch.bernoulli(layer.down(h))
        v = self.layers[0].down(h) if len(self.layers) > 1 else top.down(torch.bernoulli(top.up(h)))
        return v.view(n, *self.data.shape)

    @torch.no_grad()
    def images(self, n: int) -> dict[str, Tensor]:
        """The first layer's weights as filter images."""
        return filter_images(self.layers[0].W, self.data, n)
