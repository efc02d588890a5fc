"""DDPM (Ho et al. 2020): a U-Net that predicts the noise eps of x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps,
trained with the simple loss |eps - eps_theta(x_t, t)|^2 (Ho eq. 14), the hybrid loss with learned
variances L_simple + lambda L_vlb (Nichol & Dhariwal 2021, Sec. 3.1), or the variational bound itself;
sampled ancestrally (Ho Alg. 2) or with DDIM (Song et al. 2021), in all or fewer steps.

Data arrive as 8-bit values k/255 and are mapped to [-1, 1] here. ``log_likelihood`` is the negative
variational bound of the T-step model (gaussian_diffusion.py) on the 8-bit values -- a codelength
with no dequantization -- summed over all T steps (``estimator.timesteps=all``, as Ho et al. and
Nichol & Dhariwal compute bits/dim) or estimated without bias from m random steps per example.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
from torch import Tensor

from ...errors import UserError
from ...progress import SamplingProgress
from ...rules import (
    NON_EMPTY_SIZES,
    NON_NEGATIVE,
    POSITIVE,
    PROBABILITY,
    SIZES,
    at_least,
    checked,
    checked_choice,
    checked_list,
)
from ..base import DataSpec, GenerativeModel, Metrics, PhaseLoss
from ..objectives import VLB, Hybrid, Objective, Simple
from ..registry import register
from .gaussian_diffusion import SCHEDULES, VARIANCES, GaussianDiffusion, betas_for
from .unet import UNet

SAMPLERS = ("ddpm", "ddim")
#: KL terms per example in validation's estimate of the bound (two strata; the network runs 5 times)
VALIDATION_STEPS = "4"
#: columns of `dgm sample mode=trajectory`: x_T, ..., x_0
TRAJECTORY_COLUMNS = 10


@dataclass
class DDPMConfig:
    timesteps: int = checked(1000, at_least(2))  # T (Ho et al. 2020: 1000)
    schedule: str = checked_choice("linear", SCHEDULES)  # {choices}: linear (Ho et al.), cosine (Nichol & Dhariwal)
    variance: str = checked_choice("auto", ("auto",) + VARIANCES)  # {choices} (auto: learned_range under
    #   objective=hybrid, else fixed_large)
    channels: int = checked(32, POSITIVE)  # U-Net base width (128 in Ho et al.'s CIFAR-10 model)
    channel_mult: list[int] = checked_list([1, 2, 2], NON_EMPTY_SIZES)  # width per resolution; each but the last halves
    #   it
    num_res_blocks: int = checked(1, POSITIVE)  # residual blocks per resolution (2 in Ho et al.)
    attention_resolutions: list[int] = checked_list([], SIZES)  # feature-map sizes with attention; the middle always
    #   has it
    dropout: float = checked(0.0, PROBABILITY)  # dropout in the residual blocks (0.1 on CIFAR-10 in Ho et al.)
    sampler: str = checked_choice("ddpm", SAMPLERS)  # {choices}: ancestral (Ho Alg. 2), DDIM (Song et al. 2021)
    sample_steps: int = checked(0, NON_NEGATIVE)  # steps of the sampler; 0: all T (fewer: a respaced chain, Nichol &
    #   Dhariwal Sec. 4)
    eta: float = checked(0.0, NON_NEGATIVE)  # DDIM's noise: 0 deterministic, 1 ancestral-like
    clip_denoised: bool = True  # clamp the predicted x_0 to [-1, 1] when sampling and evaluating the bound


@dataclass
class BoundEstimator:
    """`dgm eval estimator.timesteps=...`: how the variational bound's sum over steps is computed."""

    # all: every one of the T terms (Ho et al.'s bits/dim) | m (even): the prior and decoder terms and at most m
    # of the T-1 KL terms, two drawn per example from each of m/2 strata: an unbiased estimate with its error
    timesteps: str = "all"

    def __post_init__(self):
        if self.timesteps != "all" and not (
            self.timesteps.isdigit() and int(self.timesteps) % 2 == 0 and int(self.timesteps) >= 2
        ):
            raise UserError(
                f"estimator.timesteps={self.timesteps} is not allowed: use all, or an even number of "
                "steps >= 2 (two from each stratum of steps, so that each stratum gives its error)."
            )


def stratified_steps(n: int, num_terms: int, strata: int, device) -> tuple[Tensor, list[int]]:
    """KL steps for each of n examples from ``strata`` runs of steps 1..num_terms whose lengths grow
    geometrically (the terms fall roughly geometrically with t, so short strata where they are large):
    two distinct steps from each run, or all of a run shorter than 3. Returns (steps (n, draws), run lengths)."""
    edges = torch.logspace(0, math.log10(num_terms + 1), strata + 1, dtype=torch.float64).round().long().unique() - 1
    sizes = (edges[1:] - edges[:-1]).tolist()
    drawn = [
        torch.rand(n, size, device=device).argsort(dim=1)[:, :2] + lo + 1 for lo, size in zip(edges.tolist(), sizes)
    ]
    return torch.cat(drawn, dim=1), sizes


def stratified_sum(terms: Tensor, sizes: list[int]) -> tuple[Tensor, Tensor]:
    """The sum of all KL terms estimated stratum by stratum, sum_h N_h mean_h, and an estimate of that
    estimate's variance, sum_h N_h^2 s_h^2 / 2 over the strata that were sampled, per example (stratified
    sampling, Cochran 1977, Sec. 5.3). The finite-population factor (1 - 2/N_h) is left out: each term
    carries its own draw of x_t, a variance no finite population bounds, so the estimate errs on the large
    side by at most 2/N_h. Strata of 1 or 2 steps are summed whole and add nothing."""
    total, variance, j = terms.new_zeros(len(terms)), terms.new_zeros(len(terms)), 0
    for size in sizes:
        block = terms[:, j : j + min(2, size)]
        j += block.shape[1]
        total = total + size * block.mean(1)
        if size > 2:
            variance = variance + size**2 * (block[:, 0] - block[:, 1]) ** 2 / 4
    return total, variance


@register("ddpm")
class DDPM(GenerativeModel):
    family = "diffusion"
    # a grid is 1,000 U-Net passes per sample: fewer than the usual 64 keep its share of a run small
    # (measured with scripts/bench_models.py --sections models: docs/results.md, sample grids' cost)
    grid_samples = 36
    objectives = ("simple", "hybrid", "vlb")
    representations = ("8bit",)
    likelihood = "vlb"
    sample_modes = ("sample", "trajectory")
    Config = DDPMConfig
    Estimator = BoundEstimator

    @staticmethod
    def variance_of(config: DDPMConfig, objective: Objective) -> str:
        """The variance the model learns or fixes: ``model.variance``, with auto resolved by the objective."""
        if config.variance != "auto":
            return config.variance
        return "learned_range" if isinstance(objective, Hybrid) else "fixed_large"

    @classmethod
    def check_settings(cls, config: DDPMConfig, objective: Objective, data: Optional[DataSpec] = None) -> None:
        super().check_settings(config, objective, data)
        variance = cls.variance_of(config, objective)
        learned = variance == "learned_range"
        if learned and isinstance(objective, Simple):
            raise UserError(
                "model.variance=learned_range needs objective=hybrid or vlb: the simple loss gives "
                "the variance no gradient."
            )
        if isinstance(objective, Hybrid) and not learned:
            raise UserError(
                f"objective=hybrid trains learned variances; model.variance={variance} is fixed "
                "(use model.variance=auto or learned_range, or objective=simple)."
            )
        if data is None:
            return
        if not data.is_image or data.shape[1] != data.shape[2]:
            raise UserError(f"DDPM's U-Net models square images (C, H, H), not data of shape {data.shape}.")
        halvings = len(config.channel_mult) - 1
        if data.shape[1] % (2**halvings):
            raise UserError(
                f"model.channel_mult={list(config.channel_mult)} halves the {data.shape[1]}-pixel image "
                f"{halvings} times, which needs a size divisible by {2**halvings}; use fewer entries."
            )

    def __init__(self, config: DDPMConfig, data: DataSpec, objective: Objective):
        super().__init__(config, data, objective)
        self.variance = self.variance_of(config, self.objective)
        learned = self.variance == "learned_range"
        self.diffusion = GaussianDiffusion(betas_for(config.schedule, config.timesteps))
        c = data.shape[0]
        self.net = UNet(
            c,
            2 * c if learned else c,
            data.shape[-1],
            config.channels,
            list(config.channel_mult),
            config.num_res_blocks,
            list(config.attention_resolutions),
            config.dropout,
        )
        self._eval_terms: Optional[tuple[Tensor, dict[str, Tensor]]] = None

    # --- the network ------------------------------------------------------------------------------
    @staticmethod
    def to_model_space(x: Tensor) -> Tensor:
        """8-bit values k/255 on [0, 1] -> 2k/255 - 1 on [-1, 1]."""
        return 2 * x - 1

    @staticmethod
    def to_data_space(x: Tensor) -> Tensor:
        """[-1, 1] -> the nearest 8-bit value k/255."""
        return torch.round((x.clamp(-1, 1) + 1) * 127.5) / 255

    def predict(self, xt: Tensor, t: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        """(eps, v) at steps ``t`` of the training chain; v (the variance output, in [-1, 1]) is None for
        a fixed variance."""
        out = self.net(xt, t)
        c = xt.shape[1]
        return out[:, :c], (torch.tanh(out[:, c:]) if out.shape[1] > c else None)

    def step_term(self, x0: Tensor, t: Tensor, clip: bool, frozen_mean: bool = False) -> Tensor:
        """The bound's term at steps ``t`` (one per example), in nats, with a fresh x_t ~ q(x_t | x_0).
        ``frozen_mean``: gradients reach only the variance (Nichol & Dhariwal's L_vlb in the hybrid loss)."""
        xt = self.diffusion.q_sample(x0, t, torch.randn_like(x0))
        eps, v = self.predict(xt, t)
        mean, log_var, _ = self.diffusion.p_mean_variance(
            eps.detach() if frozen_mean else eps, xt, t, self.variance, v, clip
        )
        return self.diffusion.bound_term(x0, xt, t, mean, log_var)

    # --- training -----------------------------------------------------------------------------------
    def training_loss(self, x: Tensor, y: Optional[Tensor], phase: str) -> PhaseLoss:
        x0 = self.to_model_space(x)
        steps = self.diffusion.num_steps
        t = torch.randint(0, steps, (x0.shape[0],), device=x0.device)
        if isinstance(self.objective, VLB):
            # T E_t[L_t] = the bound minus its constant prior term (Ho eq. 5), in bits/dim
            bound = steps * self.step_term(x0, t, clip=False).mean() / (self.data.dim * math.log(2))
            return bound, {"vlb_bits_per_dim": bound.detach()}
        noise = torch.randn_like(x0)
        xt = self.diffusion.q_sample(x0, t, noise)
        eps, v = self.predict(xt, t)
        mse = (noise - eps).pow(2).mean()  # L_simple (Ho eq. 14), a mean over pixels as in Ho et al.'s code
        if isinstance(self.objective, Simple):
            return mse, {"mse": mse.detach()}
        # L_hybrid = L_simple + lambda L_vlb, L_vlb = T E_t[L_t] in bits/dim with the mean's gradient stopped
        # (Nichol & Dhariwal 2021, Sec. 3.1: lambda = 0.001)
        mean, log_var, _ = self.diffusion.p_mean_variance(eps.detach(), xt, t, self.variance, v)
        vb = self.diffusion.bound_term(x0, xt, t, mean, log_var).mean() / (self.data.dim * math.log(2))
        loss = mse + self.objective.vlb_weight * steps * vb
        return loss, {"mse": mse.detach(), "vb_bits_per_dim": vb.detach()}

    @torch.no_grad()
    def validation_step(self, x: Tensor, y: Optional[Tensor]) -> Metrics:
        """``loss``: the bound in bits/dim, estimated without bias from four KL terms per example in two
        strata (plus the prior and decoder terms), so best.pt is the best likelihood."""
        timesteps = VALIDATION_STEPS if self.diffusion.num_steps > int(VALIDATION_STEPS) + 1 else "all"
        bits = -self.log_likelihood(x, timesteps=timesteps) / (self.data.dim * math.log(2))
        self._eval_terms = None
        return {"loss": bits.mean(), "bits_per_dim": bits.mean()}

    # --- likelihood -------------------------------------------------------------------------------
    def bound_terms(self, x0: Tensor, steps: Tensor) -> Tensor:
        """Terms at ``steps`` (B, m), in nats, each with its own draw of x_t: shape (B, m)."""
        clip = self.config.clip_denoised
        return torch.stack([self.step_term(x0, steps[:, j], clip) for j in range(steps.shape[1])], dim=1)

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, y: Optional[Tensor] = None, timesteps: str = "all", **_) -> Tensor:
        """-L, the negative bound of the module's docstring, per example in nats: a lower bound on
        log P(x) of the 8-bit values (in expectation over the draws of x_t)."""
        x0 = self.to_model_space(x)
        n, steps = x0.shape[0], self.diffusion.num_steps
        prior = self.diffusion.prior_kl(x0)
        if timesteps == "all":
            terms = self.bound_terms(x0, torch.arange(steps, device=x0.device).expand(n, steps))
            kl = terms[:, 1:].sum(1)
        else:
            m = int(timesteps)
            if m > steps - 1:
                raise UserError(
                    f"estimator.timesteps={m}: this model has only {steps - 1} KL terms; "
                    "use estimator.timesteps=all for all of them."
                )
            drawn, sizes = stratified_steps(n, steps - 1, m // 2, x0.device)
            terms = self.bound_terms(x0, torch.cat([drawn.new_zeros(n, 1), drawn], dim=1))
            kl, variance = stratified_sum(terms[:, 1:], sizes)
        parts = {"prior_nats": prior, "decoder_nats": terms[:, 0], "kl_terms_nats": kl}
        if timesteps != "all":
            parts["step_sampling_variance"] = variance
        self._eval_terms = (x, parts)
        return -(prior + terms[:, 0] + kl)

    def estimator(self, timesteps: str = "all", **_) -> str:
        steps = self.diffusion.num_steps
        if timesteps == "all":
            return (
                f"variational bound, all T={steps} steps (Ho et al. 2020): prior + {steps - 1} KL terms + "
                "discretized Gaussian decoder, one draw of x_t per step"
            )
        strata = len(stratified_steps(1, steps - 1, int(timesteps) // 2, "cpu")[1])
        return (
            f"variational bound, unbiased estimate (T={steps}): prior + decoder + the {steps - 1} KL terms "
            f"estimated from {strata} geometrically growing strata of steps, 2 drawn per example from each"
        )

    @torch.no_grad()
    def extra_eval(self, x: Tensor, y: Optional[Tensor] = None) -> Metrics:
        """Sums of the bound's parts over the batch that ``log_likelihood`` just scored."""
        if self._eval_terms is None or self._eval_terms[0] is not x:
            return {}
        parts, self._eval_terms = self._eval_terms[1], None
        return {k: v.double().sum() for k, v in parts.items()}

    def finalize_eval(self, sums: dict[str, float], count: int) -> dict[str, float]:
        """Means of the parts per example; ``step_sampling_stderr_nats``: the share of the mean NLL's
        standard error that comes from drawing the steps (already inside the spread over examples)."""
        out = {k: float(v) / count for k, v in sums.items() if k != "step_sampling_variance"}
        if "step_sampling_variance" in sums:
            out["step_sampling_stderr_nats"] = math.sqrt(float(sums["step_sampling_variance"])) / count
        return out

    # --- sampling ---------------------------------------------------------------------------------
    def sampling_chain(self) -> GaussianDiffusion:
        steps = self.config.sample_steps
        return self.diffusion.respaced(steps) if 0 < steps < self.diffusion.num_steps else self.diffusion

    @torch.no_grad()
    def reverse_process(self, n: int, temperature: float = 1.0) -> Iterator[Tensor]:
        """x_T ~ N(0, temperature^2 I), then each x_{t-1} in turn, down to x_0 (in [-1, 1])."""
        chain = self.sampling_chain()
        device = next(self.parameters()).device
        x = temperature * torch.randn(n, *self.data.shape, device=device)
        yield x
        with SamplingProgress(chain.num_steps, f"sampling {n} x DDPM ({self.config.sampler})", "step") as progress:
            for i in reversed(range(chain.num_steps)):
                t = torch.full((n,), i, dtype=torch.long, device=device)
                eps, v = self.predict(x, chain.timesteps[t])
                mean, log_var, x0 = chain.p_mean_variance(eps, x, t, self.variance, v, self.config.clip_denoised)
                noise = temperature * torch.randn_like(x) * (i > 0)
                if self.config.sampler == "ddim":
                    x = chain.ddim_step(x, t, x0, self.config.eta, noise)
                else:
                    x = mean + torch.exp(0.5 * log_var) * noise
                progress.update()
                yield x

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, label: Optional[int] = None) -> Tensor:
        self.sample_labels(n, label, conditional=False)
        for x in self.reverse_process(n, temperature):
            pass
        return self.to_data_space(x)

    @torch.no_grad()
    def sample_trajectory(self, x: Tensor, y: Optional[Tensor] = None, **_) -> Tensor:
        """One row per sample (up to 8): x_T, evenly spaced x_t, then x_0."""
        rows = min(8, x.shape[0])
        states = list(self.reverse_process(rows))
        keep = torch.linspace(0, len(states) - 1, TRAJECTORY_COLUMNS).round().long().unique().tolist()
        return torch.stack([((states[i].clamp(-1, 1) + 1) / 2) for i in keep], dim=1)
