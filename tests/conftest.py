"""Shared fixtures: the real-data root and a runner for the installed `dgm` command.

Real MNIST is found through DGM_DATA_ROOT. Without it the tests that need it are
skipped with the reason; with DGM_REQUIRE_DATA=1 (set by .ci/run) its absence fails them.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

MNIST_FILES = ["train-images-idx3-ubyte", "t10k-images-idx3-ubyte"]


def _data_root() -> Path | None:
    root = os.environ.get("DGM_DATA_ROOT")
    return Path(root) if root else None


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = _data_root()
    ok = root is not None and all((root / "MNIST" / "raw" / f).exists() for f in MNIST_FILES)
    if not ok:
        reason = (f"real MNIST not found under DGM_DATA_ROOT={root}" if root else "DGM_DATA_ROOT is not set") + \
                 " (point it at a folder with MNIST/raw/*-ubyte, e.g. ../shared/data)"
        if os.environ.get("DGM_REQUIRE_DATA") == "1":
            pytest.fail(reason + "; DGM_REQUIRE_DATA=1 makes this a failure")
        pytest.skip(reason)
    os.environ["DGM_DATA_ROOT"] = str(root)
    return root


def dgm_executable() -> str:
    exe = Path(sys.executable).parent / "dgm"
    found = str(exe) if exe.exists() else shutil.which("dgm")
    if not found:
        pytest.fail("the `dgm` command is not installed; run the README's install command first")
    return found


def run_dgm(*args: str, cwd: Path, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the installed `dgm` in ``cwd`` (so outputs/ lands there)."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.run([dgm_executable(), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"dgm {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def dgm(tmp_path):
    """``dgm(*args, check=True, cwd=tmp_path)``: the installed `dgm`, run in a fresh folder."""

    def run(*args: str, check: bool = True, cwd: Path | None = None, timeout: int = 600):
        return run_dgm(*args, cwd=cwd or tmp_path, check=check, timeout=timeout)

    return run


#: a small VAE and a short run: a few seconds on one core
TINY = ["model.hidden=[64]", "model.latent_dim=8", "trainer.batch_size=64", "trainer.log_every=10",
        "trainer.eval_batch_size=500", "data.val_size=1000", "trainer.progress=false"]


def run_folders(tmp_path: Path, command: str = "train") -> list[Path]:
    return sorted(p.parent.parent for p in (tmp_path / "outputs" / command).rglob("checkpoints/last.pt"))


def phase_steps(model, x, y=None, step: int = 1):
    """Drive one batch the way the engine does, for tests that step by hand: for each phase the
    model asks for, yield ``(phase, loss, metrics)`` from a call through ``forward``; when the
    caller resumes (after its backward and optimizer step), run the model's ``after_step``."""
    for phase in model.phases(step):
        loss, metrics = model(x, y, phase)
        yield phase, loss, metrics
        model.after_step(phase)
