"""Shared fixtures: the real-data root, `dgm` run in this process or as the installed command, tiny
configs, and tiny trained runs that many tests share.

Real MNIST is found through DGM_DATA_ROOT. Without it the tests that need it are skipped with the
reason; with DGM_REQUIRE_DATA=1 (set by .ci/run) its absence fails them.

Every test process (and every process a test starts) computes with one thread, whatever the
environment says: results compared bit for bit (a resumed run against an uninterrupted one, two
processes against one) depend on the thread count, and the suite runs one pytest-xdist worker per
core. `$DGM_CACHE` is one fresh folder per test session (shared by its workers), never the user's
~/.cache/dgm, so each feature network is trained once per session.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest

MNIST_FILES = ["train-images-idx3-ubyte", "t10k-images-idx3-ubyte"]
_SESSION_CACHE = "DGM_TEST_SESSION_CACHE"  # set by the controller, inherited by xdist's workers


def pytest_configure(config) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by every process a test starts
    os.environ.pop("HYDRA_FULL_ERROR", None)  # tests read dgm's own messages, not Hydra's traceback
    if _SESSION_CACHE not in os.environ:  # the controller (or a run without xdist)
        os.environ[_SESSION_CACHE] = tempfile.mkdtemp(prefix="dgm-test-cache-")
        config._dgm_cache_owner = True
    os.environ["DGM_CACHE"] = os.environ[_SESSION_CACHE]
    import torch

    torch.set_num_threads(1)


@pytest.hookimpl(trylast=True)  # after xdist's own, which names each grouped test's group in its node id
def pytest_collection_modifyitems(config, items) -> None:
    """`heavy` tests first, then files with end-to-end (`slow`) tests, each file's tests kept
    together: with one xdist worker per core, the long runs start at once and the many short tests
    fill in around them, rather than one long test starting last and holding up the end.

    And a check: under --dist loadgroup every test marked xdist_group must carry its group in its node
    id by now; if it does not (a pytest that xdist does not support), the group would be split across
    workers, so say so and stop."""
    has_slow = {item.path for item in items if item.get_closest_marker("slow")}
    # a stable sort: the order within a file stays
    items.sort(key=lambda item: (item.get_closest_marker("heavy") is None, item.path not in has_slow))
    if os.environ.get("PYTEST_XDIST_WORKER") and config.getvalue("loadgroup"):
        lost = [item.nodeid for item in items if item.get_closest_marker("xdist_group") and "@" not in item.nodeid]
        if lost:
            raise pytest.UsageError(
                f"pytest-xdist's --dist loadgroup did not group {lost[0]} (and {len(lost) - 1} more) with pytest "
                f"{pytest.__version__}: install the versions pyproject.toml's test extra names "
                "(pip install -e '.[test]'), or run with -n 0."
            )


def pytest_unconfigure(config) -> None:
    if getattr(config, "_dgm_cache_owner", False):
        shutil.rmtree(os.environ.pop(_SESSION_CACHE), ignore_errors=True)


def _data_root() -> Path | None:
    root = os.environ.get("DGM_DATA_ROOT")
    return Path(root) if root else None


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = _data_root()
    ok = root is not None and all((root / "MNIST" / "raw" / f).exists() for f in MNIST_FILES)
    if not ok:
        reason = (
            f"real MNIST not found under DGM_DATA_ROOT={root}" if root else "DGM_DATA_ROOT is not set"
        ) + " (point it at a folder with MNIST/raw/*-ubyte, e.g. ../shared/data)"
        if os.environ.get("DGM_REQUIRE_DATA") == "1":
            pytest.fail(reason + "; DGM_REQUIRE_DATA=1 makes this a failure")
        pytest.skip(reason)
    os.environ["DGM_DATA_ROOT"] = str(root)
    return root


# --- running dgm ------------------------------------------------------------------------------------
@dataclass
class Result:
    """What a finished `dgm` command gave: its exit status and what it wrote to stdout and stderr."""

    args: list
    returncode: int
    stdout: str
    stderr: str


@contextlib.contextmanager
def _working_directory(path: Path):
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def run_dgm(*args: str, cwd: Path, check: bool = True) -> Result:
    """``dgm *args`` in ``cwd`` (so outputs/ lands there), run in this process through
    ``dgm_cli.cli.main``, which treats each call as a fresh process. An exception that escapes
    the command is what a process would print on its way out: a traceback and exit status 1."""
    from dgm_cli import cli

    out, err = io.StringIO(), io.StringIO()
    with _working_directory(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(list(args))
        except Exception:  # noqa: BLE001 -- a crash is a result the test asserts on
            traceback.print_exc(file=err)
            code = 1
    result = Result(["dgm", *args], code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"dgm {' '.join(args)} exited {code}\n{result.stdout}\n{result.stderr}")
    return result


def dgm_executable() -> str:
    exe = Path(sys.executable).parent / "dgm"
    found = str(exe) if exe.exists() else shutil.which("dgm")
    if not found:
        pytest.fail("the `dgm` command is not installed; run the README's install command first")
    return found


def run_dgm_process(
    *args: str, cwd: Path, check: bool = True, timeout: int = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
    """The installed `dgm` console script as a process of its own: for what only a process shows
    (the console script itself, signals, torchrun, launchers that start workers)."""
    proc = subprocess.run(
        [dgm_executable(), *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"dgm {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def dgm(tmp_path):
    """``dgm(*args, check=True, cwd=tmp_path)``: `dgm` run in this process, in a fresh folder."""

    def run(*args: str, check: bool = True, cwd: Path | None = None):
        return run_dgm(*args, cwd=cwd or tmp_path, check=check)

    return run


# --- configs ---------------------------------------------------------------------------------------
#: a small VAE and a short run: a few seconds on one core
TINY = [
    "model.hidden=[64]",
    "model.latent_dim=8",
    "trainer.batch_size=64",
    "trainer.log_every=10",
    "trainer.eval_batch_size=500",
    "data.val_size=1000",
    "trainer.progress=false",
]
#: a VAE on the 2-D moons toy: no real data needed, a second to train
TOY = [
    "dataset=moons",
    "model.hidden=[16]",
    "model.latent_dim=2",
    "trainer.batch_size=64",
    "data.train_size=2000",
    "data.test_size=500",
    "data.val_size=200",
    "trainer.progress=false",
]


def compose_train(*overrides: str):
    """`dgm train`'s config for ``overrides``, composed as the command composes it."""
    from hydra import compose, initialize_config_module

    from dgm_cli.settings.schema import register_configs

    register_configs()
    with initialize_config_module(config_module="dgm_cli.configs", version_base="1.3"):
        return compose("train", overrides=list(overrides))


def run_folders(tmp_path: Path, command: str = "train") -> list[Path]:
    return sorted(p.parent.parent for p in (tmp_path / "outputs" / command).rglob("checkpoints/last.pt"))


# --- shared trained runs --------------------------------------------------------------------------
@pytest.fixture(scope="session")
def toy_run(tmp_path_factory) -> Path:
    """A finished 5-step VAE run on the moons toy, trained once per session: tests that read,
    sample, evaluate or refuse things about a run share it. Treat it as read-only (copy it first
    to change it: ``copy_run``)."""
    folder = tmp_path_factory.mktemp("toy_run")
    run_dgm("train", *TOY, "trainer.max_steps=5", cwd=folder)
    (run,) = run_folders(folder)
    return run


def copy_run(run: Path, into: Path) -> Path:
    """A copy of a shared run folder that a test may change (resume, evaluate into, corrupt)."""
    target = into / run.name
    shutil.copytree(run, target)
    return target


def phase_steps(model, x, y=None, step: int = 1):
    """Drive one batch the way the engine does, for tests that step by hand: for each phase the
    model asks for, yield ``(phase, loss, metrics)`` from a call through ``forward``; when the
    caller resumes (after its backward and optimizer step), run the model's ``after_step``."""
    for phase in model.phases(step):
        loss, metrics = model(x, y, phase)
        yield phase, loss, metrics
        model.after_step(phase)
