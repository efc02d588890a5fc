"""The GAN family's shared model (Goodfellow et al. 2014).

A generator G maps z ~ N(0, I) to data space; a critic D scores examples; the two
are trained against each other with one of the objectives of ``objectives.py``.
The engine's generic loop drives the game: ``phases`` asks for a critic step on every
batch, and on every ``n_critic``-th batch also a generator step (Gulrajani et al.
2017, Algorithm 1), so each critic step sees a fresh real batch. The engine zeroes,
backpropagates and steps only the optimizer of the phase, so

* the critic step generates its fakes under ``no_grad`` (nothing flows into G), and
* the generator step scores its fakes with a frozen critic (no gradient reaches D's
  weights, so no stale critic gradients are left behind).

Images are 8-bit data in [0, 1]; G and D work in [-1, 1] (G ends in tanh) and
``sample`` maps back. 2-D toys are used as they are. There is no likelihood.
Subclasses (dcgan.py, sngan.py; wgan.py and wgan_gp.py through ``WassersteinGAN``) choose the
objectives, the critic's normalisation and the defaults.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar, List, Optional

import torch
from torch import Tensor, nn

from ...errors import UserError
from ...data import modes
from ..base import DataSpec, GenerativeModel, Metrics, PhaseLoss
from .networks import CRITIC_NORMS, ConvCritic, ConvGenerator, MLPCritic, MLPGenerator
from .objectives import OBJECTIVES, gradient_penalty

FIXED_LATENTS = 64  # size of the fixed latent batch behind the logged sample grids
FIXED_SEED = 0


@dataclass
class GANConfig:
    latent_dim: int = 128  # dimension of z ~ N(0, I)
    width: int = 64  # images: channels of D's first stage; G mirrors it (Miyato et al. 2018: 64)
    hidden: int = 512  # 2-D toys: units per hidden layer of both MLPs
    depth: int = 3  # 2-D toys: hidden layers of both MLPs
    n_critic: int = 1  # critic steps (fresh real batches) per generator step
    conditional: bool = False  # class-conditional: conditional batch norm in G, projection D
    lr_generator: Optional[float] = None  # null: optimizer.lr
    lr_critic: Optional[float] = None  # null: optimizer.lr (set both for two time-scale updates)
    betas_generator: Optional[List[float]] = None  # null: optimizer.betas
    betas_critic: Optional[List[float]] = None  # null: optimizer.betas


@contextmanager
def frozen(module: nn.Module):
    """Build the graph with ``module``'s weights treated as constants (inputs still get gradients)."""
    module.requires_grad_(False)
    try:
        yield
    finally:
        module.requires_grad_(True)


def _player_settings(lr: Optional[float], betas: Optional[List[float]]) -> dict:
    """Overrides of the configured optimizer for one player (null keeps optimizer.lr / .betas)."""
    settings: dict = {}
    if lr is not None:
        settings["lr"] = lr
    if betas is not None:
        settings["betas"] = tuple(betas)
    return settings


class GAN(GenerativeModel):
    family = "gan"
    representations = ("8bit", "continuous")
    likelihood = None
    #: the critic's normalisation: "batch", "spectral" or "none" (see networks.ConvCritic)
    critic_norm: ClassVar[str] = "none"
    Config = GANConfig

    def __init__(self, config: GANConfig, data: DataSpec, objective: dict):
        super().__init__(config, data, objective)
        self.loss = OBJECTIVES[objective["name"]]
        self.gp_weight = float(objective.get("gp_weight", 0.0))
        self._check(config, data, objective)
        classes = data.num_classes if config.conditional else 0
        if data.is_image:
            self.generator = ConvGenerator(config.latent_dim, data.shape, config.width, classes)
            self.critic = ConvCritic(data.shape, config.width, self.critic_norm, classes)
        else:
            self.generator = MLPGenerator(config.latent_dim, data.dim, config.hidden, config.depth)
            self.critic = MLPCritic(data.dim, config.hidden, config.depth, self.critic_norm)
        # Seeded, so the logged grids show the same z (and labels) throughout training.
        g = torch.Generator().manual_seed(FIXED_SEED)
        self.register_buffer("fixed_z", torch.randn(FIXED_LATENTS, config.latent_dim, generator=g))

    def _check(self, config: GANConfig, data: DataSpec, objective: dict) -> None:
        allowed = {"name", "gp_weight"} if self.loss.penalized else {"name"}
        if set(objective) - allowed:
            raise UserError(f"objective={objective['name']} takes only {', '.join(sorted(allowed))}; "
                            f"got {', '.join(sorted(set(objective) - allowed))}.")
        if config.n_critic < 1:
            raise UserError(f"model.n_critic={config.n_critic} is not allowed: it must be >= 1.")
        if self.critic_norm not in CRITIC_NORMS:
            raise RuntimeError(f"{type(self).__name__}.critic_norm={self.critic_norm!r}")
        if config.conditional and (data.num_classes == 0 or not data.is_image):
            raise UserError("model.conditional=true needs labelled image data; this dataset has no labels.")

    # --- the two players ---------------------------------------------------------
    def check_precision(self, precision: str) -> None:
        if precision == "16" and self.objective["name"] == "wgan_gp":
            raise UserError("objective=wgan_gp cannot train at trainer.precision=16: the gradient penalty's "
                            "inner gradient would be taken on unscaled fp16 outputs and can underflow; "
                            "use trainer.precision=bf16 or 32.")

    def configure_optimizers(self, build) -> dict[str, torch.optim.Optimizer]:
        c = self.config
        return {
            "critic": build(self.critic.parameters(), **_player_settings(c.lr_critic, c.betas_critic)),
            "generator": build(self.generator.parameters(), **_player_settings(c.lr_generator, c.betas_generator)),
        }

    def phases(self, step: int) -> tuple[str, ...]:
        """A critic step on every batch, a generator step after every ``n_critic``-th."""
        return ("critic", "generator") if step % self.config.n_critic == 0 else ("critic",)

    def training_loss(self, x: Tensor, y: Optional[Tensor], phase: str) -> PhaseLoss:
        y = y if self.config.conditional else None  # fakes share the batch's labels
        if phase == "critic":
            return self.critic_step(self.to_model_space(x), y)
        return self.generator_step(len(x), y)

    def critic_step(self, x: Tensor, y: Optional[Tensor]) -> tuple[Tensor, Metrics]:
        with torch.no_grad():  # the fakes are constants here: the critic step never reaches G
            fake = self.generator(self.latents(len(x)), y)
        d_real, d_fake = self.critic(x, y), self.critic(fake, y)
        loss = self.loss.critic_loss(d_real, d_fake)
        metrics = self._scores(d_real, d_fake)
        if self.loss.penalized:
            # Gulrajani et al. 2017, eq. 3: L = E D(G(z)) - E D(x) + lambda E (||grad D(x_hat)|| - 1)^2
            penalty = gradient_penalty(self.critic, x, fake, y)
            loss = loss + self.gp_weight * penalty
            metrics["gradient_penalty"] = penalty.detach()
        metrics["loss_critic"] = loss.detach()
        return loss, metrics

    def generator_step(self, n: int, y: Optional[Tensor]) -> tuple[Tensor, Metrics]:
        with frozen(self.critic):
            d_fake = self.critic(self.generator(self.latents(n), y), y)
        loss = self.loss.generator_loss(d_fake)
        return loss, {"loss_generator": loss.detach()}

    def _scores(self, d_real: Tensor, d_fake: Tensor) -> Metrics:
        """Mean D(x) and D(G(z)): probabilities for the cross-entropy objectives, raw scores otherwise."""
        d_real, d_fake = d_real.detach(), d_fake.detach()
        if self.loss.logits:
            return {"d_real": torch.sigmoid(d_real).mean(), "d_fake": torch.sigmoid(d_fake).mean()}
        return {"d_real": d_real.mean(), "d_fake": d_fake.mean()}

    @torch.no_grad()
    def validation_step(self, x: Tensor, y: Optional[Tensor]) -> Metrics:
        """The critic's scores on held-out data and on fakes (no "loss": a GAN has none
        that ranks checkpoints)."""
        y = y if self.config.conditional else None
        fake = self.generator(self.latents(len(x)), y)
        return self._scores(self.critic(self.to_model_space(x), y), self.critic(fake, y))

    # --- data space <-> the networks' space --------------------------------------
    def to_model_space(self, x: Tensor) -> Tensor:
        return x * 2 - 1 if self.data.is_image else x

    def to_data_space(self, g: Tensor) -> Tensor:
        return ((g + 1) / 2).clamp(0, 1) if self.data.is_image else g

    def latents(self, n: int, temperature: float = 1.0, generator: Optional[torch.Generator] = None) -> Tensor:
        """z ~ N(0, temperature^2 I); a (CPU) ``generator`` gives the same z on every device."""
        device = self.fixed_z.device
        if generator is None:
            z = torch.randn(n, self.config.latent_dim, device=device)
        else:
            z = torch.randn(n, self.config.latent_dim, generator=generator).to(device)
        return temperature * z

    # --- sampling ------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, label: Optional[int] = None) -> Tensor:
        """``temperature`` scales z's standard deviation (lower: less diverse, often cleaner samples)."""
        labels = self.sample_labels(n, label, self.config.conditional)
        return self.to_data_space(self.generator(self.latents(n, temperature), labels))

    @torch.no_grad()
    def sample_for_logging(self, n: int) -> Tensor:
        """Samples from the fixed latent batch (extended by a seeded draw beyond its size);
        conditional models cycle through the classes."""
        z = self.fixed_z[:n]
        if n > len(z):
            g = torch.Generator().manual_seed(FIXED_SEED + 1)
            z = torch.cat([z, self.latents(n - len(z), generator=g)])
        y = None
        if self.config.conditional:
            y = torch.arange(n, device=z.device) % self.data.num_classes
        return self.to_data_space(self.generator(z, y))

    @torch.no_grad()
    def monitor(self, real: Tensor) -> Metrics:
        """Modes covered and high-quality share on the Gaussian-mixture toys (modes.py), from
        2,500 samples of a seeded z so that the numbers are comparable across validations."""
        mixture = modes.toy_mixture(self.data.dataset)
        if mixture is None:
            return {}
        centers, std = mixture
        z = self.latents(modes.NUM_SAMPLES, generator=torch.Generator().manual_seed(FIXED_SEED + 2))
        return modes.mode_coverage(self.to_data_space(self.generator(z)), centers, std)


@dataclass
class WassersteinConfig(GANConfig):
    n_critic: int = 5  # critic steps (fresh real batches) per generator step (Arjovsky et al. 2017 and Gulrajani et al. 2017, Algorithm 1)


class WassersteinGAN(GAN):
    """A critic that estimates the Wasserstein-1 distance (WGAN, WGAN-GP): five critic steps per
    generator step, and the estimate E D(x) - E D(G(z)) logged as ``wasserstein`` (up to the
    critic's Lipschitz constant; Arjovsky et al. 2017, Sec. 4.2: it falls as the samples improve)."""

    Config = WassersteinConfig

    def _scores(self, d_real: Tensor, d_fake: Tensor) -> Metrics:
        metrics = super()._scores(d_real, d_fake)
        metrics["wasserstein"] = metrics["d_real"] - metrics["d_fake"]
        return metrics
