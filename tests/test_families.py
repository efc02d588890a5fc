"""Every model config, trained a couple of steps by the one engine, then sampled and evaluated:
no family needs a special case anywhere."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_train
from dgm_cli.app import model_from_checkpoint
from dgm_cli.commands import sample, train
from dgm_cli.data import pipeline
from dgm_cli.engine import checkpoint
from dgm_cli.evaluation.likelihood import evaluate_likelihood

CONFIGS = Path(__file__).resolve().parents[1] / "dgm_cli" / "configs"
MODEL_NAMES = sorted(p.stem for p in (CONFIGS / "model").glob("*.yaml"))
QUICK = ["debug=tiny", "trainer.max_steps=2", "trainer.batch_size=8", "trainer.sample_every=1"]
#: models whose every sample and likelihood costs T network passes: a short chain keeps the test quick
QUICK_MODEL = {
    "ddpm": ["model.timesteps=10", "model.channels=8"],
    "flow_matching": ["model.channels=8", "model.sample_steps=2"],
    "row_lstm": ["trainer.sample_every=0"],
    "diagonal_bilstm": ["trainer.sample_every=0", "model.num_layers=1"],  # 55 diagonals a layer and pass
    "rbm": ["model.hidden_units=16", "model.sample_steps=5"],
    "grbm": ["model.hidden_units=16", "model.sample_steps=5"],
    "dbn": ["model.hidden_units=[16,8]", "model.sample_steps=5"],
    "dbm": ["model.hidden_units=[16,8]", "model.sample_steps=5"],
    "ebm": ["model.width=8", "model.buffer_size=64", "model.sgld_steps=2", "model.sample_steps=5"],
    "cyclegan": ["model.width=4", "model.residual_blocks=1"],
}
#: estimator settings for the likelihood check (default: k=4, which exact models ignore)
QUICK_AIS = {"ais_runs": 4, "ais_temperatures": [10, 10, 10], "reverse_burn_in": 5}
#: models that sample one pixel per (slow, sequential) LSTM pass: one sample is enough to check it
QUICK_SAMPLES = {"row_lstm": 1, "diagonal_bilstm": 1}
QUICK_ESTIMATOR = {
    "rbm": QUICK_AIS,
    "grbm": QUICK_AIS,
    "dbn": {**QUICK_AIS, "bound_samples": 2},
    "dbm": QUICK_AIS,
    "flow_matching": {"solver": "euler", "steps": 2, "probes": 1},
    "ebm": {"ais_runs": 4, "ais_temperatures": [10, 10, 10], "ais": True, "ais_pilot_runs": 2},
}  # the EBM's likelihood: on request

pytestmark = pytest.mark.real_data


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=[pytest.mark.heavy] if n == "diagonal_bilstm" else []) for n in MODEL_NAMES]
)
def test_train_sample_eval_every_model_on_mnist(name, tmp_path, data_root):
    cfg = compose_train(f"model={name}", "dataset=mnist", f"data.root={data_root}", *QUICK, *QUICK_MODEL.get(name, []))
    train.run(cfg, tmp_path)
    state = checkpoint.load(str(tmp_path))
    assert state["step"] == 2 and set(state["optimizers"]) and state["config"]["model"]["name"] == name
    model, saved, dataset = model_from_checkpoint(state, torch.device("cpu"))
    mode = model.sample_modes[0]  # "sample", or a translation model's "translate" (of the test split)
    image = sample.draw(
        model,
        OmegaConf.create(
            {
                "mode": mode,
                "num_samples": QUICK_SAMPLES.get(name, 4),
                "temperature": 1.0,
                "label": None,
                "nrow": None,
                "split": "test",
            }
        ),
        dataset,
        "cpu",
    )
    assert image.shape[0] == 3 and image.min() >= 0 and image.max() <= 1
    if model.likelihood is not None:
        x = pipeline.fixed(dataset.test[0][:6], model.data.representation)
        report = evaluate_likelihood(model, x, dataset.test[1][:6], 3, "cpu", **QUICK_ESTIMATOR.get(name, {"k": 4}))
        assert math.isfinite(report["nll_nats"]) and report["bits_per_dim"] > 0
        if model.data.representation == "binary":
            assert report["bits_per_dim"] < 2.0, "a binary pixel costs ~1 bit/dim untrained, not more"


@pytest.mark.parametrize("name", ["vae", "realnvp", "maf", "glow", "dcgan", "wgan_gp"])
def test_toy_models_train_and_plot(name, tmp_path):
    cfg = compose_train(
        f"model={name}", "dataset=eight_gaussians", "data.train_size=2000", "data.test_size=500", *QUICK
    )
    train.run(cfg, tmp_path)
    model, _, dataset = model_from_checkpoint(checkpoint.load(str(tmp_path)), torch.device("cpu"))
    image = sample.toy_plot(model, model.sample(200), dataset)
    panels = 3 if model.likelihood == "exact" else 2
    assert image.shape[-1] > image.shape[-2] * (panels - 0.5)
