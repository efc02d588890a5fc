"""AIS for log Z against exact enumeration on RBMs small enough to enumerate."""

from __future__ import annotations

import math

import pytest
import torch

from dgm_cli.models.energy import ais
from dgm_cli.models.energy.rbm import bernoulli_free_energy


def random_rbm(V: int, H: int, scale: float = 1.0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(V, H, generator=g, dtype=torch.float64) * scale,
        torch.randn(V, generator=g, dtype=torch.float64) * 0.5,
        torch.randn(H, generator=g, dtype=torch.float64) * 0.5,
    )


def brute_log_z(W, b, c) -> float:
    """log Σ_v Σ_h exp(v·b + h·c + vᵀWh) over every joint state."""
    v, h = ais.all_states(W.shape[0]), ais.all_states(W.shape[1])
    return float(torch.logsumexp(((v @ b)[:, None] + (h @ c)[None] + v @ W @ h.t()).flatten(), 0))


def exact_samples(W, b, c, n: int, seed: int) -> torch.Tensor:
    """n exact draws of v from the enumerated marginal p(v) ∝ exp(-F(v))."""
    v = ais.all_states(W.shape[0])
    probs = torch.softmax(-bernoulli_free_energy(v, W, b, c), 0)
    return v[torch.multinomial(probs, n, replacement=True, generator=torch.Generator().manual_seed(seed))]


@pytest.mark.parametrize("V,H", [(7, 4), (4, 7), (6, 6)])
def test_exact_log_z_equals_the_double_sum(V, H):
    W, b, c = random_rbm(V, H)
    assert ais.exact_log_z(W, b, c) == pytest.approx(brute_log_z(W, b, c), abs=1e-9)


def test_exact_log_z_enumerates_in_chunks():
    W, b, c = random_rbm(12, 30)
    assert ais.exact_log_z(W, b, c, chunk=100) == pytest.approx(ais.exact_log_z(W, b, c), abs=1e-9)
    assert ais.exact_log_z(*random_rbm(21, 22)) is None


def test_default_schedule_is_salakhutdinov_and_murrays():
    betas = ais.schedule()
    assert len(betas) == 14_501 and betas[0] == 0 and betas[-1] == 1
    assert torch.all(betas[1:] > betas[:-1])
    steps = betas[1:] - betas[:-1]
    assert steps[0] == pytest.approx(1e-3) and steps[1000] == pytest.approx(1e-4) and steps[-1] == pytest.approx(1e-5)
    with pytest.raises(ValueError):
        ais.schedule([10, 10], [0.5, 0.9])


def test_base_model_log_z_is_its_normaliser():
    """At β = 0 the path is independent visible units and free hidden units: Z_0 by enumeration."""
    W, b, c = random_rbm(6, 5)
    base = torch.randn(6, dtype=torch.float64)
    path = ais.BernoulliPath(W, b, c, base)
    assert path.log_z_base() == pytest.approx(ais.exact_log_z(torch.zeros_like(W), base, torch.zeros_like(c)))


def test_forward_ais_is_within_its_own_3_sigma_and_converges():
    """10 visible x 8 hidden, weights strong enough that the path matters: at 100, 1,000 and 10,000
    temperatures the exact log Z lies in AIS's own ±3σ interval, and error and σ shrink."""
    W, b, c = random_rbm(10, 8, scale=1.0, seed=1)
    exact = ais.exact_log_z(W, b, c)
    path = ais.BernoulliPath(W, b, c, ais.base_rate_biases(torch.full((10,), 0.4), 100))
    torch.manual_seed(0)
    estimates = [ais.forward_ais(path, 100, ais.scaled_schedule(k)) for k in (100, 1000, 10000)]
    for est in estimates:
        assert est.lower <= exact <= est.upper, (est, exact)
    errors = [abs(e.log_z - exact) for e in estimates]
    assert estimates[0].stderr > estimates[1].stderr > estimates[2].stderr
    assert errors[2] < errors[0] and errors[2] < 0.05


def test_reverse_ais_from_exact_samples_brackets_the_exact_log_z():
    """On average forward AIS is below log Z and reverse AIS (from exact samples) above it (Jensen);
    few runs and temperatures make both biases large enough to see."""
    W, b, c = random_rbm(10, 8, scale=1.5, seed=2)
    exact = ais.exact_log_z(W, b, c)
    path = ais.BernoulliPath(W, b, c, ais.base_rate_biases(torch.full((10,), 0.5), 100))
    betas = ais.scaled_schedule(30)
    torch.manual_seed(0)
    forward = [ais.forward_ais(path, 5, betas).log_z for _ in range(40)]
    reverse = [ais.reverse_ais(path, exact_samples(W, b, c, 5, seed=s), betas).log_z for s in range(40)]
    assert sum(forward) / 40 < exact < sum(reverse) / 40
    # with the full schedule both land on the exact value, each within its own ±3σ
    fine = ais.scaled_schedule(5000)
    f, r = ais.forward_ais(path, 100, fine), ais.reverse_ais(path, exact_samples(W, b, c, 100, seed=99), fine)
    assert f.lower <= exact <= f.upper and r.lower <= exact <= r.upper
    assert r.direction == "reverse" and math.isfinite(r.stderr)
