"""The command line: help per command, `python -m dgm_cli`, `--cfg job`."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

from conftest import copy_run, dgm_executable, run_dgm


def test_top_level_help_lists_the_commands(tmp_path):
    out = run_dgm("--help", cwd=tmp_path).stdout
    assert all(c in out for c in ("train", "sample", "eval"))
    module = subprocess.run([sys.executable, "-m", "dgm_cli", "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert module.returncode == 0 and module.stdout == out


def test_the_console_script_exits_with_the_commands_status(tmp_path):
    """The installed `dgm` is a process: its exit status is what cli.main returns (2: refused)."""
    proc = subprocess.run([dgm_executable(), "trian"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and "choose one of: train" in proc.stderr and "Traceback" not in proc.stderr
    module = subprocess.run(
        [sys.executable, "-m", "dgm_cli", "train", "model=vea"], capture_output=True, text=True, cwd=tmp_path
    )
    assert module.returncode == 2 and "model/vea" in module.stderr and "Traceback" not in module.stderr


def test_main_can_be_called_again_and_again_in_one_process(tmp_path, capsys):
    """cli.main(argv) returns the exit status, and each call is as independent as a fresh process:
    a refusal is worded the same the second time (Hydra's global state is cleared), two runs
    started within a second get folders of their own, and the caller's sys.argv, stderr, logging
    handlers and signal handlers are as they were."""
    import logging
    import os
    import signal

    from dgm_cli import cli

    before = (
        sys.argv[:],
        sys.stderr,
        logging.getLogger().handlers[:],
        signal.getsignal(signal.SIGINT),
        dict(os.environ),
    )
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        messages = []
        for _ in range(2):
            assert cli.main(["train", "model=vea"]) == 2
            messages.append(capsys.readouterr().err)
        assert messages[0] == messages[1] and messages[0].startswith("dgm train: ") and "conv_vae" in messages[0]
        toy = [
            "dataset=moons",
            "model.hidden=[8]",
            "model.latent_dim=2",
            "data.train_size=256",
            "data.val_size=64",
            "data.test_size=64",
            "trainer.max_steps=2",
            "trainer.progress=false",
            "trainer.sample_every=0",
        ]
        assert [cli.main(["train", *toy]) for _ in range(2)] == [0, 0]
        assert cli.main(["train", "trainer.batch_size=0"]) == 2 and "trainer.batch_size" in capsys.readouterr().err
        assert cli.main(["--version"]) == 0
    finally:
        os.chdir(cwd)
    runs = sorted((tmp_path / "outputs" / "train").glob("*/*"))
    assert len(runs) == 2 and all((r / "checkpoints" / "last.pt").exists() for r in runs)
    after = (sys.argv, sys.stderr, logging.getLogger().handlers, signal.getsignal(signal.SIGINT), dict(os.environ))
    assert after == before


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


def completions(line: str, cwd, monkeypatch) -> list[str]:
    """What `dgm -sc query=bash` offers the shell for the command line ``line``."""
    monkeypatch.setenv("COMP_LINE", line)
    return run_dgm("-sc", "query=bash", cwd=cwd).stdout.split()


def test_shell_completion_per_command(tmp_path, monkeypatch):
    script = run_dgm("-sc", "install=bash", cwd=tmp_path).stdout
    assert "-F hydra_bash_completion dgm" in script

    def query(line: str) -> list[str]:
        return completions(line, tmp_path, monkeypatch)

    assert query("dgm tr") == ["train"]
    assert "model=gated_pixelcnn" in query("dgm train model=g")
    assert "trainer.max_epochs=" in query("dgm train trainer.max_e")
    assert "limit=" in query("dgm eval li")


def test_sample_and_eval_completion_offer_no_train_groups(tmp_path, monkeypatch):
    for command in ("sample", "eval"):
        words = completions(f"dgm {command} ", tmp_path, monkeypatch)
        assert "checkpoint=" in words and "seed=" in words
        assert not {"model=", "dataset=", "experiment=", "optimizer="} & set(words), words


def test_version(tmp_path):
    from dgm_cli import __version__

    assert run_dgm("--version", cwd=tmp_path).stdout.strip() == f"dgm {__version__}"


def test_sample_and_eval_help_list_only_their_own_keys_with_meanings(tmp_path):
    for command, keys in (
        ("sample", ("temperature", "num_samples", "mode", "out")),
        ("eval", ("split", "limit", "metrics", "num_samples")),
    ):
        out = run_dgm(command, "--help", cwd=tmp_path).stdout
        for group in ("model:", "dataset:", "experiment:", "optimizer:"):
            assert group not in out, f"dgm {command} --help offers {group} which dgm {command} refuses"
        lines = {ln.split()[0]: ln for ln in out.splitlines() if ln.startswith("  ")}
        assert "???" in lines["checkpoint"] and "run folder" in lines["checkpoint"]
        for key in keys:
            assert len(lines[key].split()) > 3, f"{key} has no meaning: {lines[key]!r}"
    assert not (tmp_path / "outputs").exists()


def test_train_help_says_what_keys_mean_with_units(tmp_path):
    out = run_dgm("train", "model=glow", "--help", cwd=tmp_path).stdout
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ln.startswith("  ")}
    assert "0 means once per epoch" in lines["trainer.val_every"]
    assert "steps" in lines["trainer.log_every"]
    assert "model.hidden_channels" in lines and "model.latent_dim" not in lines  # the chosen model's keys


@dataclasses.dataclass
class Wrapped:  # fields laid out as `ruff format` leaves them
    rate: float = 0.1  # the step size of the
    #   sampler, in nats
    #   per step
    # what follows is the width, not the rate
    width: int = 3  # units per layer
    #   (also below)

    #   after a blank line: the code's, not width's
    depth: int = 2  # layers, on the line the formatter moved
    tags: list = dataclasses.field(default_factory=list)
    #   a field without a trailing comment may still wrap


def test_a_wrapped_field_comment_reads_as_one_sentence_and_the_next_comment_stays_apart():
    from dgm_cli.settings.docs import field_comments

    assert field_comments(Wrapped) == {
        "rate": "the step size of the sampler, in nats per step",
        "width": "units per layer (also below)",
        "depth": "layers, on the line the formatter moved",
        "tags": "a field without a trailing comment may still wrap",
    }


def test_resume_logs_into_the_run_folder_and_sample_eval_write_no_empty_folder(tmp_path, toy_run):
    (tmp_path / "outputs" / "train" / "day").mkdir(parents=True)
    run = copy_run(toy_run, tmp_path / "outputs" / "train" / "day")
    lines = len((run / "train.log").read_text().splitlines())
    run_dgm("train", f"resume={run}", "trainer.max_steps=10", cwd=tmp_path)
    assert list((tmp_path / "outputs" / "train").glob("*/*")) == [run], "resume made a new run folder"
    log = (run / "train.log").read_text()
    assert len(log.splitlines()) > lines and "resuming" in log and "step 10" in log
    assert "resume=" not in (run / ".hydra" / "overrides.yaml").read_text(), "the run's own config was overwritten"

    run_dgm("sample", f"checkpoint={run}", f"out={tmp_path / 'grid.png'}", cwd=tmp_path)
    run_dgm("eval", f"checkpoint={run}", cwd=tmp_path)
    assert (tmp_path / "grid.png").exists() and (run / "checkpoints" / "eval.json").exists()
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == ["train"], "an empty sample/eval folder"
    run_dgm("sample", f"checkpoint={run}", cwd=tmp_path)  # the grid's default place is a folder of its own
    assert len(list((tmp_path / "outputs" / "sample").glob("*/*/sample.png"))) == 1


def test_eval_of_a_sweep_folder_evaluates_every_run_in_it(tmp_path, toy_run):
    """`dgm eval checkpoint=<a folder of runs>`: each run gets its eval.json and a line; out= (one
    file) is refused for several runs; a folder with best.pt but no last.pt names best.pt."""
    sweep = tmp_path / "sweep"
    runs = [copy_run(toy_run, sweep / f"{i}_seed={i}") for i in range(2)]
    proc = run_dgm("eval", f"checkpoint={sweep}", "limit=50", cwd=tmp_path)
    assert all((r / "checkpoints" / "eval.json").exists() for r in runs)
    headlines = [
        line for line in proc.stdout.splitlines() if line.startswith("NLL ")
    ]  # (a toy's true NLL is a line too)
    assert "[1/2]" in proc.stdout and "[2/2]" in proc.stdout and len(headlines) == 2
    refused = run_dgm("eval", f"checkpoint={sweep}", f"out={tmp_path / 'e.json'}", cwd=tmp_path, check=False)
    assert refused.returncode == 2 and "holds 2 runs" in refused.stderr
    empty = run_dgm("eval", "checkpoint=", cwd=sweep, check=False)  # not "every run under the current folder"
    assert empty.returncode == 2 and "checkpoint= is empty" in empty.stderr
    (runs[0] / "checkpoints" / "last.pt").rename(runs[0] / "checkpoints" / "best.pt")
    missing = run_dgm("eval", f"checkpoint={runs[0]}", cwd=tmp_path, check=False)
    assert missing.returncode == 2 and "checkpoints/best.pt" in missing.stderr


def test_under_torchrun_a_refusal_is_said_once(tmp_path, monkeypatch):
    """Every process of a torchrun refuses a bad key with status 2; only the first one says why."""
    said = {}
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        proc = run_dgm("train", "trainer.max_step=3", cwd=tmp_path, check=False)
        said[rank] = (proc.returncode, proc.stderr)
    assert said["0"][0] == said["1"][0] == 2
    assert "Did you mean trainer.max_steps?" in said["0"][1] and said["1"][1] == ""


def test_sample_out_suffix_decides_what_is_written(tmp_path, toy_run):
    """out=x.npz: the raw samples as an array; out=x.pdf: the picture as a PDF page; other modes
    than sampling are refused for .npz (they are pictures)."""
    import numpy as np

    run_dgm("sample", f"checkpoint={toy_run}", "num_samples=7", f"out={tmp_path / 'x.npz'}", cwd=tmp_path)
    with np.load(tmp_path / "x.npz", allow_pickle=False) as saved:
        assert saved["samples"].shape == (7, 2) and saved["samples"].dtype == np.float32
    run_dgm("sample", f"checkpoint={toy_run}", "num_samples=7", f"out={tmp_path / 'x.pdf'}", cwd=tmp_path)
    assert (tmp_path / "x.pdf").read_bytes()[:4] == b"%PDF"
    refused = run_dgm(
        "sample", f"checkpoint={toy_run}", "mode=reconstruct", f"out={tmp_path / 'y.npz'}", cwd=tmp_path, check=False
    )
    assert refused.returncode == 2 and "mode=sample" in refused.stderr and not (tmp_path / "y.npz").exists()
