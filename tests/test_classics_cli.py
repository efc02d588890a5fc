"""The classic models of issue 12 end to end through `dgm` (cli.main, in this process): `dgm train model=<name>` on
MNIST with no other model key, then `dgm sample` and `dgm eval`, whose report names the likelihood's kind."""

from __future__ import annotations

import json
import math

import pytest

from conftest import run_folders

pytestmark = [pytest.mark.slow, pytest.mark.real_data]

QUICK = ["dataset=mnist", "debug=tiny"]  # 3 steps of 16 images, a 100-image validation split

LOWER_BOUND = "stochastic lower bound on log p"
#: case -> (train arguments, eval arguments, the likelihood's kind, or None for a model scored by samples)
CASES = {
    "nice": (["model=nice"], [], "upper bound on the discrete NLL"),
    "wgan": (["model=wgan"], [], None),
    "vae_2_layers": (
        ["model=vae", "model.stochastic_layers=2", "objective=iwae", "objective.k=3"],
        ["estimator.k=7"],
        LOWER_BOUND,
    ),
    "gumbel_vae": (["model=gumbel_vae"], ["estimator.k=7"], LOWER_BOUND),
    "helmholtz": (["model=helmholtz"], ["estimator.k=7"], LOWER_BOUND),
    "helmholtz_wake_sleep": (["model=helmholtz", "objective=wake_sleep"], ["estimator.k=7"], LOWER_BOUND),
    "row_lstm": (["model=row_lstm"], [], "exact"),
    "diagonal_bilstm": (["model=diagonal_bilstm"], [], "exact"),
    "vq_vae": (["model=vq_vae", "model.prior_start=1"], [], LOWER_BOUND),  # steps 2 and 3 train the prior
    "draw": (["model=draw"], ["estimator.k=2"], LOWER_BOUND),
}
#: one sample is 784 sequential passes of the PixelRNNs (a Diagonal BiLSTM's: ~18 s on one core)
NUM_SAMPLES = {"row_lstm": 1, "diagonal_bilstm": 1}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=[pytest.mark.heavy] if n in NUM_SAMPLES else []) for n in sorted(CASES)]
)
def test_train_sample_eval(name, dgm, tmp_path, data_root):
    train_args, eval_args, kind = CASES[name]
    dgm("train", *train_args, *QUICK)
    (run,) = run_folders(tmp_path)
    out = tmp_path / "samples.png"
    dgm("sample", f"checkpoint={run}", f"num_samples={NUM_SAMPLES.get(name, 4)}", f"out={out}")
    assert out.stat().st_size > 0
    metrics = [] if kind else ["metrics=[parzen]", "num_samples=100"]  # parzen: no feature network to train
    dgm("eval", f"checkpoint={run}", "limit=20", *eval_args, *metrics)
    report = json.loads((run / "checkpoints" / "eval.json").read_text())
    if kind is None:
        numbers = [v for v in report["sample_quality"].values() if isinstance(v, float)]
        assert "likelihood" not in report and numbers and all(math.isfinite(v) for v in numbers)
        return
    lik = report["likelihood"]
    assert lik["kind"] == kind and math.isfinite(lik["nll_nats"]) and lik["num_examples"] == 20
