"""The discretized logistic against 800-digit values (mpmath), in the tails and at the 0/255 edges."""

from __future__ import annotations

import itertools

import mpmath
import pytest
import torch

from dgm_cli.models.nn.distributions import discretized_logistic_log_prob, log1mexp

BINS = 256
DIGITS = 800  # the far tails reach masses near e^-1500: 1 - sigmoid(t) needs this many digits


def exact_log_prob(k: int, mean: float, log_scale: float) -> mpmath.mpf:
    """log P(k) by the definition: sigmoid(b) - sigmoid(a) over bin k's edges, edge bins open."""
    with mpmath.workdps(DIGITS):
        return _exact_log_prob(k, mpmath.mpf(mean), log_scale)


def _exact_log_prob(k: int, mean, log_scale: float) -> mpmath.mpf:
    s = mpmath.exp(mpmath.mpf(log_scale))
    x = mpmath.mpf(k) / (BINS - 1)
    half = mpmath.mpf(1) / (2 * (BINS - 1))
    cdf = lambda t: 1 / (1 + mpmath.exp(-(t - mean) / s))  # noqa: E731
    upper = mpmath.mpf(1) if k == BINS - 1 else cdf(x + half)
    lower = mpmath.mpf(0) if k == 0 else cdf(x - half)
    return mpmath.log(upper - lower)


# bins at both edges, next to them, in the middle, and far into both tails of narrow and wide logistics
CASES = list(itertools.product((0, 1, 3, 128, 200, 254, 255), (0.1, 0.5, 0.9, -0.3, 1.2), (-7.0, -4.0, -1.0, 2.0)))


def ours(k, mean, log_scale, dtype):
    t = lambda v: torch.tensor([[v]], dtype=dtype)  # noqa: E731
    return float(discretized_logistic_log_prob(t(k / (BINS - 1)), t(mean), t(log_scale)))


@pytest.mark.parametrize("dtype, rtol, atol", [(torch.float64, 1e-9, 1e-9), (torch.float32, 2e-6, 2e-4)])
def test_matches_high_precision_values_everywhere(dtype, rtol, atol):
    worst = []
    for k, mean, log_scale in CASES:
        truth = float(exact_log_prob(k, mean, log_scale))
        got = ours(k, mean, log_scale, dtype)
        err = abs(got - truth)
        if err > atol + rtol * abs(truth):
            worst.append((k, mean, log_scale, got, truth))
    assert not worst, f"{len(worst)} of {len(CASES)} values off, e.g. {worst[:3]}"


def test_the_worst_fit_pixel_is_not_floored():
    """x = 200/255, mu = 0.1, log s = -4: the old float32 code floored this at log(1e-12) = -27.63."""
    truth = float(exact_log_prob(200, 0.1, -4.0))
    assert truth == pytest.approx(-38.90, abs=0.01)
    assert ours(200, 0.1, -4.0, torch.float32) == pytest.approx(truth, rel=1e-6)


def test_gradient_in_the_tail_matches_the_derivative():
    """The gradient with respect to the mean is the true derivative, also where the mass underflows float32."""
    for k, mean, log_scale in [(200, 0.1, -4.0), (0, 0.9, -6.0), (255, 0.05, -5.0), (17, 0.8, -7.0)]:
        m = torch.tensor([[mean]], dtype=torch.float32, requires_grad=True)
        x = torch.tensor([[k / (BINS - 1)]])
        discretized_logistic_log_prob(x, m, torch.tensor([[log_scale]])).sum().backward()
        with mpmath.workdps(DIGITS):
            truth = float(mpmath.diff(lambda mu: _exact_log_prob(k, mu, log_scale), mpmath.mpf(mean)))
        assert float(m.grad) == pytest.approx(truth, rel=1e-4), (k, mean, log_scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sums_to_one_over_the_256_values(dtype):
    x = torch.arange(BINS, dtype=dtype).view(BINS, 1) / (BINS - 1)
    for mean, log_scale in [(0.5, -3.0), (0.01, -5.0), (0.97, -1.0), (0.3, -7.0), (0.5, 3.0), (-2.0, -2.0), (3.0, 0.0)]:
        p = discretized_logistic_log_prob(x, torch.full_like(x, mean), torch.full_like(x, log_scale)).exp()
        assert float(p.sum()) == pytest.approx(1.0, abs=1e-5 if dtype == torch.float32 else 1e-12)


def test_log1mexp_against_high_precision():
    d = torch.tensor([1e-30, 1e-10, 1e-3, 0.5, 0.6931, 0.6932, 2.0, 30.0, 100.0], dtype=torch.float64)
    with mpmath.workdps(DIGITS):
        truth = [float(mpmath.log(1 - mpmath.exp(-mpmath.mpf(v)))) for v in d.tolist()]
    assert log1mexp(d).tolist() == pytest.approx(truth, rel=1e-12)
