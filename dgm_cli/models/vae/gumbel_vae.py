"""A VAE with categorical latents trained through the Gumbel-softmax / Concrete relaxation
(Jang, Gu & Poole 2017; Maddison, Mnih & Teh 2017).

The latent code c is ``num_latents`` independent categorical variables of ``num_categories`` classes,
uniform under the prior p(c). The encoder gives the logits of q(c|x); a relaxed sample is

    y_k = softmax((log pi_k + g_k) / tau),   g_k ~ Gumbel(0, 1)                (Jang et al., eq. 2)

which becomes the one-hot sample argmax_k(log pi_k + g_k) (the Gumbel-max trick) as tau -> 0. With
``straight_through`` the forward pass uses that one-hot sample and the backward pass the relaxed one's
gradient (Jang et al., Sec. 2.2). The temperature is annealed as tau = max(tau_min, tau_0 exp(-r t)),
t the training step, updated every ``anneal_every`` steps (Jang et al., Sec. 4).

Training maximises E_y[log p(x|y)] - KL(q(c|x) || p(c)), with the categorical KL in closed form (as in
Jang et al.'s code; Maddison et al. use the relaxed densities instead): a relaxed objective, since the
decoder sees soft codes. Validation and evaluation use the discrete model itself: the ELBO with
one-hot c ~ q(c|x), and log p(x) estimated by importance sampling with the exact categorical posterior
q(c|x) as the proposal (not the relaxed one): log (1/k) sum_i p(x|c_i) p(c_i) / q(c_i|x), a stochastic
lower bound on log p(x) (Burda et al. 2015, Thm. 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import UserError
from ...rules import NON_EMPTY_SIZES, NON_NEGATIVE, POSITIVE, at_least, checked, checked_choice, checked_list
from ..base import DataSpec, Metrics, PhaseLoss
from ..nn import distributions as D
from ..nn.mlp import ACTIVATIONS, mlp
from ..objectives import Objective
from ..registry import register
from .base import LatentVariableModel
from .importance import importance_log_likelihood
from .networks import MLPDecoder


def gumbel_softmax(logits: Tensor, temperature: float | Tensor, hard: bool = False) -> Tensor:
    """A Gumbel-softmax sample over the last dimension (Jang et al. 2017, eq. 2); ``hard``: the one-hot
    argmax in the forward pass with the relaxed sample's gradient (straight-through)."""
    u = torch.rand_like(logits).clamp(torch.finfo(logits.dtype).tiny, 1.0)
    y = torch.softmax((logits - torch.log(-torch.log(u))) / temperature, dim=-1)
    if not hard:
        return y
    return _StraightThrough.apply(y, F.one_hot(y.argmax(-1), y.shape[-1]).to(y.dtype))


class _StraightThrough(torch.autograd.Function):
    """Forward: the one-hot sample, exactly; backward: the gradient goes to the relaxed sample unchanged."""

    @staticmethod
    def forward(ctx, relaxed: Tensor, one_hot: Tensor) -> Tensor:
        return one_hot

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None


def categorical_kl_uniform(log_q: Tensor) -> Tensor:
    """KL(q || Uniform(K)) = sum_k q_k (log q_k + log K), summed over all but the batch dimension."""
    k = log_q.shape[-1]
    return (log_q.exp() * (log_q + math.log(k))).flatten(1).sum(1)


@dataclass
class GumbelVAEConfig:
    num_latents: int = checked(20, POSITIVE)  # categorical variables in the code (Jang et al.: 20 on MNIST)
    num_categories: int = checked(10, at_least(2))  # classes of each
    hidden: list = checked_list([512, 256], NON_EMPTY_SIZES)  # encoder sizes; the decoder mirrors them
    activation: str = checked_choice("relu", ACTIVATIONS)  # {choices}
    temperature: float = checked(1.0, POSITIVE)  # tau_0
    temperature_min: float = checked(0.5, POSITIVE)  # tau never falls below this
    anneal_rate: float = checked(1.0e-4, NON_NEGATIVE)  # r in tau = max(tau_min, tau_0 exp(-r t))
    anneal_every: int = checked(500, POSITIVE)  # steps between temperature updates (N in Jang et al.)
    straight_through: bool = False  # one-hot forward, relaxed gradient backward


@register("gumbel_vae")
class GumbelVAE(LatentVariableModel):
    objectives = ("elbo",)
    representations = ("binary",)
    Config = GumbelVAEConfig

    @classmethod
    def check_settings(cls, config: GumbelVAEConfig, objective: Objective, data: Optional[DataSpec] = None) -> None:
        super().check_settings(config, objective, data)
        if not objective.plain:
            raise UserError(
                "model=gumbel_vae trains on the plain ELBO; drop objective.kl_warmup_steps and objective.free_bits."
            )
        if config.temperature_min > config.temperature:
            raise UserError(
                f"model.temperature_min={config.temperature_min} is above model.temperature="
                f"{config.temperature}: the temperature anneals down to its minimum, so the minimum "
                "must be <= model.temperature."
            )

    def __init__(self, config: GumbelVAEConfig, data: DataSpec, objective: Objective):
        super().__init__(config, data, objective)
        c = config
        self.code = (c.num_latents, c.num_categories)
        self.encoder = mlp([data.dim, *c.hidden, c.num_latents * c.num_categories], c.activation)
        self.decoder = MLPDecoder(data.shape, list(c.hidden), c.num_latents * c.num_categories, c.activation, 1)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))  # the annealing clock

    def temperature(self) -> Tensor:
        """tau = max(tau_min, tau_0 exp(-r t)), t rounded down to a multiple of ``anneal_every``: a 0-dim
        tensor computed from the step buffer on its device (a training step never reads the clock back)."""
        c = self.config
        t = torch.div(self.step, c.anneal_every, rounding_mode="floor") * c.anneal_every
        return (c.temperature * torch.exp(-c.anneal_rate * t.double())).clamp(min=c.temperature_min)

    def posterior_log_probs(self, x: Tensor) -> Tensor:
        """log q(c|x), shape (B, num_latents, num_categories)."""
        return torch.log_softmax(self.encoder(x.flatten(1)).view(-1, *self.code), dim=-1)

    def log_px_given_code(self, code: Tensor, x: Tensor) -> Tensor:
        """log p(x|c) for one-hot or relaxed codes (B, num_latents, num_categories)."""
        return D.bernoulli_log_prob(self.decoder(code.flatten(1))[:, 0], x)

    # --- training ----------------------------------------------------------------------
    def training_loss(self, x: Tensor, y: Optional[Tensor], phase: str) -> PhaseLoss:
        log_q = self.posterior_log_probs(x)
        tau = self.temperature()
        rec = self.log_px_given_code(gumbel_softmax(log_q, tau, self.config.straight_through), x)
        kl = categorical_kl_uniform(log_q)
        loss = (kl - rec).mean()
        return loss, {
            "loss": loss.detach(),
            "relaxed_elbo": -loss.detach(),
            "reconstruction": rec.mean().detach(),
            "kl": kl.mean().detach(),
            "temperature": tau,
        }

    def after_step(self, phase: str) -> None:
        self.step += 1

    def discrete_elbo(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(log p(x|c), KL) per example with one-hot c ~ q(c|x): the ELBO of the discrete model."""
        log_q = self.posterior_log_probs(x)
        code = F.one_hot(torch.distributions.Categorical(logits=log_q).sample(), self.code[1]).to(log_q.dtype)
        return self.log_px_given_code(code, x), categorical_kl_uniform(log_q)

    @torch.no_grad()
    def validation_step(self, x: Tensor, y: Optional[Tensor]) -> Metrics:
        rec, kl = self.discrete_elbo(x)
        elbo = rec - kl
        return {"loss": -elbo.mean(), "elbo": elbo.mean(), "reconstruction": rec.mean(), "kl": kl.mean()}

    # --- likelihood --------------------------------------------------------------------
    def log_weights(self, x: Tensor, log_q: Tensor, k: int) -> Tensor:
        """log p(x|c_i) + log p(c_i) - log q(c_i|x) for k one-hot c_i ~ q(c|x), shape (k, B)."""
        b = x.shape[0]
        idx = torch.distributions.Categorical(logits=log_q).sample((k,))  # (k, B, num_latents)
        code = F.one_hot(idx, self.code[1]).to(log_q.dtype)
        log_q_code = (code * log_q).flatten(2).sum(2)
        log_prior = -self.code[0] * math.log(self.code[1])
        x_rep = x.unsqueeze(0).expand(k, *x.shape).reshape(k * b, *x.shape[1:])
        log_px = self.log_px_given_code(code.flatten(0, 1), x_rep).view(k, b)
        return log_px + log_prior - log_q_code

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, y: Optional[Tensor] = None, k: int = 5000, **_) -> Tensor:
        log_q = self.posterior_log_probs(x)
        return importance_log_likelihood(lambda m: self.log_weights(x, log_q, m), k, x.shape[0])

    def estimator(self, k: int = 5000, **_) -> str:
        return (
            f"importance sampling, k={k} one-hot codes from the exact categorical posterior q(c|x) "
            "(not the relaxed one; Burda et al. 2015's bound)"
        )

    @torch.no_grad()
    def extra_eval(self, x: Tensor, y: Optional[Tensor] = None) -> Metrics:
        rec, kl = self.discrete_elbo(x)
        return {"elbo": (rec - kl).sum(), "reconstruction": rec.sum(), "kl": kl.sum()}

    # --- generation ----------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, label: Optional[int] = None) -> Tensor:
        """Means of p(x|c) for codes c drawn from the uniform prior."""
        self.check_plain_sampling(temperature, label, "its discrete prior")
        device = self.step.device
        idx = torch.randint(self.code[1], (n, self.code[0]), device=device)
        code = F.one_hot(idx, self.code[1]).float()
        return torch.sigmoid(self.decoder(code.flatten(1))[:, 0])
