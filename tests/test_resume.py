"""A run killed after its first checkpoint and resumed ends where an uninterrupted run ends."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
import torch

from conftest import TINY, dgm_executable, run_folders

pytestmark = [pytest.mark.slow, pytest.mark.real_data]
# No scheduler: the trajectory does not depend on max_steps, so a run killed at step s (of a run too
# long to finish first, whatever the machine's speed) and resumed to s + 30 can be compared with a
# run trained to s + 30 in one go.
ARGS = [
    "trainer.ckpt_every=25",
    "trainer.device=cpu",
    "seed=3",
    "trainer.sample_every=0",
    "trainer.val_every=100000",
    *TINY,
]


def _final(run) -> dict:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)


def test_killed_and_resumed_equals_uninterrupted(dgm, tmp_path, data_root):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    straight.mkdir(), killed.mkdir()
    proc = subprocess.Popen(
        [dgm_executable(), "train", *ARGS, "trainer.max_steps=1000000"],
        cwd=killed,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and not list((killed / "outputs").rglob("last.pt")):
        assert proc.poll() is None, "the run ended before its first checkpoint"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    (run,) = run_folders(killed)
    end = _final(run)["step"] + 30

    dgm("train", f"resume={run}", f"trainer.max_steps={end}", cwd=killed)
    dgm("train", *ARGS, f"trainer.max_steps={end}", cwd=straight)
    a, b = _final(run_folders(straight)[0]), _final(run)
    assert b["step"] == a["step"] == end
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), f"{name} differs after resume from step {end - 30}"
