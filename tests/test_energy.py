"""Energy-based models against brute force on models small enough to enumerate."""

from __future__ import annotations

import math

import pytest
import torch

from dgm_cli.errors import UserError
from dgm_cli.evaluation.estimators import ESTIMATE, estimator_settings
from dgm_cli.evaluation.likelihood import evaluate_likelihood
from dgm_cli.models.base import DataSpec
from dgm_cli.models.energy import ais
from dgm_cli.models.energy.rbm import bernoulli_free_energy
from dgm_cli.models.registry import get_model_class

QUICK_AIS = {"ais_runs": 50, "ais_temperatures": [50, 200, 500], "reverse_burn_in": 50}


def build(name: str, shape=(1, 3, 3), objective=None, **config):
    cls = get_model_class(name)
    spec = DataSpec(shape, cls.representations[0], 0, "tiny")
    return cls(cls.Config(**config), spec, objective or {"name": cls.objectives[0]})


def randomize(model, scale: float = 1.0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return model


def bars_and_stripes(n: int = 3) -> torch.Tensor:
    """Every n x n image whose rows are all equal (stripes) or whose columns are (bars)."""
    rows = ais.all_states(n, dtype=torch.float32)
    stripes = rows[:, :, None].expand(-1, n, n)
    bars = rows[:, None, :].expand(-1, n, n)
    return torch.unique(torch.cat([stripes, bars]).reshape(-1, n * n), dim=0).view(-1, 1, n, n)


# --- RBM: the definitions by brute force ----------------------------------------------------------
def joint_log_weights(model):
    """log exp(-E(v, h)) for every (v, h), shape (2^V, 2^H), with the states."""
    W, b, c = (t.detach().double() for t in model.params())
    v, h = ais.all_states(W.shape[0]), ais.all_states(W.shape[1])
    return (v @ b)[:, None] + (h @ c)[None] + v @ W @ h.t(), v, h


def test_rbm_free_energy_and_conditionals_match_their_definitions():
    model = randomize(build("rbm", hidden_units=4)).double()
    logw, v, h = joint_log_weights(model)
    assert torch.allclose(model.free_energy(v), -torch.logsumexp(logw, 1), atol=1e-10)
    p_h_given_v = torch.softmax(logw, 1)  # (2^V, 2^H)
    assert torch.allclose(model.hidden_probs(v), p_h_given_v @ h, atol=1e-10)  # marginals of each unit
    p_v_given_h = torch.softmax(logw, 0)
    assert torch.allclose(model.visible_mean(h), p_v_given_h.t() @ v, atol=1e-10)
    # ... and the units are conditionally independent: the product of the marginals is the conditional
    ph = model.hidden_probs(v)
    product = torch.exp(h @ ph.log().t() + (1 - h) @ (1 - ph).log().t()).t()
    assert torch.allclose(product, p_h_given_v, atol=1e-10)


def test_rbm_exact_log_z_and_log_likelihood_normalise():
    model = randomize(build("rbm", hidden_units=5)).double()
    logw, v, _ = joint_log_weights(model)
    assert model.exact_log_z() == pytest.approx(float(torch.logsumexp(logw.flatten(), 0)), abs=1e-10)
    log_p = -model.free_energy(v).detach() - model.exact_log_z()
    assert float(torch.logsumexp(log_p, 0)) == pytest.approx(0.0, abs=1e-10)


def test_gibbs_kernel_leaves_the_exact_distribution_invariant():
    """T(v -> v') = Σ_h p(h|v) p(v'|h): πT = π for π ∝ exp(-F); and one sweep of the sampler draws from T."""
    model = randomize(build("rbm", shape=(1, 1, 4), hidden_units=3), seed=3).double()
    logw, v, h = joint_log_weights(model)
    pi = torch.softmax(-model.free_energy(v), 0)
    p_h = torch.softmax(logw, 1)
    pv = model.visible_mean(h)  # (2^H, V)
    p_v_given_h = torch.exp(v @ pv.log().t() + (1 - v) @ (1 - pv).log().t()).t()  # (2^H, 2^V)
    T = p_h @ p_v_given_h
    assert torch.allclose(T.sum(1), torch.ones(len(v), dtype=torch.float64))
    assert torch.allclose(pi @ T, pi, atol=1e-12)
    # the sampler: 200,000 sweeps from one state, histogram against T's row
    torch.manual_seed(0)
    start = v[5].expand(200_000, -1)
    drawn = model.gibbs(start, 1)
    index = (drawn * 2 ** torch.arange(4, dtype=torch.float64)).sum(1).long()
    freq = torch.bincount(index, minlength=16).double() / len(index)
    se = torch.sqrt(T[5] * (1 - T[5]) / len(index)) + 1e-4
    assert torch.all((freq - T[5]).abs() < 5 * se), (freq, T[5])


def test_centering_offsets_do_not_change_the_model():
    model = randomize(build("rbm", hidden_units=4, centering=True)).double()
    _, v, _ = joint_log_weights(model)
    before, log_z = model.free_energy(v), model.exact_log_z()
    model.move_offsets(torch.rand(9, dtype=torch.float64), torch.rand(4, dtype=torch.float64))
    assert torch.allclose(model.free_energy(v), before, atol=1e-10)
    assert model.exact_log_z() == pytest.approx(log_z, abs=1e-10)


@torch.no_grad()
def exact_mean_log_likelihood(model, data) -> float:
    return float((-model.free_energy(data.reshape(len(data), -1)) - model.exact_log_z()).mean())


def train(model, data, steps: int, lr: float = 0.1, batch: int = 14, seed: int = 0):
    """Drive the model as the engine does: initialize, then per batch forward -> backward -> step ->
    after_step."""
    torch.manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.5)
    model.initialize(data, None)
    for _ in range(steps):
        x = data[torch.randint(len(data), (batch,))]
        loss, metrics = model(x, None, "model")
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.after_step("model")
    return metrics


@pytest.mark.parametrize(
    "objective,config,lr",
    [
        ({"name": "cd", "k": 1}, {}, 0.5),
        ({"name": "pcd", "k": 1, "chains": 20}, {}, 0.2),  # PCD wants a smaller rate (Tieleman 2008)
        ({"name": "cd", "k": 1}, {"centering": True, "centering_rate": 0.05}, 0.5),
        ({"name": "cd", "k": 1}, {"sparsity_cost": 0.01}, 0.5),
    ],
)
def test_contrastive_divergence_increases_the_exact_log_likelihood(objective, config, lr):
    """3x3 bars and stripes (14 patterns): training raises the exact mean log-likelihood of the data
    by far (uniform is 9 ln 2 = 6.24 nats per pattern; the data's entropy is ln 14 = 2.64)."""
    data = bars_and_stripes(3)
    model = build("rbm", objective=objective, hidden_units=8, **config)
    model.initialize(data, None)
    before = exact_mean_log_likelihood(model, data)
    metrics = train(model, data, 600, lr=lr)
    after = exact_mean_log_likelihood(model, data)
    assert after > before + 0.8, (before, after)
    assert {"free_energy_data", "reconstruction_error", "hidden_mean"} <= set(metrics)
    if objective["name"] == "pcd":
        assert "chains" in model.state_dict() and bool(model.chains_started)


def test_rbm_validation_reports_the_gap_and_the_exact_nll():
    data = bars_and_stripes(3)
    model = build("rbm", hidden_units=8)
    train(model, data, 20)
    metrics = model.validation_step(data, None)
    assert metrics["exact_nll"] == pytest.approx(-exact_mean_log_likelihood(model, data), abs=1e-4)
    assert metrics["loss"] == metrics["exact_nll"]
    assert "free_energy_gap" in metrics and math.isfinite(float(metrics["free_energy_gap"]))


def test_rbm_eval_reports_ais_with_its_own_error_and_the_exact_value():
    data = bars_and_stripes(3)
    model = build("rbm", hidden_units=8)
    train(model, data, 500)
    settings = estimator_settings(model, QUICK_AIS)
    torch.manual_seed(0)
    report = evaluate_likelihood(model, data, None, 7, "cpu", **settings)
    prepared = report["prepared"]
    assert report["kind"] == ESTIMATE and "AIS" in report["estimator"]
    assert prepared["exact_log_z"] == pytest.approx(model.exact_log_z())
    assert prepared["log_z_minus_3sigma"] <= prepared["exact_log_z"] <= prepared["log_z_plus_3sigma"]
    assert report["shared_error_nats"] == prepared.get("log_z_stderr", report["shared_error_nats"])
    exact_nll = -exact_mean_log_likelihood(model, data)
    # the reported NLL is the exact one moved by the AIS error of log Z, and no further
    assert report["nll_nats"] == pytest.approx(exact_nll + prepared["log_z"] - prepared["exact_log_z"], abs=1e-4)
    assert abs(report["nll_nats"] - exact_nll) <= 3 * report["shared_error_nats"] + 1e-6
    assert len(prepared["log_z_bracket"]) == 2


def test_rbm_refuses_what_does_not_fit():
    with pytest.raises(UserError, match="takes only"):
        build("rbm", objective={"name": "cd", "k": 1, "chains": 5})
    with pytest.raises(UserError, match="estimator.k"):
        estimator_settings(build("rbm", hidden_units=4), {"k": 5})
    with pytest.raises(UserError, match="ais_runs"):
        estimator_settings(build("rbm", hidden_units=4), {"ais_runs": 1})
    with pytest.raises(UserError, match="temperature"):
        build("rbm", hidden_units=4).sample(2, temperature=0.5)


def test_rbm_samples_and_reconstructions_are_images():
    model = build("rbm", hidden_units=4, sample_steps=3)
    assert model.sample(5).shape == (5, 1, 3, 3)
    x = bars_and_stripes(3)[:8]
    assert model.sample_reconstruct(x).shape == (2, 8, 1, 3, 3)  # rows: inputs, reconstructions


@pytest.mark.parametrize(
    "name,objective,chains",
    [("rbm", {"name": "pcd", "k": 1, "chains": 12}, True), ("dbn", {"name": "cd", "k": 1}, False)],
)
def test_training_logs_the_weights_as_filter_images(name, objective, chains, tmp_path):
    """A tiny run through the engine writes the first layer's weights as a "filters" image (one cell
    per hidden unit, each unit's weights scaled to [0, 1]) beside the sample grid, which for PCD shows
    the persistent chains' current states."""
    import numpy as np
    from omegaconf import OmegaConf
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from dgm_cli.data import pipeline
    from dgm_cli.engine import loop
    from dgm_cli.settings.schema import TrainConfig

    path = tmp_path / "bars.npz"
    np.savez(path, x=np.tile(bars_and_stripes(3).numpy().astype(np.uint8) * 255, (10, 1, 1, 1))[:, 0])
    cfg = OmegaConf.merge(
        OmegaConf.structured(TrainConfig),
        {
            "model": {"name": name},
            "objective": objective,
            "optimizer": {"_target_": "torch.optim.SGD", "name": "sgd", "lr": 0.1},
            "data": {"name": "npz", "path": str(path), "representation": "binary"},
            "trainer": {
                "batch_size": 10,
                "max_steps": 4,
                "log_every": 2,
                "progress": False,
                "sample_every": 2,
                "num_samples": 9,
            },
        },
    )
    dataset = pipeline.load(cfg.data)
    sizes = {"hidden_units": [5, 3], "steps_per_layer": 2} if name == "dbn" else {"hidden_units": 5}
    model = build(name, objective=objective, sample_steps=2, **sizes)
    loop.build(cfg, model, dataset, tmp_path, torch.device("cpu")).fit()
    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    assert {"samples", "filters"} <= set(events.Tags()["images"])
    filters = model.images(9)["filters"]
    first = model.layers[0].W if name == "dbn" else model.W
    assert filters.shape == (5, 1, 3, 3) and torch.allclose(filters.amin((1, 2, 3)), torch.zeros(5))
    assert torch.allclose(
        filters[2].flatten() * (first[:, 2].max() - first[:, 2].min()) + first[:, 2].min(),
        first[:, 2].detach(),
        atol=1e-6,
    )
    assert events.Images("filters")[0].step == 2
    if chains:
        assert torch.equal(model.sample_for_logging(9), model.chains[:9].view(9, 1, 3, 3))


# --- DBN -----------------------------------------------------------------------------------------
def test_dbn_bound_is_below_its_exact_log_likelihood():
    """Tiny DBN (6 visible, hidden [4, 3]): the variational bound, enumerated over h1 and estimated
    from samples, lies below the exact log p(v) = log Σ_h1 p(v|h1) p_top(h1) of every v."""
    from dgm_cli.models.energy.dbn import bernoulli_log_prob

    model = randomize(build("dbn", shape=(1, 2, 3), hidden_units=[4, 3]), scale=1.5, seed=4).double()
    bottom, top = model.layers
    log_z = model.exact_log_z()
    v, h1 = ais.all_states(6), ais.all_states(4)
    with torch.no_grad():
        log_p_top = -bernoulli_free_energy(h1, *top.params()) - log_z  # (16,)
        log_p_v_given_h = bernoulli_log_prob(
            v[:, None].expand(-1, 16, -1), (h1 @ bottom.W.t() + bottom.b).expand(64, -1, -1)
        )
        exact = torch.logsumexp(log_p_v_given_h + log_p_top, 1)
        assert float(torch.logsumexp(exact, 0)) == pytest.approx(0.0, abs=1e-10)  # a normalised p(v)
        log_q = bernoulli_log_prob(h1.expand(64, -1, -1), (v @ bottom.W + bottom.c)[:, None].expand(-1, 16, -1))
        elbo = (log_q.exp() * (log_p_v_given_h + log_p_top - log_q)).sum(1)
        assert torch.all(elbo < exact)
        torch.manual_seed(0)
        sampled = model.unnormalized_log_prob(v.view(-1, 1, 2, 3), bound_samples=4000) - log_z
    assert torch.allclose(sampled, elbo, atol=0.1)


def test_dbn_trains_its_layers_greedily():
    data = bars_and_stripes(3)
    model = build("dbn", hidden_units=[6, 4], steps_per_layer=5)
    opts = model.configure_optimizers(lambda p, **_: torch.optim.SGD(p, lr=0.1))
    assert set(opts) == {"layer1", "layer2"}
    assert [model.phases(s) for s in (1, 5, 6, 100)] == [("layer1",), ("layer1",), ("layer2",), ("layer2",)]
    before = [layer.W.detach().clone() for layer in model.layers]
    loss, metrics = model(data, None, "layer2")
    opts["layer2"].zero_grad(), loss.backward(), opts["layer2"].step()
    assert torch.equal(model.layers[0].W, before[0]) and not torch.equal(model.layers[1].W, before[1])
    assert "layer2_reconstruction_error" in metrics and model.data_count == len(data)
    assert model.sample(3).shape == (3, 1, 3, 3)


# --- DBM -----------------------------------------------------------------------------------------
def test_dbm_is_an_rbm_over_v_and_h2_and_its_bound_is_below_the_exact():
    """Tiny DBM (5 visible, hidden [4, 3]): log Z from the joint view equals the triple sum; the
    mean-field bound is below the exact log p(v) = log Σ_h2 exp(-F(v, h2)) - log Z for every v."""
    model = randomize(build("dbm", shape=(1, 1, 5), hidden_units=[4, 3]), scale=1.5, seed=5).double()
    v, h1, h2 = ais.all_states(5), ais.all_states(4), ais.all_states(3)
    with torch.no_grad():
        e = model.energy(
            v[:, None, None].expand(-1, 16, 8, -1),
            h1[None, :, None].expand(32, -1, 8, -1),
            h2[None, None].expand(32, 16, -1, -1),
        )
        log_z = model.exact_log_z()
        assert log_z == pytest.approx(float(torch.logsumexp(-e.flatten(), 0)), abs=1e-9)
        x = torch.cat([v[:, None].expand(-1, 8, -1), h2[None].expand(32, -1, -1)], -1)
        exact = torch.logsumexp(-bernoulli_free_energy(x, *model.joint()), 1) - log_z
        assert torch.allclose(exact, torch.logsumexp(-e.flatten(1), 1) - log_z)
        bound = model.unnormalized_log_prob(v.view(-1, 1, 1, 5)) - log_z
    assert torch.all(bound <= exact + 1e-9) and float((exact - bound).mean()) > 0


def test_dbm_pcd_training_raises_its_exact_log_likelihood():
    data = bars_and_stripes(3)
    torch.manual_seed(0)
    model = build("dbm", objective={"name": "pcd", "k": 1, "chains": 20}, hidden_units=[8, 4])
    model.initialize(data, None)

    def exact_mean():
        with torch.no_grad():
            h2 = ais.all_states(4, dtype=torch.float32)
            v = data.view(len(data), -1)
            x = torch.cat([v[:, None].expand(-1, 16, -1), h2[None].expand(len(v), -1, -1)], -1)
            return float((torch.logsumexp(-bernoulli_free_energy(x, *model.joint()), 1) - model.exact_log_z()).mean())

    before = exact_mean()
    train(model, data, 400, lr=0.2)
    assert exact_mean() > before + 0.25
    assert model.sample(2).shape == (2, 1, 3, 3) and bool(model.chains_started)


def dbm_exact_and_bound(model, data) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example: the exact log p(v) (h1 and h2 summed out) and the mean-field bound, both with the
    enumerated log Z."""
    with torch.no_grad():
        h2 = ais.all_states(model.c2.numel(), dtype=torch.float32)
        v = data.view(len(data), -1)
        x = torch.cat([v[:, None].expand(-1, len(h2), -1), h2[None].expand(len(v), -1, -1)], -1)
        log_z = model.exact_log_z()
        exact = torch.logsumexp(-bernoulli_free_energy(x, *model.joint()), 1) - log_z
        return exact, model.unnormalized_log_prob(data) - log_z


def test_dbm_pretraining_composes_two_doubled_rbms_into_a_better_start():
    """Greedy pretraining (Salakhutdinov & Hinton 2009): two phases with their own optimizers, the first
    RBM's p(h1|v) = σ(2 v W1 + c1), h1's biases averaged at composition; the composed DBM's mean-field
    bound stays below its exact log-likelihood and is far better than at the random start."""
    data = bars_and_stripes(3)
    torch.manual_seed(0)
    model = build("dbm", objective={"name": "pcd", "k": 1, "chains": 20}, hidden_units=[8, 4], pretrain_steps=400)
    opts = model.configure_optimizers(lambda p, **kw: torch.optim.SGD(p, lr=kw.get("lr", 0.1), momentum=0.5))
    assert set(opts) == {"pretrain1", "pretrain2", "model"}
    assert [model.phases(s) for s in (1, 400, 401, 800, 801)] == [("pretrain1",)] * 2 + [("pretrain2",)] * 2 + [
        ("model",)
    ]
    model.initialize(data, None)
    _, start = dbm_exact_and_bound(model, data)
    for step in range(1, 801):
        (phase,) = model.phases(step)
        loss, metrics = model(data[torch.randint(len(data), (14,))], None, phase)
        opts[phase].zero_grad(), loss.backward(), opts[phase].step()
    assert f"{phase}_reconstruction_error" in metrics and not bool(model.composed)
    W1 = model.W1.detach().clone()
    with torch.no_grad():  # the first RBM's bottom-up pass sees v twice
        first = model.pretrain_rbm("pretrain1")
        v = data.view(len(data), -1)
        assert torch.allclose(
            torch.sigmoid(torch.cat([v, v], 1) @ first[0] + first[2]), torch.sigmoid(2 * v @ model.W1 + model.c1)
        )
        c1, b2 = model.c1.clone(), model.pretrain_b2.clone()
    model(data, None, "model")  # the joint training's first batch composes the DBM, once
    assert bool(model.composed) and torch.equal(model.W1, W1)
    assert torch.allclose(model.c1, (c1 + b2) / 2)
    exact, bound = dbm_exact_and_bound(model, data)
    assert torch.all(bound <= exact + 1e-5)
    assert float(bound.mean()) > float(start.mean()) + 1.0, (
        float(start.mean()),
        float(bound.mean()),
        float(exact.mean()),
    )


# --- through the CLI -------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.real_data
@pytest.mark.parametrize(
    "model_args",
    [
        ["model=rbm", "objective=pcd", "objective.chains=16", "model.hidden_units=10"],
        ["model=ebm", "model.network=mlp", "model.hidden=32", "model.buffer_size=64", "model.sgld_steps=3"],
        # resumed in the middle of the second pretraining phase; composed once the joint training starts
        ["model=dbm", "model.hidden_units=[10,5]", "model.pretrain_steps=15", "objective.chains=16"],
    ],
)
def test_resume_restores_chains_and_buffers_exactly(model_args, dgm, tmp_path, data_root):
    """Two stages (20 steps, then resumed to 40) end where 40 uninterrupted steps end: parameters,
    persistent chains, data statistics and every other buffer."""
    from conftest import run_folders

    args = [
        *model_args,
        "dataset=mnist",
        "trainer.batch_size=32",
        "data.val_size=500",
        "trainer.val_every=10",
        "trainer.sample_every=0",
        "trainer.ckpt_every=10",
        "trainer.device=cpu",
        "trainer.progress=false",
        "seed=2",
    ]
    straight, staged = tmp_path / "straight", tmp_path / "staged"
    straight.mkdir(), staged.mkdir()
    dgm("train", *args, "trainer.max_steps=40", cwd=straight)
    dgm("train", *args, "trainer.max_steps=20", cwd=staged)
    (run,) = run_folders(staged)
    dgm("train", f"resume={run}", "trainer.max_steps=40", cwd=staged)
    a = torch.load(run_folders(straight)[0] / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 40
    assert set(a["model"]) == set(b["model"])
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), f"{name} differs after resume"
    if "chains" in b["model"]:
        assert bool(b["model"]["chains_started"]) and b["model"]["chains"].shape[0] == 16
    if "composed" in b["model"]:
        assert bool(b["model"]["composed"]) and set(b["optimizers"]) == {"pretrain1", "pretrain2", "model"}


# --- GRBM ----------------------------------------------------------------------------------------
def grbm(V: int, H: int, seed: int = 0, **config):
    model = build("grbm", shape=(V,), hidden_units=H, **config).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.W.copy_(torch.randn(V, H, generator=g, dtype=torch.float64) * 0.1)
        model.b.copy_(torch.rand(V, generator=g, dtype=torch.float64))
        model.c.copy_(torch.randn(H, generator=g, dtype=torch.float64))
    return model


def test_grbm_free_energy_and_log_z_match_brute_force():
    """2 visible, 3 hidden: F(v) = -log Σ_h exp(-E(v,h)) and Z = ∫ exp(-F) on a fine grid."""
    model = grbm(2, 3, sigma=0.3, learn_sigma=True)
    W, b, c, var = model.W.detach(), model.b.detach(), model.c.detach(), model.sigma().detach() ** 2
    grid = torch.linspace(-2.5, 3.5, 801, dtype=torch.float64)
    v = torch.cartesian_prod(grid, grid)
    h = ais.all_states(3)
    energy = ((v - b) ** 2 / (2 * var)).sum(-1)[:, None] - (h @ c)[None] - (v / var) @ W @ h.t()
    with torch.no_grad():
        assert torch.allclose(model.free_energy(v), -torch.logsumexp(-energy, 1), atol=1e-10)
        cell = float(grid[1] - grid[0]) ** 2
        quadrature = float(torch.logsumexp(-model.free_energy(v), 0)) + math.log(cell)
    assert model.exact_log_z() == pytest.approx(quadrature, abs=1e-4)


def test_grbm_ais_is_within_its_3_sigma_of_the_exact_log_z():
    model = grbm(6, 5, seed=1)
    with torch.no_grad():
        model.data_mean.fill_(0.4), model.data_sq_mean.fill_(0.25), model.data_count.fill_(1000)
    torch.manual_seed(0)
    est = ais.forward_ais(model.ais_path(), 100, ais.scaled_schedule(2000))
    assert est.lower <= model.exact_log_z() <= est.upper, (est, model.exact_log_z())


# --- deep EBM ------------------------------------------------------------------------------------
class Quadratic(torch.nn.Module):
    def forward(self, x):
        return 0.5 * (x**2).flatten(1).sum(1, keepdim=True)


def test_langevin_reaches_the_stationary_law_of_its_update():
    """E(x) = |x|²/2: x <- (1-α) x + σ ε is an AR(1) process with variance σ²/(1-(1-α)²)."""
    model = build("ebm", shape=(2,), sgld_step_size=0.1, sgld_noise=0.3)
    model.energy = Quadratic()
    torch.manual_seed(0)
    x = model.langevin(torch.full((20000, 2), 3.0), 200)
    assert x.mean().abs() < 0.02
    assert float(x.var()) == pytest.approx(0.09 / (1 - 0.81), rel=0.05)


def test_ebm_replay_buffer_is_state_and_takes_the_samples():
    model = build("ebm", shape=(1, 8, 8), buffer_size=32, sgld_steps=2, width=4)
    before = model.replay.clone()
    torch.manual_seed(0)
    loss, metrics = model(torch.rand(16, 1, 8, 8), None, "model")
    loss.backward()
    assert "replay" in model.state_dict() and not torch.equal(before, model.replay)
    assert int((before != model.replay).flatten(1).any(1).sum()) <= 16  # only the drawn slots changed
    assert {"energy_data", "energy_model", "energy_penalty"} <= set(metrics) and math.isfinite(loss.item())
    assert all(p.grad is not None for p in model.energy.parameters())
    assert model.sample(3).shape == (3, 1, 8, 8)


def test_ebm_divergence_stops_with_a_non_finite_loss_and_advice():
    model = build("ebm", shape=(2,), divergence_energy=10.0, sgld_steps=1)
    loss, metrics = model(torch.randn(8, 2), None, "model")
    assert math.isfinite(loss.item()) and float(metrics["energy_diverged"]) == 0
    with torch.no_grad():
        model.energy[-1].bias.fill_(1e3)
    loss, metrics = model(torch.randn(8, 2), None, "model")
    assert not math.isfinite(loss.item()) and float(metrics["energy_diverged"]) == 1
    advice = model.non_finite_advice()  # what the engine adds to its message when it stops
    assert "energy_l2" in advice and "lower optimizer.lr" in advice


def test_an_ebm_training_step_reads_nothing_back_from_the_device():
    from host_sync import no_host_reads

    model = build("ebm", shape=(1, 8, 8), width=4, buffer_size=32, sgld_steps=2)
    x = torch.rand(8, 1, 8, 8)
    with no_host_reads():
        model(x, None, "model")


class DiagonalQuadratic(torch.nn.Module):
    """E(x) = Σ_i a_i (x_i - m_i)² / 2 + c."""

    def __init__(self, a, m, c=0.0):
        super().__init__()
        self.a, self.m, self.c = torch.tensor(a), torch.tensor(m), c

    def forward(self, x):
        return (0.5 * self.a * (x.flatten(1) - self.m) ** 2).sum(1, keepdim=True) + self.c


EBM_AIS = {"ais": True, "ais_runs": 100, "ais_temperatures": [50, 100, 100]}


def test_ebm_ais_estimates_a_gaussian_energys_log_z_within_its_error():
    """Continuous 2-D data, E a quadratic: exp(-E) is an unnormalised Gaussian, log Z = log 2π - ½ log det A.
    The base (a Gaussian with the data's moments) is far from it; forward AIS with MALA finds log Z within
    its reported ±3σ, and dgm eval's report is an estimate with its own error."""
    cls = get_model_class("ebm")
    model = cls(cls.Config(network="mlp"), DataSpec((2,), "continuous", 0, "tiny"), {"name": "ml"})
    model.energy = DiagonalQuadratic([4.0, 0.5], [1.0, -2.0])
    exact = math.log(2 * math.pi) - 0.5 * math.log(2.0)
    torch.manual_seed(0)
    x = torch.randn(500, 2) * 0.5  # evaluation data: the base's moments come from them
    settings = estimator_settings(model, EBM_AIS)
    report = evaluate_likelihood(model, x, None, 250, "cpu", **settings)
    prepared = report["prepared"]
    assert prepared["log_z_minus_3sigma"] <= exact <= prepared["log_z_plus_3sigma"], prepared
    assert abs(prepared["log_z"] - exact) < 0.15 and 0.2 < prepared["mala_acceptance_mean"] < 0.95
    assert report["kind"] == ESTIMATE and "AIS" in report["estimator"] and "MALA" in report["estimator"]
    true_nll = float(-(-model.energy(x).squeeze(1) - exact).mean())
    assert report["nll_nats"] == pytest.approx(true_nll + prepared["log_z"] - exact, abs=1e-4)


def test_ebm_ais_on_images_estimates_the_box_integral_and_the_8bit_bound():
    """Images live on [-1, 1]^D (uniform base): log Z of a quadratic energy there is a product of erf
    terms; a constant energy is the uniform density, whose 8-bit bound is exactly D ln 256 nats."""
    model = build("ebm", shape=(1, 1, 2), network="mlp")
    a, m = [6.0, 1.5], [0.5, -0.3]
    model.energy = DiagonalQuadratic(a, m)
    exact = sum(
        0.5 * math.log(2 * math.pi / ai)
        + math.log(0.5 * (math.erf((1 - mi) * math.sqrt(ai / 2)) - math.erf((-1 - mi) * math.sqrt(ai / 2))))
        for ai, mi in zip(a, m)
    )
    torch.manual_seed(1)
    est = model.prepare_eval(None, None, **estimator_settings(model, EBM_AIS))
    assert est["log_z_minus_3sigma"] <= exact <= est["log_z_plus_3sigma"], (est, exact)
    model.energy = DiagonalQuadratic([0.0, 0.0], [0.0, 0.0], c=3.0)
    k = torch.randint(256, (50, 1, 1, 2)).float() / 255
    report = evaluate_likelihood(model, k, None, 25, "cpu", **estimator_settings(model, EBM_AIS))
    assert report["nll_nats"] == pytest.approx(2 * math.log(256), abs=1e-9) and report["bits_per_dim"] == pytest.approx(
        8
    )
    assert report["shared_error_nats"] == pytest.approx(0.0, abs=1e-12)  # every AIS weight equal


@pytest.mark.parametrize("shape,network", [((1, 4, 4), "conv"), ((2,), "mlp")])
def test_ebm_ais_makes_its_tensors_where_the_energy_is(shape, network):
    """Every tensor AIS feeds the energy follows the energy's parameters: shown with float64 weights, which
    a float32 tensor made on the default device and dtype (as the base samples were, so a CUDA model got
    CPU ones) does not multiply with."""
    model = build("ebm", shape=shape, network=network, width=4, hidden=8).double()
    settings = {"ais": True, "ais_runs": 4, "ais_temperatures": [5, 5, 5], "ais_pilot_runs": 2}
    x = torch.rand(6, *shape)  # the evaluation data, float32 as dgm eval reads it
    log_p = model.log_likelihood(x.double(), None, **estimator_settings(model, settings))
    assert log_p.dtype == torch.float64 and torch.isfinite(log_p).all()
    model.prepare_eval(x, None, **estimator_settings(model, settings))  # the data's moments, cast


def test_ebm_eval_reports_sample_metrics_unless_ais_is_asked():
    from dgm_cli.commands.evaluate import resolve_metrics
    from dgm_cli.evaluation import samples

    model = build("ebm", shape=(1, 8, 8), width=4)
    assert resolve_metrics(None, model, estimator_settings(model, {})) == (False, samples.default_metrics(model))
    assert resolve_metrics(None, model, estimator_settings(model, {"ais": True})) == (True, [])
    with pytest.raises(UserError, match="estimator.ais=true"):
        resolve_metrics(["nll"], model, estimator_settings(model, {}))
    with pytest.raises(UserError, match="estimator.ais=true"):
        model.log_likelihood(torch.rand(2, 1, 8, 8), **estimator_settings(model, {}))
    with pytest.raises(UserError, match="ais_mcmc_steps"):
        estimator_settings(model, {"ais_mcmc_steps": 0})


@pytest.mark.parametrize(
    "name,config",
    [
        ("rbm", {"hidden_units": 4}),
        ("dbn", {"hidden_units": [4, 3]}),
        ("dbm", {"hidden_units": [4, 3], "pretrain_steps": 1}),
    ],
)
def test_persistent_chains_after_their_start_read_nothing_back_from_the_device(name, config):
    """Flags that are set once (chains started, layers composed, the reference set full) are read from
    the device until they are set, then remembered: later steps do not wait for the device."""
    from host_sync import no_host_reads

    model = build(name, objective={"name": "pcd", "k": 1, "chains": 8}, **config)
    v = torch.bernoulli(torch.full((600, 1, 3, 3), 0.5))  # more than the 500-example reference set
    phase = model.phases(10)[0]
    for batch in v.split(200):  # starts the chains (and composes the DBM), fills the reference set
        model.training_loss(batch, None, phase)
    if name != "dbn":  # (a DBN keeps its reference set at its top layer)
        assert int(model.reference_filled) == 500 and torch.equal(model.reference, v[:500].flatten(1))
    with no_host_reads():
        model.training_loss(v[:8], None, phase)
    model.load_state_dict(model.state_dict())  # a loaded state is read again
    assert not hasattr(model.chains_started if name != "dbn" else model.chains_started1, "_known_set")
