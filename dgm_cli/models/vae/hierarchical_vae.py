"""The VAE with two stochastic layers of Burda, Grosse & Salakhutdinov 2015 (Sec. 5, Appendix):
``model=hierarchical_vae``, or ``model=vae model.stochastic_layers=2`` (``VAE.class_for``).

    generative:  h2 ~ N(0, I),  h1 ~ N(mu(h2), diag sigma^2(h2)),  x ~ p(x | h1)
    recognition: h1 ~ q(h1 | x),  h2 ~ q(h2 | h1)                      (both diagonal Gaussians)

With the defaults, x-200-200-h1(100)-100-100-h2(50), tanh: deterministic layers of 200 units between
x and h1 (``model.hidden``) and of 100 units between h1 and h2 (``model.hidden_2``); ``latent_dim_1``
is h1's size and ``latent_dim`` h2's, the top layer. One importance weight is

    log w = log p(x|h1) + log p(h1|h2) + log p(h2) - log q(h1|x) - log q(h2|h1)     (Burda et al., eq. 8)

so IWAE_k and the IWAE estimate of log p(x) at evaluation are the one-layer model's code with this
weight. The ELBO's KL is KL(q(h1,h2|x) || p(h1,h2)) = E_q[log q(h1|x) - log p(h1|h2)]
+ E_q(h1|x) KL(q(h2|h1) || N(0, I)): the first term a one-sample Monte Carlo estimate, the second
in closed form given the sampled h1 -- an unbiased estimate of the KL, so the ELBO stays unbiased.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ...errors import UserError
from ..base import DataSpec
from ..nn import distributions as D
from ..objectives import Objective
from ..registry import register
from .networks import MLPDecoder, MLPEncoder
from .vae import VAE, VAEConfig


@dataclass
class HierarchicalVAEConfig(VAEConfig):
    stochastic_layers: int = 2  # two: h1 (latent_dim_1 units) below h2 (latent_dim units)


def gaussian_log_prob_per_dim(x: Tensor, mean: Tensor, log_var: Tensor) -> Tensor:
    """log N(x_j | mean_j, exp(log_var_j)) for each dimension j, shape (B, D)."""
    return -0.5 * (D.LOG_2PI + log_var + (x - mean) ** 2 * torch.exp(-log_var))


@register("hierarchical_vae")
class TwoStochasticLayerVAE(VAE):
    """``model=hierarchical_vae``; also what ``model=vae model.stochastic_layers=2`` builds (``VAE.class_for``)."""

    Config = HierarchicalVAEConfig
    stochastic_layers = 2

    @classmethod
    def check_settings(cls, config, objective: Objective, data: Optional[DataSpec] = None) -> None:
        super().check_settings(config, objective, data)
        if config.architecture != "mlp":
            raise UserError("model.stochastic_layers=2 is Burda et al.'s MLP architecture; use model.architecture=mlp.")
        if not config.hidden_2:
            raise UserError("model.stochastic_layers=2 needs a non-empty model.hidden_2.")

    def __init__(self, config, data, objective: Objective):
        super().__init__(config, data, objective)
        act, d1, d2 = config.activation, config.latent_dim_1, config.latent_dim
        self.encoder = MLPEncoder(data.shape, list(config.hidden), d1, act)  # q(h1 | x)
        self.decoder = MLPDecoder(data.shape, list(config.hidden), d1, act, self.decoder.params)  # p(x | h1)
        self.encoder_2 = MLPEncoder((d1,), list(config.hidden_2), d2, act)  # q(h2 | h1)
        self.prior_1 = MLPDecoder((d1,), list(config.hidden_2), d2, act, 2)  # p(h1 | h2): (mean, log_var)

    def prior_1_params(self, h2: Tensor) -> tuple[Tensor, Tensor]:
        out = self.prior_1(h2)
        return out[:, 0], out[:, 1]

    # --- the bounds ----------------------------------------------------------------
    def elbo_terms(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(log p(x|h1), KL estimate per example, its per-dimension terms (h1's, then h2's), the
        posterior means [E q(h1|x), E q(h2 | h1 = E q(h1|x))] for counting active units)."""
        mean1, log_var1 = self.encoder(x)
        h1 = self.reparameterize(mean1, log_var1)
        mean2, log_var2 = self.encoder_2(h1)
        h2 = self.reparameterize(mean2, log_var2)
        p_mean1, p_log_var1 = self.prior_1_params(h2)
        kl_1 = gaussian_log_prob_per_dim(h1, mean1, log_var1) - gaussian_log_prob_per_dim(h1, p_mean1, p_log_var1)
        kl_dims = torch.cat([kl_1, D.gaussian_kl_per_dim(mean2, log_var2)], dim=1)
        rec = self.log_px_given_z(self.decoder(h1), x)
        means = torch.cat([mean1, self.encoder_2(mean1)[0]], dim=1)
        return rec, kl_dims.sum(1), kl_dims, means

    def _log_weights(self, x: Tensor, mean: Tensor, log_var: Tensor, k: int) -> Tensor:
        """log w_i for (h1_i, h2_i) ~ q(h1|x) q(h2|h1), shape (k, B); ``mean``, ``log_var`` are q(h1|x)'s."""
        b = x.shape[0]
        mean, log_var = mean.repeat(k, 1), log_var.repeat(k, 1)  # row i*B + j: sample i of example j
        h1 = self.reparameterize(mean, log_var)
        mean2, log_var2 = self.encoder_2(h1)
        h2 = self.reparameterize(mean2, log_var2)
        log_q = D.gaussian_log_prob(h1, mean, log_var) + D.gaussian_log_prob(h2, mean2, log_var2)
        log_p = D.standard_normal_log_prob(h2) + D.gaussian_log_prob(h1, *self.prior_1_params(h2))
        x_rep = x.unsqueeze(0).expand(k, *x.shape).reshape(k * b, *x.shape[1:])
        return (self.log_px_given_z(self.decoder(h1), x_rep) + log_p - log_q).view(k, b)

    def finalize_eval(self, sums: dict, count: int) -> dict:
        """Active units per stochastic layer (Burda et al. 2015, Sec. 5.2, counted per layer as there)."""
        m = sums["posterior_mean_sum"] / count
        active = sums["posterior_mean_sq_sum"] / count - m**2 > 1e-2
        out = super().finalize_eval(sums, count)
        d1 = self.config.latent_dim_1
        out.update(
            active_units_1=int(active[:d1].sum()),
            active_units_2=int(active[d1:].sum()),
            latent_dim=d1 + self.config.latent_dim,
        )
        return out

    # --- generation ------------------------------------------------------------------
    def decoder_latents(self, n: int, temperature: float = 1.0) -> Tensor:
        """h1 ~ p(h1 | h2), h2 ~ N(0, T^2 I), the noise of both layers scaled by ``temperature``: what
        ``sample`` (decoder means) and ``sample_observations`` decode."""
        device = next(self.parameters()).device
        h2 = temperature * torch.randn(n, self.config.latent_dim, device=device)
        mean1, log_var1 = self.prior_1_params(h2)
        return mean1 + temperature * torch.exp(0.5 * log_var1) * torch.randn_like(mean1)
