"""`dgm sample steps= sampler= eta=`: they set the model's own sampler settings for one command, are
refused for a model without them, and reach the sampler (counted network passes)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import run_dgm, run_folders
from dgm_cli.app import model_from_checkpoint
from dgm_cli.commands import sample
from dgm_cli.engine import checkpoint
from dgm_cli.errors import UserError
from dgm_cli.models.diffusion.ddpm import DDPMConfig
from dgm_cli.models.energy.ebm import EBMConfig
from dgm_cli.models.sequence.base import SequenceConfig


def keys(**given):
    return OmegaConf.create({"steps": None, "sampler": None, "eta": None, **given})


def saved(config, name: str) -> dict:
    return {**dataclasses.asdict(config), "name": name}


def test_each_key_names_the_model_setting_it_replaces():
    ddpm = saved(DDPMConfig(), "ddpm")
    assert sample.sampler_settings(keys(), ddpm) == {}
    assert sample.sampler_settings(keys(steps=50, sampler="ddim", eta=0.5), ddpm) == {
        "sample_steps": 50,
        "sampler": "ddim",
        "eta": 0.5,
    }
    assert sample.sampler_settings(keys(steps=20), saved(EBMConfig(), "ebm")) == {"sample_steps": 20}


def test_keys_a_model_does_not_take_are_refused_with_what_it_takes():
    with pytest.raises(UserError, match=r"sampler= cannot be used with model=ebm.*It takes steps=\.$"):
        sample.sampler_settings(keys(steps=20, sampler="ddim"), saved(EBMConfig(), "ebm"))
    with pytest.raises(UserError, match="steps= cannot be used with model=vrnn.*leave these keys out"):
        sample.sampler_settings(keys(steps=20), saved(SequenceConfig(), "vrnn"))
    with pytest.raises(UserError, match="eta=0.5 is DDIM's noise.*add sampler=ddim"):
        sample.sampler_settings(keys(eta=0.5), saved(DDPMConfig(), "ddpm"))
    assert sample.sampler_settings(keys(eta=0.5), saved(DDPMConfig(sampler="ddim"), "ddpm")) == {"eta": 0.5}


@pytest.fixture(scope="module")
def tiny_ddpm(tmp_path_factory):
    """A DDPM (T = 10, width 8) trained 2 steps by `dgm train` on 40 written 8x8 images: its run folder
    (read-only: both tests below sample from it)."""
    folder = tmp_path_factory.mktemp("tiny_ddpm")
    images = np.random.default_rng(0).integers(0, 256, size=(40, 8, 8), dtype=np.uint8)
    np.savez(folder / "tiny.npz", x=images)
    run_dgm(
        "train",
        "model=ddpm",
        "dataset=npz",
        f"data.path={folder / 'tiny.npz'}",
        "model.timesteps=10",
        "model.channels=8",
        "model.channel_mult=[1]",
        "trainer.max_steps=2",
        "trainer.batch_size=8",
        "trainer.sample_every=0",
        "trainer.progress=false",
        cwd=folder,
    )
    (run,) = run_folders(folder)
    return run


def test_the_keys_reach_the_sampler_of_a_model_built_from_a_checkpoint(tiny_ddpm):
    def passes(**given) -> tuple[int, object]:
        state = checkpoint.load(str(tiny_ddpm))
        state["config"]["model"].update(sample.sampler_settings(keys(**given), state["config"]["model"]))
        model, _, _ = model_from_checkpoint(state, torch.device("cpu"))
        calls = []
        model.predict = lambda x, t, f=model.predict: calls.append(1) or f(x, t)
        torch.manual_seed(0)
        out = model.sample(2)
        return len(calls), out

    assert passes()[0] == 10  # as trained: all T steps
    assert passes(steps=3)[0] == 3
    n, deterministic = passes(steps=4, sampler="ddim")
    assert n == 4 and torch.equal(deterministic, passes(steps=4, sampler="ddim")[1])
    assert not torch.equal(passes(steps=4, sampler="ddim", eta=1.0)[1], deterministic)  # eta adds noise


@pytest.mark.slow
def test_dgm_sample_takes_the_keys_and_refuses_them_in_one_paragraph(dgm, tmp_path, tiny_ddpm):
    run = tiny_ddpm
    dgm(
        "sample",
        f"checkpoint={run}",
        "num_samples=4",
        "steps=3",
        "sampler=ddim",
        "eta=0.5",
        f"out={tmp_path / 'x.png'}",
    )
    assert (tmp_path / "x.png").exists()
    for bad, says in (
        (["eta=0.5"], "add sampler=ddim"),
        (["sampler=plms"], "sampler must be null or one of ddpm, ddim"),
        (["steps=0"], "steps must be null or >= 1"),
    ):
        proc = dgm("sample", f"checkpoint={run}", *bad, f"out={tmp_path / 'y.png'}", check=False)
        assert proc.returncode == 2 and says in proc.stderr and "Traceback" not in proc.stderr
