"""The categorical VAE (Jang et al. 2017; Maddison et al. 2017): Gumbel-softmax samples, the
straight-through estimator, temperature annealing, and the importance-sampled log p(x) checked
against the exact marginal of a tiny model whose code can be enumerated."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from conftest import phase_steps
from dgm_cli.errors import UserError
from dgm_cli.models.base import DataSpec
from dgm_cli.models.registry import build_model
from dgm_cli.models.vae.gumbel_vae import GumbelVAE, categorical_kl_uniform, gumbel_softmax
from test_flows import perturb

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ELBO = {"name": "elbo", "kl_warmup_steps": 0, "free_bits": 0.0}
LOGITS = torch.log(torch.tensor([[0.6, 0.3, 0.1]], dtype=torch.float64)).expand(20000, 3)


def test_hard_sample_is_one_hot_and_passes_the_relaxed_gradient():
    torch.manual_seed(0)
    logits = LOGITS[:5].clone().requires_grad_(True)
    hard = gumbel_softmax(logits, 0.7, hard=True)
    assert ((hard == 0) | (hard == 1)).all() and (hard.sum(-1) == 1).all()
    weights = torch.randn(3, dtype=torch.float64)
    (g_hard,) = torch.autograd.grad((hard * weights).sum(), logits)
    torch.manual_seed(0)
    relaxed = gumbel_softmax(logits, 0.7)
    (g_relaxed,) = torch.autograd.grad((relaxed * weights).sum(), logits)
    torch.testing.assert_close(g_hard, g_relaxed)  # straight-through: the relaxed sample's gradient
    assert torch.equal(hard.argmax(-1), relaxed.argmax(-1))  # and the same draw


def test_relaxed_sample_approaches_the_categorical_one_hot_as_temperature_falls():
    gaps = []
    for tau in (5.0, 1.0, 0.1, 0.01):
        torch.manual_seed(1)
        y = gumbel_softmax(LOGITS, tau)
        gaps.append((1 - y.max(-1).values).mean().item())  # distance from a vertex of the simplex
        # whatever tau, the argmax is a draw of the categorical (the Gumbel-max trick)
        freq = F.one_hot(y.argmax(-1), 3).double().mean(0)
        torch.testing.assert_close(freq, LOGITS[0].exp(), atol=0.015, rtol=0)
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] < 1e-2 and gaps[0] > 0.3


def test_temperature_anneals_stepwise_to_its_floor():
    model = GumbelVAE(
        GumbelVAE.Config(anneal_rate=1e-3, anneal_every=100, temperature=1.0, temperature_min=0.5),
        DataSpec((4,), "binary"),
        ELBO,
    )
    taus = {}
    for t in (0, 99, 100, 250, 10000):
        model.step.fill_(t)
        taus[t] = float(model.temperature())
    assert taus[0] == taus[99] == 1.0
    assert taus[100] == pytest.approx(math.exp(-0.1)) and taus[250] == pytest.approx(math.exp(-0.2))
    assert taus[10000] == 0.5
    model.step.zero_()
    x = torch.bernoulli(torch.full((8, 4), 0.5))
    opt = torch.optim.Adam(model.parameters())
    for _, loss, metrics in phase_steps(model, x):
        loss.backward()
        opt.step()
        assert metrics["temperature"] == 1.0
    assert int(model.step) == 1  # after_step advanced the clock


def tiny_model() -> GumbelVAE:
    """x in {0,1}^4, two 3-way latents: 9 codes to enumerate."""
    torch.manual_seed(0)
    model = GumbelVAE(GumbelVAE.Config(num_latents=2, num_categories=3, hidden=[6]), DataSpec((4,), "binary"), ELBO)
    return perturb(model, std=0.3).double().eval()


def exact_log_px(model: GumbelVAE, x: torch.Tensor) -> torch.Tensor:
    """log p(x) = log sum_c p(x|c) p(c) over all 9 codes."""
    codes = torch.stack([F.one_hot(torch.tensor(c), 3) for c in itertools.product(range(3), repeat=2)]).double()
    log_px_c = torch.stack([model.log_px_given_code(codes, xi.expand(len(codes), 4)) for xi in x])  # (B, 9)
    return torch.logsumexp(log_px_c, 1) - 2 * math.log(3)


ALL_X = torch.cartesian_prod(*[torch.tensor([0.0, 1.0], dtype=torch.float64)] * 4)


@torch.no_grad()
def test_importance_estimate_is_below_exact_log_px_and_reaches_it():
    model = tiny_model()
    truth = exact_log_px(model, ALL_X)
    assert abs(truth.exp().sum().item() - 1) < 1e-12  # the enumeration is a distribution over x
    torch.manual_seed(0)
    means = {}
    for k in (1, 10):
        draws = torch.stack([model.log_likelihood(ALL_X, k=k) for _ in range(300)])
        means[k], err = draws.mean(0), draws.std(0) / math.sqrt(len(draws))
        assert (means[k] < truth + 3 * err + 1e-9).all()
    assert (means[1] <= means[10] + 1e-9).all() and (truth - means[1]).max() > 0.05
    torch.testing.assert_close(model.log_likelihood(ALL_X, k=5000), truth, atol=0.02, rtol=0)
    # k=1 is the discrete ELBO in expectation
    rec, kl = model.discrete_elbo(ALL_X.repeat(2000, 1))
    torch.testing.assert_close((rec - kl).view(2000, 16).mean(0), means[1], atol=0.15, rtol=0)
    assert "exact categorical posterior" in model.estimator(k=7) and "k=7" in model.estimator(k=7)


def test_categorical_kl_is_zero_at_the_prior_and_log_k_at_a_vertex():
    uniform = torch.log(torch.full((2, 5, 4), 0.25))
    torch.testing.assert_close(categorical_kl_uniform(uniform), torch.zeros(2))
    vertex = torch.log(F.one_hot(torch.zeros(1, 5, dtype=torch.long), 4).double().clamp(min=1e-300))
    torch.testing.assert_close(categorical_kl_uniform(vertex), torch.full((1,), 5 * math.log(4), dtype=torch.float64))


def test_samples_configs_and_refusals():
    model = GumbelVAE(GumbelVAE.Config(), DataSpec((1, 28, 28), "binary"), ELBO)
    s = model.sample(3)
    assert s.shape == (3, 1, 28, 28) and 0 <= s.min() and s.max() <= 1
    with pytest.raises(UserError):
        model.sample(2, temperature=0.5)
    with pytest.raises(UserError, match="kl_warmup_steps"):
        build_model({"name": "gumbel_vae"}, {**ELBO, "kl_warmup_steps": 10}, DataSpec((4,), "binary"))
    with pytest.raises(UserError, match="temperature"):
        build_model({"name": "gumbel_vae", "temperature_min": 2.0}, ELBO, DataSpec((4,), "binary"))
    cfg = yaml.safe_load((CONFIGS / "model" / "gumbel_vae.yaml").read_text())
    assert cfg.pop("name") == "gumbel_vae" and cfg.pop("representation") == "binary"
    cfg.pop("defaults")
    assert GumbelVAE.Config(**cfg) == GumbelVAE.Config()
    preset = yaml.safe_load((CONFIGS / "experiment" / "gumbel_vae_mnist.yaml").read_text())
    assert set(preset["model"]) <= set(GumbelVAE.Config.__dataclass_fields__)


def test_a_training_step_reads_no_clock_back_from_the_device():
    from host_sync import no_host_reads

    model = GumbelVAE(GumbelVAE.Config(), DataSpec((4,), "binary"), ELBO)
    with no_host_reads():
        model(torch.bernoulli(torch.full((8, 4), 0.5)), None, "model")
