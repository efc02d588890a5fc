"""The README's quickstart, end to end through the installed `dgm`, on real MNIST and tiny settings."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import TINY, run_folders

pytestmark = [pytest.mark.slow, pytest.mark.real_data]


def test_train_sample_eval(dgm, tmp_path, data_root):
    dgm("train", "model=vae", "dataset=mnist", "trainer.max_steps=40", "trainer.sample_every=20", *TINY)
    (run,) = run_folders(tmp_path)
    ckpt = run / "checkpoints" / "last.pt"
    assert (run / "checkpoints" / "best.pt").exists()

    out = tmp_path / "samples.png"
    dgm("sample", f"checkpoint={ckpt}", "num_samples=16", f"out={out}")
    # 16 samples: a 4 x 4 grid of 28-pixel images with 2-pixel padding
    assert Image.open(out).size == (4 * 30 + 2, 4 * 30 + 2)
    proc = dgm("sample", f"checkpoint={run}", "mode=reconstruct", "num_samples=16")
    assert "wrote" in proc.stdout

    proc = dgm("eval", f"checkpoint={ckpt}", "estimator.k=20", "limit=50")
    report = json.loads((run / "checkpoints" / "eval.json").read_text())
    lik = report["likelihood"]
    assert math.isfinite(lik["nll_nats"]) and lik["nll_nats"] > 0
    assert lik["num_examples"] == 50
    assert lik["bits_per_dim"] == pytest.approx(lik["nll_nats"] / (784 * math.log(2)))
    assert "IWAE" in lik["estimator"] and "k=20" in lik["estimator"] and lik["estimator_settings"] == {"k": 20}
    assert lik["kind"] == "stochastic lower bound on log p"
    data = report["protocol"].pop("data")  # which data exactly: tests/test_own_data.py
    assert report["protocol"] == {
        "dataset": "mnist",
        "split": "test",
        "num_examples": 50,
        "representation": "binary",
        "binarization": "one Bernoulli draw of the intensities, seed 1234",
    }
    assert data["name"] == "mnist" and data["own"] is True and data["path"] is None
    assert data["fingerprint"] == torch.load(ckpt, weights_only=True)["data"]["fingerprints"]["test"]
    assert 0 <= lik["bound_terms"]["active_units"] <= 8
    assert "nll_nats" in proc.stdout

    events = EventAccumulator(str(run / "tensorboard")).Reload()
    scalars = set(events.Tags()["scalars"])
    assert {
        "train/elbo",
        "train/kl",
        "train/reconstruction",
        "train/loss",
        "val/elbo",
        "train/images_per_sec",
    } <= scalars
    assert "samples" in events.Tags()["images"] and "reconstructions" in events.Tags()["images"]


def test_multirun_sweep(dgm, tmp_path, data_root):
    dgm("train", "-m", "objective=elbo,iwae", "trainer.max_steps=10", *TINY)
    runs = run_folders(tmp_path)
    assert len(runs) == 2 and runs[0] != runs[1]
    assert all("multirun" in str(r) for r in runs)


@pytest.mark.heavy  # trains dgm's MNIST feature classifier: two epochs on 60,000 images
def test_gan_checkpoint_gets_sample_quality_metrics(dgm, tmp_path, data_root):
    """`dgm eval` of a model without a likelihood: by default its sample-quality metrics, FID/KID/PR/IS
    against the test split, with the real-data floor and the feature network named (trained once,
    cached in DGM_CACHE: the session's, see conftest); metrics=[nll] is refused."""
    dgm("train", "model=dcgan", "model.width=8", "trainer.max_steps=3", "trainer.progress=false")
    (run,) = run_folders(tmp_path)
    refused = dgm("eval", f"checkpoint={run}", "metrics=[nll]", check=False)
    assert refused.returncode == 2 and "no likelihood" in refused.stderr and "fid" in refused.stderr
    dgm("eval", f"checkpoint={run}", "num_samples=200")
    report = json.loads((run / "checkpoints" / "eval.json").read_text())["sample_quality"]
    assert {"fid", "kid_mean", "precision", "recall", "inception_score_mean"} <= set(report)
    assert report["num_generated"] == 200 and report["reference_split"] == "test"
    assert report["fid"] > report["fid_floor"] > 0  # 3 steps of training: far from the data
    assert "MNIST classifier" in report["feature_network"] and report["feature_network_test_accuracy"] > 0.95
    assert list(Path(os.environ["DGM_CACHE"]).rglob("mnist-*.pt")), "the feature network was not cached"
