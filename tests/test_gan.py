"""GAN family: objectives, gradient penalty, the two-player step protocol, spectral norm,
conditioning, mode coverage, and a short run that must cover all eight Gaussians."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from conftest import phase_steps
from dgm_cli.data import toy
from dgm_cli.data.modes import mode_coverage, toy_mixture
from dgm_cli.errors import UserError
from dgm_cli.models.base import DataSpec
from dgm_cli.models.gan.dcgan import DCGAN
from dgm_cli.models.gan.losses import LOSSES, gradient_penalty
from dgm_cli.models.gan.sngan import SNGAN
from dgm_cli.models.gan.wgan_gp import WGANGP
from dgm_cli.models.objectives import OBJECTIVES
from dgm_cli.models.registry import build_model

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY_IMAGES = DataSpec((1, 8, 8), "8bit", num_classes=3, dataset="mnist")
TOY = DataSpec((2,), "continuous", dataset="eight_gaussians")
MODELS = {"dcgan": DCGAN, "wgan_gp": WGANGP, "sngan": SNGAN}


def objective(cls) -> dict:
    name = cls.objectives[0]
    return {"name": name, "gp_weight": 10.0} if LOSSES[name].penalized else {"name": name}


def tiny(cls, data: DataSpec = TINY_IMAGES, **overrides):
    config = cls.Config(**{"latent_dim": 8, "width": 4, "hidden": 16, "depth": 2, **overrides})
    return cls(config, data, objective(cls))


def adam(params, **kw):
    return torch.optim.Adam(params, **kw)


def engine_step(model, optimizers, x, y=None, step: int = 1) -> list[str]:
    """What the engine does: for each phase, zero that optimizer's grads, backward, step."""
    names = []
    for name, loss, metrics in phase_steps(model, x, y, step):
        optimizers[name].zero_grad(set_to_none=True)
        loss.backward()
        optimizers[name].step()
        names.append(name)
    return names


def images(n=6):
    return torch.randint(0, 256, (n, 1, 8, 8)).float() / 255, torch.randint(0, 3, (n,))


# --- objectives and the gradient penalty ---------------------------------------------------
class LinearCritic(nn.Module):
    """D(x) = <w, x> + b: its input gradient is w everywhere, so ||grad D|| = ||w||. Records its inputs."""

    def __init__(self, shape):
        super().__init__()
        self.w = nn.Parameter(torch.randn(shape))
        self.b = nn.Parameter(torch.zeros(()))
        self.inputs = []

    def forward(self, x, y=None):
        self.inputs.append(x.detach().clone())
        return (x * self.w).flatten(1).sum(1) + self.b


@pytest.mark.parametrize("shape", [(2,), (3, 4, 4)])
def test_gradient_penalty_of_a_linear_critic(shape):
    critic = LinearCritic(shape)
    real, fake = torch.randn(5, *shape), torch.randn(5, *shape)
    penalty = gradient_penalty(critic, real, fake)
    norm = critic.w.detach().norm()
    assert torch.allclose(penalty, (norm - 1) ** 2, rtol=1e-5)
    # differentiable in the critic's weights (create_graph): d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w||
    (grad_w,) = torch.autograd.grad(penalty, critic.w)
    assert torch.allclose(grad_w, 2 * (norm - 1) * critic.w.detach() / norm, rtol=1e-4, atol=1e-6)


def test_interpolates_use_one_mixing_weight_per_example():
    critic = LinearCritic((3, 4, 4))
    real, fake = torch.randn(64, 3, 4, 4), torch.randn(64, 3, 4, 4)
    gradient_penalty(critic, real, fake)
    (x_hat,) = critic.inputs
    # x_hat = fake + eps * (real - fake): fit one eps per example, then require an exact fit
    d, e = (real - fake).flatten(1), (x_hat - fake).flatten(1)
    eps = (d * e).sum(1, keepdim=True) / (d * d).sum(1, keepdim=True)
    assert torch.allclose(e, eps * d, atol=1e-5), "one eps per example, shared by all pixels"
    assert (eps >= 0).all() and (eps <= 1).all()
    assert eps.std() > 0.1, "eps differs between examples"


@pytest.mark.parametrize("name", list(LOSSES))
def test_losses_push_each_player_the_right_way(name):
    """Every critic loss falls as D(x) rises and D(G(z)) falls; every generator loss falls as D(G(z)) rises."""
    obj = LOSSES[name]
    lo, hi = torch.full((4,), -0.5), torch.full((4,), 0.5)
    assert obj.critic_loss(hi, lo) < obj.critic_loss(lo, lo) and obj.critic_loss(hi, lo) < obj.critic_loss(hi, hi)
    assert obj.generator_loss(hi) < obj.generator_loss(lo)


def test_minimax_saturates_where_nonsaturating_does_not():
    """Goodfellow et al. 2014, sec. 3: when D confidently rejects the fakes, log(1 - D) has a vanishing gradient."""
    d_fake = torch.tensor([-8.0], requires_grad=True)
    (g_minimax,) = torch.autograd.grad(LOSSES["minimax"].generator_loss(d_fake), d_fake)
    (g_nonsat,) = torch.autograd.grad(LOSSES["nonsaturating"].generator_loss(d_fake), d_fake)
    assert g_minimax.abs() < 1e-3 < 0.9 < g_nonsat.abs()


# --- the two players -----------------------------------------------------------------------
def test_optimizers_get_per_player_settings():
    model = tiny(DCGAN, lr_generator=1e-3, lr_critic=3e-4, betas_generator=[0.0, 0.9], betas_critic=None)
    calls = {}

    def build(params, **kw):
        params = list(params)
        calls[id(params[0])] = kw
        return adam(params, **kw)

    opts = model.configure_optimizers(build)
    assert set(opts) == {"critic", "generator"}
    g_params, c_params = set(model.generator.parameters()), set(model.critic.parameters())
    assert set(opts["generator"].param_groups[0]["params"]) == g_params
    assert set(opts["critic"].param_groups[0]["params"]) == c_params
    assert calls[id(next(model.generator.parameters()))] == {"lr": 1e-3, "betas": (0.0, 0.9)}
    assert calls[id(next(model.critic.parameters()))] == {"lr": 3e-4}  # betas: null -> the optimizer's own


@pytest.mark.parametrize("name", list(MODELS))
def test_each_step_moves_only_its_own_player(name):
    model = tiny(MODELS[name], conditional=True, n_critic=1)
    opts = model.configure_optimizers(adam)
    players = {"critic": model.critic, "generator": model.generator}
    seen = []
    for _ in range(2):
        x, y = images()
        for step, loss, metrics in phase_steps(model, x, y):
            other = "generator" if step == "critic" else "critic"
            before = {k: [p.detach().clone() for p in m.parameters()] for k, m in players.items()}
            grads = [None if p.grad is None else p.grad.clone() for p in players[other].parameters()]
            opts[step].zero_grad(set_to_none=True)
            loss.backward()
            same = [
                a is b is None or (a is not None and b is not None and torch.equal(a, b))
                for a, b in zip(grads, [p.grad for p in players[other].parameters()])
            ]
            assert all(same), f"the {step} step's backward reached the {other}"
            opts[step].step()
            after = {k: list(m.parameters()) for k, m in players.items()}
            assert all(torch.equal(a, b) for a, b in zip(before[other], after[other])), f"{step} step moved the {other}"
            assert any(not torch.equal(a, b) for a, b in zip(before[step], after[step])), f"{step} step did nothing"
            seen.append(step)
    assert seen == ["critic", "generator"] * 2


@pytest.mark.parametrize("name", list(MODELS))
def test_metrics(name):
    model = tiny(MODELS[name], n_critic=1)
    (_, _, critic), (_, _, generator) = list(phase_steps(model, *images()))
    expected = {"loss_critic", "d_real", "d_fake"}
    if name == "wgan_gp":
        expected |= {"gradient_penalty", "wasserstein"}
        assert torch.allclose(critic["wasserstein"], critic["d_real"] - critic["d_fake"])
    assert set(critic) == expected and set(generator) == {"loss_generator"}
    assert all(v.dim() == 0 and not v.requires_grad for v in {**critic, **generator}.values())
    if name == "dcgan":  # D(x) is a probability for the cross-entropy objectives
        assert 0 < critic["d_real"] < 1 and 0 < critic["d_fake"] < 1


def test_validation_scores_a_batch_norm_critic_as_in_training_and_leaves_its_statistics():
    """DCGAN's critic is trained on all-real and all-fake batches: its running statistics (what eval mode
    uses) average the two, so validation must score with each batch's own statistics, as training did."""
    model = tiny(DCGAN)
    opts = model.configure_optimizers(adam)
    for i in range(3):
        engine_step(model, opts, images()[0], step=i + 1)
    model.eval()
    norms = [m for m in model.critic.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms
    for m in norms:  # running statistics far from any batch's: eval-mode scores would differ
        m.running_mean.add_(3.0)
    buffers = {k: v.clone() for k, v in model.critic.named_buffers()}
    x = images()[0]
    torch.manual_seed(7)
    scores = model.validation_step(x, None)
    torch.manual_seed(7)
    fake = model.generator(model.latents(len(x)), None)
    training_critic = copy.deepcopy(model.critic).train()
    with torch.no_grad():
        expected = model._scores(training_critic(model.to_model_space(x)), training_critic(fake))
    assert torch.allclose(scores["d_real"], expected["d_real"]) and torch.allclose(scores["d_fake"], expected["d_fake"])
    assert all(torch.equal(v, buffers[k]) for k, v in model.critic.named_buffers()), "validation moved the statistics"
    assert not any(m.training for m in model.critic.modules()) and all(m.track_running_stats for m in norms)


def test_n_critic_five_critic_steps_per_generator_step_and_exact_resume():
    model = tiny(WGANGP)
    assert model.config.n_critic == 5
    opts = model.configure_optimizers(adam)
    steps = [engine_step(model, opts, images()[0], step=i + 1) for i in range(12)]
    assert all(s[0] == "critic" for s in steps)
    assert [i + 1 for i, s in enumerate(steps) if "generator" in s] == [5, 10]
    # the place in the cycle is the engine's step, which checkpoints hold: a run resumed after
    # 12 batches steps G after 3 more
    assert [len(model.phases(step)) for step in (13, 14, 15)] == [1, 1, 2]


def test_spectral_norm_keeps_largest_singular_value_near_one():
    model = tiny(SNGAN, conditional=True)
    sn_layers = [m for m in model.critic.modules() if hasattr(m, "parametrizations")]
    weighted = [m for m in model.critic.modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.Embedding))]
    assert len(sn_layers) == len(weighted) > 0
    with torch.no_grad():  # make the raw weights far from norm 1: SN must undo it
        for m in sn_layers:
            m.parametrizations.weight.original.mul_(3.0)
    opts = model.configure_optimizers(adam)
    for i in range(20):
        engine_step(model, opts, *images(), step=i + 1)
    model.eval()
    for m in sn_layers:
        sigma = torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2)
        raw = torch.linalg.matrix_norm(m.parametrizations.weight.original.detach().flatten(1), ord=2)
        assert abs(sigma - 1) < 0.05, f"{type(m).__name__}: sigma_max = {sigma:.3f}"
        assert abs(raw - 1) > 0.3


# --- sampling and conditioning ----------------------------------------------------------------
def test_samples_are_images_in_unit_interval_and_labels_are_checked():
    model = tiny(DCGAN).eval()
    x = model.sample(5)
    assert x.shape == (5, 1, 8, 8) and x.min() >= 0 and x.max() <= 1
    with pytest.raises(UserError):
        model.sample(2, label=1)
    conditional = tiny(SNGAN, conditional=True).eval()
    assert conditional.sample(4, label=2).shape == (4, 1, 8, 8)
    with pytest.raises(UserError):
        conditional.sample(2, label=3)
    with pytest.raises(UserError, match="model.conditional=true needs labelled image data"):  # no labels
        build_model({"name": "dcgan", "conditional": True}, objective(DCGAN), TOY)


def test_conditional_networks_use_the_label():
    model = tiny(SNGAN, conditional=True).eval()
    z = torch.randn(4, 8)
    y0, y1 = torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long)
    with torch.no_grad():  # perturb the class embeddings away from their initial identity
        for m in model.modules():
            if isinstance(m, nn.Embedding):
                m.weight.add_(0.5 * torch.randn_like(m.weight))
        assert not torch.allclose(model.generator(z, y0), model.generator(z, y1))
        x = model.to_model_space(images(4)[0])
        assert not torch.allclose(model.critic(x, y0), model.critic(x, y1))


def test_logging_samples_come_from_a_fixed_latent_batch():
    model = tiny(DCGAN).eval()
    a = model.sample_for_logging(70)  # more than the fixed batch: extended deterministically
    torch.manual_seed(123)
    b = model.sample_for_logging(70)
    assert torch.equal(a, b)
    copy = tiny(DCGAN).eval()
    copy.load_state_dict(model.state_dict())
    assert torch.equal(copy.sample_for_logging(70), a)


def test_toy_samples_and_monitor():
    model = tiny(WGANGP, TOY).eval()
    assert model.sample(7).shape == (7, 2)
    assert set(model.monitor(torch.randn(10, 2))) == {"modes_covered", "high_quality_share"}
    assert tiny(WGANGP).monitor(torch.rand(4, 1, 8, 8)) == {}


# --- mode coverage ------------------------------------------------------------------------------
@pytest.mark.parametrize("dataset", ["eight_gaussians", "twenty_five_gaussians"])
def test_mode_coverage_of_the_data_itself(dataset):
    """The data covers every mode, with 1 - exp(-9/2) = 98.9% of its points within 3 std:
    this also checks that modes.py's std is the one toy.py draws with."""
    centers, std = toy_mixture(dataset)
    r = mode_coverage(toy.TOYS[dataset](20000, torch.Generator().manual_seed(0)), centers, std)
    assert r["modes_covered"] == len(centers)
    assert abs(r["high_quality_share"] - 0.989) < 0.005


def test_mode_coverage_counts_half_the_modes_and_off_mode_noise():
    centers, std = toy_mixture("eight_gaussians")
    g = torch.Generator().manual_seed(0)

    def on_modes(modes, n):  # n points from the mixture restricted to ``modes``
        picked = centers[modes][torch.randint(len(modes), (n,), generator=g)]
        return picked + std * torch.randn(n, 2, generator=g)

    half = mode_coverage(on_modes(torch.arange(0, 8, 2), 2000), centers, std)
    assert half["modes_covered"] == 4 and half["high_quality_share"] > 0.97
    noise = torch.zeros(2000, 2)  # the ring's center: 2 = 20 std from every mode
    assert mode_coverage(noise, centers, std) == {"modes_covered": 0.0, "high_quality_share": 0.0}
    mixed = mode_coverage(torch.cat([on_modes(torch.arange(8), 1000), noise[:1000]]), centers, std)
    assert mixed["modes_covered"] == 8 and abs(mixed["high_quality_share"] - 0.5 * 0.989) < 0.02
    # a mode with fewer than min_share of the high-quality samples is not covered
    rare = mode_coverage(torch.cat([on_modes(torch.arange(7), 2000), on_modes(torch.tensor([7]), 5)]), centers, std)
    assert rare["modes_covered"] == 7


@pytest.mark.heavy
def test_short_gan_run_covers_all_eight_gaussians():
    """A small MLP GAN (non-saturating loss, Adam) driven step by step like the engine does."""
    torch.manual_seed(0)
    config = DCGAN.Config(
        latent_dim=2,
        hidden=64,
        depth=3,
        lr_generator=1e-3,
        lr_critic=1e-3,
        betas_generator=[0.5, 0.999],
        betas_critic=[0.5, 0.999],
    )
    model = DCGAN(config, TOY, {"name": "nonsaturating"})
    opts = model.configure_optimizers(adam)
    g = torch.Generator().manual_seed(0)
    for i in range(2000):
        engine_step(model, opts, toy.eight_gaussians(128, g), step=i + 1)
    result = model.monitor(None)
    assert result["modes_covered"] == 8
    assert result["high_quality_share"] > 0.5


# --- configs --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(MODELS))
def test_model_yaml_matches_the_config_dataclass(name):
    cls = MODELS[name]
    cfg = yaml.safe_load((CONFIGS / "model" / f"{name}.yaml").read_text())
    assert cfg.pop("name") == name and cfg.pop("representation") in cls.representations
    assert cfg.pop("defaults") == [
        {"override /objective@_global_.objective": cls.objectives[0]},
        {"override /optimizer@_global_.optimizer": "adam"},
    ]
    assert (CONFIGS / "model" / "optimizer" / f"{name}_adam.yaml").is_file()  # the paper's Adam settings
    defaults = dataclasses.asdict(cls.Config())
    assert cfg == defaults
    for objective_name in cls.objectives:
        assert OBJECTIVES[objective_name]().name == objective_name
