"""WGAN with weight clipping (Arjovsky et al. 2017): every critic weight lies in [-c, c] after each
critic update, the generator is never clipped, and the paper's settings are the defaults."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import yaml

from dgm_cli.errors import UserError
from dgm_cli.models.gan.wgan import WGAN
from dgm_cli.models.objectives import OBJECTIVES
from test_gan import TINY_IMAGES, TOY, adam, engine_step, images

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def tiny(data=TINY_IMAGES, clip_value=0.01, **overrides):
    config = WGAN.Config(**{"latent_dim": 8, "width": 4, "hidden": 16, "depth": 2, **overrides})
    return WGAN(config, data, {"name": "wgan", "clip_value": clip_value})


@pytest.mark.parametrize("data", [TINY_IMAGES, TOY], ids=["image", "toy"])
def test_critic_weights_are_clipped_after_each_critic_step_and_the_generator_never(data):
    torch.manual_seed(0)
    model = tiny(data, clip_value=0.01)
    critic_max = max(p.abs().max() for p in model.critic.parameters())
    assert critic_max > 0.01  # the initial weights are not clipped yet
    opts = model.configure_optimizers(lambda params, **kw: torch.optim.RMSprop(params, lr=0.5))  # big steps
    x = images()[0] if data.is_image else torch.randn(6, 2)
    for step in range(1, 6):
        phases = engine_step(model, opts, x, step=step)
        assert max(p.abs().max() for p in model.critic.parameters()) <= 0.01
    assert phases == ["critic", "generator"]
    assert max(p.abs().max() for p in model.generator.parameters()) > 0.01
    # many weights sit on the bounds after such steps: the clipping did something
    on_bound = torch.cat([(p.abs() == 0.01).flatten() for p in model.critic.parameters()])
    assert on_bound.float().mean() > 0.25


def test_metrics_include_the_wasserstein_estimate():
    model = tiny(n_critic=1)
    opts = model.configure_optimizers(adam)
    from conftest import phase_steps

    (_, _, critic), (_, _, generator) = list(phase_steps(model, *images()))
    torch.testing.assert_close(critic["wasserstein"], critic["d_real"] - critic["d_fake"])
    assert set(critic) == {"loss_critic", "d_real", "d_fake", "wasserstein"} and set(generator) == {"loss_generator"}
    torch.testing.assert_close(critic["loss_critic"], -critic["wasserstein"])  # no penalty term
    assert opts  # both players have optimizers


def test_bad_objective_settings_are_refused():
    with pytest.raises(UserError, match="clip_value"):
        tiny(clip_value=0.0)
    with pytest.raises(UserError, match="gp_weight"):
        WGAN(WGAN.Config(), TINY_IMAGES, {"name": "wgan", "gp_weight": 10.0})


def test_configs_hold_the_papers_settings():
    cfg = yaml.safe_load((CONFIGS / "model" / "wgan.yaml").read_text())
    assert cfg.pop("name") == "wgan" and cfg.pop("representation") in WGAN.representations
    assert cfg.pop("defaults") == [
        {"override /objective@_global_.objective": "wgan"},
        {"override /optimizer@_global_.optimizer": "rmsprop"},
    ]
    assert WGAN.Config(**cfg) == WGAN.Config() and WGAN.Config().n_critic == 5
    assert dataclasses.asdict(OBJECTIVES["wgan"]()) == {"name": "wgan", "clip_value": 0.01}
    opt = yaml.safe_load((CONFIGS / "model" / "optimizer" / "wgan_rmsprop.yaml").read_text())["optimizer"]
    assert float(opt["lr"]) == 5e-5 and opt["momentum"] == 0.0
    # the toy preset differs from WGAN-GP's only in what makes the two methods differ
    wgan = yaml.safe_load((CONFIGS / "experiment" / "wgan_eight_gaussians.yaml").read_text())
    gp = yaml.safe_load((CONFIGS / "experiment" / "gan_eight_gaussians.yaml").read_text())
    assert wgan["model"] == gp["model"] and wgan["trainer"] == gp["trainer"] and wgan["data"] == gp["data"]
