"""`model=hierarchical_vae`, also `model=vae model.stochastic_layers=2` (Burda et al. 2015's two-layer model): its
IWAE bound is below
log p(x) computed by quadrature on a tiny model, rises with k towards it, and equals the ELBO at k=1
in expectation; the architecture and the refusals."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import phase_steps
from dgm_cli.errors import UserError
from dgm_cli.models.base import DataSpec
from dgm_cli.models.objectives import typed
from dgm_cli.models.registry import build_model
from dgm_cli.models.vae.hierarchical_vae import HierarchicalVAEConfig, TwoStochasticLayerVAE
from dgm_cli.models.vae.vae import VAE, VAEConfig
from test_flows import perturb

ELBO = {"name": "elbo"}
TINY_DATA = DataSpec((3,), "binary")


def tiny_model() -> TwoStochasticLayerVAE:
    """x in {0,1}^3, one unit in each stochastic layer: log p(x) by 2-D quadrature."""
    torch.manual_seed(0)
    config = HierarchicalVAEConfig(hidden=[4], latent_dim_1=1, hidden_2=[4], latent_dim=1)
    return perturb(TwoStochasticLayerVAE(config, TINY_DATA, ELBO), std=0.3, seed=1).double().eval()


def exact_log_px(model: TwoStochasticLayerVAE, x: torch.Tensor) -> torch.Tensor:
    """log p(x) = log of the integral of p(x|h1) p(h1|h2) N(h2; 0, 1) over (h1, h2), by the midpoint rule."""
    n, lo, hi = 500, -12.0, 12.0
    step = (hi - lo) / n
    grid = lo + step * (torch.arange(n, dtype=torch.float64) + 0.5)
    h2, h1 = torch.cartesian_prod(grid, grid).unbind(1)
    mean1, log_var1 = model.prior_1_params(h2[:, None])
    log_joint_latents = -0.5 * (math.log(2 * math.pi) + h2**2) - 0.5 * (
        math.log(2 * math.pi) + log_var1[:, 0] + (h1 - mean1[:, 0]) ** 2 * torch.exp(-log_var1[:, 0])
    )
    logits = model.decoder(h1[:, None])[:, 0]  # (n^2, 3)
    out = []
    for xi in x:
        log_px_h = -torch.nn.functional.binary_cross_entropy_with_logits(
            logits, xi.expand_as(logits), reduction="none"
        ).sum(1)
        out.append(torch.logsumexp(log_px_h + log_joint_latents, 0) + 2 * math.log(step))
    return torch.stack(out)


ALL_X = torch.cartesian_prod(*[torch.tensor([0.0, 1.0], dtype=torch.float64)] * 3)


@torch.no_grad()
def test_quadrature_is_a_normalised_distribution_over_all_binary_x():
    model = tiny_model()
    assert abs(exact_log_px(model, ALL_X).exp().sum().item() - 1.0) < 1e-6


@torch.no_grad()
def test_iwae_is_below_log_px_and_rises_with_k_towards_it():
    model = tiny_model()
    x = ALL_X[[1, 5, 6]]
    truth = exact_log_px(model, x)
    torch.manual_seed(0)
    bounds, errors = {}, {}
    for k in (1, 50, 2000):
        draws = torch.stack([model.log_likelihood(x, k=k) for _ in range(40)])  # (repeats, examples)
        bounds[k], errors[k] = draws.mean(0), draws.std(0) / math.sqrt(len(draws))
        assert (bounds[k] < truth + 3 * errors[k]).all(), (k, bounds[k], truth)  # a lower bound (Burda et al., Thm. 1)
    assert (bounds[1] < bounds[50]).all() and (bounds[50] < bounds[2000]).all()
    assert ((truth - bounds[2000]).abs() < 0.05 + 3 * errors[2000]).all(), (bounds[2000], truth)
    assert (truth - bounds[1]).min() > 0.02, "the model's posterior is not exact: k matters"


@torch.no_grad()
def test_k_equal_one_is_the_elbo_in_expectation():
    model = tiny_model()
    x = ALL_X[[3]].expand(20000, 3)
    torch.manual_seed(1)
    iwae_1 = model.log_likelihood(x, k=1)
    rec, kl, kl_dims, _ = model.elbo_terms(x)
    elbo = rec - kl
    assert kl_dims.shape == (20000, 2) and torch.allclose(kl_dims.sum(1), kl)
    stderr = math.hypot(iwae_1.std() / math.sqrt(len(x)), elbo.std() / math.sqrt(len(x)))
    assert abs(iwae_1.mean() - elbo.mean()) < 4 * stderr
    # the closed-form top-layer KL makes the ELBO estimate less noisy than log w
    assert elbo.std() < iwae_1.std()


def test_burda_architecture_trains_with_elbo_and_iwae_and_samples():
    data = DataSpec((1, 28, 28), "binary")
    model = build_model({"name": "vae", "stochastic_layers": 2}, ELBO, data)  # model=vae model.stochastic_layers=2
    assert (
        type(model) is TwoStochasticLayerVAE
        and type(build_model({"name": "hierarchical_vae"}, ELBO, data)) is TwoStochasticLayerVAE
    )
    assert type(build_model({"name": "vae"}, ELBO, data)) is VAE

    def linear(module):
        return [
            (layer.in_features, layer.out_features) for layer in module.modules() if isinstance(layer, torch.nn.Linear)
        ]

    assert linear(model.encoder) == [(784, 200), (200, 200), (200, 200)]  # q(h1|x): mean and log-variance of 100
    assert linear(model.encoder_2) == [(100, 100), (100, 100), (100, 100)]  # q(h2|h1): of 50
    assert linear(model.prior_1) == [(50, 100), (100, 100), (100, 200)]  # p(h1|h2)
    assert linear(model.decoder) == [(100, 200), (200, 200), (200, 784)]  # p(x|h1)
    x = torch.bernoulli(torch.full((8, 1, 28, 28), 0.3))
    for objective in (ELBO, {"name": "iwae", "k": 5}):
        model = TwoStochasticLayerVAE(HierarchicalVAEConfig(), data, objective)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _, loss, metrics in phase_steps(model, x):
            opt.zero_grad()
            loss.backward()
            opt.step()
            assert torch.isfinite(loss) and metrics["loss"] == loss.detach()
    model.eval()
    sums = model.extra_eval(x)
    report = model.finalize_eval(sums, len(x))
    assert report["latent_dim"] == 150 and 0 <= report["active_units_1"] <= 100 and 0 <= report["active_units_2"] <= 50
    assert report["active_units"] == report["active_units_1"] + report["active_units_2"]
    samples = model.sample(4)
    assert samples.shape == (4, 1, 28, 28) and 0 <= samples.min() and samples.max() <= 1
    assert set(model.sample_observations(4).unique().tolist()) <= {0.0, 1.0}
    assert model.sample_reconstruct(x).shape == (2, 8, 1, 28, 28)  # rows: inputs, reconstructions


def test_refusals():
    data = DataSpec((1, 28, 28), "binary")
    with pytest.raises(UserError, match="stochastic_layers=3"):
        build_model({"name": "vae", "stochastic_layers": 3}, ELBO, data)
    with pytest.raises(UserError, match="architecture=mlp"):
        build_model({"name": "hierarchical_vae", "architecture": "conv"}, ELBO, data)
    with pytest.raises(UserError, match="model=hierarchical_vae"):  # the one-layer class is asked for two layers
        VAE.check_settings(VAEConfig(stochastic_layers=2), typed(ELBO), data)
    with pytest.raises(UserError, match="stochastic_layers=1"):
        build_model({"name": "hierarchical_vae", "stochastic_layers": 1}, ELBO, data)
    with pytest.raises(UserError, match="stochastic_layers=2"):
        build_model({"name": "conv_vae", "stochastic_layers": 2}, ELBO, data)
