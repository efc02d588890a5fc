"""`dgm eval`: test log-likelihood (nats, bits/dim, the estimator named) and sample-quality metrics."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from omegaconf import DictConfig

from .app import command, model_from_checkpoint
from .config.validate import validate_eval
from .errors import UserError

log = logging.getLogger("dgm.eval")
LIKELIHOOD_METRICS = ("nll",)
SAMPLE_METRICS = ("fid", "kid", "pr", "is", "parzen")


def _rows(report: dict, prefix: str = "") -> list[tuple[str, str]]:
    rows = []
    for k, v in report.items():
        if isinstance(v, dict):
            rows += _rows(v, prefix + k + ".")
        else:
            rows.append((prefix + k, f"{v:.4f}" if isinstance(v, float) else str(v)))
    return rows


def table(report: dict) -> str:
    rows = _rows(report)
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def write_json(report: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, path)


@command("eval", validate_eval)
def main(cfg: DictConfig) -> None:
    from .data import pipeline
    from .engine import checkpoint, runtime
    from .evaluation.likelihood import evaluate_likelihood

    unknown = [m for m in cfg.metrics if m not in LIKELIHOOD_METRICS + SAMPLE_METRICS]
    if unknown:
        raise UserError(f"metrics={list(cfg.metrics)}: unknown {unknown}; allowed: "
                        f"{', '.join(LIKELIHOOD_METRICS + SAMPLE_METRICS)}.")
    device = runtime.pick_device(cfg.device)
    state = checkpoint.load(cfg.checkpoint)
    model, train_cfg, dataset = model_from_checkpoint(state, device, cfg.data_root)
    runtime.seed_everything(cfg.seed)
    x, y = getattr(dataset, cfg.split)
    if len(x) == 0:
        raise UserError(f"split={cfg.split} is empty for this run (data.val_size=0?); use split=test.")
    if cfg.limit:
        x, y = x[: cfg.limit], None if y is None else y[: cfg.limit]
    report = {"checkpoint": state["path"], "model": train_cfg.model.name, "objective": train_cfg.objective.name,
              "dataset": train_cfg.data.name, "split": cfg.split, "train_step": int(state["step"]), "seed": cfg.seed}
    if "nll" in cfg.metrics:
        if model.likelihood is None:
            raise UserError(f"model {model.name} has no likelihood; ask for sample metrics instead "
                            f"(metrics=[{','.join(SAMPLE_METRICS[:3])}]).")
        batch = cfg.batch_size or (100 if model.likelihood != "exact" else train_cfg.trainer.eval_batch_size)
        xt = pipeline.fixed(x, model.data.representation)
        report["likelihood"] = evaluate_likelihood(model, xt, y, batch, device, k=cfg.k)
    sample_metrics = [m for m in cfg.metrics if m in SAMPLE_METRICS]
    if sample_metrics:
        from .evaluation.report import sample_quality_report

        report["sample_quality"] = sample_quality_report(model, dataset, train_cfg, cfg, sample_metrics, device)
    out = Path(cfg.out) if cfg.out else Path(state["path"]).parent / "eval.json"
    write_json(report, out)
    print(table(report))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
