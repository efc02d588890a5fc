"""KL warm-up, free bits and beta change the VAE's loss as their equations say; active units counts
the latent dimensions that carry information; objective keys that do not apply are refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dgm_cli.errors import UserError
from dgm_cli.evaluation.likelihood import evaluate_likelihood
from dgm_cli.models.base import DataSpec
from dgm_cli.models.vae.vae import VAE, VAEConfig

LATENT = 4


class FixedPosterior(nn.Module):
    """q(z|x) = N(mean, diag(exp(log_var))) with the same, known parameters for every x."""

    def __init__(self, mean, log_var):
        super().__init__()
        self.mean, self.log_var = nn.Parameter(torch.tensor(mean)), nn.Parameter(torch.tensor(log_var))

    def forward(self, x):
        return self.mean.expand(len(x), -1), self.log_var.expand(len(x), -1)


def vae_with(objective: dict, step: int = 0) -> VAE:
    torch.manual_seed(0)
    vae = VAE(VAEConfig(hidden=[8], latent_dim=LATENT), DataSpec((6,), "binary"), objective)
    # per-dimension KLs 0.5 (mu^2 + sigma^2 - log sigma^2 - 1): 0.005, 0.125, 0.5, 2.0
    vae.encoder = FixedPosterior([0.1, 0.5, 1.0, 2.0], [0.0, 0.0, 0.0, 0.0])
    vae.step.fill_(step)
    return vae


KL_DIMS = torch.tensor([0.005, 0.125, 0.5, 2.0])
X = torch.bernoulli(torch.full((16, 6), 0.5), generator=torch.Generator().manual_seed(1))


def loss_and_reconstruction(vae: VAE) -> tuple[float, float]:
    torch.manual_seed(3)
    loss, metrics = vae.loss(X)
    return float(loss.detach()), float(metrics["reconstruction"])


def test_elbo_loss_is_reconstruction_plus_kl():
    loss, rec = loss_and_reconstruction(vae_with({"name": "elbo"}))
    assert loss == pytest.approx(-rec + float(KL_DIMS.sum()), rel=1e-6)


@pytest.mark.parametrize("step, weight", [(0, 0.25), (1, 0.5), (3, 1.0), (100, 1.0)])
def test_kl_warmup_weighs_the_kl_by_the_step(step, weight):
    """Sønderby et al. 2016: the KL weight grows linearly to 1 over kl_warmup_steps (4 here)."""
    vae = vae_with({"name": "elbo", "kl_warmup_steps": 4}, step)
    loss, rec = loss_and_reconstruction(vae)
    assert loss == pytest.approx(-rec + weight * float(KL_DIMS.sum()), rel=1e-6)
    assert float(vae.kl_weight()) == pytest.approx(weight)


def test_training_advances_the_warmup_clock():
    vae = vae_with({"name": "elbo", "kl_warmup_steps": 4})
    vae.after_step("model")
    assert float(vae.kl_weight()) == pytest.approx(0.5)


def test_free_bits_floor_each_dimension_and_stop_its_gradient():
    """Kingma et al. 2016, eq. 15: sum_j max(lambda, KL_j); a dimension under lambda gets no KL gradient."""
    vae = vae_with({"name": "elbo", "free_bits": 0.25})
    loss, rec = loss_and_reconstruction(vae)
    assert loss == pytest.approx(-rec + float(KL_DIMS.clamp(min=0.25).sum()), rel=1e-6)
    torch.manual_seed(3)
    vae.loss(X)[0].backward()
    with_free_bits = vae.encoder.mean.grad.clone()
    vae.encoder.mean.grad = None
    elbo = vae_with({"name": "elbo"})
    elbo.encoder, elbo.decoder = vae.encoder, vae.decoder
    torch.manual_seed(3)
    elbo.loss(X)[0].backward()
    # the KL's gradient in mu_j is mu_j: present in the ELBO, absent under free bits for dims 0 and 1
    diff = elbo.encoder.mean.grad - with_free_bits
    assert torch.allclose(diff, torch.tensor([0.1, 0.5, 0.0, 0.0]), atol=1e-6)


def test_beta_scales_the_kl():
    """Higgins et al. 2017: reconstruction - beta * KL."""
    loss, rec = loss_and_reconstruction(vae_with({"name": "beta_elbo", "beta": 4.0}))
    assert loss == pytest.approx(-rec + 4.0 * float(KL_DIMS.sum()), rel=1e-6)


@pytest.mark.parametrize(
    "objective, key",
    [
        ({"name": "iwae", "k": 5, "kl_warmup_steps": 100}, "kl_warmup_steps"),
        ({"name": "iwae", "k": 5, "free_bits": 0.5}, "free_bits"),
        ({"name": "elbo", "k": 5}, "k"),
        ({"name": "elbo", "beta": 2.0}, "beta"),
    ],
)
def test_objective_keys_that_do_not_apply_are_refused(objective, key):
    with pytest.raises(UserError, match=rf"objective={objective['name']} takes only .*got {key}"):
        VAE(VAEConfig(hidden=[8], latent_dim=2), DataSpec((6,), "binary"), objective)


class ThreeActiveDims(nn.Module):
    """E_q[z|x]: the first three dims follow x, the fourth varies by 0.05 x (variance 0.0025, under
    Burda et al.'s 1e-2 threshold), the last two are constant: 3 active units of 6."""

    def forward(self, x):
        mean = torch.cat([x[:, :3], 0.05 * x[:, 3:4], torch.full((len(x), 2), 0.7)], dim=1)
        return mean, torch.zeros_like(mean)


def test_active_units_counts_the_dimensions_that_carry_information():
    torch.manual_seed(0)
    vae = VAE(VAEConfig(hidden=[8], latent_dim=6), DataSpec((5,), "continuous"), {"name": "elbo"})
    vae.encoder = ThreeActiveDims()
    x = torch.randn(2000, 5)
    report = evaluate_likelihood(vae, x, None, 500, "cpu", k=2)
    assert report["bound_terms"]["active_units"] == 3 and report["bound_terms"]["latent_dim"] == 6


def test_binary_samples_are_draws_of_the_decoder_not_its_means():
    torch.manual_seed(0)
    vae = VAE(VAEConfig(hidden=[8], latent_dim=2), DataSpec((1, 2, 2), "binary"), {"name": "elbo"})
    draws = vae.sample_observations(4000)
    assert set(draws.unique().tolist()) == {0.0, 1.0}
    assert set(vae.sample(10).unique().tolist()) - {0.0, 1.0}, "sample() shows grey means"
    # the draws' average is the average of the means (the same marginal)
    assert torch.allclose(draws.mean(0), vae.sample(4000).mean(0), atol=0.05)


def test_a_warming_up_vae_reads_no_clock_back_from_the_device():
    from host_sync import no_host_reads

    vae = vae_with({"name": "elbo", "kl_warmup_steps": 4}, 1)
    with no_host_reads():
        vae(torch.rand(4, 6).round(), None, "model")
