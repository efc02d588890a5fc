"""Deep energy-based model trained by maximum likelihood with short-run Langevin dynamics from a replay
buffer (Du & Mordatch 2019, "IGEBM"; Grathwohl et al. 2020, "JEM", whose settings are the defaults).

p(x) ∝ exp(-E(x)), E an MLP or a CNN on data in [-1, 1]. The log-likelihood gradient is
E_data[∇E] - E_model[∇E]; the model term uses samples from stochastic-gradient Langevin dynamics

    x_{t+1} = x_t - α ∇_x E(x_t) + σ ε,   ε ~ N(0, I)        (JEM: α = 1, σ = 0.01, 20 steps)

started from a replay buffer of past samples (10,000), 5% of starts fresh from U[-1, 1]; data get
N(0, 0.03²) noise. The loss is mean E(x_data) - mean E(x_model) + λ mean(E(x_data)² + E(x_model)²),
the energy-magnitude penalty of Du & Mordatch (2019, Sec. 3.3); their sampler clips each gradient
(``model.sampler_grad_clip``) and spectral normalisation is optional (``model.spectral_norm``).

Divergence (energies running away, the failure JEM's users report: JEM issues #4, #8) is detected:
the step's loss is made non-finite, so the engine stops and keeps the last good checkpoint, and the
literature's advice ends the engine's message (``non_finite_advice``). The replay buffer is a registered
buffer, so checkpoints hold it and resume is exact; under DistributedDataParallel each process keeps its
own.

``dgm eval`` reports sample-quality metrics. Only when asked (``estimator.ais=true``) does it estimate
the log-likelihood by AIS (ais.LangevinPath): log Z of exp(-E) from a tractable base along the geometric
path with MALA transitions, forward only (reverse AIS would need exact samples of the EBM), labelled an
estimate with its own error. Images: the density lives on the box [-1, 1]^D the data and the sampler's
starts fill, the base is uniform on it, and the 8-bit values are dequantized, so the number is
log p((k+u)/256) - D ln 256 <= log P(k) in expectation (Theis et al. 2016) with an estimated log Z;
continuous data: a Gaussian base with the evaluation data's mean and standard deviation. ``sample``
runs ``model.sample_steps`` Langevin steps from noise (Nijkamp et al. 2019's short-run sampler).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import List, Optional

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from ...errors import UserError
from ...progress import SamplingProgress
from ...rules import NON_NEGATIVE, POSITIVE, Rule, checked, checked_choice
from ..base import DataSpec, GenerativeModel, Metrics, PhaseLoss
from ..objectives import Objective
from ..registry import register
from . import ais
from .base import AISSchedule, estimate_key

DIVERGENCE_ADVICE = (
    "restart from the last checkpoint with a lower optimizer.lr, a larger model.energy_l2 "
    "(0.1 to 1: Du & Mordatch 2019), more model.sgld_steps, model.sampler_grad_clip=0.01 or "
    "model.spectral_norm=true (JEM issues #4 and #8)"
)


NETWORKS = ("auto", "mlp", "conv")
#: a share of the chains, from none to all
SHARE: Rule = (lambda v: 0 <= v <= 1, "in [0, 1]")


@dataclass
class EBMConfig:
    network: str = checked_choice("auto", NETWORKS)  # {choices} (auto: conv for images, mlp otherwise)
    hidden: int = checked(256, POSITIVE)  # mlp: units per hidden layer
    depth: int = checked(3, POSITIVE)  # mlp: hidden layers
    width: int = checked(64, POSITIVE)  # conv: channels of the first stage
    spectral_norm: bool = False
    sgld_steps: int = checked(20, POSITIVE)  # Langevin steps per training batch (JEM)
    sgld_step_size: float = checked(1.0, POSITIVE)  # alpha, the step along the energy's gradient (JEM)
    sgld_noise: float = checked(0.01, NON_NEGATIVE)  # sigma of each step's Gaussian noise (JEM)
    sampler_grad_clip: float = checked(0.0, NON_NEGATIVE)  # > 0: clip each Langevin gradient element to ±this (IGEBM:
    #   0.01)
    buffer_size: int = checked(10000, POSITIVE)  # replay buffer (JEM, IGEBM)
    reinit_freq: float = checked(0.05, SHARE)  # share of chains restarted from U[-1, 1]
    data_noise: float = checked(0.03, NON_NEGATIVE)  # std of the Gaussian noise added to data (JEM)
    energy_l2: float = checked(0.1, NON_NEGATIVE)  # λ of the energy-magnitude penalty
    divergence_energy: float = checked(1e4, POSITIVE)  # |mean energy| above this counts as divergence
    sample_steps: int = checked(200, POSITIVE)  # Langevin steps from noise per `dgm sample` image


@dataclass
class EBMEstimator(AISSchedule):
    """`dgm eval estimator.<key>=...`: the AIS estimate of log p(x), computed only when ``ais`` is true."""

    ais: bool = False  # estimate the log-likelihood by AIS (dgm eval otherwise reports sample metrics only)
    ais_temperatures: List[int] = field(default_factory=lambda: [100, 400, 500])  # per segment of ais_segment_ends
    ais_mcmc_steps: int = 1  # MALA steps per temperature
    ais_step_size: float = 0.01  # MALA's step size (the first temperature's, when a pilot run tunes them)
    ais_pilot_runs: int = 20  # chains of the pilot run that tunes each temperature's step size; 0: fixed step size
    ais_min_std: float = 1e-3  # continuous data: floor of the Gaussian base's standard deviations

    def __post_init__(self):
        super().__post_init__()
        if self.ais_mcmc_steps < 1 or self.ais_step_size <= 0 or self.ais_pilot_runs < 0 or self.ais_min_std <= 0:
            raise UserError(
                "estimator.ais_mcmc_steps must be >= 1, estimator.ais_step_size and "
                "estimator.ais_min_std > 0, estimator.ais_pilot_runs >= 0."
            )


def mlp_energy(dim: int, hidden: int, depth: int) -> nn.Module:
    layers, width = [nn.Flatten()], dim
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.SiLU()]
        width = hidden
    return nn.Sequential(*layers, nn.Linear(width, 1))


def conv_energy(shape: tuple, width: int) -> nn.Module:
    c, h, w = shape
    return nn.Sequential(
        nn.Conv2d(c, width, 3, 1, 1),
        nn.SiLU(),
        nn.Conv2d(width, 2 * width, 4, 2, 1),
        nn.SiLU(),
        nn.Conv2d(2 * width, 4 * width, 4, 2, 1),
        nn.SiLU(),
        nn.Flatten(),
        nn.Linear(4 * width * (h // 4) * (w // 4), 1),
    )


@register("ebm")
class EBM(GenerativeModel):
    family = "energy"
    objectives = ("ml",)
    representations = ("8bit", "continuous")
    likelihood = "ais"  # only on request: estimator.ais=true
    Config = EBMConfig
    Estimator = EBMEstimator

    @classmethod
    def check_settings(cls, config: EBMConfig, objective: Objective, data: Optional[DataSpec] = None) -> None:
        super().check_settings(config, objective, data)
        if data is not None and config.network == "conv" and not data.is_image:
            raise UserError("model.network='conv' is not allowed here; allowed: auto, mlp (conv needs images).")

    def __init__(self, config: EBMConfig, data, objective: Objective):
        super().__init__(config, data, objective)
        network = config.network if config.network != "auto" else ("conv" if data.is_image else "mlp")
        self.energy = (
            conv_energy(data.shape, config.width)
            if network == "conv"
            else mlp_energy(data.dim, config.hidden, config.depth)
        )
        if config.spectral_norm:
            for m in self.energy.modules():
                if isinstance(m, (nn.Linear, nn.Conv2d)):
                    spectral_norm(m)
        self.register_buffer("replay", torch.rand(config.buffer_size, *data.shape) * 2 - 1)
        self._log_z: Optional[tuple] = None  # (key, log Z) of the last estimate

    # --- data space <-> [-1, 1] ---------------------------------------------------------------------
    def to_model_space(self, x: Tensor) -> Tensor:
        return x * 2 - 1 if self.data.is_image else x

    def to_data_space(self, x: Tensor) -> Tensor:
        return ((x + 1) / 2).clamp(0, 1) if self.data.is_image else x

    def noise(self, n: int, device) -> Tensor:
        return torch.rand(n, *self.data.shape, device=device) * 2 - 1

    # --- the sampler --------------------------------------------------------------------------------
    def langevin(self, x: Tensor, steps: int, show_progress: bool = False) -> Tensor:
        """``steps`` SGLD steps x <- x - α ∇E(x) + σ ε (gradients w.r.t. x only; the weights get none);
        ``show_progress``: a bar or log lines when it takes a while (sampling, not a training step)."""
        c = self.config
        what = f"sampling {len(x)} x EBM (Langevin)"
        with torch.enable_grad(), SamplingProgress(steps, what, "step", show_progress) as progress:
            for _ in range(steps):
                x = x.detach().requires_grad_(True)
                grad = torch.autograd.grad(self.energy(x).sum(), x)[0]
                if c.sampler_grad_clip > 0:
                    grad = grad.clamp(-c.sampler_grad_clip, c.sampler_grad_clip)
                x = x - c.sgld_step_size * grad + c.sgld_noise * torch.randn_like(x)
                progress.update()
        return x.detach()

    @torch.no_grad()
    def negatives(self, n: int) -> Tensor:
        """Draw starts from the replay buffer (a share restarted from noise), run SGLD, write back."""
        idx = torch.randint(len(self.replay), (n,), device=self.replay.device)
        start = self.replay[idx]
        fresh = torch.rand(n, device=start.device) < self.config.reinit_freq
        start = torch.where(fresh.view(-1, *[1] * (start.dim() - 1)), self.noise(n, start.device), start)
        x = self.langevin(start, self.config.sgld_steps)
        # A slot drawn twice takes its last draw's sample. ``replay[idx] = x`` would leave the winner
        # to thread scheduling and make runs (and resumed runs) differ.
        last = torch.full((len(self.replay),), -1, dtype=torch.long, device=idx.device)
        last.scatter_reduce_(0, idx, torch.arange(n, device=idx.device), "amax")
        written = last >= 0
        self.replay[written] = x[last[written]]
        return x

    # --- training -----------------------------------------------------------------------------------
    def check_precision(self, precision: str) -> None:
        if precision == "16":
            raise UserError(
                "model=ebm cannot train at trainer.precision=16: its Langevin sampler takes the gradient "
                "of the energy with respect to the input on unscaled fp16 outputs, which can underflow "
                "(the gradient scaler only scales the loss's gradients); use trainer.precision=bf16 or 32."
            )

    def training_loss(self, x: Tensor, y: Optional[Tensor], phase: str) -> PhaseLoss:
        real = self.to_model_space(x)
        real = real + self.config.data_noise * torch.randn_like(real)
        fake = self.negatives(len(x))
        e_real, e_fake = self.energy(real).squeeze(-1), self.energy(fake).squeeze(-1)
        penalty = (e_real**2 + e_fake**2).mean()
        loss = e_real.mean() - e_fake.mean() + self.config.energy_l2 * penalty
        metrics = {
            "energy_data": e_real.mean().detach(),
            "energy_model": e_fake.mean().detach(),
            "energy_penalty": penalty.detach(),
        }
        # diverged energies make the loss infinite, on the device (no host read per step): the engine
        # stops there, keeps the last good checkpoint and adds non_finite_advice to its message
        diverged = self.diverged(e_real, e_fake)
        metrics["energy_diverged"] = diverged.float()
        loss = torch.where(diverged, math.inf, loss)
        return loss, metrics

    def diverged(self, e_real: Tensor, e_fake: Tensor) -> Tensor:
        """|mean E| of the data or of the samples above model.divergence_energy, or not finite: a flag on the device."""
        worst = torch.stack([e_real.detach().mean().abs(), e_fake.detach().mean().abs()]).max()
        return ~(worst <= self.config.divergence_energy)  # NaN compares false: diverged too

    def non_finite_advice(self) -> str:
        return (
            f"if the energies diverged (logged energy_diverged = 1: |mean E| above model.divergence_energy = "
            f"{self.config.divergence_energy:g}), {DIVERGENCE_ADVICE}"
        )

    @torch.no_grad()
    def validation_step(self, x: Tensor, y: Optional[Tensor]) -> Metrics:
        """Mean energy of held-out data and of fresh short-run samples, and their difference."""
        e_real = self.energy(self.to_model_space(x)).mean()
        e_fake = self.energy(self.langevin(self.noise(min(len(x), 100), x.device), self.config.sgld_steps)).mean()
        return {"energy_data": e_real, "energy_short_run": e_fake, "energy_gap": e_fake - e_real}

    # --- sampling -----------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, label: Optional[int] = None) -> Tensor:
        """``model.sample_steps`` Langevin steps from U[-1, 1]."""
        if temperature != 1.0:
            raise UserError(f"temperature={temperature}: an EBM samples by Langevin dynamics; leave temperature at 1.")
        self.sample_labels(1, label, conditional=False)
        device = self.replay.device
        return self.to_data_space(self.langevin(self.noise(n, device), self.config.sample_steps, show_progress=True))

    @torch.no_grad()
    def sample_for_logging(self, n: int) -> Tensor:
        """The first ``n`` slots of the replay buffer: what the training sampler currently holds."""
        return self.to_data_space(self.replay[:n])

    # --- likelihood, only on request -------------------------------------------------------------------
    def ais_base(self, x: Optional[Tensor], s: EBMEstimator):
        """Uniform on [-1, 1]^D for images; for continuous data a Gaussian with the data's moments. Either
        samples on the energy's device, in its dtype."""
        like = self.replay  # a buffer: it moves (.to, .double) with the energy's parameters
        if self.data.is_image:
            return ais.UniformBox(self.data.shape, like=like)
        if x is None:
            raise UserError("an EBM's AIS on continuous data builds its base from the evaluation data; none was given.")
        x = self.to_model_space(x.to(like.device, like.dtype))
        return ais.DiagonalGaussian(x.mean(0), x.std(0).nan_to_num(1.0).clamp(min=s.ais_min_std))

    @torch.no_grad()
    def prepare_eval(self, x: Optional[Tensor] = None, y: Optional[Tensor] = None, **settings) -> dict:
        """log Z of exp(-E) by forward AIS, once (Neal 2001; step sizes tuned by a pilot run)."""
        s = self.Estimator(**settings)
        if not s.ais:
            return {}
        start = time.perf_counter()
        base = self.ais_base(x, s)
        path = ais.LangevinPath(lambda z: self.energy(z), base, s.ais_step_size, s.ais_mcmc_steps)
        estimate = ais.tuned_forward_ais(path, s.ais_runs, s.betas(), s.ais_pilot_runs)
        self._log_z = (estimate_key(self, settings), estimate.log_z)
        return {
            **estimate.as_dict(""),
            "ais_runs": s.ais_runs,
            "ais_temperatures": estimate.temperatures,
            "log_z_base": path.log_z_base(),
            "ais_base": type(base).__name__,
            "mala_acceptance_mean": sum(path.acceptance) / len(path.acceptance),
            "mala_acceptance_min": min(path.acceptance),
            "mala_step_size_range": [
                min(path.step_sizes or [s.ais_step_size]),
                max(path.step_sizes or [s.ais_step_size]),
            ],
            "shared_error_nats": estimate.stderr,
            "log_z_seconds": round(time.perf_counter() - start, 2),
        }

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, y: Optional[Tensor] = None, **settings) -> Tensor:
        """-E(z) - log Ẑ at z = the data in model space, with the change of scale to the data's space;
        8-bit images dequantized, minus D ln 256 (a lower bound on log P(k) in expectation)."""
        if not self.Estimator(**settings).ais:
            raise UserError(
                "an EBM's log-likelihood is an AIS estimate computed only on request: add estimator.ais=true."
            )
        if self._log_z is None or self._log_z[0] != estimate_key(self, settings):
            self.prepare_eval(x, y, **settings)
        if self.data.representation == "8bit":
            k = torch.round(x * 255)
            x = (k + torch.rand_like(x)) / 256
        log_p = -self.energy(self.to_model_space(x)).reshape(len(x)).double() - self._log_z[1]
        if self.data.is_image:  # z = 2y - 1: p_y = p_z · 2^D; P(k) >= exp E_u[log p_y((k+u)/256)] / 256^D
            log_p = log_p + self.data.dim * (math.log(2) - math.log(256))
        return log_p

    def estimator(self, **settings) -> str:
        s = self.Estimator(**settings)
        if not s.ais:
            return "none (estimator.ais=false)"
        base = "uniform on [-1, 1]^D" if self.data.is_image else "a Gaussian with the evaluation data's moments"
        text = (
            f"-E(x) - log Z, log Z by forward AIS (Neal 2001): {s.ais_runs} runs x {sum(s.ais_temperatures)} "
            f"temperatures (segments ending at {s.ais_segment_ends}) on the geometric path from {base}, "
            f"{s.ais_mcmc_steps} MALA step(s) per temperature"
            + (f", step sizes tuned by a {s.ais_pilot_runs}-chain pilot run" if s.ais_pilot_runs else "")
            + "; forward AIS errs low on log Z on average, so the log-likelihood errs high; the log Z error "
            "(shared_error_nats) is shared by every example"
        )
        if self.data.representation == "8bit":
            text += "; pixels dequantized (k+u)/256 and D ln 256 subtracted: a bound on log P(k) in expectation"
        return text
