"""How much does `dgm train` cost over a bare PyTorch loop?

The same VAE (the default `model=vae`, Burda et al.'s 784-200-200-50), the same batch size, the
same device, N steps each, in one run: `dgm train` as a user runs it (its throughput read from
the `train/images_per_sec` it logs, which excludes start-up) against a bare loop of ~30 lines over
a tensor of MNIST. Runs alternate, and the medians are compared.

    DGM_DATA_ROOT=../shared/data python scripts/bench_overhead.py --steps 1000 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def bare_loop(root: str, steps: int, batch_size: int, device: str, seed: int = 0) -> float:
    """images/s of a bare PyTorch loop training the same VAE (after 20 warm-up steps)."""
    from dgm_cli.models.base import DataSpec
    from dgm_cli.models.vae.vae import VAE, VAEConfig

    torch.manual_seed(seed)
    from dgm_cli.data import files

    x_all = files.load_idx(root, "MNIST", download=False)[0][0].to(device)  # (N, 1, 28, 28) uint8
    model = VAE(VAEConfig(), DataSpec((1, 28, 28), "binary"), {"name": "elbo"}).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    per_epoch = len(x_all) // batch_size
    perm = torch.randperm(len(x_all), device=device)
    for step in range(steps + 20):
        if step == 20:
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        i = step % per_epoch
        if i == 0:
            perm = torch.randperm(len(x_all), device=device)
        x = torch.bernoulli(x_all[perm[i * batch_size : (i + 1) * batch_size]].float() / 255)
        loss, _ = model.loss(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device == "cuda":
        torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - start)


def dgm_train(steps: int, batch_size: int, device: str) -> float:
    """images/s that `dgm train` logs, averaged over its log windows after the first."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with tempfile.TemporaryDirectory() as tmp:
        dgm = str(Path(sys.executable).parent / "dgm")
        subprocess.run(
            [
                dgm,
                "train",
                f"trainer.max_steps={steps + 50}",
                "trainer.log_every=50",
                "trainer.sample_every=0",
                f"trainer.batch_size={batch_size}",
                f"trainer.device={device}",
                "trainer.progress=false",
            ],
            cwd=tmp,
            check=True,
            capture_output=True,
        )
        (tb,) = Path(tmp).glob("outputs/train/*/*/tensorboard")
        events = EventAccumulator(str(tb)).Reload().Scalars("train/images_per_sec")
        return statistics.fmean(e.value for e in events[1:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    root = os.environ.get("DGM_DATA_ROOT", "./data")
    bare, ours = [], []
    for _ in range(args.repeats):
        bare.append(bare_loop(root, args.steps, args.batch_size, args.device))
        ours.append(dgm_train(args.steps, args.batch_size, args.device))
    b, d = statistics.median(bare), statistics.median(ours)
    print(
        f"device={args.device} batch={args.batch_size} steps={args.steps} repeats={args.repeats} "
        f"threads={torch.get_num_threads()}"
    )
    print(f"bare loop : {b:10.0f} images/s   (runs: {', '.join(f'{v:.0f}' for v in bare)})")
    print(f"dgm train : {d:10.0f} images/s   (runs: {', '.join(f'{v:.0f}' for v in ours)})")
    print(f"ratio dgm/bare: {d / b:.3f}")


if __name__ == "__main__":
    main()
