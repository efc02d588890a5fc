"""NICE (Dinh et al. 2015): its layers invert and their log-determinants are autograd's, the logistic
prior is a normalised density, and the model's density of x integrates to one."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from dgm_cli.models.base import DataSpec
from dgm_cli.models.flow.nice import NICE, AdditiveCoupling, DiagonalScaling, logistic_log_prob, logistic_sample
from test_flows import log_abs_det_jacobian, perturb

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
NLL = {"name": "nll"}
IMAGE = DataSpec(shape=(1, 4, 4), representation="dequantized", dataset="mnist")
TOY = DataSpec(shape=(2,), representation="continuous", dataset="moons")


def tiny(data: DataSpec, **overrides) -> NICE:
    torch.manual_seed(0)
    config = NICE.Config(num_couplings=3, hidden_features=16, hidden_layers=2, **overrides)
    return perturb(NICE(config, data, NLL).double(), std=0.3).eval()


@pytest.mark.parametrize(
    "layer",
    [
        lambda: AdditiveCoupling(5, parity=0, hidden=8, hidden_layers=2),
        lambda: AdditiveCoupling(5, parity=1, hidden=8, hidden_layers=2),
        lambda: DiagonalScaling(5),
    ],
    ids=["coupling_even", "coupling_odd", "scaling"],
)
def test_layer_inverse_and_log_det_against_autograd(layer):
    torch.manual_seed(0)
    f = perturb(layer()).double()
    x = torch.randn(3, 5, dtype=torch.float64)
    y, log_det = f(x)
    assert not torch.allclose(y, x)  # perturbed: not the identity
    x_back, inv_log_det = f.inverse(y)
    torch.testing.assert_close(x_back, x, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(inv_log_det, -log_det)
    for i in range(3):
        torch.testing.assert_close(log_det[i], log_abs_det_jacobian(lambda v: f(v)[0], x[i : i + 1]))


def test_coupling_changes_only_the_other_half_from_the_kept_half():
    f = perturb(AdditiveCoupling(6, parity=1, hidden=8, hidden_layers=2)).double()
    x = torch.randn(1, 6, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: f(v.view(1, 6))[0].reshape(-1), x.reshape(-1))
    odd, even = torch.arange(1, 6, 2), torch.arange(0, 6, 2)
    torch.testing.assert_close(jac[odd][:, odd], torch.eye(3, dtype=torch.float64))  # kept: identity
    torch.testing.assert_close(jac[even][:, even], torch.eye(3, dtype=torch.float64))  # additive: unit diagonal block
    assert jac[odd][:, even].abs().max() == 0 and jac[even][:, odd].abs().max() > 0


def test_logistic_prior_is_normalised_and_matches_its_sampler():
    h = torch.linspace(-40, 40, 200001, dtype=torch.float64)
    density = logistic_log_prob(h.view(-1, 1)).exp()
    assert abs(torch.trapezoid(density, h).item() - 1.0) < 1e-9
    # its CDF is the sigmoid: the sampler's draws fall below 1.0 with probability sigmoid(1)
    draws = logistic_sample((200000,), torch.zeros((), dtype=torch.float64))
    assert abs((draws < 1.0).double().mean().item() - torch.sigmoid(torch.tensor(1.0)).item()) < 5e-3


@pytest.mark.parametrize("prior", ["logistic", "gaussian"])
def test_model_log_likelihood_is_change_of_variables_and_integrates_to_one(prior):
    model = tiny(TOY, prior=prior)
    x = torch.randn(2, 2, dtype=torch.float64)
    z, _ = model.flow(x)
    torch.testing.assert_close(model.flow.inverse(z)[0], x)
    log_px = model.log_likelihood(x)
    for i in range(2):
        expected = model.base_log_prob(model.flow(x[i : i + 1])[0]) + log_abs_det_jacobian(
            lambda v: model.flow(v)[0], x[i : i + 1]
        )
        torch.testing.assert_close(log_px[i], expected[0])
    n, lo, hi = 600, -30.0, 30.0  # the logistic's tails are exp(-|h|): a wide grid
    step = (hi - lo) / n
    centers = lo + step * (torch.arange(n, dtype=torch.float64) + 0.5)
    mass = model.log_likelihood(torch.cartesian_prod(centers, centers)).exp().sum().item() * step * step
    assert abs(mass - 1.0) < 1e-2, mass


def test_image_model_trains_samples_and_reports_bits_per_dim():
    from test_flows import dequantized_batch, train_steps

    torch.manual_seed(0)
    model = NICE(NICE.Config(num_couplings=2, hidden_features=16, hidden_layers=1), IMAGE, NLL)
    x = dequantized_batch(64).float()
    before = -model.log_likelihood(x).mean()
    train_steps(model, x, steps=30, lr=1e-2, batch=64)
    metrics = model.validation_step(x, None)
    assert metrics["nll_continuous"] < before
    evaluator = (metrics["nll_continuous"] / IMAGE.dim + math.log(256)) / math.log(2)
    torch.testing.assert_close(metrics["bits_per_dim"], evaluator)
    samples = model.sample(5)
    assert samples.shape == (5, 1, 4, 4) and samples.min() >= 0 and samples.max() <= 1
    cold = model.sample(3, temperature=0.0)
    torch.testing.assert_close(cold, cold[:1].expand_as(cold))
    assert "logistic prior" in model.estimator()


def test_config_matches_the_dataclass_and_the_preset_names_known_fields():
    cfg = yaml.safe_load((CONFIGS / "model" / "nice.yaml").read_text())
    assert cfg.pop("name") == "nice" and cfg.pop("representation") in NICE.representations
    cfg.pop("defaults")
    assert NICE.Config(**cfg) == NICE.Config()
    preset = yaml.safe_load((CONFIGS / "experiment" / "nice_mnist.yaml").read_text())
    assert set(preset["model"]) <= set(NICE.Config.__dataclass_fields__)


def test_paper_log_likelihood_in_bits_per_dim():
    """The preset's comment converts the paper's 1980.50 nats on [0,1]^784 to bits/dim of the 8-bit data."""
    assert round((-1980.50 / 784 + math.log(256)) / math.log(2), 2) == 4.36
    assert "= 4.36" in (CONFIGS / "experiment" / "nice_mnist.yaml").read_text()
