"""Sweeps through Hydra's launchers: joblib runs jobs in parallel on one machine; submitit_local
(the stand-in for SLURM here) runs a job in its own process; a sweep's folders name its overrides,
and with every launcher they sit in the folder the sweep announced, which `dgm report` reads."""

from __future__ import annotations

import re
from datetime import datetime

import pytest
import torch

from conftest import TINY, run_dgm, run_dgm_process, run_folders

pytestmark = pytest.mark.slow
SHORT = [*TINY, "trainer.max_steps=300", "trainer.sample_every=0"]


def started_and_finished(run) -> tuple[datetime, datetime]:
    stamps = [
        datetime.strptime(m, "%Y-%m-%d %H:%M:%S,%f")
        for m in re.findall(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+)\]", (run / "train.log").read_text(), re.M)
    ]
    return stamps[0], stamps[-1]


def assert_one_sweep_that_reports(tmp_path, runs) -> None:
    """Every job sits in the one folder the sweep announced (it holds multirun.yaml), and `dgm report`
    of that folder finds them all."""
    (sweep,) = {r.parent for r in runs}
    assert (sweep / "multirun.yaml").exists(), f"the jobs are not in the sweep's folder: {runs}"
    run_dgm("report", str(sweep), f"out={tmp_path / 'report'}", cwd=tmp_path)
    assert len((tmp_path / "report" / "report.csv").read_text().strip().splitlines()) == 1 + len(runs)


def test_a_joblib_sweep_runs_its_jobs_in_parallel(tmp_path, data_root):
    """The launcher starts worker processes: `dgm` runs as a process of its own here."""
    run_dgm_process("train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *SHORT, "seed=1,2", cwd=tmp_path)
    runs = run_folders(tmp_path)
    assert len(runs) == 2
    assert_one_sweep_that_reports(tmp_path, runs)
    names = sorted(r.name for r in runs)  # sweep folders say what ran: <job>_<overrides>
    assert names[0].startswith("0_") and "seed=1" in names[0] and "model.latent_dim=8" in names[0]
    assert names[1].startswith("1_") and "seed=2" in names[1] and "trainer.progress" not in names[1]
    (a_start, a_end), (b_start, b_end) = map(started_and_finished, runs)
    assert a_start < b_end and b_start < a_end, "each job started before the other ended"


def test_a_submitit_local_sweep_finishes(tmp_path, data_root):
    run_dgm_process(
        "train", "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", *SHORT, "seed=4", cwd=tmp_path
    )
    (run,) = run_folders(tmp_path)
    assert run.name.startswith("0_") and "seed=4" in run.name and (run / "checkpoints" / "last.pt").exists()
    assert_one_sweep_that_reports(tmp_path, [run])


def test_the_slurm_preset_composes_with_one_process_per_gpu(tmp_path, dgm):
    out = dgm(
        "train",
        "hydra/launcher=slurm",
        "hydra.launcher.gpus_per_node=4",
        "--cfg",
        "hydra",
        "--package",
        "hydra.launcher",
    ).stdout
    assert "submitit_launcher.SlurmLauncher" in out
    assert re.search(r"tasks_per_node: 4\b", out) or "tasks_per_node: ${hydra.launcher.gpus_per_node}" in out


def test_a_sweep_run_folder_works_as_checkpoint_and_resume_as_typed(tmp_path, dgm, data_root):
    """Sweep folders hold '=', ',' and '[' (their overrides): dgm quotes such paths for Hydra."""
    dgm("train", "-m", *TINY, "trainer.max_steps=3", "trainer.sample_every=0", "seed=1")
    (run,) = run_folders(tmp_path)
    assert "[" in run.name and "=" in run.name
    assert_one_sweep_that_reports(tmp_path, [run])  # the basic launcher, as joblib and submitit above
    dgm("sample", f"checkpoint={run}", "num_samples=4", f"out={tmp_path / 'x.png'}")
    dgm("train", f"resume={run}", "trainer.max_steps=5")
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"] == 5


def test_a_sweep_whose_jobs_are_refused_leaves_no_folder(tmp_path):
    """With joblib the jobs run in worker processes, which cannot tell which folders are new: the
    sweep's own process removes the job folders that hold nothing but Hydra's files, then the sweep's."""
    proc = run_dgm_process(
        "train",
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "dataset=npz",
        f"data.path={tmp_path / 'missing.npz'}",
        "seed=1,2",
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 2 and "is not a file" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "outputs").exists(), sorted(map(str, (tmp_path / "outputs").rglob("*")))
