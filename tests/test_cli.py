"""The command line: help per command, `python -m dgm_cli`, `--cfg job`."""
from __future__ import annotations

import subprocess
import sys

from conftest import run_dgm


def test_top_level_help_lists_the_commands(tmp_path):
    out = run_dgm("--help", cwd=tmp_path).stdout
    assert all(c in out for c in ("train", "sample", "eval"))
    module = subprocess.run([sys.executable, "-m", "dgm_cli", "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert module.returncode == 0 and module.stdout == out


def test_train_help_lists_groups_and_models(tmp_path):
    out = run_dgm("train", "--help", cwd=tmp_path).stdout
    for word in ("model:", "dataset:", "objective:", "optimizer:", "pixelcnn", "glow", "dcgan", "mnist"):
        assert word in out, word
    assert not (tmp_path / "outputs").exists(), "--help must not create a run folder"


def test_cfg_job_prints_the_composed_config(tmp_path):
    out = run_dgm("train", "model=conv_vae", "optimizer.lr=3e-4", "--cfg", "job", cwd=tmp_path).stdout
    assert "name: conv_vae" in out and "lr: 0.0003" in out


def test_sample_and_eval_have_their_own_configs(tmp_path):
    assert "num_samples" in run_dgm("sample", "--cfg", "job", cwd=tmp_path).stdout
    assert "estimator: {}" in run_dgm("eval", "--cfg", "job", cwd=tmp_path).stdout


def test_shell_completion_per_command(tmp_path):
    import os

    from conftest import dgm_executable

    script = run_dgm("-sc", "install=bash", cwd=tmp_path).stdout
    assert "-F hydra_bash_completion dgm" in script

    def query(line: str) -> list[str]:
        env = {**os.environ, "COMP_LINE": line}
        proc = subprocess.run([dgm_executable(), "-sc", "query=bash"], env=env, capture_output=True, text=True,
                              cwd=tmp_path)
        return proc.stdout.split()

    assert query("dgm tr") == ["train"]
    assert "model=gated_pixelcnn" in query("dgm train model=g")
    assert "trainer.max_epochs=" in query("dgm train trainer.max_e")
    assert "limit=" in query("dgm eval li")
