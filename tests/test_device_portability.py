"""A run saved on one device resumes on another (shown here on a CPU, with the states a GPU run saves):
the batch iterator's data noise depends only on its position, and CUDA generator states are restored
on the GPUs present, however many were there at save time."""

from __future__ import annotations

import pytest
import torch

from conftest import copy_run
from dgm_cli.data import pipeline
from dgm_cli.engine import runtime

#: what a CUDA generator's get_state() returns: Philox's seed and offset, 16 bytes (a CPU one's is 5,056)
CUDA_GENERATOR_STATE = torch.zeros(16, dtype=torch.uint8)


def iterator(x):
    return pipeline.BatchIterator(x, None, "binary", "dynamic", 8, torch.device("cpu"), seed=1)


def test_the_batch_iterator_state_holds_no_generator_of_a_device():
    x = torch.randint(0, 256, (50, 1, 2, 2), dtype=torch.uint8)
    it = iterator(x)
    next(it)
    assert all(isinstance(v, int) for v in it.state_dict().values())


def test_a_batch_iterator_state_saved_with_a_cuda_generator_resumes_on_a_cpu():
    x = torch.randint(0, 256, (50, 1, 2, 2), dtype=torch.uint8)
    straight, saved = iterator(x), iterator(x)
    for _ in range(9):
        next(straight), next(saved)
    state = {**saved.state_dict(), "noise": CUDA_GENERATOR_STATE}  # as a GPU run (or an older dgm) saved it
    resumed = iterator(x)
    resumed.load_state_dict(state)
    assert all(torch.equal(next(resumed)[0], next(straight)[0]) for _ in range(6))


class FakeCuda:
    """torch.cuda as a machine with ``count`` GPUs shows it: records which device gets which state,
    and fails on a device it does not have, as torch does."""

    def __init__(self, monkeypatch, count: int):
        self.count, self.restored = count, {}
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "set_rng_state", self.set_rng_state)
        monkeypatch.setattr(torch.cuda.random, "set_rng_state", self.set_rng_state)

    def set_rng_state(self, state, device=0):
        index = torch.device(device).index if not isinstance(device, int) else device
        if index >= self.count:
            raise IndexError(f"device {index} of {self.count}")
        self.restored[index] = state


@pytest.mark.parametrize("saved,present", [(4, 2), (1, 2), (2, 2)])
def test_cuda_rng_states_are_restored_on_the_gpus_present(monkeypatch, saved, present):
    states = [torch.full((16,), i, dtype=torch.uint8) for i in range(saved)]
    cuda = FakeCuda(monkeypatch, present)
    runtime.set_rng_state({"torch": torch.get_rng_state(), "cuda": states})
    assert sorted(cuda.restored) == list(range(min(saved, present)))
    assert all(torch.equal(cuda.restored[i], states[i]) for i in cuda.restored)


def test_a_run_saved_on_gpus_resumes_on_a_cpu(toy_run, tmp_path, dgm):
    """The checkpoint of a run on two GPUs (CUDA noise generator, two CUDA RNG states) goes on here."""
    run = copy_run(toy_run, tmp_path)
    path = run / "checkpoints" / "last.pt"
    state = torch.load(path, weights_only=True)
    state["batches"]["noise"] = CUDA_GENERATOR_STATE
    state["rng"]["cuda"] = [CUDA_GENERATOR_STATE, CUDA_GENERATOR_STATE]
    torch.save(state, path)
    dgm("train", f"resume={run}", "trainer.max_steps=7")
    assert torch.load(path, weights_only=True)["step"] == 7
