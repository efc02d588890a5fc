"""DRAW (Gregor et al. 2015): the attention filterbank, the ELBO, gradients and the canvas sample mode."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from dgm_cli.commands import sample
from dgm_cli.models.base import DataSpec
from dgm_cli.models.nn import distributions as D
from dgm_cli.models.vae.draw import DRAW, Attention, read_glimpse, write_patch


def tiny(attention=True, **overrides) -> DRAW:
    torch.manual_seed(0)
    config = DRAW.Config(
        **{**dict(steps=3, attention=attention, read_size=2, write_size=3, hidden=8, latent_dim=4), **overrides}
    )
    return DRAW(config, DataSpec((1, 8, 8), "binary"), {"name": "elbo"})


def digits(n=16):
    """Binary 8x8 images: a bar at a random row, so the data have structure to learn."""
    g = torch.Generator().manual_seed(2)
    x = torch.zeros(n, 1, 8, 8)
    for img, r in zip(x, torch.randint(0, 6, (n,), generator=g)):
        img[0, r : r + 2, 1:7] = 1
    return x


def test_a_grid_over_the_whole_image_with_unit_stride_reads_and_writes_the_image_itself():
    """N = H = W, centred (g~ = 0), delta~ = 1 so delta = (W - 1)/(N - 1) = 1, tiny variance: every filter is
    the indicator of one pixel, so the glimpse is the image and writing it back gives the image again."""
    height, width = 6, 6
    attention = Attention(hidden=1, n=6, height=height, width=width)
    params = torch.tensor([[0.0, 0.0, math.log(1e-3), 0.0, 0.0]])  # g~_X, g~_Y, log sigma^2, log delta~, log gamma
    fy, fx, gamma = attention.from_params(params)
    assert torch.allclose(fy[0], torch.eye(6), atol=1e-6) and torch.allclose(fx[0], torch.eye(6), atol=1e-6)
    assert float(gamma) == 1.0
    x = torch.rand(1, 2, height, width)
    assert torch.allclose(read_glimpse(x, fy, fx), x, atol=1e-5)
    assert torch.allclose(write_patch(read_glimpse(x, fy, fx), fy, fx), x, atol=1e-5)


def test_filters_sum_to_one_and_a_wide_stride_spreads_them():
    attention = Attention(hidden=1, n=3, height=8, width=10)
    fy, fx, _ = attention.from_params(torch.tensor([[0.3, -0.2, 0.5, 0.4, 0.0]]))
    assert torch.allclose(fy.sum(-1), torch.ones(1, 3)) and torch.allclose(fx.sum(-1), torch.ones(1, 3))
    centres = (fx[0] * torch.arange(1, 11.0)).sum(-1)
    assert (centres.diff() > 0).all(), "filter centres increase along the axis"


@pytest.mark.parametrize("attention", [True, False])
def test_elbo_is_finite_and_improves_on_tiny_data(attention):
    model, x = tiny(attention), digits()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    torch.manual_seed(1)
    first = float(model(x, None, "model")[0].detach())
    for _ in range(40):
        opt.zero_grad()
        loss, metrics = model(x, None, "model")
        loss.backward()
        opt.step()
    loss = float(loss.detach())
    assert math.isfinite(loss) and math.isclose(float(metrics["elbo"]), -loss, rel_tol=1e-6)
    assert float(model.validation_step(x, None)["loss"]) < first - 5


@pytest.mark.parametrize("attention", [True, False])
def test_gradients_reach_every_parameter(attention):
    model = tiny(attention)
    model(digits(), None, "model")[0].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_loss_is_reconstruction_plus_the_summed_kl_of_one_trajectory():
    model, x = tiny(), digits(4)
    torch.manual_seed(3)
    canvas, kl, _ = model.infer(x)
    torch.manual_seed(3)
    loss, metrics = model(x, None, "model")
    assert torch.allclose(loss, (kl - D.bernoulli_log_prob(canvas, x)).mean())
    assert float(metrics["kl"]) > 0


def test_importance_weighted_bound_is_above_the_elbo_on_average():
    model, x = tiny(), digits(8)
    torch.manual_seed(4)
    elbo = torch.stack([model.log_likelihood(x, k=1) for _ in range(20)]).mean(0)
    iwae = torch.stack([model.log_likelihood(x, k=20) for _ in range(5)]).mean(0)
    assert torch.isfinite(iwae).all() and float((iwae - elbo).mean()) > 0


def test_canvas_mode_returns_the_canvas_after_each_of_the_t_steps():
    model = tiny(steps=5)
    frames = model.sample_canvas(digits(3))
    assert frames.shape == (3, 5, 1, 8, 8) and frames.min() >= 0 and frames.max() <= 1
    torch.manual_seed(0)
    last = model.canvases(2)[:, -1]
    torch.manual_seed(0)
    assert torch.allclose(model.sample(2), last)


def test_dgm_sample_mode_canvas_draws_one_row_per_drawing_and_one_column_per_step():
    model = tiny(steps=5)
    cfg = OmegaConf.create({"mode": "canvas", "num_samples": 3, "split": "test"})
    image = sample.draw(model, cfg, SimpleNamespace(test=(digits(3), None)), "cpu")
    assert image.shape == (3, 3 * (8 + 2) + 2, 5 * (8 + 2) + 2)  # 8-px cells, 2-px gaps
