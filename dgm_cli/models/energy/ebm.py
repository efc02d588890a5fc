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
literature's advice is logged. The replay buffer is a registered buffer, so checkpoints hold it and
resume is exact; under DistributedDataParallel each process keeps its own.

There is no likelihood: ``dgm eval`` reports sample-quality metrics. ``sample`` runs
``model.sample_steps`` Langevin steps from noise (Nijkamp et al. 2019's short-run sampler).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from ...errors import UserError
from ..base import GenerativeModel, Metrics, PhaseLoss

from ..registry import register

log = logging.getLogger("dgm.train")
DIVERGENCE_ADVICE = ("restart from the last checkpoint with a lower optimizer.lr, a larger model.energy_l2 "
                     "(0.1 to 1: Du & Mordatch 2019), more model.sgld_steps, model.sampler_grad_clip=0.01 or "
                     "model.spectral_norm=true (JEM issues #4 and #8)")


@dataclass
class EBMConfig:
    network: str = "auto"  # auto (conv for images, mlp otherwise) | mlp | conv
    hidden: int = 256  # mlp: units per hidden layer
    depth: int = 3  # mlp: hidden layers
    width: int = 64  # conv: channels of the first stage
    spectral_norm: bool = False
    sgld_steps: int = 20
    sgld_step_size: float = 1.0
    sgld_noise: float = 0.01
    sampler_grad_clip: float = 0.0  # > 0: clip each Langevin gradient element to ±this (IGEBM: 0.01)
    buffer_size: int = 10000
    reinit_freq: float = 0.05  # share of chains restarted from U[-1, 1]
    data_noise: float = 0.03
    energy_l2: float = 0.1  # λ of the energy-magnitude penalty
    divergence_energy: float = 1e4  # |mean energy| above this counts as divergence
    sample_steps: int = 200  # Langevin steps from noise per `dgm sample` image


def mlp_energy(dim: int, hidden: int, depth: int) -> nn.Module:
    layers, width = [nn.Flatten()], dim
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.SiLU()]
        width = hidden
    return nn.Sequential(*layers, nn.Linear(width, 1))


def conv_energy(shape: tuple, width: int) -> nn.Module:
    c, h, w = shape
    return nn.Sequential(
        nn.Conv2d(c, width, 3, 1, 1), nn.SiLU(),
        nn.Conv2d(width, 2 * width, 4, 2, 1), nn.SiLU(),
        nn.Conv2d(2 * width, 4 * width, 4, 2, 1), nn.SiLU(),
        nn.Flatten(), nn.Linear(4 * width * (h // 4) * (w // 4), 1))


@register("ebm")
class EBM(GenerativeModel):
    family = "energy"
    objectives = ("ml",)
    objective_keys = {"ml": set()}  # ml takes no keys
    representations = ("8bit", "continuous")
    likelihood = None
    Config = EBMConfig

    def __init__(self, config: EBMConfig, data, objective: dict):
        super().__init__(config, data, objective)
        network = config.network if config.network != "auto" else ("conv" if data.is_image else "mlp")
        if network not in ("mlp", "conv") or (network == "conv" and not data.is_image):
            raise UserError(f"model.network={config.network!r} is not allowed here; allowed: auto, mlp"
                            + (", conv" if data.is_image else " (conv needs images)") + ".")
        if min(config.sgld_steps, config.buffer_size, config.sample_steps) < 1 or not 0 <= config.reinit_freq <= 1:
            raise UserError("model.sgld_steps, model.buffer_size and model.sample_steps must be >= 1 and "
                            "model.reinit_freq lie in [0, 1].")
        self.energy = (conv_energy(data.shape, config.width) if network == "conv"
                       else mlp_energy(data.dim, config.hidden, config.depth))
        if config.spectral_norm:
            for m in self.energy.modules():
                if isinstance(m, (nn.Linear, nn.Conv2d)):
                    spectral_norm(m)
        self.register_buffer("replay", torch.rand(config.buffer_size, *data.shape) * 2 - 1)

    # --- data space <-> [-1, 1] ---------------------------------------------------------------------
    def to_model_space(self, x: Tensor) -> Tensor:
        return x * 2 - 1 if self.data.is_image else x

    def to_data_space(self, x: Tensor) -> Tensor:
        return ((x + 1) / 2).clamp(0, 1) if self.data.is_image else x

    def noise(self, n: int, device) -> Tensor:
        return torch.rand(n, *self.data.shape, device=device) * 2 - 1

    # --- the sampler --------------------------------------------------------------------------------
    def langevin(self, x: Tensor, steps: int) -> Tensor:
        """``steps`` SGLD steps x <- x - α ∇E(x) + σ ε (gradients w.r.t. x only; the weights get none)."""
        c = self.config
        with torch.enable_grad():
            for _ in range(steps):
                x = x.detach().requires_grad_(True)
                grad = torch.autograd.grad(self.energy(x).sum(), x)[0]
                if c.sampler_grad_clip > 0:
                    grad = grad.clamp(-c.sampler_grad_clip, c.sampler_grad_clip)
                x = x - c.sgld_step_size * grad + c.sgld_noise * torch.randn_like(x)
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
    def training_loss(self, x: Tensor, y: Optional[Tensor], phase: str) -> PhaseLoss:
        real = self.to_model_space(x)
        real = real + self.config.data_noise * torch.randn_like(real)
        fake = self.negatives(len(x))
        e_real, e_fake = self.energy(real).squeeze(-1), self.energy(fake).squeeze(-1)
        penalty = (e_real ** 2 + e_fake ** 2).mean()
        loss = e_real.mean() - e_fake.mean() + self.config.energy_l2 * penalty
        metrics = {"energy_data": e_real.mean().detach(), "energy_model": e_fake.mean().detach(),
                   "energy_penalty": penalty.detach()}
        if self.diverged(e_real, e_fake):
            metrics["energy_diverged"] = torch.tensor(math.inf)
            loss = loss + math.inf  # the engine stops here and keeps the last good checkpoint
        return loss, metrics

    def diverged(self, e_real: Tensor, e_fake: Tensor) -> bool:
        worst = float(torch.stack([e_real.detach().mean().abs(), e_fake.detach().mean().abs()]).max())
        if math.isfinite(worst) and worst <= self.config.divergence_energy:
            return False
        log.error("the energies diverged (|mean E| = %.3g > model.divergence_energy = %.3g); %s.",
                  worst, self.config.divergence_energy, DIVERGENCE_ADVICE)
        return True

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
        self.sample_labels(1, label, False)
        device = self.replay.device
        return self.to_data_space(self.langevin(self.noise(n, device), self.config.sample_steps))

    @torch.no_grad()
    def sample_for_logging(self, n: int) -> Tensor:
        """The first ``n`` slots of the replay buffer: what the training sampler currently holds."""
        return self.to_data_space(self.replay[:n])
