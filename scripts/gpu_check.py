"""Run this first on a new GPU machine: every family a few steps in fp32, bf16 and fp16, compile on
and off, a 2-GPU DDP run when two GPUs are present, resume across devices and in fp16, deterministic
runs that repeat bit for bit, and AIS on the deep EBM; then one table (pass / fail / refused as designed
/ skipped, steps per second, the first line of any error).

    python scripts/gpu_check.py                 # on a GPU machine
    python scripts/gpu_check.py --only vae      # the rows whose name holds "vae"

On a machine without CUDA it is a dry run: the CPU rows run (every family in fp32, resume and
determinism on the CPU) and every row that needs CUDA is listed as skipped, so the script itself is
checked anywhere. Sizes are tiny (random 28x28 images, small models): a row checks that a path works,
and its steps/s (the logged images/s of steps 11-20 over the batch size) is a first look, not a benchmark.
Exit status 1 if any row failed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

#: one model of each family, at sizes that train in seconds
FAMILIES = {
    "vae": ["model=vae"],
    "pixelcnn": ["model=pixelcnn"],
    "glow": ["model=glow", "model.num_levels=1", "model.depth=2", "model.hidden_channels=8"],
    "dcgan": ["model=dcgan"],
    "ddpm": ["model=ddpm", "model.timesteps=10", "model.channels=8"],
    "dmm": ["model=dmm"],
    "rbm": ["model=rbm", "model.hidden_units=16"],
    "ebm": ["model=ebm", "model.width=8", "model.buffer_size=64", "model.sgld_steps=2", "model.sample_steps=5"],
}
STEPS = [
    "trainer.max_steps=20",
    "trainer.log_every=10",
    "trainer.batch_size=16",
    "trainer.sample_every=0",
    "trainer.progress=false",
    "trainer.eval_batch_size=64",
    "data.val_size=64",
    "trainer.compile=false",
]


@dataclass
class Row:
    name: str
    needs: str = ""  # "cuda", "2 gpus" or "" (runs anywhere)
    result: str = "skipped"
    steps_per_sec: float | None = None
    note: str = ""
    seconds: float = field(default=0.0)


def tiny_images(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    path = folder / "tiny.npz"
    np.savez(path, x=rng.integers(0, 256, (256, 28, 28), dtype=np.uint8), y=np.arange(256) % 10)
    return path


def dgm(*args: str, cwd: Path) -> tuple[int, str]:
    """`dgm *args` in this process (dgm_cli.cli.main); its exit status and the last line of stderr."""
    from dgm_cli import cli

    err, before = io.StringIO(), os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = cli.main(list(args))
    except Exception as exc:  # noqa: BLE001 -- a crash is a row's result
        return 1, f"{type(exc).__name__}: {exc}".splitlines()[0]
    finally:
        os.chdir(before)
    lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
    return code, (lines[-1] if lines else "")


def run_folder(cwd: Path) -> Path:
    (last,) = sorted(cwd.rglob("checkpoints/last.pt"))
    return last.parent.parent


def steps_per_sec(run: Path, batch_size: int = 16) -> float | None:
    """The logged images/s of the last window (after compile and cuDNN's first batches), per step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard")).Reload().Scalars("train/images_per_sec")
    return events[-1].value / batch_size if events else None


def parameters(run: Path) -> dict:
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True, map_location="cpu")
    return {k: v for k, v in state["model"].items() if v.is_floating_point()}


# --- the checks: each returns (result, note) and may set row.steps_per_sec ------------------------
def train_row(row: Row, work: Path, args: list[str], refusal_expected: bool = False) -> None:
    code, last = dgm("train", *args, cwd=work)
    if code == 2 and refusal_expected:
        row.result, row.note = "refused", last[:100]
    elif code == 0:
        row.result, row.steps_per_sec = "pass", steps_per_sec(run_folder(work))
    else:
        row.result, row.note = "FAIL", last[:100]


def resume_row(row: Row, work: Path, first: list[str], then: list[str]) -> None:
    code, last = dgm("train", *first, "trainer.max_steps=10", cwd=work)
    if code == 0:
        code, last = dgm("train", f"resume={run_folder(work)}", "trainer.max_steps=20", *then, cwd=work)
    row.result, row.note = ("pass", "") if code == 0 else ("FAIL", last[:100])


def repeat_row(row: Row, work: Path, args: list[str]) -> None:
    """Two runs of the same config give the same parameters, bit for bit."""
    runs = []
    for i in range(2):
        (work / str(i)).mkdir()
        code, last = dgm("train", *args, cwd=work / str(i))
        if code != 0:
            row.result, row.note = "FAIL", last[:100]
            return
        runs.append(parameters(run_folder(work / str(i))))
    same = all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    row.result, row.note = ("pass", "") if same else ("FAIL", "the two runs' parameters differ")


def ais_row(row: Row, work: Path, args: list[str]) -> None:
    code, last = dgm("train", *args, cwd=work)
    if code == 0:
        code, last = dgm(
            "eval",
            f"checkpoint={run_folder(work)}",
            "limit=32",
            "estimator.ais=true",
            "estimator.ais_runs=8",
            "estimator.ais_temperatures=[20,20,20]",
            "metrics=[nll]",
            cwd=work,
        )
    row.result, row.note = ("pass", "") if code == 0 else ("FAIL", last[:100])


def ddp_row(row: Row, work: Path, args: list[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        f"--master-port={port}",
        "-m",
        "dgm_cli",
        "train",
        *args,
    ]
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=900)
    if proc.returncode == 0:
        row.result, row.steps_per_sec = "pass", steps_per_sec(run_folder(work), 16)
    else:
        row.result, row.note = "FAIL", (proc.stderr.strip().splitlines() or [""])[-1][:100]


def plan(data: Path) -> list[tuple[Row, callable, tuple]]:
    common = ["dataset=npz", f"data.path={data}", *STEPS]
    cuda, cpu = ["trainer.device=cuda"], ["trainer.device=cpu"]
    rows = []
    for name, model in FAMILIES.items():
        rows.append((Row(f"{name} cpu 32"), train_row, (common + model + cpu,)))
        for precision in ("32", "bf16", "16"):
            refused = precision == "16" and name == "ebm"  # its Langevin gradient would be unscaled fp16
            rows.append(
                (
                    Row(f"{name} cuda {precision}", "cuda"),
                    train_row,
                    (common + model + cuda + [f"trainer.precision={precision}"], refused),
                )
            )
    for name in ("vae", "glow", "pixelcnn"):
        rows.append(
            (
                Row(f"{name} cuda compile", "cuda"),
                train_row,
                (
                    [a for a in common if a != "trainer.compile=false"]
                    + FAMILIES[name]
                    + cuda
                    + ["trainer.compile=true"],
                ),
            )
        )
    vae = common + FAMILIES["vae"]
    rows += [
        (Row("resume cpu -> cuda", "cuda"), resume_row, (vae + cpu, cuda)),
        (Row("resume cuda -> cpu", "cuda"), resume_row, (vae + cuda, cpu)),
        (Row("resume cuda fp16 (scaler)", "cuda"), resume_row, (vae + cuda + ["trainer.precision=16"], [])),
        (Row("resume cpu -> cpu"), resume_row, (vae + cpu, [])),
        (Row("deterministic cpu repeats"), repeat_row, (vae + cpu + ["trainer.deterministic=true"],)),
        (
            Row("deterministic cuda repeats", "cuda"),
            repeat_row,
            (common + FAMILIES["glow"] + cuda + ["trainer.deterministic=true"],),
        ),
        (Row("ais ebm cpu"), ais_row, (common + FAMILIES["ebm"] + cpu,)),
        (Row("ais ebm cuda", "cuda"), ais_row, (common + FAMILIES["ebm"] + cuda,)),
        (Row("ddp 2 gpus nccl", "2 gpus"), ddp_row, (common + FAMILIES["glow"] + cuda,)),
    ]
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="", help="run only the rows whose name contains this text")
    args = p.parse_args()
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    device = torch.cuda.get_device_name(0) if gpus else "no CUDA device: a dry run of the CPU rows"
    print(f"torch {torch.__version__}, {gpus} GPU(s): {device}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = tiny_images(Path(tmp))
        for i, (row, check, check_args) in enumerate(plan(data)):
            if args.only not in row.name:
                continue
            rows.append(row)
            missing = (row.needs == "cuda" and not gpus) or (row.needs == "2 gpus" and gpus < 2)
            if missing:
                row.note = f"needs {row.needs}"
                continue
            work = Path(tmp) / f"row{i}"
            work.mkdir()
            start = time.perf_counter()
            check(row, work, *check_args)
            row.seconds = time.perf_counter() - start
            print(f"  {row.name}: {row.result} ({row.seconds:.1f} s)", flush=True)
    width = max(len(r.name) for r in rows)
    print(f"\n| {'check':<{width}} | result | steps/s | s | note |\n|{'-' * (width + 2)}|---|---|---|---|")
    for r in rows:
        rate = f"{r.steps_per_sec:.1f}" if r.steps_per_sec else ""
        took = f"{r.seconds:.1f}" if r.seconds else ""
        print(f"| {r.name:<{width}} | {r.result} | {rate} | {took} | {r.note} |")
    failed = [r.name for r in rows if r.result == "FAIL"]
    print(
        f"\n{len(rows)} rows: {sum(r.result == 'pass' for r in rows)} pass, {len(failed)} fail, "
        f"{sum(r.result == 'refused' for r in rows)} refused as designed, "
        f"{sum(r.result == 'skipped' for r in rows)} skipped"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
