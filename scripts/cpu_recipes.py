"""Run the CPU recipes (`configs/experiment/*_cpu.yaml`) one after another and write the results page's tables.

Each recipe is a complete experiment for a 2-core CPU: `dgm train experiment=<name>`, then `dgm eval` with
the settings on the recipe's `# dgm eval:` line, then `dgm sample` for a grid to look at. Both read best.pt
(the lowest validation loss: early stopping, as the papers select) where the run validated, else last.pt. The
recipe file is the one place that holds both. Afterwards `dgm report` writes one table per evaluation protocol and
a learning curve per recipe (`curves=val/loss x=wall_time`), and this script writes `recipes.md`: each recipe's
commands, wall times (training, evaluation), its headline number, and the machine.

    DGM_DATA_ROOT=../shared/data python scripts/cpu_recipes.py --out outputs/cpu_recipes
    python scripts/cpu_recipes.py --only vae_cpu,rbm_cpu --out outputs/cpu_recipes   # a few
    python scripts/cpu_recipes.py --report-only --out outputs/cpu_recipes            # tables from runs made

A recipe whose run folder already holds an eval.json is not run again (delete the folder to redo it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

EXPERIMENTS = Path(__file__).resolve().parent.parent / "dgm_cli" / "configs" / "experiment"
EVAL_LINE = "# dgm eval:"
SAMPLE_LINE = "# dgm sample:"
#: the learning curve drawn for a recipe: the first of these tags its run logged
CURVES = ("val/loss", "val/reconstruction_error", "train/loss_generator")


def recipes() -> list[str]:
    return sorted(p.stem for p in EXPERIMENTS.glob("*_cpu.yaml"))


def settings(name: str, marker: str) -> list[str]:
    """The overrides on the recipe's `# dgm eval:` (or `# dgm sample:`) line."""
    for line in (EXPERIMENTS / f"{name}.yaml").read_text().splitlines():
        if line.startswith(marker):
            return shlex.split(line[len(marker) :])
    return []


def dgm(args: list[str], log: Path, check: bool = True) -> float:
    """Run `dgm <args>` with its output in `log`; the wall time in seconds (a failure stops the script
    unless ``check`` is false: then the time is negative)."""
    exe = str(Path(sys.executable).parent / "dgm")
    start = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"$ dgm {shlex.join(args)}\n")
        f.flush()
        rc = subprocess.call([exe, *args], stdout=f, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if rc != 0 and check:
        sys.exit(f"dgm {shlex.join(args)} failed (exit {rc}); see {log}")
    return seconds if rc == 0 else -seconds


def run_recipe(name: str, out: Path) -> dict:
    run = out / name
    timings = out / f"{name}.timings.json"
    if (run / "checkpoints" / "eval.json").exists() and timings.exists():
        return json.loads(timings.read_text())
    log = out / f"{name}.log"
    train = ["train", f"experiment={name}", f"hydra.run.dir={run}"]
    record = {"recipe": name, "train": train, "train_s": dgm(train, log)}
    best = run / "checkpoints" / "best.pt"
    checkpoint = best if best.exists() else run / "checkpoints" / "last.pt"
    record["eval"] = ["eval", f"checkpoint={checkpoint}", *settings(name, EVAL_LINE)]
    record["eval_s"] = dgm(record["eval"], log)
    record["sample"] = [
        "sample",
        f"checkpoint={checkpoint}",
        f"out={run / 'samples.png'}",
        *settings(name, SAMPLE_LINE),
    ]
    record["sample_s"] = dgm(record["sample"], log)
    timings.write_text(json.dumps(record, indent=2) + "\n")
    return record


def headline(run: Path) -> str:
    report = json.loads((run / "checkpoints" / "eval.json").read_text())
    lik, sq = report.get("likelihood"), report.get("sample_quality")
    parts = []
    if lik:
        per_step = lik.get("bound_terms", {}).get("nll_nats_per_step")
        parts.append(
            f"NLL {lik['nll_nats']:.2f} ± {lik['nll_nats_stderr']:.2f} nats, "
            + (f"{per_step:.3f} nats/step" if per_step else f"{lik['bits_per_dim']:.4f} bits/dim")
            + f" ({lik['kind']})"
        )
    if sq and "fid" in sq:
        parts.append(f"FID {sq['fid']:.2f}")
    return "; ".join(parts)


def machine() -> str:
    import torch

    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    return (
        f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores, torch {torch.__version__}, "
        f"OMP_NUM_THREADS={threads}, {time.strftime('%Y-%m-%d')}"
    ).replace("  ", " ")


def write_page(records: list[dict], out: Path) -> Path:
    rows = ["| recipe | train | eval | result | commands |", "|---|---|---|---|---|"]
    for r in records:
        run = out / r["recipe"]
        commands = "<br>".join(f"`dgm {shlex.join(a)}`" for a in (r["train"], r["eval"]))
        rows.append(
            f"| {r['recipe']} | {r['train_s'] / 60:.1f} min | {r['eval_s'] / 60:.1f} min | "
            f"{headline(run)} | {commands} |"
        )
    page = out / "recipes.md"
    page.write_text(f"Machine: {machine()}. Seed 0 (the runs' default).\n\n" + "\n".join(rows) + "\n")
    return page


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="outputs/cpu_recipes", help="folder for the runs and the tables")
    parser.add_argument("--only", default="", help="comma-separated recipe names (default: every *_cpu recipe)")
    parser.add_argument("--report-only", action="store_true", help="write the tables from the runs already made")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    names = [n for n in args.only.split(",") if n] or recipes()
    unknown = sorted(set(names) - set(recipes()))
    if unknown:
        sys.exit(f"unknown recipe(s) {unknown}; the recipes are {recipes()}")
    records = []
    for name in names:
        timings = out / f"{name}.timings.json"
        if args.report_only:
            if timings.exists():
                records.append(json.loads(timings.read_text()))
            continue
        print(f"[{time.strftime('%H:%M:%S')}] {name}", flush=True)
        records.append(run_recipe(name, out))
    runs = [str(out / r["recipe"]) for r in records]
    report = out / "report"
    dgm(["report", *runs, f"out={report}"], out / "report.log")
    for run in runs:  # a learning curve per recipe: their losses are in different units (nats/step, bits/dim)
        for tag in CURVES:  # the first the run logged (an RBM has no tractable validation loss, a GAN none at all)
            if (
                dgm(
                    ["report", run, f"curves={tag}", "x=wall_time", f"out={report / Path(run).name}"],
                    out / "report.log",
                    check=False,
                )
                > 0
            ):
                break
    print(f"wrote {write_page(records, out)} and {report}")


if __name__ == "__main__":
    main()
