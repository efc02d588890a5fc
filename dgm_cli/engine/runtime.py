"""Devices, precision, seeds and RNG state: the parts of a run that are not the model."""

from __future__ import annotations

import contextlib
import os
import random
from typing import Optional

import torch

from ..errors import UserError


def pick_device(name: str, local_rank: Optional[int] = None) -> torch.device:
    """The device ``trainer.device`` names; under torchrun, ``cuda`` means this process's GPU."""
    if local_rank is not None and name in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name} was asked for but CUDA is not available here; use device=cpu or auto.")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("device=mps was asked for but MPS is not available here; use device=cpu or auto.")
    return torch.device(name)


def autocast(device: torch.device, precision: str):
    """Mixed precision context for the forward passes; "32" is a no-op."""
    if precision == "32":
        return contextlib.nullcontext()
    if precision == "16" and device.type != "cuda":
        raise UserError("trainer.precision=16 needs a CUDA device (it uses a gradient scaler); use bf16 or 32.")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def determinism(deterministic: bool, device: torch.device):
    """``trainer.deterministic`` for the duration (torch's global switches are put back after).

    true: deterministic algorithms (an op without one warns), cuDNN's deterministic kernels, no TF32
    in matrix products and convolutions, cuBLAS's fixed workspace: a GPU run repeats bit for bit, so
    resume is exact and two GPUs equal one, at some speed. false (the default): on CUDA, cuDNN times
    its kernels on the first batches and keeps the fastest (``cudnn.benchmark``), which may differ
    from run to run in the last bits. A CPU computes deterministically either way."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        cudnn.deterministic,
        cudnn.benchmark,
        cudnn.allow_tf32,
        matmul.allow_tf32,
    )
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts
        torch.use_deterministic_algorithms(True, warn_only=True)
        cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = True, False, False, False
    elif device.type == "cuda":
        cudnn.benchmark = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = saved[2:]


def seed_step(seed: int, device: torch.device) -> None:
    """Seed the generators a training step draws from: the CPU's and, on a GPU, that device's.
    (``torch.manual_seed`` would also visit every other backend: about 1 ms, a fifth of a small step.)"""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.default_generators[
            device.index if device.index is not None else torch.cuda.current_device()
        ].manual_seed(seed)
    elif device.type == "mps":
        torch.mps.manual_seed(seed)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state`` saved, on the devices present: a run saved with more GPUs than this
    machine has restores the first ones' states, one saved with fewer (or on a CPU) leaves the others
    as they are (every training step re-seeds its device anyway: ``seed_step``)."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        for index, saved in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(saved, index)


def fork_rng(device: torch.device):
    """Sampling for logs inside this context does not change the training trajectory."""
    devices = [device] if device.type == "cuda" else []
    return torch.random.fork_rng(devices=devices)
