"""The GAN family's shared model (Goodfellow et al. 2014).

A generator G maps z ~ N(0, I) to data space; a critic D scores examples; the two
are trained against each other with one of the losses of ``losses.py``.
The engine's generic loop drives the game: ``phases`` asks for a critic step on every
batch, and on every ``n_critic``-th batch also a generator step (Gulrajani et al.
2017, Algorithm 1), so each critic step sees a fresh real batch. The engine zeroes,
backpropagates and steps only the optimizer of the phase, so

* the critic step generates its fakes under ``no_grad`` (nothing flows into G), and
* the generator step scores its fakes with a frozen critic (no gradient reaches D's
  weights, so no stale critic gradients are left behind).

Images are 8-bit data in [0, 1]; G and D work in [-1, 1] (G ends in tanh) and
``sample`` maps back. 2-D toys are used as they are. A GAN defines no likelihood; ``dgm eval
estimator.ais=true`` gives it one, as Wu et al. (2017) do, by a Gaussian observation model
p(x|z) = N(x; G(z), sigma^2 I) with sigma chosen on validation data, log p(x) estimated by AIS with HMC
(nn/decoder_ais.py) and checked by bidirectional Monte Carlo on data simulated from the model.
Subclasses (dcgan.py, sngan.py; wgan.py and wgan_gp.py through ``WassersteinGAN``) choose the
objectives, the critic's normalisation and the defaults.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import ClassVar, List, Optional

import torch
from torch import Tensor, nn

from ...data import modes
from ...errors import UserError
from ...rules import POSITIVE, Rule, checked
from ..base import DataSpec, GenerativeModel, Metrics, PhaseLoss
from ..nn import decoder_ais
from ..nn.distributions import gaussian_log_prob
from ..objectives import WGANGP, Objective
from .losses import LOSSES, gradient_penalty
from .networks import CRITIC_NORMS, ConvCritic, ConvGenerator, MLPCritic, MLPGenerator, resolutions

#: a player's own learning rate or Adam betas (null: the optimizer's)
LEARNING_RATE: Rule = (lambda v: v is None or v > 0, "null or > 0")
BETAS: Rule = (lambda v: v is None or (len(v) == 2 and all(0 <= b < 1 for b in v)), "null or two numbers in [0, 1)")
FIXED_LATENTS = 64  # size of the fixed latent batch behind the logged sample grids
FIXED_SEED = 0


@dataclass
class GANConfig:
    latent_dim: int = checked(128, POSITIVE)  # dimension of z ~ N(0, I)
    width: int = checked(64, POSITIVE)  # images: channels of D's first stage; G mirrors it (Miyato et al. 2018: 64)
    hidden: int = checked(512, POSITIVE)  # 2-D toys: units per hidden layer of both MLPs
    depth: int = checked(3, POSITIVE)  # 2-D toys: hidden layers of both MLPs
    n_critic: int = checked(1, POSITIVE)  # critic steps (fresh real batches) per generator step
    conditional: bool = False  # class-conditional: conditional batch norm in G, projection D
    lr_generator: Optional[float] = checked(None, LEARNING_RATE)  # null: optimizer.lr
    lr_critic: Optional[float] = checked(None, LEARNING_RATE)  # null: optimizer.lr (set both for two time-scale
    #   updates)
    betas_generator: Optional[List[float]] = checked(None, BETAS)  # null: optimizer.betas
    betas_critic: Optional[List[float]] = checked(None, BETAS)  # null: optimizer.betas


#: what the Gaussian observation model does to a number on data in the unit cube
DENSITY_NOTE = (
    "p(x|z) = N(x; G(z), sigma^2 I) is a density on R^D, not on the data's [0, 1]^D: the mass it puts "
    "outside the cube is lost, so log p(x) is lower (the NLL higher, conservative) than that of the same "
    "model renormalised to the cube"
)


@dataclass
class GANEstimator(decoder_ais.DecoderAISSettings):
    """`dgm eval estimator.ais=true ...`: a GAN's log-likelihood under a Gaussian observation model (Wu et al. 2017)."""

    sigmas: List[float] = field(default_factory=lambda: [0.025, 0.05, 0.1, 0.2])  # grid of p(x|z)'s std (data units);
    #   the best validation AIS estimate is used
    sigma_examples: int = 50  # validation examples that choose sigma
    sigma_temperatures: int = 100  # AIS temperatures of the choice (ais_pilot_chains chains each)
    extra_ais_keys: ClassVar[tuple[str, ...]] = ("sigmas", "sigma_examples", "sigma_temperatures")

    def __post_init__(self):
        problem = self.check_ais()
        if problem is None and (
            not self.sigmas or min(self.sigmas) <= 0 or self.sigma_examples < 1 or self.sigma_temperatures < 1
        ):
            problem = (
                "estimator.sigmas must be a non-empty list of values > 0, sigma_examples and sigma_temperatures >= 1"
            )
        if problem:
            raise UserError(problem + ".")


@contextmanager
def frozen(module: nn.Module):
    """Build the graph with ``module``'s weights treated as constants (inputs still get gradients)."""
    module.requires_grad_(False)
    try:
        yield
    finally:
        module.requires_grad_(True)


@contextmanager
def batch_statistics(module: nn.Module):
    """Run ``module``'s batch norms on each batch's own statistics, as in training, leaving their running
    statistics untouched. A critic is trained on batches that are all real or all fake, so its running
    statistics average two different distributions and its eval-mode scores are not those it learned to give."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.training, m.track_running_stats) for m in norms]
    for m in norms:
        m.training, m.track_running_stats = True, False  # batch statistics, no running update
    try:
        yield
    finally:
        for m, (training, track) in zip(norms, saved):
            m.training, m.track_running_stats = training, track


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
    Estimator = GANEstimator

    @classmethod
    def check_settings(cls, config: GANConfig, objective: Objective, data: Optional[DataSpec] = None) -> None:
        super().check_settings(config, objective, data)
        if cls.critic_norm not in CRITIC_NORMS:
            raise RuntimeError(f"{cls.__name__}.critic_norm={cls.critic_norm!r}")
        if data is not None and data.is_image:
            resolutions(*data.shape[1:])  # refuses sizes its networks cannot take
        if data is not None and config.conditional and (data.num_classes == 0 or not data.is_image):
            raise UserError("model.conditional=true needs labelled image data; this dataset has no labels.")

    def __init__(self, config: GANConfig, data: DataSpec, objective: Objective):
        super().__init__(config, data, objective)
        self.loss = LOSSES[self.objective.name]
        self.gp_weight = self.objective.gp_weight if isinstance(self.objective, WGANGP) else 0.0
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
        self._sigma: Optional[tuple[float, str, dict]] = None  # (sigma, where it was chosen, the grid's scores)
        self._acceptance: list[float] = []

    # --- the two players ---------------------------------------------------------
    def check_precision(self, precision: str) -> None:
        if precision == "16" and isinstance(self.objective, WGANGP):
            raise UserError(
                "objective=wgan_gp cannot train at trainer.precision=16: the gradient penalty's "
                "inner gradient would be taken on unscaled fp16 outputs and can underflow; "
                "use trainer.precision=bf16 or 32."
            )

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
        that ranks checkpoints), each batch scored as the critic saw batches in training."""
        y = y if self.config.conditional else None
        fake = self.generator(self.latents(len(x)), y)
        with batch_statistics(self.critic):
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

    # --- a likelihood on request: decoder-based AIS (Wu et al. 2017) -----------------------------------
    def likelihood_name(self, ais: bool = False, **_) -> Optional[str]:
        return "decoder_ais" if ais else None

    def density_support(self, ais: bool = False, **_) -> Optional[str]:
        """The Gaussian observation model is normalised on R^D, not on the images' [0, 1]^D."""
        return "R^D" if ais and self.data.is_image else None

    def eval_representation(self, ais: bool = False, **_) -> str:
        """The representation ``dgm eval`` scores on: dequantized images under AIS, the flows' protocol (a
        Gaussian density is a density; 8-bit values would need a probability mass)."""
        return "dequantized" if ais and self.data.is_image else self.data.representation

    def decoder_mean(self, z: Tensor) -> Tensor:
        """G(z) in data space, unclamped: the mean of the observation model."""
        g = self.generator(z)
        return (g + 1) / 2 if self.data.is_image else g

    def observation_model(self, sigma: float) -> decoder_ais.Factory:
        """(x, chains) -> z |-> log N(x; G(z), sigma^2 I) for the chains of each example."""
        log_var = 2 * math.log(sigma)

        def make(x: Tensor, chains: int):
            xr = x.repeat_interleave(chains, dim=0)
            return lambda z: gaussian_log_prob(xr, self.decoder_mean(z), torch.full_like(xr, log_var))

        return make

    def _check_ais(self) -> None:
        if self.config.conditional:
            raise UserError(
                "estimator.ais=true is for unconditional GANs; this one is class-conditional (its AIS "
                "would need p(x|y, z) for every label)."
            )

    @torch.no_grad()
    def tune_on_validation(self, x: Tensor, split: str = "validation", **settings) -> dict:
        """Choose sigma from ``estimator.sigmas``: the one whose AIS estimate of the mean log p(x) on the first
        ``sigma_examples`` of ``x`` is highest (Wu et al. 2017, Sec. 5: sigma tuned on validation data)."""
        s = self.Estimator(**settings)
        if not s.ais:
            return {}
        self._check_ais()
        xv = x[: s.sigma_examples]
        scores = {}
        for sigma in s.sigmas:
            log_p, _ = decoder_ais.log_likelihood(
                self.observation_model(sigma),
                xv,
                self.config.latent_dim,
                s,
                temperatures=s.sigma_temperatures,
                chains=s.ais_pilot_chains,
            )
            scores[f"{sigma:g}"] = float(log_p.mean())
        best = max(s.sigmas, key=lambda v: scores[f"{v:g}"])
        self._sigma = (best, f"{len(xv)} {split} examples", scores)
        return {"sigma": best}

    @torch.no_grad()
    def prepare_eval(self, x: Tensor, y: Optional[Tensor] = None, **settings) -> dict:
        """sigma (chosen on validation data by ``tune_on_validation``; on the first examples of the evaluated split
        where no one called it, which the report says), then BDMC on ``bdmc_examples`` examples simulated from
        the model: z* ~ N(0, I), x = G(z*) + sigma eps."""
        s = self.Estimator(**settings)
        if not s.ais:
            return {}
        if self._sigma is None:
            self.tune_on_validation(x, split="evaluated (no validation data was given)", **settings)
        sigma, chosen_on, scores = self._sigma
        self._acceptance = []
        report = {
            "sigma": sigma,
            "sigma_chosen_on": chosen_on,
            "sigma_grid_mean_log_p": scores,
            "schedule": s.describe(),
            "density_note": DENSITY_NOTE,
        }
        if s.bdmc_examples:
            ref = self.fixed_z
            z = torch.randn(s.bdmc_examples, self.config.latent_dim, device=ref.device, dtype=ref.dtype)
            simulated = self.decoder_mean(z)
            simulated = simulated + sigma * torch.randn_like(simulated)
            report.update(decoder_ais.bdmc(self.observation_model(sigma), z, simulated, s)["report"])
        return report

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, y: Optional[Tensor] = None, **settings) -> Tensor:
        s = self.Estimator(**settings)
        if not s.ais:
            raise UserError(
                f"{type(self).__name__} has no likelihood of its own: add estimator.ais=true for the "
                "decoder-based AIS estimate (Wu et al. 2017), or use sample-quality metrics."
            )
        if self._sigma is None:
            raise RuntimeError("prepare_eval chooses sigma before the per-example pass")
        log_p, acceptance = decoder_ais.log_likelihood(
            self.observation_model(self._sigma[0]), x, self.config.latent_dim, s
        )
        self._acceptance.append(acceptance)
        return log_p

    def estimator(self, **settings) -> str:
        s = self.Estimator(**settings)
        if not s.ais:
            return "none (estimator.ais=false)"
        sigma = f"{self._sigma[0]:g}" if self._sigma else "chosen on validation data"
        return (
            f"decoder-based AIS (Wu et al. 2017): p(x|z) = N(x; G(z), sigma^2 I), sigma = {sigma}; forward AIS "
            f"from the prior, {s.describe()}: a stochastic lower bound on log p(x)"
        )

    def extra_eval(self, x: Tensor, y: Optional[Tensor] = None) -> Metrics:
        return {"hmc_acceptance": torch.tensor(self._acceptance.pop() * len(x))} if self._acceptance else {}


@dataclass
class WassersteinConfig(GANConfig):
    n_critic: int = 5  # critic steps (fresh real batches) per generator step (Arjovsky et al. 2017 and Gulrajani et al.
    #   2017, Algorithm 1)


class WassersteinGAN(GAN):
    """A critic that estimates the Wasserstein-1 distance (WGAN, WGAN-GP): five critic steps per
    generator step, and the estimate E D(x) - E D(G(z)) logged as ``wasserstein`` (up to the
    critic's Lipschitz constant; Arjovsky et al. 2017, Sec. 4.2: it falls as the samples improve)."""

    Config = WassersteinConfig

    def _scores(self, d_real: Tensor, d_fake: Tensor) -> Metrics:
        metrics = super()._scores(d_real, d_fake)
        metrics["wasserstein"] = metrics["d_real"] - metrics["d_fake"]
        return metrics
