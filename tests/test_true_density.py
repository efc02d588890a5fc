"""The truth beside every toy: each toy's generating density (data/toy.py, data/sequences.py) against an
independent computation -- numerical integration on a grid, the samplers' own draws, adaptive quadrature, the
joint Gaussian of a whole sequence -- and `dgm eval` reporting it on the same examples as the model, with a
gap the model never beats by more than its error."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import copy_run, run_dgm
from dgm_cli.data import sequences, toy
from dgm_cli.evaluation import reference

#: (toy, half-width of the square that holds its mass, grid spacing: at most half its smallest scale, and a
#: divisor of the 0.5 cells below; draws compared with it: fewer for the moons and the pinwheel, whose densities
#: are a sum over 4,096 arc points and a root search over 512 angles)
GRIDS = [
    ("eight_gaussians", 3.0, 0.02, 100_000),
    ("twenty_five_gaussians", 3.5, 0.025, 100_000),
    ("checkerboard", 4.0, 0.05, 100_000),
    pytest.param("pinwheel", 5.0, 0.05, 30_000, marks=pytest.mark.slow),
    pytest.param("moons", 4.0, 0.05, 25_000, marks=pytest.mark.slow),
]


def midpoint_grid(half: float, h: float, dtype=torch.float64) -> torch.Tensor:
    n = round(2 * half / h)
    g = (torch.arange(n, dtype=torch.float64) + 0.5) * h - half
    return torch.cartesian_prod(g, g).to(dtype)


@pytest.mark.parametrize("name, half, h, n", GRIDS)
def test_each_toy_density_is_normalised_and_is_the_density_its_sampler_draws_from(name, half, h, n):
    log_density, _ = toy.TRUE_DENSITIES[name]
    grid = midpoint_grid(half, h)
    logp = log_density(grid)
    mass = float(logp.exp().sum() * h * h)
    assert mass == pytest.approx(1.0, abs=2e-4)
    # float32 points (the data sets hold float32): the same density, the same mass
    assert float(log_density(midpoint_grid(half, h, torch.float32)).exp().sum() * h * h) == pytest.approx(1.0, abs=2e-4)

    x = toy.TOYS[name](n, torch.Generator().manual_seed(7))
    # the mass of each 0.5 x 0.5 cell (integrated on the grid) against the share of draws that fall in it
    cells = round(2 * half / 0.5)
    cell_of = lambda pts: (((pts + half) / 0.5).floor().clamp(0, cells - 1) * torch.tensor([cells, 1])).sum(1).long()  # noqa: E731
    expected = torch.zeros(cells * cells, dtype=torch.float64).index_add_(0, cell_of(grid), logp.exp() * h * h)
    inside = (x.abs() < half).all(1)
    seen = torch.bincount(cell_of(x[inside].double()), minlength=cells * cells).double() / n
    tolerance = 5 * (expected * (1 - expected) / n).sqrt() + 2e-4
    assert ((seen - expected).abs() <= tolerance).all(), float(((seen - expected).abs() - tolerance).max())

    # the true NLL of the draws (their mean) against the entropy integrated on the grid, -int p log p
    nll = -log_density(x)
    entropy = float(-(logp.exp() * torch.nan_to_num(logp, neginf=0.0)).sum() * h * h)
    assert float(nll.mean()) == pytest.approx(entropy, abs=4 * float(nll.std()) / math.sqrt(n) + 1e-3)


def test_the_mixture_densities_against_torch_distributions():
    x = toy.TOYS["twenty_five_gaussians"](500, torch.Generator().manual_seed(3)).double()
    for name, centers, std in (
        ("eight_gaussians", toy.eight_gaussians_centers(), 0.1),
        ("twenty_five_gaussians", toy.grid_gaussians_centers(), 0.075),
    ):
        d = torch.distributions
        mix = d.MixtureSameFamily(
            d.Categorical(torch.ones(len(centers), dtype=torch.float64)),
            d.Independent(d.Normal(centers.double(), std), 1),
        )
        assert torch.allclose(toy.TRUE_DENSITIES[name][0](x), mix.log_prob(x), atol=1e-10, rtol=0)
    assert torch.allclose(
        -toy.checkerboard_log_density(toy.checkerboard(300, torch.Generator().manual_seed(4))),
        torch.full((300,), math.log(32), dtype=torch.float64),
    )


def test_the_moons_density_against_adaptive_quadrature():
    integrate = pytest.importorskip("scipy.integrate")
    x = toy.two_moons(12, torch.Generator().manual_seed(5)).double()
    # and the moons' four tips, where the integrand is cut off and the midpoint rule errs most, and a point between
    x = torch.cat(
        [x, torch.tensor([[-3.0, -0.5], [1.0, -0.5], [-1.0, 0.5], [3.0, 0.5], [0.0, 0.0]], dtype=torch.float64)]
    )

    def density(point):  # p(x) = 1/2 sum_moon (1/pi) int_0^pi N(x; c(t), 0.1^2 I) dt
        def normal(t, cx, cy):
            return math.exp(-((point[0] - cx) ** 2 + (point[1] - cy) ** 2) / 0.02) / (2 * math.pi * 0.01)

        up = integrate.quad(
            lambda t: normal(t, 2 * (math.cos(t) - 0.5), 2 * (math.sin(t) - 0.25)),
            0,
            math.pi,
            epsabs=0,
            epsrel=1e-10,
            limit=500,
        )[0]
        low = integrate.quad(
            lambda t: normal(t, 2 * (0.5 - math.cos(t)), 2 * (0.25 - math.sin(t))),
            0,
            math.pi,
            epsabs=0,
            epsrel=1e-10,
            limit=500,
        )[0]
        return (up + low) / (2 * math.pi)

    quad = torch.tensor([math.log(density(p.tolist())) for p in x], dtype=torch.float64)
    assert torch.allclose(toy.moons_log_density(x), quad, atol=5e-4, rtol=0)


def test_the_kalman_filter_against_the_joint_gaussian_of_whole_sequences():
    """log p(x_{1:T}) by the filter against log N(vec x; 0, Sigma) with Sigma built from the model's moments:
    z_t = A^(t-1) z_1 + noise, Cov(z_s, z_t) = A^(t-s) P_s for t >= s, x_t = C z_t + N(0, R). Ragged
    (NaN-padded) sequences are scored on their real steps: the marginal of the first L."""
    ssm = sequences.LinearGaussianSSM.toy()
    T, D = 6, 2
    x = ssm.sample(5, T, torch.Generator().manual_seed(2)).double()
    P = [ssm.P0]
    for _ in range(1, T):
        P.append(ssm.A @ P[-1] @ ssm.A.T + ssm.Q)
    cov = torch.zeros(T * D, T * D, dtype=torch.float64)
    for s in range(T):
        for t in range(s, T):
            block = ssm.C @ torch.linalg.matrix_power(ssm.A, t - s) @ P[s] @ ssm.C.T + (ssm.R if s == t else 0)
            cov[t * D : (t + 1) * D, s * D : (s + 1) * D] = block
            cov[s * D : (s + 1) * D, t * D : (t + 1) * D] = block.T
    joint = torch.distributions.MultivariateNormal(torch.zeros(T * D, dtype=torch.float64), cov)
    assert torch.allclose(ssm.log_likelihood(x), joint.log_prob(x.reshape(5, -1)), atol=1e-9, rtol=0)
    ragged = x.clone()
    ragged[:, 4:] = float("nan")
    first4 = torch.distributions.MultivariateNormal(torch.zeros(4 * D, dtype=torch.float64), cov[: 4 * D, : 4 * D])
    assert torch.allclose(ssm.log_likelihood(ragged), first4.log_prob(x[:, :4].reshape(5, -1)), atol=1e-9, rtol=0)
    truth = reference.reference_report("linear_gaussian", ragged.float(), "continuous")
    assert truth["true_nll"]["nll_nats"] == pytest.approx(float(-ssm.log_likelihood(ragged.float()).mean()))
    assert truth["true_nll"]["bits_per_dim"] == pytest.approx(truth["true_nll"]["nll_nats"] / (4 * D * math.log(2)))


def test_every_toy_has_its_density_and_other_data_none():
    assert set(toy.TRUE_DENSITIES) == set(toy.TOYS)  # a new toy comes with its density (or this test says so)
    assert reference.reference_report("mnist", torch.zeros(3, 1, 28, 28, dtype=torch.uint8), "binary") is None


def test_the_pinwheel_density_against_its_change_of_variables_in_cartesian_coordinates():
    """Independent of the polar root-finding: draw (f, arm), map each to x = 2 R(theta) f, and compare
    log p(x) with log p_f(f) - log |det dx/df| - log(arms), the density of that one preimage -- a lower bound on
    log p(x), equal to it where x has a single preimage (most draws), never above it."""
    g = torch.Generator().manual_seed(6)
    n, arms, rate = 400, 5, 0.25
    f = torch.randn(n, 2, generator=g, dtype=torch.float64) * torch.tensor([0.3, 0.1], dtype=torch.float64)
    f[:, 0] += 1
    k = torch.randint(arms, (n,), generator=g)
    rads = torch.linspace(0, 2 * math.pi, arms + 1)[:-1].double()  # the sampler's arm angles (float32 values)
    theta = rads[k] + rate * torch.exp(f[:, 0])
    x = 2 * torch.stack(
        [
            torch.cos(theta) * f[:, 0] - torch.sin(theta) * f[:, 1],
            torch.sin(theta) * f[:, 0] + torch.cos(theta) * f[:, 1],
        ],
        1,
    )
    jac = torch.autograd.functional.jacobian  # det dx/df by autograd, not by the formula the density uses
    det = torch.stack(
        [
            torch.linalg.det(
                jac(
                    lambda v, t0=rads[kk]: (
                        2
                        * torch.stack(
                            [
                                torch.cos(t0 + rate * torch.exp(v[0])) * v[0]
                                - torch.sin(t0 + rate * torch.exp(v[0])) * v[1],
                                torch.sin(t0 + rate * torch.exp(v[0])) * v[0]
                                + torch.cos(t0 + rate * torch.exp(v[0])) * v[1],
                            ]
                        )
                    ),
                    fi,
                )
            )
            for fi, kk in zip(f, k)
        ]
    )
    one = (
        torch.distributions.Normal(
            torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([0.3, 0.1], dtype=torch.float64)
        )
        .log_prob(f)
        .sum(1)
        - det.abs().log()
        - math.log(arms)
    )
    got = toy.TRUE_DENSITIES["pinwheel"][0](x)
    assert (got >= one - 1e-9).all()
    assert ((got - one).abs() < 1e-9).float().mean() > 0.5  # a single preimage: the same number


@pytest.mark.slow
def test_dgm_eval_reports_the_true_nll_of_its_examples_and_the_model_never_beats_it(toy_run, tmp_path):
    run = copy_run(toy_run, tmp_path)
    run_dgm("eval", f"checkpoint={run}", "estimator.k=20", "limit=300", cwd=tmp_path)
    report = json.loads((run / "checkpoints" / "eval.json").read_text())
    ref, lik = report["reference"], report["likelihood"]

    from omegaconf import OmegaConf

    from dgm_cli.data import pipeline

    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    x = pipeline.load(OmegaConf.create(state["config"]).data).test[0][:300]  # the examples the run was scored on
    assert ref["true_nll"]["num_examples"] == 300
    assert ref["true_nll"]["nll_nats"] == pytest.approx(float(-toy.moons_log_density(x).mean()), rel=1e-9)
    assert "numerical integration" in ref["true_nll"]["how"]
    # the gap is paired over the same examples: its mean is the difference of the means
    assert ref["model_gap_nats"] == pytest.approx(lik["nll_nats"] - ref["true_nll"]["nll_nats"], abs=1e-9)
    assert ref["model_gap_nats"] > -3 * ref["model_gap_nats_stderr"]  # an upper bound on the NLL never beats it

    out = run_dgm("report", str(run), f"out={tmp_path / 'report'}", cwd=tmp_path).stdout
    assert "true NLL" in out and f"{ref['true_nll']['nll_nats']:.2f} ± {ref['true_nll']['nll_nats_stderr']:.2f}" in out
