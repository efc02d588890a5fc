"""DDPM: the forward process and its posterior against Monte Carlo, the decoder's normalisation, the
variational bound against an independent computation of its terms, the random-step estimator's
unbiasedness, learning, and DDIM against ancestral sampling."""

from __future__ import annotations

import math
from types import SimpleNamespace

import mpmath
import pytest
import torch
from omegaconf import OmegaConf
from torch.distributions import Normal, kl_divergence

from dgm_cli.commands import sample
from dgm_cli.errors import UserError
from dgm_cli.evaluation import estimators, likelihood
from dgm_cli.models.base import DataSpec
from dgm_cli.models.diffusion import gaussian_diffusion as G
from dgm_cli.models.diffusion.ddpm import DDPM, DDPMConfig, stratified_steps, stratified_sum
from dgm_cli.models.registry import build_model

TINY = DataSpec((1, 2, 2), "8bit")


def tiny(objective: str = "simple", data: DataSpec = TINY, seed: int = 0, **cfg) -> DDPM:
    """A DDPM on 2x2 images with T = 6 steps whose network is moved off its zero-initialised head."""
    torch.manual_seed(seed)
    cfg = {"timesteps": 6, "channels": 4, "channel_mult": [1], "num_res_blocks": 1, **cfg}
    model = DDPM(DDPMConfig(**cfg), data, {"name": objective})
    with torch.no_grad():
        for p in model.net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def eight_bit(n: int, shape=(1, 2, 2), seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *shape), generator=g).float() / 255


# --- the forward process ------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_q_of_xt_given_x0_matches_the_chain_by_monte_carlo(schedule):
    """Running x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps step by step gives q(x_t|x_0)'s closed form."""
    betas = G.betas_for(schedule, 8)
    diffusion = G.GaussianDiffusion(betas)
    torch.manual_seed(0)
    n, x0 = 200_000, torch.tensor([-0.8, 0.1, 0.9], dtype=torch.float64)
    x = x0.expand(n, 3).clone()
    for t in range(len(betas)):
        x = (1 - betas[t]).sqrt() * x + betas[t].sqrt() * torch.randn_like(x)
        mean = x.mean(0)
        var = x.var(0)
        closed_mean = diffusion.sqrt_abar[t].double() * x0
        closed_var = 1 - diffusion.abar[t].double()
        assert torch.all((mean - closed_mean).abs() < 5 * (closed_var / n).sqrt())
        assert torch.all((var - closed_var).abs() < 5 * closed_var * math.sqrt(2 / n))
        # q_sample is that closed form
        eps = torch.randn(3, dtype=torch.float64)
        direct = diffusion.q_sample(x0.float()[None], torch.tensor([t]), eps.float()[None])[0]
        assert torch.allclose(direct.double(), closed_mean + closed_var.sqrt() * eps, atol=1e-6)


@pytest.mark.parametrize("t", [1, 4, 7])
def test_posterior_matches_regression_of_x_prev_on_xt(t):
    """From joint draws (x_{t-1}, x_t) given x_0, the least-squares line of x_{t-1} on x_t and its residual
    variance are the posterior's c2_t x_t + c1_t x_0 and betatilde_t (a Gaussian's conditional)."""
    diffusion = G.GaussianDiffusion(G.betas_for("linear", 8))
    betas = diffusion._betas64
    abar = torch.cumprod(1 - betas, 0)
    torch.manual_seed(1)
    n = 400_000
    for x0 in (-0.7, 0.5):
        x_prev = abar[t - 1].sqrt() * x0 + (1 - abar[t - 1]).sqrt() * torch.randn(n, dtype=torch.float64)
        xt = (1 - betas[t]).sqrt() * x_prev + betas[t].sqrt() * torch.randn(n, dtype=torch.float64)
        design = torch.stack([xt, torch.ones_like(xt)], 1)
        slope, intercept = torch.linalg.lstsq(design, x_prev[:, None]).solution.squeeze(1)
        residual = (x_prev - design @ torch.stack([slope, intercept])).var()
        ref = torch.tensor([[x0]])
        mean_at_zero, log_var = diffusion.q_posterior(ref.float(), torch.zeros(1, 1), torch.tensor([t]))
        mean_at_one, _ = diffusion.q_posterior(ref.float(), torch.ones(1, 1), torch.tensor([t]))
        assert abs(slope - (mean_at_one - mean_at_zero).item()) < 0.01
        assert abs(intercept - mean_at_zero.item()) < 0.01
        assert abs(residual / log_var.exp().item() - 1) < 0.02


def test_schedules():
    """Linear: 1e-4 .. 0.02 at T = 1000; cosine: abar follows f(t)/f(0) wherever beta is not clipped."""
    lin = G.linear_betas(1000)
    assert lin[0].item() == pytest.approx(1e-4) and lin[-1].item() == pytest.approx(0.02)
    cos = G.cosine_betas(50)
    f = lambda t: math.cos((t / 50 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    abar = torch.cumprod(1 - cos, 0)
    for t in (0, 10, 40):
        assert abar[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert cos.max().item() <= 0.999


def test_respaced_chain_keeps_abar_on_its_steps():
    diffusion = G.GaussianDiffusion(G.betas_for("linear", 100))
    short = diffusion.respaced(10)
    assert short.num_steps == 10 and short.timesteps[0] == 0 and short.timesteps[-1] == 99
    assert torch.allclose(short.abar, diffusion.abar[short.timesteps], rtol=1e-5)


# --- the discretized Gaussian decoder ----------------------------------------------------------


@pytest.mark.parametrize("mean", [-1.3, -1.0, -0.4, 0.0, 0.37, 1.0, 1.2])
@pytest.mark.parametrize("std", [1e-3, 0.01, 0.1, 1.0, 3.0])
def test_discretized_gaussian_sums_to_one(mean, std):
    x = torch.arange(256, dtype=torch.float64) / 255 * 2 - 1
    lp = G.discretized_gaussian_log_prob(x, torch.full_like(x, mean), torch.full_like(x, 2 * math.log(std)))
    assert torch.logsumexp(lp, 0).exp().item() == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize(
    "k, mean, std",
    [(128, 0.0, 0.05), (200, -0.9, 0.01), (3, 0.95, 0.02), (0, 0.9, 0.05), (255, -0.5, 0.1), (254, 1.0, 0.004)],
)
def test_discretized_gaussian_tails_against_mpmath(k, mean, std):
    """float32, far in the tails, against 50-digit arithmetic."""
    mpmath.mp.dps = 50
    x = 2 * k / 255 - 1
    a = mpmath.mpf(x - 1 / 255 - mean) / std if k > 0 else -mpmath.inf
    b = mpmath.mpf(x + 1 / 255 - mean) / std if k < 255 else mpmath.inf
    # both edges right of the mean: the upper tail's masses, which 50 digits do not round to 1
    mass = mpmath.ncdf(-a) - mpmath.ncdf(-b) if a > 0 else mpmath.ncdf(b) - mpmath.ncdf(a)
    expected = float(mpmath.log(mass))
    got = G.discretized_gaussian_log_prob(torch.tensor([x]), torch.tensor([mean]), torch.tensor([2 * math.log(std)]))
    assert got.item() == pytest.approx(expected, rel=1e-4, abs=1e-4)


# --- the variational bound ------------------------------------------------------------------------


def reference_bound(model: DDPM, x: torch.Tensor, seed: int) -> torch.Tensor:
    """-log-bound per example, term by term in float64 from the papers' formulas with torch.distributions,
    drawing x_t in the loop's order (prior: none; then one draw per step t = 0..T-1)."""
    betas = model.diffusion._betas64
    abar = torch.cumprod(1 - betas, 0)
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    tilde = betas * (1 - abar_prev) / (1 - abar)
    x0 = (2 * x - 1).double()
    T = len(betas)
    total = kl_divergence(Normal(abar[-1].sqrt() * x0, (1 - abar[-1]).sqrt()), Normal(0.0, 1.0)).sum((1, 2, 3))
    torch.manual_seed(seed)
    for t in range(T):
        noise = torch.randn_like(x0.float()).double()
        xt = abar[t].sqrt() * x0 + (1 - abar[t]).sqrt() * noise
        tt = torch.full((len(x),), t)
        eps, v = model.predict(xt.float(), tt)
        eps = eps.double()
        x0_hat = ((xt - (1 - abar[t]).sqrt() * eps) / abar[t].sqrt()).clamp(-1, 1)
        mean = (
            betas[t] * abar_prev[t].sqrt() / (1 - abar[t]) * x0_hat
            + (1 - abar_prev[t]) * (1 - betas[t]).sqrt() / (1 - abar[t]) * xt
        )
        log_tilde = math.log(tilde[max(t, 1)])
        if model.variance == "learned_range":
            frac = (v.double() + 1) / 2
            var = torch.exp(frac * math.log(betas[t]) + (1 - frac) * log_tilde)
        else:  # fixed_large
            var = torch.full_like(x0, betas[t] if t > 0 else tilde[1])
        p = Normal(mean, var.sqrt())
        if t == 0:
            upper = torch.where(x0 > 1 - 1e-6, torch.ones_like(x0), p.cdf(x0 + 1 / 255))
            lower = torch.where(x0 < -1 + 1e-6, torch.zeros_like(x0), p.cdf(x0 - 1 / 255))
            total = total - torch.log(upper - lower).sum((1, 2, 3))
        else:
            q_mean = (
                betas[t] * abar_prev[t].sqrt() / (1 - abar[t]) * x0
                + (1 - abar_prev[t]) * (1 - betas[t]).sqrt() / (1 - abar[t]) * xt
            )
            total = total + kl_divergence(Normal(q_mean, tilde[t].sqrt()), p).sum((1, 2, 3))
    return total


@pytest.mark.parametrize("objective", ["simple", "hybrid"])
def test_full_bound_is_the_sum_of_its_terms(objective):
    model = tiny(objective)
    x = eight_bit(5)
    x[0] = 0.0  # both outer bins
    x[1] = 1.0
    torch.manual_seed(3)
    got = -model.log_likelihood(x, timesteps="all")
    expected = reference_bound(model, x, seed=3)
    assert torch.allclose(got.double(), expected, rtol=1e-4), (got, expected)


@pytest.mark.parametrize("m", ["2", "4"])
def test_random_step_estimate_is_unbiased_and_knows_its_error(m):
    """The mean of many m-step estimates matches the mean of many full-bound loops within their errors, and
    the variance each estimate reports is, on average, the variance of the estimates."""
    model = tiny("hybrid", timesteps=21)  # 20 KL terms: one stratum of 20 (m = 2) or strata of 4 and 16 (m = 4)
    x = eight_bit(1).expand(3000, 1, 2, 2)
    torch.manual_seed(4)
    full = -model.log_likelihood(x, timesteps="all").double()
    estimate = -model.log_likelihood(x, timesteps=m).double()
    reported = model._eval_terms[1]["step_sampling_variance"].double()
    se = math.sqrt(full.var() / len(full) + estimate.var() / len(estimate))
    assert abs(full.mean() - estimate.mean()) < 4 * se
    assert estimate.var() > full.var()  # it is a noisier estimate of the same number
    # conservative by at most the finite-population fraction 2/N_h of the smallest sampled stratum
    assert 0.85 < reported.mean() / estimate.var() < {"2": 1 / (1 - 2 / 20), "4": 1 / (1 - 2 / 4)}[m] + 0.15
    with pytest.raises(UserError, match="only 20 KL terms"):
        model.log_likelihood(x[:2], timesteps="22")


def test_bound_falls_on_memorized_data():
    data = DataSpec((1, 4, 4), "8bit")
    torch.manual_seed(0)
    model = DDPM(DDPMConfig(timesteps=20, channels=8, channel_mult=[1]), data, {"name": "simple"})
    x = eight_bit(4, (1, 4, 4)).repeat(4, 1, 1, 1)

    def bits() -> float:
        torch.manual_seed(5)
        return float(-model.log_likelihood(x, timesteps="all").mean()) / (data.dim * math.log(2))

    before = bits()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(100):
        torch.manual_seed(100 + step)
        loss, _ = model.training_loss(x, None, "model")
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = bits()
    assert after < before - 0.5, (before, after)


def test_hybrid_loss_trains_the_variance_only_through_vlb():
    """With the mean's gradient stopped, the vlb term's gradient reaches the network only through v."""
    model = tiny("hybrid")
    x = eight_bit(4)
    torch.manual_seed(0)
    loss, metrics = model.training_loss(x, None, "model")
    assert set(metrics) == {"mse", "vb_bits_per_dim"} and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# --- sampling -----------------------------------------------------------------------------------


def test_ddim_with_eta_one_on_the_full_chain_is_ancestral_sampling():
    """Same noise, same steps: DDIM(eta=1, all T steps) and ancestral sampling with the posterior variance
    (fixed_small) produce the same trajectory, so the same distribution."""
    model = tiny(variance="fixed_small", timesteps=30)  # no clipped betas: abar well above float32's resolution
    torch.manual_seed(7)
    ancestral = torch.stack(list(model.reverse_process(500)))
    model.config.sampler, model.config.eta = "ddim", 1.0
    torch.manual_seed(7)
    ddim = torch.stack(list(model.reverse_process(500)))
    assert torch.allclose(ancestral, ddim, atol=1e-4)
    # and from independent noise, the same moments of x_0
    torch.manual_seed(8)
    other = torch.stack(list(model.reverse_process(2000)))[-1]
    a, b = ancestral[-1].flatten(1), other.flatten(1)
    assert torch.all((a.mean(0) - b.mean(0)).abs() < 4 * (a.var(0) / 500 + b.var(0) / 2000).sqrt() + 1e-6)


def test_deterministic_ddim_and_respaced_sampling():
    model = tiny(timesteps=20, sampler="ddim", sample_steps=5, eta=0.0)
    torch.manual_seed(0)
    states = list(model.reverse_process(4))
    assert len(states) == 6
    torch.manual_seed(1)
    again = list(model.reverse_process(4))
    # eta = 0: x_0 is a function of x_T alone
    torch.manual_seed(0)
    xT = torch.randn(4, 1, 2, 2)
    assert torch.allclose(states[0], xT)
    assert not torch.allclose(states[-1], again[-1])
    x = model.sample(4)
    assert torch.equal(x, torch.round(x * 255) / 255) and x.min() >= 0 and x.max() <= 1


def test_trajectory_grid_runs_from_noise_to_data():
    model = tiny(timesteps=20)
    grid = model.sample_trajectory(eight_bit(3))
    assert grid.shape == (3, 10, 1, 2, 2) and grid.min() >= 0 and grid.max() <= 1
    # `dgm sample mode=trajectory` draws it as one row per sample, x_T on the left
    data = SimpleNamespace(test=(eight_bit(2), None))
    cfg = OmegaConf.create({"mode": "trajectory", "num_samples": 2, "split": "test"})
    image = sample.draw(model, cfg, data, "cpu")
    assert image.shape[1:] == (2 + 2 * 4, 2 + 10 * 4)  # 2 rows, 10 columns of 2-pixel images with 2-pixel padding


# --- evaluation and configuration -------------------------------------------------------------


def test_geometric_strata_cover_every_step_once():
    steps, sizes = stratified_steps(3, 999, 10, "cpu")
    assert sum(sizes) == 999 and sizes[0] == 1 and sizes == sorted(sizes)
    assert steps.shape == (3, sum(min(2, s) for s in sizes)) and steps.min() >= 1 and steps.max() <= 999
    # exact where every step of every stratum is drawn: all 5 KL terms from strata of 1, 2 and 2 steps
    terms = torch.arange(1.0, 6.0).expand(2, 5)
    total, variance = stratified_sum(terms, [1, 2, 2])
    assert torch.equal(total, torch.full((2,), 15.0)) and torch.equal(variance, torch.zeros(2))


@pytest.mark.parametrize("timesteps", [4, 12])
def test_validation_reports_the_bound_in_bits_per_dim(timesteps):
    """All steps on a chain too short for the two-strata estimate, the estimate otherwise: both unbiased."""
    model = tiny(timesteps=timesteps)
    x = eight_bit(1).expand(2000, 1, 2, 2)
    torch.manual_seed(0)
    metrics = model.validation_step(x, None)
    full = -model.log_likelihood(x, timesteps="all").double() / (4 * math.log(2))
    assert metrics["loss"] == metrics["bits_per_dim"]
    assert abs(metrics["loss"].item() - full.mean().item()) < 0.05 * full.mean().item()


def test_eval_reports_the_bound_in_bits_per_dim_and_its_parts():
    model = tiny()
    x = eight_bit(6)
    settings = estimators.estimator_settings(model, {"timesteps": 4})
    assert settings == {"timesteps": "4"}
    report = likelihood.evaluate_likelihood(model, x, None, 4, "cpu", **settings)
    parts = report["bound_terms"]
    assert report["bits_per_dim"] == pytest.approx(report["nll_nats"] / (4 * math.log(2)))
    assert report["nll_nats"] == pytest.approx(parts["prior_nats"] + parts["decoder_nats"] + parts["kl_terms_nats"])
    assert 0 < parts["step_sampling_stderr_nats"] and "from 2 geometrically growing strata" in report["estimator"]
    full = likelihood.evaluate_likelihood(model, x, None, 4, "cpu", **estimators.estimator_settings(model, {}))
    assert "step_sampling_stderr_nats" not in full["bound_terms"] and "all T=6 steps" in full["estimator"]


@pytest.mark.parametrize(
    "cfg, objective, message",
    [
        ({"variance": "fixed_large"}, "hybrid", "learned variances"),
        ({"variance": "learned_range"}, "simple", "no gradient"),
        ({"schedule": "quadratic"}, "simple", "model.schedule='quadratic' is not allowed.*one of linear, cosine"),
        ({"dropout": 1.0}, "simple", r"model.dropout.*\[0, 1\)"),
        ({"channel_mult": [1, 2, 2, 2]}, "simple", "divisible by 8"),
    ],
)
def test_bad_settings_are_refused(cfg, objective, message):
    with pytest.raises(UserError, match=message):
        build_model({"name": "ddpm", **cfg}, {"name": objective}, DataSpec((1, 28, 28), "8bit"))


def test_bad_estimator_and_objective_keys_are_refused():
    model = tiny()
    for bad in ("some", 3, 0):
        with pytest.raises(UserError, match="timesteps"):
            estimators.estimator_settings(model, {"timesteps": bad})
    with pytest.raises(UserError, match="no estimator setting estimator.k"):
        estimators.estimator_settings(model, {"k": 5})
    with pytest.raises(UserError, match="takes only name"):
        DDPM(DDPMConfig(), DataSpec((1, 28, 28), "8bit"), {"name": "simple", "vlb_weight": 0.1})
    with pytest.raises(UserError, match=r"objective.vlb_weight=-0.1 .*>= 0"):
        build_model({"name": "ddpm"}, {"name": "hybrid", "vlb_weight": -0.1}, DataSpec((1, 28, 28), "8bit"))
