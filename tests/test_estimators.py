"""Every number that claims to be a likelihood is checked where the truth is known."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dgm_cli.evaluation.likelihood import evaluate_likelihood, nll_offset
from dgm_cli.models.base import DataSpec
from dgm_cli.models.nn import distributions as D
from dgm_cli.models.vae.vae import VAE, VAEConfig


class LinearGaussianDecoder(nn.Module):
    """p(x|z) = N(W z + b, sigma^2 I): the marginal p(x) = N(b, W W^T + sigma^2 I) is known."""

    def __init__(self, w, b, log_var):
        super().__init__()
        self.w, self.b, self.log_var = w, b, log_var

    def forward(self, z):
        mean = z @ self.w.T + self.b
        return torch.stack([mean, self.log_var.expand_as(mean)], dim=1)


class ShiftedPosterior(nn.Module):
    """A deliberately imperfect q(z|x): the exact posterior's mean, shifted, with an inflated variance."""

    def __init__(self, w, b, sigma2):
        super().__init__()
        d = w.shape[1]
        self.cov = torch.linalg.inv(torch.eye(d, dtype=w.dtype) + w.T @ w / sigma2)
        self.w, self.b, self.sigma2 = w, b, sigma2
        self.shift, self.inflate = 0.3, 2.0

    def forward(self, x):
        mean = (x - self.b) @ self.w @ self.cov / self.sigma2 + self.shift
        log_var = torch.log(torch.diagonal(self.cov) * self.inflate).expand_as(mean)
        return mean, log_var


@pytest.fixture
def linear_gaussian():
    torch.manual_seed(0)
    x_dim, z_dim, sigma2 = 5, 2, 0.5
    # orthogonal columns make the exact posterior's covariance diagonal, so a diagonal q can equal it
    w = torch.linalg.qr(torch.randn(x_dim, z_dim, dtype=torch.float64))[0] * torch.tensor(
        [1.5, 0.7], dtype=torch.float64
    )
    b = torch.randn(x_dim, dtype=torch.float64)
    vae = VAE(VAEConfig(hidden=[4], latent_dim=z_dim), DataSpec((x_dim,), "continuous"), {"name": "elbo"}).double()
    vae.decoder = LinearGaussianDecoder(w, b, torch.tensor(math.log(sigma2), dtype=torch.float64))
    vae.encoder = ShiftedPosterior(w, b, sigma2)
    marginal = torch.distributions.MultivariateNormal(b, w @ w.T + sigma2 * torch.eye(x_dim, dtype=torch.float64))
    x = marginal.sample((20,))
    return vae, x, marginal.log_prob(x)


def test_iwae_approaches_exact_log_likelihood_from_below(linear_gaussian):
    vae, x, exact = linear_gaussian
    torch.manual_seed(1)
    gaps, stderrs = [], []
    for k in (1, 10, 100, 2000):
        # the bound holds for the expectation, not for every draw: average 40 repeats
        per_repeat = torch.stack([(exact - vae.log_likelihood(x, k=k)).mean() for _ in range(40)])
        gaps.append(float(per_repeat.mean()))
        stderrs.append(float(per_repeat.std() / math.sqrt(len(per_repeat))))
    assert all(g > -3 * se for g, se in zip(gaps, stderrs)), f"IWAE above log p(x) on average: {gaps} +- {stderrs}"
    assert gaps[0] > gaps[1] > gaps[2] > gaps[3], f"the bound does not tighten with k: gaps {gaps}"
    assert gaps[-1] < 0.01 and gaps[0] > 0.1


def test_exact_posterior_gives_exact_likelihood_in_any_chunking(linear_gaussian, monkeypatch):
    """With q(z|x) = p(z|x) every importance weight equals p(x): the estimate is exact for every k,
    whichever way evaluation splits the k samples into chunks (k=37 leaves a ragged last chunk)."""
    import dgm_cli.models.vae.importance as importance_module

    vae, x, exact = linear_gaussian
    vae.encoder.shift, vae.encoder.inflate = 0.0, 1.0
    for rows in (1 << 16, 5 * len(x), len(x)):
        monkeypatch.setattr(importance_module, "ROWS_PER_CHUNK", rows)
        assert torch.allclose(vae.log_likelihood(x, k=37), exact, atol=1e-9)


def test_elbo_is_below_exact_and_equals_iwae_with_one_sample(linear_gaussian):
    vae, x, exact = linear_gaussian
    torch.manual_seed(2)
    elbo = torch.stack([(lambda r: r[0] - r[1])(vae.elbo_terms(x)[:2]) for _ in range(2000)]).mean(0)
    iwae1 = torch.stack([vae.log_likelihood(x, k=1) for _ in range(2000)]).mean(0)
    assert (elbo <= exact + 0.01).all()
    # analytic-KL ELBO vs the Monte Carlo single-sample bound: equal in expectation
    assert float((elbo - iwae1).mean()) == pytest.approx(0.0, abs=0.03)


def test_analytic_kl_equals_monte_carlo():
    torch.manual_seed(0)
    mean, log_var = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    z = mean + torch.exp(0.5 * log_var) * torch.randn(200000, 3, 4, dtype=torch.float64)
    log_q = D.gaussian_log_prob(z.view(-1, 4), mean.repeat(200000, 1), log_var.repeat(200000, 1)).view(200000, 3)
    log_p = D.standard_normal_log_prob(z.view(-1, 4)).view(200000, 3)
    mc = (log_q - log_p).mean(0)
    assert torch.allclose(D.gaussian_kl_standard_normal(mean, log_var), mc, atol=0.02)


def test_bernoulli_is_normalised_over_all_binary_images():
    logits = torch.randn(1, 3)
    images = torch.tensor([[(i >> j) & 1 for j in range(3)] for i in range(8)], dtype=torch.float32)
    total = D.bernoulli_log_prob(logits.expand(8, 3), images).exp().sum()
    assert total == pytest.approx(1.0, abs=1e-6)


def test_discretized_logistic_is_normalised_over_256_values():
    x = torch.arange(256, dtype=torch.float64).view(256, 1) / 255
    for mean, log_scale in [(0.5, -3.0), (0.01, -5.0), (0.97, -1.0), (0.3, -7.0)]:
        p = D.discretized_logistic_log_prob(x, torch.full_like(x, mean), torch.full_like(x, log_scale)).exp()
        assert float(p.sum()) == pytest.approx(1.0, abs=1e-6)


def test_categorical_is_normalised():
    logits = torch.randn(1, 256, 1)
    x = torch.arange(256, dtype=torch.float32).view(256, 1) / 255
    assert float(D.categorical_log_prob(logits.expand(256, 256, 1), x).exp().sum()) == pytest.approx(1.0, abs=1e-5)


class UniformModel:
    """Uniform density on [0,1)^D: log p = 0, so the discrete NLL of dequantized data is D ln 256
    and bits/dim is exactly 8: the conversion checked by hand."""

    likelihood = "exact"
    Estimator = None

    def __init__(self, rep, dim):
        self.data = DataSpec((dim,), rep)

    def prepare_eval(self, x, y=None, **_):
        return {}

    def log_likelihood(self, x, y=None, **_):
        return torch.zeros(len(x))

    def estimator(self, **_):
        return "exact"

    def extra_eval(self, x, y=None):
        return {}


def test_bits_per_dim_conversion_by_hand():
    report = evaluate_likelihood(UniformModel("dequantized", 784), torch.rand(10, 784), None, 4, "cpu")
    assert report["nll_nats"] == pytest.approx(784 * math.log(256))
    assert report["bits_per_dim"] == pytest.approx(8.0)

    # a fair coin per binary pixel: 1 bit per dimension
    class Coin(UniformModel):
        def log_likelihood(self, x, y=None, **_):
            return torch.full((len(x),), -784 * math.log(2))

    report = evaluate_likelihood(Coin("binary", 784), torch.zeros(6, 784), None, 4, "cpu")
    assert report["bits_per_dim"] == pytest.approx(1.0)
    assert report["nll_nats_stderr"] == 0.0
    assert nll_offset("8bit", 10) == 0.0
