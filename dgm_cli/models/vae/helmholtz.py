"""The Helmholtz machine (Dayan, Hinton, Neal & Zemel 1995) on sigmoid belief networks, trained by
wake-sleep (Hinton, Dayan, Frey & Neal 1995) or reweighted wake-sleep (Bornschein & Bengio 2015).

Generative model p, top-down, layers h_L, ..., h_1 of binary units and x = h_0:

    p(h_L) = prod_j Bern(sigmoid(b_j)),   p(h_{l-1} | h_l) = prod_j Bern(sigmoid(W_l h_l + c_l)_j)

Recognition model q, bottom-up: q(h_l | h_{l-1}) = prod_j Bern(sigmoid(V_l h_{l-1} + d_l)_j).

Two optimizers, one per model, each a phase of the step protocol: ``"generative"`` (p) then
``"recognition"`` (q).

objective=wake_sleep (Hinton et al. 1995):
    wake  (generative phase):  h ~ q(h|x);        maximise log p(x, h)       over p
    sleep (recognition phase): (x, h) ~ p(x, h);  maximise log q(h|x)        over q
objective=rws (Bornschein & Bengio 2015, Sec. 3), k samples h_i ~ q(h|x), normalised importance
weights w~_i = w_i / sum_j w_j with w_i = p(x, h_i) / q(h_i|x):
    p update (generative phase):        maximise sum_i w~_i log p(x, h_i)       (eq. 9)
    q wake update (recognition phase):  maximise sum_i w~_i log q(h_i|x)        (eq. 11)
    and, with ``objective.q_sleep``, the average of that and the sleep update above (their "wake+sleep").

The weights are constants in each update (the estimators of the papers). ``dgm eval`` reports
log p(x) estimated by importance sampling with q as the proposal, log (1/k) sum_i w_i -- a stochastic
lower bound on log p(x) (Burda et al. 2015, Thm. 1), the estimator Bornschein & Bengio report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from ...rules import NON_EMPTY_SIZES, checked_list
from ..base import DataSpec, Metrics, PhaseLoss
from ..nn import distributions as D
from ..objectives import RWS, Objective
from ..registry import register
from .base import LatentVariableModel
from .importance import importance_log_likelihood


@dataclass
class HelmholtzConfig:
    layers: list = checked_list([200, 200], NON_EMPTY_SIZES)  # binary units of h_1 (next to x), ..., h_L (top)


@register("helmholtz")
class HelmholtzMachine(LatentVariableModel):
    objectives = ("rws", "wake_sleep")
    representations = ("binary",)
    Config = HelmholtzConfig

    def __init__(self, config: HelmholtzConfig, data: DataSpec, objective: Objective):
        super().__init__(config, data, objective)
        self.rws = isinstance(self.objective, RWS)
        self.k = self.objective.k if self.rws else 1  # samples of q(h|x) per example
        sizes = [data.dim, *config.layers]
        self.prior_logits = nn.Parameter(torch.zeros(sizes[-1]))  # p(h_L)
        # p(h_{l-1} | h_l), stored bottom-up: generative[l-1] maps h_l to the logits of h_{l-1}
        self.generative = nn.ModuleList([nn.Linear(b, a) for a, b in zip(sizes[:-1], sizes[1:])])
        self.recognition = nn.ModuleList([nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:])])  # q(h_l | h_{l-1})

    # --- the two models -------------------------------------------------------------------
    def generative_parameters(self) -> list[nn.Parameter]:
        return [self.prior_logits, *self.generative.parameters()]

    def configure_optimizers(self, build) -> dict[str, torch.optim.Optimizer]:
        return {"generative": build(self.generative_parameters()), "recognition": build(self.recognition.parameters())}

    def phases(self, step: int) -> tuple[str, ...]:
        return ("generative", "recognition")

    def recognize(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """h ~ q(h|x) layer by layer: ([h_1, ..., h_L], log q(h|x)); x is (B, D)."""
        hs, log_q, h = [], x.new_zeros(x.shape[0]), x
        for layer in self.recognition:
            logits = layer(h)
            h = D.bernoulli_sample(logits)
            log_q = log_q + D.bernoulli_log_prob(logits, h)
            hs.append(h)
        return hs, log_q

    def log_q(self, x: Tensor, hs: list[Tensor]) -> Tensor:
        """log q(h|x) of given samples."""
        below = [x, *hs[:-1]]
        return sum(D.bernoulli_log_prob(layer(a), h) for layer, a, h in zip(self.recognition, below, hs))

    def log_joint(self, x: Tensor, hs: list[Tensor]) -> Tensor:
        """log p(x, h) = log p(h_L) + sum_l log p(h_{l-1} | h_l)."""
        top = hs[-1]
        log_p = D.bernoulli_log_prob(self.prior_logits.expand_as(top), top)
        below = [x, *hs[:-1]]
        return log_p + sum(D.bernoulli_log_prob(layer(h), a) for layer, a, h in zip(self.generative, below, hs))

    def dream(self, n: int) -> tuple[Tensor, list[Tensor], Tensor]:
        """(x, [h_1, ..., h_L]) ~ p ancestrally, and the logits of p(x | h_1)."""
        top = D.bernoulli_sample(self.prior_logits.expand(n, -1))
        hs = [top]
        for layer in reversed(self.generative):
            logits = layer(hs[0])
            hs.insert(0, D.bernoulli_sample(logits))
        return hs[0], hs[1:], logits

    # --- training -----------------------------------------------------------------------------
    def _weighted(self, x: Tensor, k: int) -> tuple[Tensor, list[Tensor], Tensor, Tensor]:
        """k samples per example: (x repeated, [h], log q, log p), log q and log p of shape (k*B,)."""
        x_rep = x.flatten(1).repeat(k, 1)  # row i*B + j: sample i of example j
        hs, log_q = self.recognize(x_rep)
        return x_rep, hs, log_q, self.log_joint(x_rep, hs)

    def sleep_loss(self, n: int) -> Tensor:
        """-log q(h|x) on dreamed (x, h) ~ p: the sleep update of q."""
        with torch.no_grad():
            x, hs, _ = self.dream(n)
        return -self.log_q(x, hs).mean()

    def training_loss(self, x: Tensor, y: Optional[Tensor], phase: str) -> PhaseLoss:
        b, rws = x.shape[0], self.rws
        if phase == "recognition" and not rws:
            loss = self.sleep_loss(b)
            return loss, {"loss_sleep": loss.detach()}
        k = self.k if rws else 1
        with torch.no_grad():
            x_rep, hs, log_q, log_p = self._weighted(x, k)
            log_w = (log_p - log_q).view(k, b)
            weights = torch.softmax(log_w, dim=0)  # w~_i, constants in the update
            bound = (torch.logsumexp(log_w, 0) - math.log(k)).mean()
        if phase == "generative":
            log_p = self.log_joint(x_rep, hs).view(k, b)
            loss = -(weights * log_p).sum(0).mean()
            return loss, {"loss_wake": loss.detach(), "loss": -bound, f"log_px_bound_k{k}": bound}
        loss = -(weights * self.log_q(x_rep, hs).view(k, b)).sum(0).mean()
        metrics = {"loss_q_wake": loss.detach()}
        if self.objective.q_sleep:
            sleep = self.sleep_loss(b)
            metrics["loss_sleep"] = sleep.detach()
            loss = 0.5 * (loss + sleep)
        return loss, metrics

    @torch.no_grad()
    def validation_step(self, x: Tensor, y: Optional[Tensor]) -> Metrics:
        """The ELBO with one sample of q (a cheap lower bound; ``dgm eval`` gives the k-sample estimate)."""
        _, _, log_q, log_p = self._weighted(x, 1)
        elbo = (log_p - log_q).mean()
        return {"loss": -elbo, "elbo": elbo}

    # --- likelihood and samples -----------------------------------------------------------------
    @torch.no_grad()
    def log_likelihood(self, x: Tensor, y: Optional[Tensor] = None, k: int = 5000, **_) -> Tensor:
        def log_weights(m: int) -> Tensor:
            _, _, log_q, log_p = self._weighted(x, m)
            return (log_p - log_q).view(m, x.shape[0])

        return importance_log_likelihood(log_weights, k, x.shape[0])

    def estimator(self, k: int = 5000, **_) -> str:
        return f"importance sampling, k={k} samples of the recognition model q(h|x) (Bornschein & Bengio 2015)"

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, label: Optional[int] = None) -> Tensor:
        """Means of p(x | h_1) for h drawn ancestrally from the generative model."""
        self.check_plain_sampling(temperature, label, "its generative model")
        _, _, logits = self.dream(n)
        return torch.sigmoid(logits).view(n, *self.data.shape)
