"""The Helmholtz machine (wake-sleep, reweighted wake-sleep) on a sigmoid belief net small enough to
enumerate: the importance-sampled log p(x) is a lower bound that approaches the exact one as k grows,
each phase trains only its own network, and training raises the exact log-likelihood."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
import yaml

from conftest import phase_steps
from dgm_cli.errors import UserError
from dgm_cli.models.base import DataSpec
from dgm_cli.models.nn.distributions import bernoulli_log_prob
from dgm_cli.models.objectives import OBJECTIVES
from dgm_cli.models.vae.helmholtz import HelmholtzMachine
from test_flows import perturb

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DATA = DataSpec((4,), "binary")
RWS = {"name": "rws", "k": 5, "q_sleep": True}
WS = {"name": "wake_sleep"}


def tiny(objective=RWS, std=0.8, seed=0) -> HelmholtzMachine:
    torch.manual_seed(seed)
    model = HelmholtzMachine(HelmholtzMachine.Config(layers=[3, 2]), DATA, objective)
    return perturb(model, std=std, seed=seed).double()


def binary_vectors(n: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=n)), dtype=torch.float64)


@torch.no_grad()
def exact_log_px(model: HelmholtzMachine, x: torch.Tensor) -> torch.Tensor:
    """log p(x) = log sum over all (h_1, h_2) in {0,1}^3 x {0,1}^2 of p(x, h)."""
    h1, h2 = binary_vectors(3), binary_vectors(2)
    pairs = [(a, b) for a in h1 for b in h2]
    hs = [torch.stack([a for a, _ in pairs]), torch.stack([b for _, b in pairs])]
    return torch.stack([torch.logsumexp(model.log_joint(xi.expand(len(pairs), 4), hs), 0) for xi in x])


ALL_X = binary_vectors(4)


@torch.no_grad()
def test_generative_model_is_normalised_and_the_estimate_is_a_bound_that_tightens_with_k():
    model = tiny()
    truth = exact_log_px(model, ALL_X)
    assert abs(truth.exp().sum().item() - 1.0) < 1e-12
    torch.manual_seed(0)
    means = {}
    for k in (1, 10, 100):
        draws = torch.stack([model.log_likelihood(ALL_X, k=k) for _ in range(100)])
        means[k], err = draws.mean(0), draws.std(0) / 10
        assert (means[k] < truth + 3 * err + 1e-9).all(), k
    assert means[1].mean() < means[10].mean() < means[100].mean() and (means[1] < means[100]).all()
    assert (truth - means[1]).min() > 0.05  # q is not the posterior, so k matters
    torch.testing.assert_close(model.log_likelihood(ALL_X, k=50000), truth, atol=0.04, rtol=0)


@pytest.mark.parametrize("objective", [WS, RWS], ids=["wake_sleep", "rws"])
def test_each_phase_trains_only_its_own_network(objective):
    model = tiny(objective)
    opts = model.configure_optimizers(lambda params, **kw: torch.optim.SGD(params, lr=0.1))
    generative = set(model.generative_parameters())
    x = ALL_X[torch.randint(16, (8,))]
    seen = []
    for phase, loss, metrics in phase_steps(model, x):
        for p in model.parameters():
            p.grad = None
        loss.backward()
        touched = {p for p in model.parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        own = generative if phase == "generative" else set(model.recognition.parameters())
        assert touched and touched <= own, phase
        assert all(not v.requires_grad for v in metrics.values() if isinstance(v, torch.Tensor))
        opts[phase].step()
        seen.append(phase)
    assert seen == ["generative", "recognition"]


@pytest.mark.parametrize("objective", [WS, RWS], ids=["wake_sleep", "rws"])
def test_training_raises_the_exact_log_likelihood_of_the_data(objective):
    """Data: two 4-bit patterns with a little noise; a few hundred steps of each algorithm."""
    model = tiny(objective, std=0.1, seed=1)
    g = torch.Generator().manual_seed(0)
    patterns = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]], dtype=torch.float64)
    data = patterns[torch.randint(2, (512,), generator=g)]
    data = torch.where(torch.rand(data.shape, generator=g, dtype=torch.float64) < 0.05, 1 - data, data)
    before = exact_log_px(model, data).mean()
    opts = model.configure_optimizers(lambda params, **kw: torch.optim.Adam(params, lr=0.03))
    torch.manual_seed(2)
    for step in range(300):
        x = data[torch.randint(len(data), (32,), generator=g)]
        for phase, loss, _ in phase_steps(model, x, step=step + 1):
            opts[phase].zero_grad()
            loss.backward()
            opts[phase].step()
    after = exact_log_px(model, data).mean()
    entropy = -bernoulli_log_prob(
        torch.logit(torch.tensor([0.95, 0.05], dtype=torch.float64)).view(1, 2),
        torch.tensor([[1.0, 1.0]], dtype=torch.float64),
    ).item() * 2 + math.log(2)
    assert after > before + 0.5, (before, after)
    assert after > -entropy - 0.6, (after, -entropy)  # close to the data's own entropy (about 1.49 nats)


def test_samples_configs_and_refusals():
    model = HelmholtzMachine(HelmholtzMachine.Config(), DataSpec((1, 28, 28), "binary"), RWS)
    s = model.sample(3)
    assert s.shape == (3, 1, 28, 28) and 0 <= s.min() and s.max() <= 1
    assert "recognition model" in model.estimator(k=9) and "k=9" in model.estimator(k=9)
    with pytest.raises(UserError, match="q_sleep"):
        HelmholtzMachine(HelmholtzMachine.Config(), DATA, {"name": "wake_sleep", "q_sleep": True})
    with pytest.raises(UserError, match="objective.k"):
        HelmholtzMachine(HelmholtzMachine.Config(), DATA, {**RWS, "k": 0})
    cfg = yaml.safe_load((CONFIGS / "model" / "helmholtz.yaml").read_text())
    assert cfg.pop("name") == "helmholtz" and cfg.pop("representation") == "binary"
    cfg.pop("defaults")
    assert HelmholtzMachine.Config(**cfg) == HelmholtzMachine.Config()
    for name in HelmholtzMachine.objectives:
        assert OBJECTIVES[name]().name == name
