"""Bad input: a one-paragraph message naming what was wrong and what is allowed, exit status 2,
no traceback, and nothing already written is touched."""
from __future__ import annotations

import hashlib

import pytest
import torch

from conftest import run_dgm

TOY = ["dataset=moons", "model.hidden=[16]", "model.latent_dim=2", "trainer.batch_size=64",
       "data.train_size=2000", "data.test_size=500", "data.val_size=200", "trainer.progress=false"]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """A finished tiny run on a 2-D toy (no real data needed)."""
    folder = tmp_path_factory.mktemp("toy")
    run_dgm("train", *TOY, "trainer.max_steps=5", cwd=folder)
    (ckpt,) = folder.glob("outputs/train/*/*/checkpoints/last.pt")
    return ckpt


def refused(proc, *needles: str) -> str:
    err = proc.stderr
    assert proc.returncode == 2, f"exit {proc.returncode}, expected 2\n{proc.stdout}\n{err}"
    assert "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, f"not one paragraph:\n{err}"
    for needle in needles:
        assert needle in err, f"{needle!r} not in: {err}"
    return err


@pytest.mark.parametrize(
    "override, needles",
    [
        ("model=vea", ["model/vea", "conv_vae", "vae"]),
        ("optimizer.lr=-1", ["optimizer.lr", "> 0"]),
        ("trainer.batch_size=0", ["trainer.batch_size", "> 0"]),
        ("trainer.foo=1", ["trainer.foo", "max_epochs"]),
        ("trainer.batch_size=abc", ["trainer.batch_size", "Integer"]),
        ("trainer.device=tpu", ["trainer.device", "cuda"]),
        ("optimizer=adamx", ["optimizer/adamx", "adamw"]),
        ("objective=hinge", ["objective=hinge", "elbo", "iwae"]),
        ("model.latent_dim=abc", ["model.latent_dim", "latent_dim"]),
        ("data.representation=rgb", ["data.representation", "binary"]),
    ],
)
def test_bad_train_config_is_refused(dgm, override, needles):
    refused(dgm("train", *TOY, "trainer.max_steps=1", override, check=False), *needles)


def test_missing_data_names_the_files(dgm, tmp_path):
    err = refused(dgm("train", "dataset=mnist", f"data.root={tmp_path}", "data.download=false", check=False),
                  "train-images-idx3-ubyte", "data.root")
    assert str(tmp_path) in err


def test_truncated_and_foreign_checkpoints_are_refused(dgm, tmp_path, toy_run):
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(toy_run.read_bytes()[:1000])
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    for ckpt in (truncated, foreign):
        for command in ("eval", "sample"):
            refused(dgm(command, f"checkpoint={ckpt}", check=False), str(ckpt))
        refused(dgm("train", f"resume={ckpt}", check=False), str(ckpt))
    refused(dgm("eval", f"checkpoint={tmp_path / 'nothing.pt'}", check=False), "no checkpoint")


def test_refused_resume_leaves_the_run_untouched(dgm, toy_run):
    run = toy_run.parent.parent
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in run.rglob("*") if p.is_file()}
    refused(dgm("train", f"resume={run}", "optimizer.lr=0.5", check=False), "resume", "trainer.max_steps")
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in run.rglob("*") if p.is_file()}
    assert before == after


def test_sample_mode_the_model_lacks(dgm, toy_run):
    refused(dgm("sample", f"checkpoint={toy_run}", "mode=complete", check=False), "mode=complete", "reconstruct")


def test_unknown_eval_metric(dgm, toy_run):
    refused(dgm("eval", f"checkpoint={toy_run}", "metrics=[nll,fidd]", check=False), "fidd", "kid")


def test_unknown_command():
    import subprocess

    from conftest import dgm_executable

    proc = subprocess.run([dgm_executable(), "trian"], capture_output=True, text=True)
    assert proc.returncode == 2 and "train" in proc.stderr
