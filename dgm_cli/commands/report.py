"""`dgm report <run folders | sweep folders | globs> [plot=<metric> x=<key>] [curves=<tag>] [out=<folder>]`

Gathers finished runs into one table: each run's model and objective, the hyperparameters its sweep
varied, steps, training time, parameter count and device, its final training and validation metrics
(TensorBoard) and what `dgm eval` measured (eval.json: the likelihood with its kind and estimator,
sample-quality metrics). The table is printed and written as report.csv and report.md.

Numbers measured under different protocols (dataset, split and size, representation, binarization,
the likelihood's kind, the sample-quality setting) are never put in one column: the runs are grouped
by protocol, one table per protocol, each headed by what its protocol is (the CSV names it per row).
One exception, on purpose: likelihoods of 8-bit images share one table whatever the model, since each
is a number about the same test values in the same units -- the discrete NLL itself (autoregressive),
a bound on it (DDPM's variational bound), or a density of the dequantized values plus D ln 256 (flows,
flow matching, VAEs with a Gaussian decoder, a GAN's decoder-based AIS), an upper bound on it in
expectation (Theis et al. 2016). Each row then says its kind, and where the density is normalised on a
set larger than the data's [0, 1]^D, that its NLL is biased upward by the mass it puts outside.

``plot=<column> x=<key>`` draws a column against a hyperparameter (``optimizer.lr``), another column
or ``wall_time``; ``curves=<tag>`` draws a TensorBoard scalar (``val/loss``) of every run against
``x=step`` (default) or ``x=wall_time`` (seconds of training). Both write PNGs next to the tables.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig

from ..app import command
from ..atomic import write_text_atomically
from ..data.representations import eight_bit_names
from ..errors import UserError

log = logging.getLogger("dgm.report")
#: Hydra flags that take the next argument as their value (so it is not read as a run folder)
HYDRA_VALUE_FLAGS = {
    "--cfg",
    "-c",
    "--package",
    "-p",
    "--info",
    "-i",
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--experimental-rerun",
    "-sc",
    "--shell-completion",
}
LIKELIHOOD_COLUMNS = [
    "nll_nats",
    "nll_nats_stderr",
    "bits_per_dim",
    "bits_per_dim_stderr",
    "shared_error_nats",
    "conditional_nll_nats",
    "estimator",
]
EIGHT_BIT_PROTOCOL = (
    "8-bit images, one scale: the discrete NLL of the test values (a density of the dequantized "
    "values (k+u)/256 counts -log p + D ln 256, an upper bound in expectation)"
)
SAMPLE_COLUMNS = [
    "fid",
    "fid_floor",
    "kid_mean",
    "kid_std",
    "precision",
    "recall",
    "inception_score_mean",
    "modes_covered",
    "high_quality_share",
    "samples",
]


# --- one row per run ------------------------------------------------------------------------
def protocol_of(evaluation: dict) -> str:
    """What a run's eval.json numbers were measured on, in words; equal strings = comparable numbers."""
    if not evaluation:
        return "not evaluated (`dgm eval` has not run): training and validation metrics only"
    p = evaluation.get("protocol")
    if p is None:
        return "eval.json of an earlier dgm, which did not record its protocol: run `dgm eval` again"
    one_scale = p["representation"] in eight_bit_names() and "likelihood" in evaluation
    parts = [
        f"{p['dataset']}, {p['split']} split ({p['num_examples']:,} examples), "
        f"{EIGHT_BIT_PROTOCOL if one_scale else p['representation']}"
        + (f", binarization: {p['binarization']}" if p.get("binarization") else "")
    ]
    data = p.get("data")
    if data:  # which data exactly: runs on two folders, or on a folder that changed, never share a table
        parts.append(
            f"data: {data['name']}"
            + (f" from {data['path']}" if data.get("path") else "")
            + f", fingerprint {data['fingerprint'][:12]}"
            + ("" if data.get("own", True) else ", OTHER DATA scored on purpose, not the run's own")
        )
    if one_scale:
        parts.append("NLL: each row's kind in its column")
    elif "likelihood" in evaluation:
        parts.append(f"NLL: {evaluation['likelihood']['kind']}")
    sq = evaluation.get("sample_quality")
    if sq:
        parts.append(
            f"samples: {sq.get('num_generated', '?'):,} generated"
            + (f", features: {sq['feature_network']}" if sq.get("feature_network") else "")
        )
    return "; ".join(parts)


def row_of(run, label: str, swept: list[str], data_cache: dict) -> dict[str, Any]:
    from ..evaluation.runs import config_value, flatten

    e = run.eval
    chosen = list((e.get("records") or {}).values())
    row: dict[str, Any] = {
        "run": label,
        "protocol": protocol_of(e),
        "model": config_value(run.config, "model"),
        "evaluation": ", ".join(Path(c).stem for c in dict.fromkeys(chosen)) or None,
        "dataset": config_value(run.config, "dataset"),
        "objective": config_value(run.config, "objective"),
    }
    for key in swept:
        row[key] = (
            config_value(run.config, key) if config_value(run.config, key) is not None else run.overrides.get(key)
        )
    seconds = run.training_seconds()
    row.update(
        {
            "train_step": run.train_step,
            "wall_time_s": None if seconds is None else round(seconds, 1),
            "num_parameters": run.num_parameters(data_cache),
            "device": run.device,
        }
    )
    for tag in sorted(run.scalars):
        if tag == "train/loss" or tag.startswith("train/loss_") or tag.startswith("val/"):
            row[tag] = run.final(tag)
    likelihood = e.get("likelihood") or {}
    for key in LIKELIHOOD_COLUMNS:
        row[key] = likelihood.get(key)
    one_scale = (e.get("protocol") or {}).get("representation") in eight_bit_names() and bool(likelihood)
    row["kind"] = f"{likelihood.get('kind')} ({e['protocol']['representation']})" if one_scale else None
    support = likelihood.get("density_support")
    row["density_bias"] = (
        f"normalised on {support}, not [0,1]^D: NLL biased up by the mass outside" if support else None
    )
    row["conditional_nll_nats"] = (likelihood.get("conditional") or {}).get("nll_nats")
    ref = e.get("reference") or {}  # data with a known density: its own NLL on these examples, the model's gap
    truth = ref.get("true_nll") or {}
    row["true_nll_nats"], row["true_nll_nats_stderr"] = truth.get("nll_nats"), truth.get("nll_nats_stderr")
    row["gap_to_truth_nats"] = ref.get("model_gap_nats")
    row["gap_to_truth_nats_stderr"] = ref.get("model_gap_nats_error", ref.get("model_gap_nats_stderr"))
    row["nll_nats_per_step"] = (likelihood.get("bound_terms") or {}).get("nll_nats_per_step")  # sequences
    prepared = likelihood.get("prepared") or {}
    row["sigma"] = prepared.get("sigma")  # a GAN's decoder AIS: its observation noise and BDMC's gap
    row["bdmc_gap_nats"] = prepared.get("bdmc_gap_nats")
    row["nll_nats_reverse_end"] = (  # AIS's bracket: the NLL with the reverse-AIS log Z in place of the forward one
        row["nll_nats"] + prepared["reverse_log_z"] - prepared["log_z"]
        if row["nll_nats"] is not None and {"log_z", "reverse_log_z"} <= set(prepared)
        else None
    )
    sq = e.get("sample_quality") or {}
    for key in SAMPLE_COLUMNS:
        row[key] = sq.get(key)
    row.update({f"config.{k}": v for k, v in flatten(run.config).items()})  # the whole config, for the CSV
    return row


def every_evaluation(runs: list, names: list[str]) -> tuple[list, list[str]]:
    """Each run once per evaluation record it keeps (checkpoints/evals/), named ``<run> [<record>]``;
    a run without records keeps its one row."""
    import dataclasses

    from .evaluate import RECORDS, records

    out_runs, out_names = [], []
    for run, name in zip(runs, names):
        kept = records(run.path / "checkpoints")
        for record, report in kept or [(None, run.eval)]:
            out_runs.append(
                dataclasses.replace(
                    run, eval={**report, "records": {"all": f"{RECORDS}/{record}.json"}} if record else report
                )
            )
            out_names.append(f"{name} [{record}]" if record else name)
    return out_runs, out_names


def labels(paths: list[Path]) -> list[str]:
    """Short names: a sweep's job as <sweep folder>/<job number> (its swept values are columns), any other
    run relative to the folder all runs share (the whole path of a lone run)."""
    from ..evaluation.runs import sweep_of

    common = Path(os.path.commonpath([str(p) for p in paths])) if len(paths) > 1 else paths[0].parent
    out = []
    for p in paths:
        sweep = sweep_of(p)
        out.append(f"{sweep.name}/{p.name.split('_')[0]}" if sweep is not None else str(p.relative_to(common)))
    return out


# --- tables -------------------------------------------------------------------------------------
def _number(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    return f"{v:.4g}" if math.isfinite(v) else str(v)


def _duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return ""
    return (
        f"{seconds:.0f} s"
        if seconds < 120
        else (f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h")
    )


def _plus_minus(v, err) -> str:
    return "" if v is None else (f"{v:.2f} ± {err:.2f}" if err is not None and math.isfinite(err) else f"{v:.2f}")


def display(rows: list[dict], swept: list[str]) -> tuple[list[str], list[list[str]]]:
    """Headers and cells for people: errors beside their numbers, empty columns left out."""
    swept = [k for k in swept if k not in ("model", "objective")]
    val_tags = sorted({k for r in rows for k in r if k.startswith("val/") or k.startswith("train/loss")})
    columns = [
        ("run", lambda r: r["run"]),
        ("best trial", lambda r: "best" if r.get("best_trial") else ""),
        ("model", lambda r: r["model"]),
        ("objective", lambda r: r["objective"]),
        *[(k, lambda r, k=k: _number(r.get(k))) for k in swept],
        ("steps", lambda r: _number(r["train_step"])),
        ("train time", lambda r: _duration(r["wall_time_s"])),
        ("params", lambda r: _number(r["num_parameters"])),
        ("device", lambda r: r["device"] or ""),
        *[(tag, lambda r, tag=tag: _number(r.get(tag))) for tag in val_tags],
        ("NLL (nats)", lambda r: _plus_minus(r["nll_nats"], r["nll_nats_stderr"])),
        ("true NLL", lambda r: _plus_minus(r.get("true_nll_nats"), r.get("true_nll_nats_stderr"))),
        (
            "gap to truth",
            lambda r: (
                ""
                if r.get("gap_to_truth_nats") is None
                else f"{r['gap_to_truth_nats']:.3f} ± {r['gap_to_truth_nats_stderr']:.3f}"
            ),
        ),
        ("kind", lambda r: r.get("kind") or ""),
        ("bits/dim", lambda r: _number(r["bits_per_dim"])),
        ("nats/step", lambda r: _number(r["nll_nats_per_step"])),
        ("shared error", lambda r: _number(r["shared_error_nats"])),
        ("sigma", lambda r: _number(r.get("sigma"))),
        ("BDMC gap (nats)", lambda r: _number(r.get("bdmc_gap_nats"))),
        (
            "NLL, reverse-AIS end",
            lambda r: "" if r.get("nll_nats_reverse_end") is None else f"{r['nll_nats_reverse_end']:.2f}",
        ),
        ("conditional NLL", lambda r: _number(r["conditional_nll_nats"])),
        ("estimator", lambda r: r["estimator"] or ""),
        ("density", lambda r: r.get("density_bias") or ""),
        ("evaluation", lambda r: r.get("evaluation") or ""),
        ("FID (floor)", lambda r: "" if r["fid"] is None else f"{r['fid']:.4g} ({_number(r['fid_floor'])})"),
        ("KID", lambda r: _plus_minus(r["kid_mean"], r["kid_std"]) if r["kid_mean"] is not None else ""),
        ("precision", lambda r: _number(r["precision"])),
        ("recall", lambda r: _number(r["recall"])),
        ("IS", lambda r: _number(r["inception_score_mean"])),
        ("modes", lambda r: _number(r["modes_covered"])),
        ("HQ share", lambda r: _number(r["high_quality_share"])),
    ]
    cells = [[str(get(r) if get(r) is not None else "") for _, get in columns] for r in rows]
    keep = [i for i in range(len(columns)) if any(c[i] for c in cells)]
    return [columns[i][0] for i in keep], [[c[i] for i in keep] for c in cells]


def text_table(headers: list[str], cells: list[list[str]]) -> str:
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(c, widths)) for c in cells]
    return "\n".join(lines)


def markdown_table(headers: list[str], cells: list[list[str]]) -> str:
    esc = lambda s: s.replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, headers)) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(map(esc, c)) + " |" for c in cells]
    return "\n".join(lines)


def groups(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["protocol"], []).append(r)
    return out


def csv_text(rows: list[dict]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


# --- plots ---------------------------------------------------------------------------------------
def _numeric(v) -> Optional[float]:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def x_value(row: dict, run, key: str):
    from ..evaluation.runs import config_value

    if key == "wall_time":
        return row.get("wall_time_s")
    return row[key] if key in row else config_value(run.config, key)


#: axis labels of the columns a plot shows most (others are shown as their column's name)
READABLE = {
    "nll_nats": "NLL (nats)",
    "bits_per_dim": "bits/dim",
    "fid": "FID",
    "kid_mean": "KID",
    "nll_nats_per_step": "NLL (nats per step)",
    "val/loss": "validation loss",
    "train/loss": "training loss",
    "inception_score_mean": "Inception score",
    "modes_covered": "modes covered",
}


def readable(column: str) -> str:
    return READABLE.get(column, column)


#: hyperparameters that act by their order of magnitude: plotted on a log axis whatever their range
SCALE_PARAMETERS = ("lr", "weight_decay", "eps", "grad_clip", "ema_decay")


def is_scale_parameter(key: str) -> bool:
    last = key.rsplit(".", 1)[-1]
    return last in SCALE_PARAMETERS or last.endswith("_lr")


def other_data_evaluations(runs: list, names: list[str]) -> tuple[list, list[str]]:
    """The runs again, once per other data set each was scored on on purpose (``dgm eval dataset=...``),
    with the most thorough of those records: rows of their own, in tables of their own (their protocol
    names the data), never in place of the run's own eval.json."""
    import dataclasses

    from .evaluate import most_thorough, records

    out_runs, out_names = [], []
    for run, name in zip(runs, names):
        other: dict[tuple, list] = {}
        for record, report in records(run.path / "checkpoints"):
            data = report["protocol"].get("data") or {}
            if not data.get("own", True):
                other.setdefault((data["name"], data["fingerprint"]), []).append((record, report))
        for (data_name, _), kept in other.items():
            out_runs.append(dataclasses.replace(run, eval=most_thorough(kept)))
            out_names.append(f"{name} [on {data_name}]")
    return out_runs, out_names


def plot_metric(rows: list[dict], runs: list, metric: str, x: str, swept: list[str], out: Path) -> Path:
    from ..evaluation.plots import Series, line_plot

    numeric = sorted({k for r in rows for k, v in r.items() if _numeric(v) is not None})
    shown = ", ".join(k for k in numeric if not k.startswith("config."))
    if metric not in numeric:
        raise UserError(
            f"plot={metric} is not a number any of these runs has; columns with numbers: {shown}, "
            "and config.<key> for the run's config."
        )
    protocols = list(groups(rows))
    series: dict[str, Series] = {}
    for r, run in zip(rows, runs):
        xv, yv = x_value(r, run, x), _numeric(r.get(metric))
        if xv is None or yv is None:
            continue
        others = [f"{k}={r.get(k)}" for k in swept if k != x and k not in ("model",)]
        name = " ".join(
            [f"P{protocols.index(r['protocol']) + 1}" if len(protocols) > 1 else "", str(r["model"]), *others]
        ).strip()
        s = series.setdefault(name, Series(name, [], [], []))
        s.x.append(xv if isinstance(xv, str) else float(xv))
        s.y.append(yv)
        s.err.append(_numeric(r.get(f"{metric}_stderr")))
    if not series:
        raise UserError(
            f"no run has both {metric} and x={x}; x is a config key (optimizer.lr), a column ({shown}) or wall_time."
        )
    xs = [v for s in series.values() for v in s.x if not isinstance(v, str)]
    log_x = bool(xs) and min(xs) > 0 and (is_scale_parameter(x) or max(xs) / min(xs) > 100)
    return line_plot(
        list(series.values()),
        out / f"plot_{_slug(metric)}_vs_{_slug(x)}.png",
        f"{readable(metric)} against {x}",
        x if x != "wall_time" else "training time (s)",
        readable(metric),
        log_x,
    )


def plot_curves(runs: list, names: list[str], tag: str, x: str, out: Path) -> Path:
    from ..evaluation.plots import Series, line_plot

    series = []
    for run, name in zip(runs, names):
        points = run.scalars.get(tag, [])
        if points:
            xs = [p[0] if x == "step" else run.training_seconds(p[1]) for p in points]
            series.append(Series(name, xs, [p[2] for p in points]))
    if not series:
        tags = sorted({t for run in runs for t in run.scalars})
        raise UserError(
            f"curves={tag}: no run logged that TensorBoard tag; tags these runs have: {', '.join(tags) or 'none'}."
        )
    return line_plot(
        series,
        out / f"curves_{_slug(tag)}.png",
        f"{readable(tag)} during training",
        "step" if x == "step" else "training time (s)",
        readable(tag),
    )


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s)


# --- the command -----------------------------------------------------------------------------------
def validate_report(cfg: DictConfig) -> None:
    from ..settings.validate import check_out, one_of

    check_out(cfg, "report", "folder")
    one_of(cfg, "evals", ("best", "all"))
    if not cfg.runs:
        raise UserError(
            "give the runs to report: `dgm report <run folders, sweep folders or globs>` "
            "(e.g. dgm report outputs/train/multirun/2026-01-01/12-00-00-123)."
        )


def render(rows: list[dict], swept: list[str]) -> tuple[str, str]:
    """The printed tables and the Markdown file: one table per protocol, each headed by it."""
    grouped = groups(rows)
    printed, markdown = [], ["# dgm report", "", f"{len(rows)} runs; swept: {', '.join(swept) or 'nothing'}.", ""]
    if len(grouped) > 1:
        note = f"{len(grouped)} evaluation protocols: one table each; numbers compare only within a table."
        printed.append(note)
        markdown += [note, ""]
    for i, (protocol, members) in enumerate(grouped.items(), 1):
        headers, cells = display(members, swept)
        printed += [f"\nP{i}: {protocol}", text_table(headers, cells)]
        markdown += [f"## P{i}: {protocol}", "", markdown_table(headers, cells), ""]
    return "\n".join(printed), "\n".join(markdown)


def curve_names(rows: list[dict], runs: list, swept: list[str]) -> list[str]:
    """A sweep's job by its model and swept values (lr=0.001), any other run by its label."""
    from ..evaluation.runs import sweep_of

    return [
        " ".join(
            [
                r["run"] if sweep_of(run.path) is None else str(r["model"]),
                *(f"{k.split('.')[-1]}={r[k]}" for k in swept if k != "model" and r.get(k) is not None),
            ]
        )
        for r, run in zip(rows, runs)
    ]


def report(cfg: DictConfig, out: Path) -> dict[str, Path]:
    """Gather, print and write; returns the files written."""
    from ..evaluation.runs import Run, best_trials, find_runs, swept_keys

    logging.getLogger("tensorboard").setLevel(logging.WARNING)  # its reader chats about every event file
    paths = find_runs(list(cfg.runs))
    runs = [Run.read(p) for p in paths]
    swept = swept_keys(runs)
    names = labels(paths)
    if cfg.evals == "all":  # a row for every evaluation kept beside each run's checkpoint
        runs, names = every_evaluation(runs, names)
    else:  # and each run scored on other data on purpose: a row of its own, in a table of its own
        extra_runs, extra_names = other_data_evaluations(runs, names)
        runs, names = runs + extra_runs, names + extra_names
    data_cache: dict = {}
    rows = [row_of(run, name, swept, data_cache) for run, name in zip(runs, names)]
    best = best_trials(runs)  # an Optuna search: the trial its optimization_results.yaml names
    for row, run in zip(rows, runs):
        if run.path in best:
            row["best_trial"] = best[run.path]
    printed, markdown = render(rows, swept)
    out.mkdir(parents=True, exist_ok=True)
    written = {"csv": out / "report.csv", "markdown": out / "report.md"}
    write_text_atomically(written["csv"], csv_text(rows))
    write_text_atomically(written["markdown"], markdown)
    if cfg.plot:
        x = cfg.x or (swept[0] if swept else "wall_time")
        written["plot"] = plot_metric(rows, runs, cfg.plot, x, swept, out)
    if cfg.curves:
        x = cfg.x if cfg.x in ("step", "wall_time") else "step"
        written["curves"] = plot_curves(runs, curve_names(rows, runs, swept), cfg.curves, x, out)
    print(printed)
    for path in written.values():
        print(f"wrote {path}")
    return written


@command("report", validate_report)
def app(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    report(cfg, Path(cfg.out) if cfg.out else Path(HydraConfig.get().runtime.output_dir))


def _quote(path: str) -> str:
    return "'" + path.replace("\\", "\\\\").replace("'", "\\'") + "'"


def command_line(argv: list[str]) -> list[str]:
    """Bare arguments are run folders, sweep folders or globs: they become ``runs=[...]``. ``report.<key>=``
    is read as ``<key>=`` (the report's keys are top-level)."""
    out, runs, expect_value = [], [], False
    for a in argv:
        if expect_value or a.startswith("-"):
            out.append(a)
            expect_value = a in HYDRA_VALUE_FLAGS
        elif "=" in a:
            out.append(a[len("report.") :] if a.startswith("report.") else a)
        else:
            runs.append(a)
    if runs:
        out.append("runs=[" + ",".join(_quote(r) for r in runs) + "]")
    return out


def main() -> None:
    sys.argv = sys.argv[:1] + command_line(sys.argv[1:])
    app()


if __name__ == "__main__":
    main()
