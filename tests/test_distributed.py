"""Data-parallel training through torchrun (gloo on CPU): two processes give the parameters of one
process with the same global batch and seed, write one run folder, and resume with any number of
processes.

One process with ``trainer.accumulate=2`` is the reference for models that draw noise in their
loss (a VAE's reparameterisation, a GAN's latents and penalty mixing weights): the engine seeds each
micro-batch from (seed, step, phase, shard), so the two layouts draw the same numbers. Models whose
loss is deterministic given the batch (MADE, Glow) are also compared with a plain one-process run.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import copy_run, run_dgm, run_folders

# torchrun starts two processes: these tests run one after another on one xdist worker
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("torchrun")]

COMMON = ["trainer.progress=false", "trainer.sample_every=0", "trainer.log_every=2", "seed=3"]
MNIST_SMALL = ["data.val_size=200", "trainer.eval_batch_size=200"]
CASES = {
    "vae": [
        "model=vae",
        "model.hidden=[32]",
        "model.latent_dim=4",
        "trainer.batch_size=32",
        "trainer.max_steps=6",
        *MNIST_SMALL,
    ],
    "made": [
        "model=made",
        "model.hidden_sizes=[64]",
        "model.num_masks=2",
        "trainer.batch_size=32",
        "trainer.max_steps=6",
        *MNIST_SMALL,
    ],
    # SGD: Adam's first steps are ~lr * sign(g), which turns float-rounding differences in near-zero
    # gradients (of the zero-initialised coupling outputs) into visible ones
    "glow": [
        "model=glow",
        "model.num_levels=1",
        "model.depth=2",
        "model.hidden_channels=8",
        "trainer.batch_size=16",
        "trainer.max_steps=4",
        "optimizer=sgd",
        "optimizer.lr=0.01",
        *MNIST_SMALL,
    ],
    "wgan_gp": [
        "model=wgan_gp",
        "dataset=eight_gaussians",
        "model.hidden=32",
        "model.depth=2",
        "model.latent_dim=2",
        "data.train_size=2048",
        "data.test_size=256",
        "data.val_size=256",
        "trainer.batch_size=64",
        "trainer.max_steps=10",
    ],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(cwd: Path, *args: str, nproc: int = 2, command: str = "train") -> subprocess.CompletedProcess:
    """`dgm` under torchrun (gloo), each process with one thread like this one (conftest)."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={nproc}",
        f"--master-port={free_port()}",
        "-m",
        "dgm_cli",
        command,
        *args,
    ]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}"
    return proc


def single(cwd: Path, *args: str, command: str = "train"):
    """The same command in one process (this one)."""
    return run_dgm(command, *args, cwd=cwd)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """``ddp_run(case)``: the folder of CASES[case] trained by two processes, once per module."""
    folders = {}

    def get(name: str) -> Path:
        if name not in folders:
            folders[name] = tmp_path_factory.mktemp(f"ddp_{name}")
            torchrun(folders[name], *CASES[name], *COMMON)
        return folders[name]

    return get


def last_state(cwd: Path) -> dict:
    (run,) = run_folders(cwd)
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)


def assert_same_parameters(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    for k, v in a["model"].items():
        if v.is_floating_point():
            assert torch.allclose(v, b["model"][k], rtol=1e-4, atol=1e-5), f"{k} differs"
        else:
            assert torch.equal(v, b["model"][k]), f"buffer {k} differs"


@pytest.mark.parametrize("name", list(CASES))
def test_two_processes_equal_one_with_the_same_global_batch(name, tmp_path, request, ddp_run):
    if name != "wgan_gp":
        request.getfixturevalue("data_root")
    args = CASES[name] + COMMON
    (tmp_path / "accum").mkdir()
    folder = ddp_run(name)
    single(tmp_path / "accum", *args, "trainer.accumulate=2")
    ddp = last_state(folder)
    assert_same_parameters(ddp, last_state(tmp_path / "accum"))
    if name in ("made", "glow"):  # no noise in the loss: plain one-process training agrees too
        (tmp_path / "one").mkdir()
        single(tmp_path / "one", *args)
        assert_same_parameters(ddp, last_state(tmp_path / "one"))
    # one run folder, one event file, one checkpoint set, written by the first process only
    (run,) = run_folders(folder)
    assert len(list((folder / "outputs").rglob("config.yaml"))) == 1
    assert len(list((run / "tensorboard").iterdir())) == 1
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) in (["last.pt"], ["best.pt", "last.pt"])
    assert not (run / "train.lock").exists()


def test_resume_a_two_process_run_with_two_and_with_one_process(tmp_path, data_root, ddp_run):
    args = CASES["made"] + COMMON
    torchrun(tmp_path, *[a.replace("max_steps=6", "max_steps=3") for a in args])
    (part,) = run_folders(tmp_path)
    two, one = (copy_run(part, tmp_path / d) for d in ("two", "one"))  # one part-run, resumed two ways
    torchrun(tmp_path / "two", f"resume={two}", "trainer.max_steps=6")
    single(tmp_path / "one", f"resume={one}", "trainer.max_steps=6")
    full = last_state(ddp_run("made"))
    for resumed in (two, one):
        assert_same_parameters(full, torch.load(resumed / "checkpoints" / "last.pt", weights_only=True))


def test_a_stochastic_two_process_run_resumes_in_one_process_with_accumulation(tmp_path, data_root, ddp_run):
    args = CASES["vae"] + COMMON
    (tmp_path / "part").mkdir()
    torchrun(tmp_path / "part", *[a.replace("max_steps=6", "max_steps=3") for a in args])
    (run,) = run_folders(tmp_path / "part")
    single(tmp_path / "part", f"resume={run}", "trainer.max_steps=6", "trainer.accumulate=2")
    assert_same_parameters(last_state(ddp_run("vae")), last_state(tmp_path / "part"))


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_nccl_two_gpus_equal_one(tmp_path, data_root):
    args = CASES["vae"] + COMMON + ["trainer.device=cuda"]
    (tmp_path / "ddp").mkdir()
    (tmp_path / "accum").mkdir()
    torchrun(tmp_path / "ddp", *args)
    single(tmp_path / "accum", *args, "trainer.accumulate=2")
    assert_same_parameters(last_state(tmp_path / "ddp"), last_state(tmp_path / "accum"))


def test_eval_splits_the_test_set_over_processes_and_gathers_the_same_numbers(tmp_path, data_root, ddp_run):
    import json

    (run,) = run_folders(ddp_run("made"))
    args = [f"checkpoint={run}", "limit=301"]  # an odd count: the processes get 151 and 150 examples
    single(tmp_path, *args, f"out={tmp_path / 'one.json'}", command="eval")
    torchrun(tmp_path, *args, f"out={tmp_path / 'two.json'}", command="eval")
    one, two = (json.loads((tmp_path / f"{n}.json").read_text())["likelihood"] for n in ("one", "two"))
    assert two["num_examples"] == one["num_examples"] == 301
    for key in ("nll_nats", "nll_nats_stderr", "bits_per_dim"):
        assert abs(one[key] - two[key]) < 1e-6 * max(1.0, abs(one[key])), key
