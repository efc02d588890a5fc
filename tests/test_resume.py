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
ARGS = ["trainer.max_steps=600", "trainer.ckpt_every=25", "trainer.device=cpu", "seed=3", *TINY]


def _final(run) -> dict:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)


def test_killed_and_resumed_equals_uninterrupted(dgm, tmp_path, data_root):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    straight.mkdir(), killed.mkdir()
    dgm("train", *ARGS, cwd=straight)

    env = {**os.environ, "DGM_DATA_ROOT": str(data_root)}
    proc = subprocess.Popen([dgm_executable(), "train", *ARGS], cwd=killed, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list((killed / "outputs").rglob("last.pt")):
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    (run,) = run_folders(killed)
    step_at_kill = _final(run)["step"]
    assert step_at_kill < 600, "the run finished before it could be killed; make it longer"

    dgm("train", f"resume={run}", cwd=killed)
    a, b = _final(run_folders(straight)[0]), _final(run)
    assert b["step"] == a["step"] == 600
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), f"{name} differs after resume from step {step_at_kill}"
