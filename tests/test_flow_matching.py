"""Flow matching: the likelihood by the instantaneous change of variables against a closed form, Hutchinson's
trace estimate against the exact trace, the minibatch OT assignment against brute force, the NLL against
the toy's true entropy, and the model through the CLI."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from torch import Tensor, nn

from conftest import compose_train, run_folders
from dgm_cli.app import model_from_checkpoint
from dgm_cli.commands import train
from dgm_cli.data import toy
from dgm_cli.data.spec import DataSpec
from dgm_cli.engine import checkpoint
from dgm_cli.evaluation import estimators
from dgm_cli.models.flow_matching import ode
from dgm_cli.models.flow_matching.coupling import assignment, ot_pairing
from dgm_cli.models.flow_matching.flow_matching import FlowMatching, FlowMatchingConfig

MU, S = torch.tensor([1.5, -0.5], dtype=torch.float64), 0.6


class GaussianVelocity(nn.Module):
    """The marginal velocity E[x_1 - x_0 | x_t = x] of the straight path from N(0, I) to N(mu, s^2 I) with
    independent pairs: x_t ~ N(t mu, a_t I), a_t = (1 - t)^2 + t^2 s^2, and (x_1 - x_0, x_t) jointly Gaussian,
    so u_t(x) = mu + (t s^2 - (1 - t)) / a_t (x - t mu). It carries N(0, I) to N(mu, s^2 I) exactly."""

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros((), dtype=torch.float64), requires_grad=False)  # device and dtype

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        t = t.to(x.dtype)[:, None]
        a = (1 - t) ** 2 + t**2 * S**2
        mu = MU.to(x)
        return mu + (t * S**2 - (1 - t)) / a * (x - t * mu)


def toy_model(**config) -> FlowMatching:
    spec = DataSpec(shape=(2,), representation="continuous")
    return FlowMatching(FlowMatchingConfig(**config), spec, {"name": "cfm"})


def test_log_likelihood_of_the_closed_form_field_is_the_true_density():
    model = toy_model().double()
    model.velocity = GaussianVelocity()
    x = MU + S * torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 1.5
    truth = torch.distributions.Normal(MU, S).log_prob(x).sum(1)
    got = model.log_likelihood(x, trace="exact", solver="dopri5", rtol=1e-8, atol=1e-8)
    assert torch.allclose(got, truth, atol=1e-5), (got - truth).abs().max()
    # a coarse fixed-step solve is close but not as close: the tolerance is the solver's
    coarse = model.log_likelihood(x, trace="exact", solver="euler", steps=10)
    assert (coarse - truth).abs().max() > 1e-3
    # and sampling carries N(0, I) to the target
    torch.manual_seed(1)
    samples = toy_model(sampler="rk4", sample_steps=20).double()
    samples.velocity = GaussianVelocity()
    drawn = samples.sample(4000)
    assert torch.allclose(drawn.mean(0), MU, atol=0.05) and torch.allclose(
        drawn.std(0), torch.full((2,), S, dtype=torch.float64), atol=0.03
    )


def test_hutchinson_is_unbiased_against_the_exact_trace():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    exact = ode.exact_divergence(net(x), x)
    jac = torch.stack([torch.autograd.functional.jacobian(net, xi) for xi in x.detach()])
    assert torch.allclose(exact, jac.diagonal(dim1=1, dim2=2).sum(1))
    many = x.detach().repeat(4000, 1).requires_grad_(True)  # 4000 probes of each of the 4 points
    probes = ode.hutchinson_divergence(net(many), many, ode.rademacher_like(many)).view(4000, 4)
    se = probes.std(0) / math.sqrt(len(probes))
    assert ((probes.mean(0) - exact).abs() < 4 * se).all(), (probes.mean(0), exact, se)
    assert (probes.std(0) > 0).all()  # an estimate, not the trace itself


def test_hutchinson_log_likelihood_matches_the_exact_one_within_its_reported_error():
    torch.manual_seed(0)
    model = toy_model(hidden=16, depth=2).double()
    x = torch.randn(6, 2, dtype=torch.float64)
    exact = model.log_likelihood(x, trace="exact", solver="rk4", steps=8)
    estimate = model.log_likelihood(x, trace="hutchinson", probes=400, solver="rk4", steps=8)
    sums = model.extra_eval(x)  # the variance of each example's mean over its probes, summed
    se_of_mean = math.sqrt(float(sums["hutchinson_variance"])) / len(x)
    assert se_of_mean > 0
    assert abs(float(estimate.mean() - exact.mean())) < 4 * se_of_mean
    assert model.likelihood_name(trace="hutchinson") == "hutchinson" and model.likelihood_name() == "exact"
    assert estimators.likelihood_kind(model, {"trace": "hutchinson"}) == estimators.ESTIMATE
    assert estimators.likelihood_kind(model, {}) == estimators.EXACT
    images = FlowMatching(
        FlowMatchingConfig(channels=4, channel_mult=[1]), DataSpec((1, 8, 8), "dequantized"), {"name": "cfm"}
    )
    assert images.likelihood_name() == "hutchinson"  # 64 dimensions: the trace is estimated
    assert estimators.likelihood_kind(images, {}) == estimators.UPPER_BOUND  # in expectation, as a flow's


def test_the_ot_assignment_is_the_cheapest_permutation():
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        cost = torch.rand(6, 6, generator=g)
        perm = assignment(cost)
        assert sorted(perm.tolist()) == list(range(6))
        best = min(sum(float(cost[i, p[i]]) for i in range(6)) for p in itertools.permutations(range(6)))
        assert float(cost[torch.arange(6), perm].sum()) == pytest.approx(best, abs=1e-6)
    x0, x1 = torch.randn(64, 2, generator=g), torch.randn(64, 2, generator=g) + 3
    paired = ot_pairing(x0, x1)
    assert sorted(paired[:, 0].tolist()) == sorted(x0[:, 0].tolist())  # a permutation of the noise
    assert ((paired - x1) ** 2).sum() < ((x0 - x1) ** 2).sum()


def eight_gaussians_log_density(x: Tensor) -> Tensor:
    """The toy's true density: an equal mixture of N(c_k, 0.1^2 I) (data/toy.py)."""
    centers = toy.eight_gaussians_centers().to(x)
    comp = torch.distributions.Normal(centers, 0.1).log_prob(x[:, None, :]).sum(-1)
    return torch.logsumexp(comp, 1) - math.log(len(centers))


def test_trained_toy_nll_is_never_below_the_true_entropy_and_it_samples(tmp_path):
    cfg = compose_train(
        "model=flow_matching",
        "dataset=eight_gaussians",
        "model.hidden=32",
        "model.depth=2",
        "data.train_size=2000",
        "data.test_size=500",
        "trainer.max_steps=60",
        "trainer.batch_size=64",
        "trainer.sample_every=0",
        "trainer.progress=false",
    )
    train.run(cfg, tmp_path)
    model, _, dataset = model_from_checkpoint(checkpoint.load(str(tmp_path)), torch.device("cpu"))
    x = dataset.test[0][:300]
    log_q = model.log_likelihood(x, solver="rk4", steps=20).double()
    gap = eight_gaussians_log_density(x.double()) - log_q  # per example; its mean estimates KL(p || q) >= 0
    assert float(gap.mean()) > -3 * float(gap.std() / math.sqrt(len(x)))
    assert torch.isfinite(model.sample(16)).all()


def test_train_sample_eval_through_the_cli(dgm, tmp_path):
    dgm(
        "train",
        "model=flow_matching",
        "dataset=moons",
        "model.path=ot",
        "model.hidden=16",
        "model.depth=2",
        "data.train_size=400",
        "data.test_size=50",
        "data.val_size=50",
        "trainer.max_steps=5",
        "trainer.batch_size=32",
        "trainer.progress=false",
    )
    (run,) = run_folders(tmp_path)
    dgm("sample", f"checkpoint={run}", "steps=4", "sampler=midpoint", f"out={tmp_path / 's.npz'}")
    import numpy as np

    samples = np.load(tmp_path / "s.npz")["samples"]
    assert samples.shape[1:] == (2,) and np.isfinite(samples).all()
    dgm(
        "eval",
        f"checkpoint={run}",
        "estimator.solver=rk4",
        "estimator.steps=4",
        "estimator.trace=hutchinson",
        "estimator.probes=3",
    )
    lik = json.loads((run / "checkpoints" / "eval.json").read_text())["likelihood"]
    assert lik["kind"] == estimators.ESTIMATE and "Hutchinson" in lik["estimator"]
    assert lik["bound_terms"]["hutchinson_stderr_nats"] > 0 and lik["bound_terms"]["function_evaluations"] == 16
    bad = dgm("eval", f"checkpoint={run}", "estimator.solver=heun", check=False)
    assert bad.returncode == 2 and "estimator.solver" in bad.stdout + bad.stderr
