"""Gaussian diffusion: noise schedules, the forward process q, the reverse model's Gaussians and the
terms of the variational bound (Ho et al. 2020, "Denoising Diffusion Probabilistic Models";
Nichol & Dhariwal 2021, "Improved Denoising Diffusion Probabilistic Models").

Steps are numbered 0..T-1 in code; step t here is t+1 in the papers. With abar_t = prod_{s<=t} (1 - beta_s):

    q(x_t | x_0)          = N(sqrt(abar_t) x_0, (1 - abar_t) I)                          (Ho eq. 4)
    q(x_{t-1} | x_t, x_0) = N(c1_t x_0 + c2_t x_t, betatilde_t I),                       (Ho eq. 6-7)
        c1_t = beta_t sqrt(abar_{t-1}) / (1 - abar_t), c2_t = (1 - abar_{t-1}) sqrt(1 - beta_t) / (1 - abar_t),
        betatilde_t = beta_t (1 - abar_{t-1}) / (1 - abar_t)
    p(x_{t-1} | x_t)      = N(mean of q's posterior at x_0 = xhat_0(x_t, eps), sigma_t^2 I),
        xhat_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)                              (Ho eq. 11)

The variance sigma_t^2 is beta_t ("fixed_large"), betatilde_t ("fixed_small"), or learned as
exp(v log beta_t + (1 - v) log betatilde_t) from an output v in [-1, 1] mapped to [0, 1]
("learned_range", Nichol & Dhariwal eq. 15). betatilde_0 = 0, so its log is taken at step 1 instead,
as both papers' code does.

The negative variational bound of one example x_0 (Ho eq. 5), in nats:

    L = KL(q(x_{T-1}|x_0) || N(0, I))                          prior term
      + sum_{t=1}^{T-1} KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t))   x_t ~ q(x_t|x_0), one draw per step
      - log p(x_0 | x_1)                                        the discretized Gaussian decoder (Ho eq. 13)
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from ..nn.distributions import log1mexp

SCHEDULES = ("linear", "cosine")
VARIANCES = ("fixed_large", "fixed_small", "learned_range")
#: half the width of one 8-bit bin on [-1, 1]: 8-bit value k sits at 2k/255 - 1
HALF_BIN = 1.0 / 255.0


def linear_betas(steps: int, max_beta: float = 0.999) -> Tensor:
    """Ho et al. 2020 (Sec. 4): beta from 1e-4 to 0.02 over T = 1000, scaled by 1000/T for other T
    (Nichol & Dhariwal 2021's code), so that abar_T stays near 0 whatever T; clipped at 0.999 (T < 20)."""
    scale = 1000.0 / steps
    return torch.linspace(scale * 1e-4, scale * 0.02, steps, dtype=torch.float64).clamp(max=max_beta)


def cosine_betas(steps: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Nichol & Dhariwal 2021, eq. 17: abar(t) = f(t)/f(0), f(t) = cos^2(((t/T + s)/(1 + s)) pi/2),
    beta_t = 1 - abar(t)/abar(t-1) clipped at 0.999."""
    t = torch.arange(steps + 1, dtype=torch.float64) / steps
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    abar = f / f[0]
    return (1 - abar[1:] / abar[:-1]).clamp(max=max_beta)


def betas_for(schedule: str, steps: int) -> Tensor:
    return {"linear": linear_betas, "cosine": cosine_betas}[schedule](steps)


def normal_kl(mean1: Tensor, log_var1: Tensor, mean2: Tensor, log_var2: Tensor) -> Tensor:
    """KL(N(mean1, var1) || N(mean2, var2)) per element, in nats."""
    return 0.5 * (
        log_var2 - log_var1 - 1.0 + torch.exp(log_var1 - log_var2) + (mean1 - mean2) ** 2 * torch.exp(-log_var2)
    )


def _log_normal_cdf_difference(upper: Tensor, lower: Tensor) -> Tensor:
    """log(Phi(upper) - Phi(lower)) for upper > lower, in the tail where both are small: reflected
    (Phi(b) - Phi(a) = Phi(-a) - Phi(-b)) so that both log-CDFs are those of the lower tail."""
    flip = lower > 0
    hi = torch.where(flip, -lower, upper)
    lo = torch.where(flip, -upper, lower)
    log_hi = torch.special.log_ndtr(hi)
    return log_hi + log1mexp((log_hi - torch.special.log_ndtr(lo)).clamp(min=1e-30))


def discretized_gaussian_log_prob(x: Tensor, mean: Tensor, log_var: Tensor) -> Tensor:
    """log P(x) per element for 8-bit data on [-1, 1] (x = 2k/255 - 1) under N(mean, exp(log_var))
    discretized into bins of width 2/255 centred on the values, the outer bins open to -inf and +inf
    (Ho et al. 2020, eq. 13)."""
    inv_std = torch.exp(-0.5 * log_var)
    upper = (x - mean + HALF_BIN) * inv_std
    lower = (x - mean - HALF_BIN) * inv_std
    mid = _log_normal_cdf_difference(upper, lower)
    return torch.where(
        x < -1 + HALF_BIN,
        torch.special.log_ndtr(upper),
        torch.where(x > 1 - HALF_BIN, torch.special.log_ndtr(-lower), mid),
    )


def sum_per_example(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1).sum(dim=1)


class GaussianDiffusion(nn.Module):
    """The schedule's constants (float64 math, stored as float32 buffers that follow the model's
    device but stay out of checkpoints: the config rebuilds them) and the Gaussians built from them.

    ``timesteps`` maps each step of this chain to the step of the network's training chain: the
    identity for the full chain, a subsequence for a respaced one (``respaced``)."""

    def __init__(self, betas: Tensor, timesteps: Optional[Tensor] = None):
        super().__init__()
        betas = betas.double()
        if len(betas) < 2:
            raise ValueError("a diffusion needs at least 2 steps")
        abar = torch.cumprod(1 - betas, 0)
        abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
        posterior_var = betas * (1 - abar_prev) / (1 - abar)
        posterior_log_var = torch.log(torch.cat([posterior_var[1:2], posterior_var[1:]]))
        constants = {
            "betas": betas,
            "abar": abar,
            "abar_prev": abar_prev,
            "sqrt_abar": abar.sqrt(),
            "sqrt_one_minus_abar": (1 - abar).sqrt(),
            "sqrt_recip_abar": abar.rsqrt(),
            "sqrt_recip_abar_minus_one": (1 / abar - 1).sqrt(),
            "posterior_log_var": posterior_log_var,
            # fixed_large: beta_t, with betatilde_1 at step 0 (Ho et al.'s code), so the decoder stays sharp
            "large_log_var": torch.log(torch.cat([posterior_var[1:2], betas[1:]])),
            "posterior_c1": betas * abar_prev.sqrt() / (1 - abar),
            "posterior_c2": (1 - abar_prev) * (1 - betas).sqrt() / (1 - abar),
        }
        for name, value in constants.items():
            self.register_buffer(name, value.float(), persistent=False)
        self.register_buffer(
            "timesteps", torch.arange(len(betas)) if timesteps is None else timesteps.long(), persistent=False
        )
        self._betas64 = betas

    @property
    def num_steps(self) -> int:
        return len(self.betas)

    @staticmethod
    def _at(buffer: Tensor, t: Tensor, like: Tensor) -> Tensor:
        """buffer[t] shaped to broadcast over an example of ``like``."""
        return buffer[t].view(-1, *([1] * (like.dim() - 1))).to(like.dtype)

    def respaced(self, steps: int) -> "GaussianDiffusion":
        """A chain over ``steps`` evenly spaced steps of this one, with betas such that abar is
        unchanged on them (Nichol & Dhariwal 2021, Sec. 4): for sampling in fewer steps.
        Its variational bound is not this chain's."""
        if steps >= self.num_steps:
            return self
        keep = torch.linspace(0, self.num_steps - 1, steps, dtype=torch.float64).round().long().unique()
        abar = torch.cumprod(1 - self._betas64, 0)[keep]
        betas = 1 - abar / torch.cat([abar.new_ones(1), abar[:-1]])
        return GaussianDiffusion(betas, self.timesteps.cpu()[keep]).to(self.betas.device)

    # --- the forward process ----------------------------------------------------------------------
    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise (Ho eq. 4)."""
        return self._at(self.sqrt_abar, t, x0) * x0 + self._at(self.sqrt_one_minus_abar, t, x0) * noise

    def q_posterior(self, x0: Tensor, xt: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log variance of q(x_{t-1} | x_t, x_0) (Ho eq. 6-7)."""
        mean = self._at(self.posterior_c1, t, xt) * x0 + self._at(self.posterior_c2, t, xt) * xt
        return mean, self._at(self.posterior_log_var, t, xt).expand_as(xt)

    def prior_kl(self, x0: Tensor) -> Tensor:
        """KL(q(x_{T-1} | x_0) || N(0, I)) per example, in nats: the prior term."""
        t = torch.full((x0.shape[0],), self.num_steps - 1, dtype=torch.long, device=x0.device)
        mean = self._at(self.sqrt_abar, t, x0) * x0
        log_var = torch.log(self._at(1 - self.abar, t, x0)).expand_as(x0)
        return sum_per_example(normal_kl(mean, log_var, torch.zeros_like(x0), torch.zeros_like(x0)))

    # --- the reverse model --------------------------------------------------------------------------
    def predict_x0(self, xt: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """xhat_0 = x_t / sqrt(abar_t) - sqrt(1/abar_t - 1) eps (Ho eq. 11 solved for x_0)."""
        return self._at(self.sqrt_recip_abar, t, xt) * xt - self._at(self.sqrt_recip_abar_minus_one, t, xt) * eps

    def predict_eps(self, xt: Tensor, t: Tensor, x0: Tensor) -> Tensor:
        """The eps for which ``predict_x0`` gives ``x0``."""
        return (self._at(self.sqrt_recip_abar, t, xt) * xt - x0) / self._at(self.sqrt_recip_abar_minus_one, t, xt)

    def p_log_var(self, variance: str, t: Tensor, like: Tensor, v: Optional[Tensor] = None) -> Tensor:
        """log sigma_t^2 of p(x_{t-1} | x_t); ``v`` in [-1, 1] is the network's variance output
        for learned_range (Nichol & Dhariwal eq. 15)."""
        if variance == "fixed_large":
            return self._at(self.large_log_var, t, like).expand_as(like)
        small = self._at(self.posterior_log_var, t, like)
        if variance == "fixed_small":
            return small.expand_as(like)
        frac = (v + 1) / 2
        return frac * self._at(torch.log(self.betas), t, like) + (1 - frac) * small

    def p_mean_variance(
        self, eps: Tensor, xt: Tensor, t: Tensor, variance: str, v: Optional[Tensor] = None, clip: bool = False
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(mean, log variance, xhat_0) of p(x_{t-1} | x_t) from the network's eps (and v). ``clip``
        clamps xhat_0 to the data range [-1, 1] before the mean is formed (both papers' samplers)."""
        x0 = self.predict_x0(xt, t, eps)
        if clip:
            x0 = x0.clamp(-1, 1)
        mean, _ = self.q_posterior(x0, xt, t)
        return mean, self.p_log_var(variance, t, xt, v), x0

    def bound_term(self, x0: Tensor, xt: Tensor, t: Tensor, mean: Tensor, log_var: Tensor) -> Tensor:
        """The bound's term at step t per example, in nats: -log p(x_0 | x_1) where t = 0, else
        KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))."""
        true_mean, true_log_var = self.q_posterior(x0, xt, t)
        kl = sum_per_example(normal_kl(true_mean, true_log_var, mean, log_var))
        decoder = -sum_per_example(discretized_gaussian_log_prob(x0, mean, log_var))
        return torch.where(t == 0, decoder, kl)

    def ddim_step(self, xt: Tensor, t: Tensor, x0: Tensor, eta: float, noise: Tensor) -> Tensor:
        """x_{t-1} = sqrt(abar_{t-1}) xhat_0 + sqrt(1 - abar_{t-1} - sigma_t^2) eps + sigma_t noise with
        sigma_t = eta sqrt((1 - abar_{t-1})/(1 - abar_t)) sqrt(1 - abar_t/abar_{t-1}) (Song et al. 2021,
        "Denoising Diffusion Implicit Models", eq. 12 and 16). eps is re-derived from xhat_0 (after any
        clipping), so eta = 1 on the full chain is ancestral sampling with the fixed_small variance."""
        eps = self.predict_eps(xt, t, x0)
        abar, abar_prev = self._at(self.abar, t, xt), self._at(self.abar_prev, t, xt)
        sigma = eta * ((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)).sqrt()
        return abar_prev.sqrt() * x0 + (1 - abar_prev - sigma**2).clamp(min=0).sqrt() * eps + sigma * noise
