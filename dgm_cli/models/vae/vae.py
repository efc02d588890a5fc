"""The VAE (Kingma & Welling 2014) with ELBO, beta-ELBO, KL warm-up, free bits and the IWAE bound.

    ELBO(x)  = E_q(z|x)[log p(x|z)] - KL(q(z|x) || p(z))                      (K&W 2014, eq. 3)
    beta-ELBO= E_q[log p(x|z)] - beta * KL                                      (Higgins et al. 2017)
    IWAE_k(x)= E[log (1/k) sum_i p(x, z_i) / q(z_i|x)],  z_i ~ q(z|x)           (Burda et al. 2015, eq. 8)

Warm-up multiplies the KL by min(1, step / kl_warmup_steps) (Sønderby et al. 2016); free bits
replace each latent dimension's batch-mean KL by max(free_bits, KL_j) (Kingma et al. 2016, eq. 15).
At evaluation, log p(x) is estimated by IWAE_k with k = 5000 by default, as in Burda et al.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ...errors import UserError
from ...rules import POSITIVE, SIZES, checked, checked_choice, checked_list, choice
from ..base import DataSpec, Metrics, alternating_rows
from ..nn import decoder_ais
from ..nn import distributions as D
from ..nn.mlp import ACTIVATIONS
from ..objectives import IWAE, BetaELBO, Objective
from ..registry import get_model_class, register
from .base import IWAEEstimator, LatentVariableModel
from .importance import importance_log_likelihood
from .networks import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder, check_conv_shape

#: likelihood p(x|z) -> (parameters per data dimension, representations it fits)
LIKELIHOODS = {
    "bernoulli": (1, ("binary",)),
    "gaussian": (2, ("dequantized", "continuous")),
    "discretized_logistic": (2, ("8bit",)),
}
DEFAULT_LIKELIHOOD = {
    "binary": "bernoulli",
    "8bit": "discretized_logistic",
    "dequantized": "gaussian",
    "continuous": "gaussian",
}
MIN_LOG_SCALE = -7.0


@dataclass
class VAEConfig:
    architecture: str = checked_choice("mlp", ("mlp", "conv"))  # {choices}
    hidden: list = checked_list([200, 200], SIZES)  # MLP hidden sizes (encoder; decoder mirrors)
    channels: list = checked_list([32, 64], SIZES)  # conv channels (each layer halves H and W)
    latent_dim: int = checked(50, POSITIVE)  # units of z
    activation: str = checked_choice("tanh", ACTIVATIONS)  # {choices}
    likelihood: str = checked_choice("auto", ("auto", *LIKELIHOODS))  # {choices} (auto: from the data representation)
    stochastic_layers: int = checked(1, choice((1, 2)))  # 1, or 2: Burda et al. 2015's two-layer model
    #   (model=hierarchical_vae)
    latent_dim_1: int = checked(100, POSITIVE)  # stochastic_layers=2: units of h1; latent_dim is then the top layer h2
    hidden_2: list = checked_list([100, 100], SIZES)  # stochastic_layers=2: deterministic units between h1 and h2


@dataclass
class VAEEstimator(decoder_ais.DecoderAISSettings, IWAEEstimator):
    """`dgm eval estimator.<key>=...`: the IWAE estimate (``k``), or with ``ais=true`` decoder-based AIS with the
    VAE's own p(x|z) (Wu et al. 2017), a second estimate from the prior to the posterior that needs no encoder."""

    def __post_init__(self):
        IWAEEstimator.__post_init__(self)
        problem = self.check_ais()
        if problem:
            raise UserError(problem + ".")


@register("vae")
class VAE(LatentVariableModel):
    objectives = ("elbo", "beta_elbo", "iwae")
    representations = ("binary", "8bit", "dequantized", "continuous")
    sample_modes = ("sample", "reconstruct", "interpolate")
    Config = VAEConfig
    Estimator = VAEEstimator

    stochastic_layers = 1  # the layers of latent variables this class builds (model.stochastic_layers)

    @classmethod
    def class_for(cls, config: VAEConfig) -> type:
        """``model=vae model.stochastic_layers=2`` builds Burda et al.'s two-layer model, registered as
        ``hierarchical_vae`` (hierarchical_vae.py)."""
        return get_model_class("hierarchical_vae") if cls is VAE and config.stochastic_layers == 2 else cls

    @classmethod
    def check_settings(cls, config: VAEConfig, objective: Objective, data: Optional[DataSpec] = None) -> None:
        super().check_settings(config, objective, data)
        if config.stochastic_layers != cls.stochastic_layers:
            raise UserError(
                f"model.stochastic_layers={config.stochastic_layers} is not allowed for model={cls.name}: "
                f"it has {cls.stochastic_layers}. model=vae takes 1 or 2 (2 is model=hierarchical_vae, "
                f"model.architecture=mlp), other VAEs 1."
            )
        if data is not None and config.architecture == "conv":
            check_conv_shape(data.shape, len(config.channels))
        if (
            data is not None
            and config.likelihood != "auto"
            and data.representation not in LIKELIHOODS[config.likelihood][1]
        ):
            fits = [k for k, (_, reps) in LIKELIHOODS.items() if data.representation in reps]
            raise UserError(
                f"model.likelihood={config.likelihood} does not fit data.representation="
                f"{data.representation}; use auto or one of: {', '.join(fits)}."
            )

    def __init__(self, config: VAEConfig, data: DataSpec, objective: Objective):
        super().__init__(config, data, objective)
        #: p(x|z)'s distribution (model.likelihood, auto resolved by the representation): bernoulli, gaussian, ...
        self.decoder_likelihood = (
            DEFAULT_LIKELIHOOD[data.representation] if config.likelihood == "auto" else config.likelihood
        )
        params, act = LIKELIHOODS[self.decoder_likelihood][0], config.activation
        if config.architecture == "mlp":
            self.encoder = MLPEncoder(data.shape, list(config.hidden), config.latent_dim, act)
            self.decoder = MLPDecoder(data.shape, list(config.hidden), config.latent_dim, act, params)
        else:  # conv
            self.encoder = ConvEncoder(data.shape, list(config.channels), config.latent_dim, act)
            self.decoder = ConvDecoder(data.shape, list(config.channels), config.latent_dim, act, params)
        self.latent_dim = config.latent_dim
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    # --- the pieces of every bound -----------------------------------------------
    def log_px_given_z(self, out: Tensor, x: Tensor) -> Tensor:
        """log p(x|z) per example from the decoder output (B, P, *shape)."""
        if self.decoder_likelihood == "bernoulli":
            return D.bernoulli_log_prob(out[:, 0], x)
        if self.decoder_likelihood == "gaussian":
            return D.gaussian_log_prob(x, out[:, 0], out[:, 1].clamp(min=2 * MIN_LOG_SCALE))
        return D.discretized_logistic_log_prob(x, out[:, 0], out[:, 1].clamp(min=MIN_LOG_SCALE))

    def mean_of(self, out: Tensor) -> Tensor:
        """The mean of p(x|z) (for images, clamped to [0, 1])."""
        mean = torch.sigmoid(out[:, 0]) if self.decoder_likelihood == "bernoulli" else out[:, 0]
        return mean.clamp(0, 1) if self.data.is_image else mean

    @staticmethod
    def reparameterize(mean: Tensor, log_var: Tensor) -> Tensor:
        return mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)

    def kl_weight(self) -> float | Tensor:
        """beta, grown linearly over the KL warm-up: then a 0-dim tensor from the step buffer (no host read)."""
        beta = self.objective.beta if isinstance(self.objective, BetaELBO) else 1.0
        warmup = self.objective.kl_warmup_steps
        return beta * ((self.step + 1) / warmup).clamp(max=1.0) if warmup > 0 else beta

    def elbo_terms(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(reconstruction log p(x|z), KL per example, KL per latent dim, posterior mean)."""
        mean, log_var = self.encoder(x)
        z = self.reparameterize(mean, log_var)
        rec = self.log_px_given_z(self.decoder(z), x)
        kl_dims = D.gaussian_kl_per_dim(mean, log_var)
        return rec, kl_dims.sum(1), kl_dims, mean

    def iwae_log_weights(self, x: Tensor, k: int) -> Tensor:
        """log w_i = log p(x|z_i) + log p(z_i) - log q(z_i|x), shape (k, B), z_i ~ q(z|x)."""
        mean, log_var = self.encoder(x)
        return self._log_weights(x, mean, log_var, k)

    def _log_weights(self, x: Tensor, mean: Tensor, log_var: Tensor, k: int) -> Tensor:
        b = x.shape[0]
        z = mean + torch.exp(0.5 * log_var) * torch.randn(k, *mean.shape, device=x.device, dtype=mean.dtype)
        log_q = D.gaussian_log_prob(z.reshape(k * b, -1), mean.repeat(k, 1), log_var.repeat(k, 1))
        log_pz = D.standard_normal_log_prob(z.reshape(k * b, -1))
        x_rep = x.unsqueeze(0).expand(k, *x.shape).reshape(k * b, *x.shape[1:])
        log_px = self.log_px_given_z(self.decoder(z.reshape(k * b, -1)), x_rep)
        return (log_px + log_pz - log_q).view(k, b)

    # --- training ------------------------------------------------------------------
    def loss(self, x: Tensor) -> tuple[Tensor, Metrics]:
        if isinstance(self.objective, IWAE):
            k = self.objective.k
            bound = torch.logsumexp(self.iwae_log_weights(x, k), dim=0) - math.log(k)
            loss = -bound.mean()
            return loss, {"loss": loss.detach(), f"iwae_{k}": bound.mean().detach()}
        rec, kl, kl_dims, _ = self.elbo_terms(x)
        free_bits = self.objective.free_bits
        kl_penalty = kl_dims.mean(0).clamp(min=free_bits).sum() if free_bits > 0 else kl.mean()
        weight = self.kl_weight()
        loss = -rec.mean() + weight * kl_penalty
        elbo = (rec - kl).mean().detach()
        return loss, {
            "loss": loss.detach(),
            "elbo": elbo,
            "reconstruction": rec.mean().detach(),
            "kl": kl.mean().detach(),
            "kl_weight": weight,
        }

    def training_loss(self, x: Tensor, y: Optional[Tensor], phase: str) -> tuple[Tensor, Metrics]:
        return self.loss(x)

    def after_step(self, phase: str) -> None:
        self.step += 1  # the KL warm-up's clock

    @torch.no_grad()
    def validation_step(self, x: Tensor, y: Optional[Tensor]) -> Metrics:
        rec, kl, _, _ = self.elbo_terms(x)
        elbo = rec - kl
        return {"loss": -elbo.mean(), "elbo": elbo.mean(), "reconstruction": rec.mean(), "kl": kl.mean()}

    # --- likelihood -----------------------------------------------------------------
    @torch.no_grad()
    def log_likelihood(
        self, x: Tensor, y: Optional[Tensor] = None, k: int = 5000, ais: bool = False, **settings
    ) -> Tensor:
        """IWAE estimate of log p(x) with k importance samples, in chunks of samples so memory stays bounded.
        Its expectation is a lower bound on log p(x) that tightens as k grows (Burda et al. 2015, Thm. 1).
        With ``ais``: forward AIS from the prior with HMC (nn/decoder_ais.py), also a stochastic lower bound."""
        if ais:
            s = self.ais_settings(k=k, ais=ais, **settings)
            return decoder_ais.log_likelihood(self.observation_model, x, self.latent_dim, s)[0]
        mean, log_var = self.encoder(x)
        return importance_log_likelihood(lambda m: self._log_weights(x, mean, log_var, m), k, x.shape[0])

    def ais_settings(self, **settings) -> VAEEstimator:
        if self.stochastic_layers > 1:
            raise UserError(
                "estimator.ais=true anneals one latent layer; this VAE has two (model.stochastic_layers=2): "
                "use its IWAE estimate."
            )
        return VAEEstimator(**settings)

    def observation_model(self, x: Tensor, chains: int):
        """z |-> log p(x|z), the decoder's own likelihood, for ``chains`` chains of each example."""
        xr = x.repeat_interleave(chains, dim=0)
        return lambda z: self.log_px_given_z(self.decoder(z), xr)

    def density_support(self, **_) -> Optional[str]:
        """A Gaussian decoder is normalised on R^D, not on the images' [0, 1]^D (the other decoders on the data's
        values)."""
        return "R^D" if self.decoder_likelihood == "gaussian" and self.data.is_image else None

    def likelihood_name(self, ais: bool = False, **_) -> str:
        return "decoder_ais" if ais else self.likelihood

    @torch.no_grad()
    def prepare_eval(self, x: Tensor, y: Optional[Tensor] = None, ais: bool = False, **settings) -> dict:
        """With ``ais``: bidirectional Monte Carlo on ``bdmc_examples`` examples simulated from the model."""
        if not ais:
            return {}
        s = self.ais_settings(ais=ais, **settings)
        report = {"schedule": s.describe()}
        if s.bdmc_examples:
            z = self.decoder_latents(s.bdmc_examples)
            simulated = self.observations(self.decoder(z), clamp=False)  # exact draws of p(x|z)
            report.update(decoder_ais.bdmc(self.observation_model, z, simulated, s)["report"])
        return report

    def estimator(self, k: int = 5000, ais: bool = False, **settings) -> str:
        if ais:
            s = self.ais_settings(k=k, ais=ais, **settings)
            return (
                f"decoder-based AIS (Wu et al. 2017) with the decoder's own p(x|z) ({self.decoder_likelihood}): "
                f"forward AIS from the prior, {s.describe()}: a stochastic lower bound on log p(x)"
            )
        return f"IWAE, k={k} importance samples (Burda et al. 2015)"

    @torch.no_grad()
    def extra_eval(self, x: Tensor, y: Optional[Tensor] = None) -> Metrics:
        rec, kl, _, mean = self.elbo_terms(x)
        return {
            "elbo": (rec - kl).sum(),
            "reconstruction": rec.sum(),
            "kl": kl.sum(),
            "posterior_mean_sum": mean.sum(0),
            "posterior_mean_sq_sum": (mean**2).sum(0),
        }

    def finalize_eval(self, sums: dict, count: int) -> dict:
        """Active units (Burda et al. 2015, Sec. 5.2): latent u is active if Cov_x(E_q[z_u|x]) > 1e-2."""
        m = sums.pop("posterior_mean_sum") / count
        var = sums.pop("posterior_mean_sq_sum") / count - m**2
        out = {k: float(v) / count for k, v in sums.items()}
        out["active_units"] = int((var > 1e-2).sum())
        out["latent_dim"] = self.latent_dim
        return out

    # --- generation --------------------------------------------------------------------
    @torch.no_grad()
    def decode_mean(self, z: Tensor) -> Tensor:
        return self.mean_of(self.decoder(z))

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, label: Optional[int] = None) -> Tensor:
        """Means of p(x|z) for z ~ N(0, temperature^2 I) (the usual way VAE samples are shown)."""
        if label is not None:
            raise UserError("this VAE is unconditional; sample without label=.")
        return self.decode_mean(self.decoder_latents(n, temperature))

    def decoder_latents(self, n: int, temperature: float = 1.0) -> Tensor:
        """n draws of the decoder's input from the prior, its noise scaled by ``temperature``: z ~ N(0, T^2 I)."""
        device = next(self.parameters()).device
        return temperature * torch.randn(n, self.latent_dim, device=device)

    @torch.no_grad()
    def sample_observations(self, n: int) -> Tensor:
        """x ~ p(x|z), z ~ N(0, I): what the model generates (binary pixels for a Bernoulli decoder,
        8-bit values for a discretized logistic), not the means ``sample`` shows."""
        return self.observations(self.decoder(self.decoder_latents(n)))

    def observations(self, out: Tensor, clamp: bool = True) -> Tensor:
        """x ~ p(x|z) from the decoder's output for z (a Gaussian's draws clamped to [0, 1] for images unless
        ``clamp`` is false)."""
        if self.decoder_likelihood == "bernoulli":
            x = D.bernoulli_sample(out[:, 0])
        elif self.decoder_likelihood == "gaussian":
            x = D.gaussian_sample(out[:, 0], out[:, 1].clamp(min=2 * MIN_LOG_SCALE))
        else:
            x = D.discretized_logistic_sample(out[:, 0], out[:, 1].clamp(min=MIN_LOG_SCALE))
        return x.clamp(0, 1) if self.data.is_image and clamp else x

    @torch.no_grad()
    def sample_reconstruct(self, x: Tensor, y: Optional[Tensor] = None, **_) -> Tensor:
        """Rows alternate: 8 inputs, then their reconstructions (decoder means at the posterior means)."""
        return alternating_rows(x, lambda x: self.decode_mean(self.encoder(x)[0]))

    @torch.no_grad()
    def sample_interpolate(self, x: Tensor, y: Optional[Tensor] = None, steps: int = 10, **_) -> Tensor:
        """Each row decodes a straight line between the posterior means of two inputs."""
        mean = self.encoder(x[: 2 * (x.shape[0] // 2)])[0]
        a, b = mean[0::2], mean[1::2]
        t = torch.linspace(0, 1, steps, device=x.device).view(1, steps, 1)
        z = (a.unsqueeze(1) * (1 - t) + b.unsqueeze(1) * t).reshape(-1, mean.shape[1])
        return self.decode_mean(z).view(a.shape[0], steps, *x.shape[1:])
