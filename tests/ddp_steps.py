"""Every registered model trained two steps by the engine in two gloo processes (DDP), started once
for all models: ``run(names, folder)`` spawns the processes and returns ``{name: None | error}``.

Two processes are started once (not one torchrun per model: each process pays for its imports), and
each trains the models one after another on a tiny random 28x28 .npz, with the tiny sizes of
test_families.QUICK_MODEL. A model whose step fails under DDP (a parameter left without gradient with
``find_unused_parameters=False``, a collective only one rank reaches) is reported by name; the
process group's timeout turns a hang into an error, and the ranks agree on each model's outcome
before the next one starts.
"""

from __future__ import annotations

import json
import os
import traceback
from datetime import timedelta
from pathlib import Path

WORLD = 2
TIMEOUT_S = 60  # a collective one rank never reaches fails after this long instead of hanging
STEPS = [
    "trainer.max_steps=2",
    "trainer.batch_size=4",
    "trainer.eval_batch_size=8",
    "trainer.sample_every=0",
    "trainer.log_every=1",
    "trainer.progress=false",
    "trainer.compile=false",
    "data.val_size=4",
]


def tiny_images(path: Path, n: int = 48) -> Path:
    """``n`` random 28x28 grayscale images with labels of 10 classes, as an .npz dgm reads."""
    import numpy as np

    rng = np.random.default_rng(0)
    np.savez(path, x=rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), y=np.arange(n) % 10)
    return path


#: smaller than test_families' sizes where validation would cost seconds: 8 hidden units' exact log Z
#: enumerates 256 states, 16 units' 65,536
SMALLER = {"rbm": ["model.hidden_units=8"], "grbm": ["model.hidden_units=8"]}


def overrides(name: str, data: Path) -> list[str]:
    from test_families import QUICK_MODEL

    sizes = {o.partition("=")[0]: o for o in QUICK_MODEL.get(name, []) + SMALLER.get(name, [])}
    domain_b = [f"data.domain_b={data}"] if name == "cyclegan" else []
    return [f"model={name}", "dataset=npz", f"data.path={data}", *domain_b, *STEPS, *sizes.values()]


def train_two_steps(name: str, data: Path, folder: Path) -> None:
    """What `dgm train` does, in a process group that stays up for the next model."""
    import torch

    from conftest import compose_train
    from dgm_cli.data import pipeline
    from dgm_cli.engine import runtime
    from dgm_cli.engine.loop import build
    from dgm_cli.models.registry import build_model

    cfg = compose_train(*overrides(name, data))
    runtime.seed_everything(cfg.seed)
    dataset = pipeline.load(cfg.data)
    representation = pipeline.resolve_representation(cfg.data, cfg.model, dataset)
    model = build_model(cfg.model, cfg.objective, pipeline.spec(dataset, representation, cfg.data.name))
    build(cfg, model, dataset, folder / name, torch.device("cpu")).fit()


def _worker(rank: int, names: list[str], port: int, data: str, folder: str) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank)
    )
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=TIMEOUT_S))
    results: dict[str, str | None] = {}
    try:
        for name in names:
            try:
                train_two_steps(name, Path(data), Path(folder))
                mine = None
            except Exception:  # noqa: BLE001 -- the outcome is reported, the next model goes on
                mine = traceback.format_exc(limit=-2)
            outcomes = [None] * WORLD
            dist.all_gather_object(outcomes, mine)
            errors = [f"rank {r}: {e}" for r, e in enumerate(outcomes) if e]
            results[name] = "\n".join(errors) or None
    finally:
        if rank == 0:
            (Path(folder) / "results.json").write_text(json.dumps(results))
        dist.destroy_process_group()


def run(names: list[str], folder: Path) -> dict[str, str | None]:
    """Spawn the two processes, train ``names`` in them; each name's error text, or None if it trained."""
    import torch.multiprocessing as mp

    from test_distributed import free_port

    data = tiny_images(folder / "tiny.npz")
    os.environ["OMP_NUM_THREADS"] = "1"
    mp.start_processes(
        _worker, args=(names, free_port(), str(data), str(folder)), nprocs=WORLD, join=True, start_method="spawn"
    )
    return json.loads((folder / "results.json").read_text())
