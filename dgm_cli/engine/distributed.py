"""Data-parallel processes: who we are, and the few collectives the engine needs.

`dgm` runs on `torch.distributed` as the field launches it:

* ``torchrun --nproc-per-node=N -m dgm_cli train ...`` sets ``RANK``, ``LOCAL_RANK``,
  ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``;
* on SLURM through Hydra's submitit launcher, one task per GPU: ``init`` exports the same
  variables from SLURM's with submitit's ``TorchDistributedEnvironment``.

The process group uses NCCL for CUDA tensors and gloo for CPU tensors. With one process
every function here is a cheap no-op, so the single-process path is exactly what it was.
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.distributed as dist


def launched() -> bool:
    """Whether this process was started as one of several (torchrun, or a SLURM multi-task job)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return True
    return os.environ.get("SUBMITIT_EXECUTOR") == "slurm" and int(os.environ.get("SLURM_NTASKS", "1")) > 1


def init() -> None:
    """Join the process group if this process is one of several; idempotent."""
    if dist.is_initialized() or not launched():
        return
    if "RANK" not in os.environ:  # a SLURM task started by submitit: derive torchrun's variables
        from submitit.helpers import TorchDistributedEnvironment

        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend)


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over the ranks (in place, and returned)."""
    if active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    """Elementwise maximum of ``t`` over the ranks (in place, and returned): flags raised anywhere."""
    if active():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def shard(n: int) -> slice:
    """This rank's contiguous part of ``n`` items (the first ``n % world`` ranks get one more)."""
    w, r = world_size(), rank()
    size, extra = divmod(n, w)
    start = r * size + min(r, extra)
    return slice(start, start + size + (1 if r < extra else 0))


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """The ranks' ``t`` (shards from ``shard``, possibly of unequal length) concatenated in rank order."""
    if not active():
        return t
    sizes = [torch.zeros(1, dtype=torch.long, device=t.device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([len(t)], device=t.device))
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(longest, *t.shape[1:], dtype=t.dtype, device=t.device)
    padded[: len(t)] = t
    parts = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)])


def wrap(model: torch.nn.Module, device: torch.device, multi_player: bool) -> torch.nn.Module:
    """The model as the engine calls it: ``DistributedDataParallel`` when several processes run.

    ``broadcast_buffers=False``: buffers that must agree (step counters, mask seeds, a GAN's fixed
    latents, ActNorm's initialisation) are updated deterministically from data every rank has, and
    buffers that must not (an RBM's persistent chains, an EBM's replay buffer: each rank its own)
    are left alone. ``find_unused_parameters`` only for models with several optimizers: a GAN's
    critic phase leaves the generator's weights out of the graph, and the generator phase freezes
    the critic's."""
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    with warnings.catch_warnings():  # broadcast_buffers=False is still the way to keep buffers rank-local
        warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
        return DistributedDataParallel(
            model, device_ids=ids, broadcast_buffers=False, find_unused_parameters=multi_player
        )


def destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def agree_on_run() -> list[str]:
    """Before Hydra composes anything under torchrun: join the process group and give every rank
    rank 0's start time and pid (the run folder is named from them), so that all ranks write one
    run folder. Returns the Hydra overrides of this rank: processes other than the first write no
    ``.hydra/`` and no log file of their own (warnings still reach the terminal)."""
    if not (launched() and "RANK" in os.environ):
        return []
    import time

    init()
    stamp = broadcast_object((time.time(), os.getpid()) if is_main() else None)
    os.environ["DGM_RUN_TIME"], os.environ["DGM_RUN_PID"] = str(stamp[0]), str(stamp[1])
    return [] if is_main() else ["hydra.output_subdir=null", "hydra/job_logging=disabled"]
