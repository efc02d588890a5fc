"""Data-parallel scaling: images/s of `dgm train` under torchrun with 1..N processes, and its
overhead against a bare torchrun + DistributedDataParallel loop of the same model.

The model is the default VAE (784-200-200-50) on dynamically binarized MNIST at a fixed *global*
batch (each of N processes takes batch/N). On CPU every process gets one thread (gloo); on GPUs
one GPU per process (NCCL). `dgm train`'s throughput is read from the `train/images_per_sec` it
logs (start-up excluded); the bare loop times the same steps after a warm-up. Runs alternate and
the medians are compared.

    DGM_DATA_ROOT=../shared/data python scripts/bench_scaling.py --procs 1 2 --steps 600 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int, args: list[str], cwd: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={nproc}",
        f"--master-port={free_port()}",
        *args,
    ]
    return subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True, text=True)


def bare_worker(steps: int, batch_size: int) -> None:
    """One process of the bare loop (run under torchrun): DDP over the same VAE, Adam, its shard of
    each global batch; rank 0 prints the global images/s."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from dgm_cli.models.base import DataSpec
    from dgm_cli.models.vae.vae import VAE, VAEConfig

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
    torch.manual_seed(0)
    from dgm_cli.data import files

    x_all = files.load_idx(os.environ.get("DGM_DATA_ROOT", "./data"), "MNIST", download=False)[0][0].to(device)
    model = VAE(VAEConfig(), DataSpec((1, 28, 28), "binary"), {"name": "elbo"}).to(device)
    net = DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    local = batch_size // world
    per_epoch = len(x_all) // batch_size
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(x_all), generator=g).to(device)
    for step in range(steps + 20):
        if step == 20:
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
        i = step % per_epoch
        if i == 0:
            perm = torch.randperm(len(x_all), generator=g).to(device)
        idx = perm[i * batch_size + rank * local : i * batch_size + (rank + 1) * local]
        x = torch.bernoulli(x_all[idx].float() / 255)
        loss, _ = net(x, None, "model")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if cuda:
        torch.cuda.synchronize()
    if rank == 0:
        print(f"IMAGES_PER_SEC {steps * batch_size / (time.perf_counter() - start)}")
    dist.destroy_process_group()


def bare(nproc: int, steps: int, batch_size: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = torchrun(nproc, [__file__, "--worker", "--steps", str(steps), "--batch-size", str(batch_size)], tmp)
    return float(next(ln for ln in out.stdout.splitlines() if ln.startswith("IMAGES_PER_SEC")).split()[1])


def dgm(nproc: int, steps: int, batch_size: int) -> float:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with tempfile.TemporaryDirectory() as tmp:
        torchrun(
            nproc,
            [
                "-m",
                "dgm_cli",
                "train",
                f"trainer.max_steps={steps + 50}",
                "trainer.log_every=50",
                "trainer.sample_every=0",
                f"trainer.batch_size={batch_size}",
                "trainer.progress=false",
            ],
            tmp,
        )
        (tb,) = Path(tmp).glob("outputs/train/*/*/tensorboard")
        events = EventAccumulator(str(tb)).Reload().Scalars("train/images_per_sec")
        return statistics.fmean(e.value for e in events[1:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=128, help="the global batch")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        bare_worker(args.steps, args.batch_size)
        return
    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"CPU ({os.cpu_count()} cores), 1 thread per process"
    )
    print(
        f"device: {device}; torch {torch.__version__}; global batch {args.batch_size}; {args.steps} steps; "
        f"median of {args.repeats}"
    )
    print("| processes | bare DDP loop (images/s) | dgm train (images/s) | dgm / bare | scaling efficiency (dgm) |")
    print("|---|---|---|---|---|")
    base = None
    for n in args.procs:
        b, d = [], []
        for _ in range(args.repeats):
            b.append(bare(n, args.steps, args.batch_size))
            d.append(dgm(n, args.steps, args.batch_size))
        mb, md = statistics.median(b), statistics.median(d)
        base = base or md / n
        print(f"| {n} | {mb:,.0f} | {md:,.0f} | {md / mb:.3f} | {md / (n * base):.2f} |", flush=True)


if __name__ == "__main__":
    main()
