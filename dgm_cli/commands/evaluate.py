"""`dgm eval`: test log-likelihood (nats, bits/dim, the kind of number and the estimator named) and
sample-quality metrics, printed and written to eval.json (its schema: docs/eval_json.md)."""
from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ..app import command, model_from_checkpoint
from ..settings.validate import validate_eval
from ..atomic import write_text_atomically
from ..errors import UserError

log = logging.getLogger("dgm.eval")
SCHEMA = "dgm-eval-v2"
LIKELIHOOD_METRICS = ("nll",)
#: estimator.<key>=... : keys of the model's own settings, unknown to the generic schema
ESTIMATOR_OVERRIDE = re.compile(r"^estimator\.[A-Za-z_][\w.]*=")


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


def headline(report: dict) -> str:
    """One line per reported number: what it is, on what data."""
    p, lines = report["protocol"], []
    data = f"{p['num_examples']:,} {p['split']} examples of {p['dataset']}, {p['representation']}" + (
        f" ({p['binarization']})" if p.get("binarization") else "")
    lik = report.get("likelihood")
    if lik:
        how = lik["estimator"] if lik["estimator"].startswith(lik["kind"]) else f"{lik['kind']}: {lik['estimator']}"
        lines.append(f"NLL {lik['nll_nats']:.2f} ± {lik['nll_nats_stderr']:.2f} nats, {lik['bits_per_dim']:.4f} "
                     f"bits/dim [{how}] on {data}")
        if "conditional" in lik:
            c = lik["conditional"]
            lines.append(f"conditional NLL -log p(x|y) {c['nll_nats']:.2f} ± {c['nll_nats_stderr']:.2f} nats "
                         "[conditional: given the true labels; not comparable with -log p(x)]")
    sq = report.get("sample_quality")
    if sq:
        shown = {k: sq[k] for k in ("fid", "kid_mean", "precision", "recall", "inception_score_mean",
                                    "modes_covered", "high_quality_share", "parzen_log_likelihood") if k in sq}
        lines.append(", ".join(f"{k} {v:.4g}" for k, v in shown.items()) + f" [{sq.get('samples', '')}]")
    return "\n".join(lines)


def write_json(report: dict, path: Path) -> None:
    write_text_atomically(path, json.dumps(report, indent=2) + "\n")


def merge_previous(report: dict, path: Path) -> dict:
    """Keep the sections of an earlier eval.json of the same checkpoint, step and protocol that this
    run did not recompute (a likelihood, then sample metrics: one file holds both)."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return report
    same = all(old.get(k) == report[k] for k in ("schema", "checkpoint", "train_step", "protocol"))
    if same:
        for section in ("likelihood", "sample_quality"):
            if section in old and section not in report:
                report[section] = old[section]
    return report


def resolve_metrics(asked, model, settings: dict | None = None) -> tuple[bool, list[str]]:
    """(likelihood?, sample metrics): what was asked for, or, when nothing was, the model's own: its
    likelihood where it has one, sample-quality metrics where it has none. A model whose estimator
    settings hold an ``ais`` switch (the deep EBM) estimates its likelihood only when that is true."""
    from ..evaluation import samples

    on_request = (settings or {}).get("ais")
    if on_request is False and asked is not None and "nll" in asked:
        raise UserError(f"model {model.name}'s log-likelihood is an AIS estimate computed only on request: add "
                        "estimator.ais=true.")
    if asked is None:
        if on_request is not None:
            return (True, []) if on_request else (False, samples.default_metrics(model))
        return (True, []) if model.likelihood is not None else (False, samples.default_metrics(model))
    asked = list(asked)
    unknown = [m for m in asked if m not in LIKELIHOOD_METRICS + samples.METRICS]
    if unknown:
        raise UserError(f"metrics={asked}: unknown {unknown}; allowed: {', '.join(LIKELIHOOD_METRICS + samples.METRICS)}.")
    if "nll" in asked and model.likelihood is None:
        raise UserError(f"model {model.name} has no likelihood, so metrics=[nll] cannot be computed; leave "
                        f"metrics= out for its sample-quality metrics ({', '.join(samples.default_metrics(model))}).")
    return "nll" in asked, [m for m in asked if m != "nll"]


def evaluate(cfg: DictConfig, state: dict, device) -> dict:
    """The report of one checkpoint (see docs/eval_json.md)."""
    from ..data import pipeline
    from ..engine import runtime
    from ..evaluation import estimators, likelihood
    from ..evaluation.samples import sample_quality_report

    model, train_cfg, dataset = model_from_checkpoint(state, device, cfg.data_root)
    settings = estimators.estimator_settings(model, OmegaConf.to_container(cfg.estimator))
    want_nll, sample_metrics = resolve_metrics(cfg.metrics, model, settings)
    runtime.seed_everything(cfg.seed)
    x, y = getattr(dataset, cfg.split)
    if len(x) == 0:
        raise UserError(f"split={cfg.split} is empty for this run (data.val_size=0?); use split=test.")
    if cfg.limit:
        x, y = x[: cfg.limit], None if y is None else y[: cfg.limit]
    rep = model.data.representation
    eval_binarization, train_binarization = likelihood.binarization(train_cfg.data.name, rep, train_cfg.data.binarize)
    report = {
        "schema": SCHEMA, "checkpoint": state["path"], "model": train_cfg.model.name, "family": model.family,
        "objective": train_cfg.objective.name, "dataset": train_cfg.data.name, "train_step": int(state["step"]),
        "num_parameters": sum(p.numel() for p in model.parameters()), "device": str(device), "seed": cfg.seed,
        "protocol": {"dataset": train_cfg.data.name, "split": cfg.split, "num_examples": len(x),
                     "representation": rep, "binarization": eval_binarization,
                     **({"domain_b": dataset.domain_names[1]} if dataset.domains else {})},
        "training_binarization": train_binarization,
    }
    if want_nll:
        batch = cfg.batch_size or (100 if model.likelihood != "exact" else train_cfg.trainer.eval_batch_size)
        prior = likelihood.label_prior(dataset.train[1], model.data.num_classes) if likelihood.is_conditional(model) else None
        report["likelihood"] = likelihood.evaluate_likelihood(model, pipeline.fixed(x, rep), y, batch, device,
                                                              log_prior=prior, **settings)
    if sample_metrics:
        report["sample_quality"] = sample_quality_report(model, dataset, train_cfg, cfg, sample_metrics, device,
                                                         eval_binarization or "")
    return report


def save(report: dict, out: Path, quiet: bool = False) -> None:
    """Merged with what an earlier evaluation of the same checkpoint and protocol wrote, then written."""
    report = merge_previous(report, out)
    write_json(report, out)
    print(headline(report))
    if not quiet:
        print(table(report))
    print(f"wrote {out}")


@command("eval", validate_eval)
def app(cfg: DictConfig) -> None:
    from ..engine import checkpoint, distributed, runtime

    distributed.init()  # under torchrun, each process evaluates its part of the split
    device = runtime.pick_device(cfg.device, distributed.local_rank() if distributed.active() else None)
    paths = checkpoint.resolve_all(cfg.checkpoint)
    if len(paths) > 1 and cfg.out:
        raise UserError(f"checkpoint={cfg.checkpoint!r} holds {len(paths)} runs, and out= names one file: leave out= "
                        f"out (each run's eval.json goes beside its checkpoint), or give one run.")
    refused = []
    for i, path in enumerate(paths, 1):
        if len(paths) > 1:
            print(f"[{i}/{len(paths)}] {path.parent.parent}")
        try:
            state = checkpoint.load(str(path))
            report = evaluate(cfg, state, device)
        except UserError as exc:
            if len(paths) == 1:
                raise
            refused.append(path)
            print(f"[{i}/{len(paths)}] not evaluated: {exc}")
            continue
        if distributed.is_main():
            save(report, Path(cfg.out) if cfg.out else path.parent / "eval.json", quiet=len(paths) > 1)
    distributed.destroy()
    if refused:
        raise UserError(f"{len(refused)} of the {len(paths)} runs under {cfg.checkpoint!r} could not be evaluated "
                        f"(each said why above): {', '.join(str(p.parent.parent) for p in refused)}.")


def main() -> None:
    """The estimator's keys belong to the model (``estimator.k=5000`` for a VAE), so the eval schema
    cannot list them and Hydra would ask for ``+estimator.k``: the ``+`` is added here, and the model
    refuses keys it does not take (evaluation/estimators.py)."""
    sys.argv = [("+" + a) if ESTIMATOR_OVERRIDE.match(a) else a for a in sys.argv]
    app()


if __name__ == "__main__":
    main()
