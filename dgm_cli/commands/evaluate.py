"""`dgm eval`: test log-likelihood (nats, bits/dim, the kind of number and the estimator named) and
sample-quality metrics, printed and written to eval.json (its schema: docs/eval_json.md)."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import sys
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from ..app import command, model_from_checkpoint, repoint_data
from ..atomic import write_text_atomically
from ..errors import UserError
from ..settings.validate import validate_eval

log = logging.getLogger("dgm.eval")
SCHEMA = "dgm-eval-v2"
LIKELIHOOD_METRICS = ("nll",)
#: estimator.<key>=... : keys of the model's own settings, unknown to the generic schema
ESTIMATOR_OVERRIDE = re.compile(r"^estimator\.[A-Za-z_][\w.]*=")


def _rows(report: dict, prefix: str = "") -> list[tuple[str, str]]:
    rows = []
    for k, v in report.items():
        if v is None:  # a field that does not apply (binarization of data that is not binary)
            continue
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
        f" ({p['binarization']})" if p.get("binarization") else ""
    )
    likelihood = report.get("likelihood")
    if likelihood:
        kind, estimator = likelihood["kind"], likelihood["estimator"]
        how = estimator if estimator.startswith(kind) else f"{kind}: {estimator}"
        lines.append(
            f"NLL {likelihood['nll_nats']:.2f} ± {likelihood['nll_nats_stderr']:.2f} nats, "
            f"{likelihood['bits_per_dim']:.4f} bits/dim [{how}] on {data}"
        )
        if "conditional" in likelihood:
            c = likelihood["conditional"]
            lines.append(
                f"conditional NLL -log p(x|y) {c['nll_nats']:.2f} ± {c['nll_nats_stderr']:.2f} nats "
                "[conditional: given the true labels; not comparable with -log p(x)]"
            )
    ref = report.get("reference")
    if ref:
        truth = ref["true_nll"]
        lines.append(
            f"true NLL of these examples {truth['nll_nats']:.2f} ± {truth['nll_nats_stderr']:.2f} nats [{truth['how']}]"
        )
        if "model_gap_nats" in ref:
            lines.append(
                f"the model's gap to it {ref['model_gap_nats']:.4f} ± "
                f"{ref.get('model_gap_nats_error', ref['model_gap_nats_stderr']):.4f} nats "
                "[model NLL - true NLL, paired over the examples; KL >= 0 for an exact likelihood]"
            )
    sq = report.get("sample_quality")
    if sq:
        shown = {
            k: sq[k]
            for k in (
                "fid",
                "kid_mean",
                "precision",
                "recall",
                "inception_score_mean",
                "modes_covered",
                "high_quality_share",
                "parzen_log_likelihood",
            )
            if k in sq
        }
        lines.append(
            ", ".join(f"{k} {v:.4g}" for k, v in shown.items())
            + f" [{sq.get('samples', '')}]"
            + (f" [features: {sq['feature_network']}]" if sq.get("feature_network") else "")
        )
        if sq.get("feature_network_warning"):
            lines.append("WARNING: " + sq["feature_network_warning"])
    return "\n".join(lines)


def write_json(report: dict, path: Path) -> None:
    write_text_atomically(path, json.dumps(report, indent=2) + "\n")


def _read(path: Path) -> Optional[dict]:
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) else None


def merge_previous(report: dict, path: Path) -> dict:
    """Keep the sections of an earlier eval.json of the same checkpoint, step and protocol that this
    run did not recompute (a likelihood, then sample metrics: one file holds both)."""
    old = _read(path)
    if old is None:
        return report
    same = all(old.get(k) == report.get(k) for k in ("schema", "checkpoint", "train_step", "protocol"))
    if same:
        for section in ("likelihood", "sample_quality"):
            if section in old and section not in report:
                report[section] = old[section]
    return report


# --- one record per evaluation, eval.json the most thorough -----------------------------------------
RECORDS = "evals"  # checkpoints/evals/<record>.json beside eval.json


def _settings_slug(settings: dict) -> str:
    parts = [f"{k}{'-'.join(map(str, v)) if isinstance(v, (list, tuple)) else v}" for k, v in sorted(settings.items())]
    return re.sub(r"[^A-Za-z0-9.=-]+", "", "_".join(parts))


def record_name(report: dict) -> str:
    """What an evaluation measured, as a file name: the step, split and size, the estimator's
    settings, the sample metrics and how many samples. Evaluations with other settings get other
    names, so none overwrites another; the same settings again replace their own record."""
    p, likelihood, sq = report["protocol"], report.get("likelihood"), report.get("sample_quality")
    parts = [f"step{report['train_step']}", f"{p['split']}{p['num_examples']}"]
    data = p.get("data") or {}
    if not data.get("own", True):  # other data on purpose: a record of its own, never the run's eval.json
        parts.insert(1, f"data-{data['name']}-{data['fingerprint'][:8]}")
    if likelihood:
        settings = likelihood.get("estimator_settings")
        parts.append("nll" + (f"_{_settings_slug(settings)}" if settings else ""))
    if sq:
        metrics = sorted({k.split("_")[0] for k in sq if k in SAMPLE_METRIC_KEYS or k.startswith("parzen_")})
        # another feature network than the classifier (features=autoencoder|inception): a record of its own
        kind = "" if sq.get("feature_network_kind") in (None, "classifier") else f"_{sq['feature_network_kind']}"
        parts.append("-".join(metrics) + f"_n{sq.get('num_generated', '')}{kind}")
    return "_".join(parts)


#: the sample-quality keys that name a metric (their first word)
SAMPLE_METRIC_KEYS = ("fid", "kid_mean", "precision", "inception_score_mean", "modes_covered")


def effort(settings: dict) -> float:
    """How much work an estimator's settings buy: the product of its counts (k samples; AIS runs x
    temperatures), lists summed. More is more thorough for every estimator dgm has."""
    total = 1.0
    for v in settings.values():
        v = sum(v) if isinstance(v, (list, tuple)) and all(isinstance(x, (int, float)) for x in v) else v
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 1:
            total *= v
    return total


def switched_off(report: dict) -> bool:
    """Whether a likelihood record came without an estimator switched on by estimator.ais=true: a VAE's IWAE
    bound rather than its second estimate, decoder-based AIS. Two estimators' effort counts mean different
    things, so they are not ranked by them: the model's own comes first. (A GAN's and an EBM's likelihoods
    are all AIS records: among them, effort decides.)"""
    settings = (report.get("likelihood") or {}).get("estimator_settings") or {}
    return settings.get("ais") is not True


def thoroughness(report: dict, section: str) -> tuple:
    """Orders records of one section: the latest step, then the most examples, then the model's own
    estimator, then the most effort."""
    part = report.get(section) or {}
    size = part.get("num_examples", 0) if section == "likelihood" else part.get("num_generated", 0)
    work = effort(part.get("estimator_settings") or {}) if section == "likelihood" else 0
    own = switched_off(report) if section == "likelihood" else True
    return report.get("train_step", -1), report["protocol"].get("num_examples", 0), own, size, work


def records(folder: Path) -> list[tuple[str, dict]]:
    """(name, report) of every evaluation kept beside a checkpoint, oldest file first."""
    found = sorted((folder / RECORDS).glob("*.json"), key=lambda p: (p.stat().st_mtime, p.name))
    return [(p.stem, r) for p in found if (r := _read(p)) is not None and "protocol" in r]


def most_thorough(kept: list[tuple[str, dict]]) -> dict:
    """eval.json: the most thorough likelihood record, with the sample metrics of the most thorough
    sample-quality record measured on the same protocol (or the latter alone); each section names
    the record it came from."""
    own = [(n, r) for n, r in kept if (r["protocol"].get("data") or {}).get("own", True)]
    kept = own or kept  # other data scored on purpose stays in its records (dgm report evals=all)

    def best(section):
        having = [(n, r) for n, r in kept if section in r]
        return max(having, key=lambda nr: thoroughness(nr[1], section)) if having else None

    likelihood, sq = best("likelihood"), best("sample_quality")
    base_name, base = likelihood or sq
    if likelihood and sq and not switched_off(likelihood[1]) and likelihood[1]["protocol"] != sq[1]["protocol"]:
        base_name, base = sq  # an estimate switched on for a look (a GAN's AIS on 20 images) never displaces
        # the model's own evaluation measured on another protocol (its FID on 10,000 samples); it stays a record
    report = {**{k: v for k, v in base.items() if k not in ("likelihood", "sample_quality")}, "records": {}}
    for section, chosen in (("likelihood", likelihood), ("sample_quality", sq)):
        if chosen and (chosen is base or chosen[1]["protocol"] == base["protocol"]):
            report[section] = chosen[1][section]
            report["records"][section] = f"{RECORDS}/{chosen[0]}.json"
    return report


def keep(report: dict, folder: Path) -> Path:
    """Write this evaluation's record and rebuild eval.json from all records; an eval.json written
    before records existed becomes a record first, so nothing measured is lost."""
    legacy = _read(folder / "eval.json")
    if legacy is not None and "protocol" in legacy and "records" not in legacy:
        if not (folder / RECORDS / f"{record_name(legacy)}.json").exists():
            write_json(legacy, folder / RECORDS / f"{record_name(legacy)}.json")
    write_json(report, folder / RECORDS / f"{record_name(report)}.json")
    write_json(most_thorough(records(folder)), folder / "eval.json")
    return folder / "eval.json"


def resolve_metrics(asked, model, settings: dict | None = None) -> tuple[bool, list[str]]:
    """(likelihood?, sample metrics): what was asked for, or, when nothing was, the model's own: its
    likelihood where it has one, sample-quality metrics where it has none. A model whose estimator
    settings hold an ``ais`` switch (the deep EBM) estimates its likelihood only when that is true."""
    from ..evaluation import samples

    # the EBM's and a GAN's likelihood is computed only on request; a VAE's ais switch only picks its estimator
    on_request = (settings or {}).get("ais") if model.likelihood in (None, "ais") else None
    if on_request is False and asked is not None and "nll" in asked:
        raise UserError(
            f"model {model.name}'s log-likelihood is an AIS estimate computed only on request: add estimator.ais=true."
        )
    if asked is None:
        if on_request is not None:
            return (True, []) if on_request else (False, samples.default_metrics(model))
        return (True, []) if model.likelihood is not None else (False, samples.default_metrics(model))
    asked = list(asked)
    if not asked:
        raise UserError(
            "metrics=[] asks for nothing; leave metrics= out for the model's own (its likelihood, or "
            f"sample metrics without one), or name some: {', '.join(LIKELIHOOD_METRICS + samples.METRICS)}."
        )
    unknown = [m for m in asked if m not in LIKELIHOOD_METRICS + samples.METRICS]
    if unknown:
        raise UserError(
            f"metrics={asked}: unknown {unknown}; allowed: {', '.join(LIKELIHOOD_METRICS + samples.METRICS)}."
        )
    if "nll" in asked and model.likelihood is None and not on_request:
        raise UserError(
            f"model {model.name} has no likelihood, so metrics=[nll] cannot be computed; leave "
            f"metrics= out for its sample-quality metrics ({', '.join(samples.default_metrics(model))})."
        )
    return "nll" in asked, [m for m in asked if m != "nll"]


# --- which data: the run's own (perhaps moved), or other data on purpose ----------------------------
def data_config(cfg: DictConfig, state: dict) -> tuple[DictConfig, bool]:
    """The data config to score on, and whether it is other data than the run's own: ``data.path=``
    alone re-points the run at its own data where it moved (the fingerprint check then accepts it or
    says what differs); ``dataset=<name>`` [``data.path=``] is other data, read at the model's size."""
    from ..data import pipeline

    data = OmegaConf.create(state["config"])["data"]
    if cfg.data_root is not None:
        data.root = cfg.data_root
    path = str(Path(cfg.data.path).expanduser().resolve()) if cfg.data.path else None
    name = cfg.data.name
    if not name:
        repoint_data(
            data, path, "; dataset=<name> [data.path=<folder or file>] scores the model on other data on purpose"
        )
        return data, False
    if name not in pipeline.DATASETS:
        raise UserError(f"dataset={name}: unknown dataset; available: {', '.join(pipeline.DATASETS)}.")
    if name in ("image_folder", "npz") and not path:
        raise UserError(
            f"dataset={name} needs data.path=<{'folder' if name == 'image_folder' else 'file.npz'}>: the "
            "other data to score the model on."
        )
    shape = (state.get("data") or {}).get("shape") or []
    sized = (
        {"image_size": shape[1], "channels": shape[0]} if name in ("image_folder", "npz") and len(shape) == 3 else {}
    )
    keys = {
        "name": name,
        "path": path,
        "domain_b": None,
        "val_size": None,
        "image_size": None,
        "channels": None,
        **sized,
    }
    return OmegaConf.merge(data, keys), True


def other_data(dataset, data_cfg: DictConfig, saved: dict):
    """Other data scored on purpose: its examples must have the shape the model was trained on; it keeps
    the model's label count (a conditional model's labels)."""
    import dataclasses

    shape = list(dataset.train[0].shape[1:])
    if saved.get("shape") and shape != saved["shape"]:
        show = lambda s: "x".join(map(str, s))  # noqa: E731
        raise UserError(
            f"dataset={data_cfg.name}"
            + (f" data.path={data_cfg.path}" if data_cfg.get("path") else "")
            + f" holds examples of shape {show(shape)}, and the model was trained on {show(saved['shape'])} "
            f"({saved['dataset']}): a model scores only data of its own shape. An image folder or .npz is "
            "read at the model's size; for another dataset, pick one of the same size and channels."
        )
    return dataclasses.replace(dataset, num_classes=saved.get("num_classes", dataset.num_classes))


def changed_data(cfg: DictConfig, state: dict, dataset, data_cfg: DictConfig) -> str:
    """The refusal of data that is not the data the run was trained and split on: what changed, and
    how to evaluate anyway, on purpose."""
    from ..data import identity

    saved = state["data"]
    now = identity.identity(dataset, data_cfg, saved["representation"])
    where = f" data.path={data_cfg.path}" if data_cfg.get("path") else ""
    return (
        f"the {cfg.split} split of dataset={data_cfg.name}{where} is not the one this run was trained and split "
        f"on: {identity.what_changed(saved, now, cfg.split)}. Numbers on it would not be comparable with the run's "
        f"own, so dgm eval refuses. If the data moved, point data.path= at an unchanged copy; to score the model "
        f"on this data anyway, on purpose, as data other than its own: dgm eval checkpoint={state['path']} "
        f"dataset={data_cfg.name}{where} (its protocol then says so, and dgm report keeps it apart from the "
        "run's own test split)."
    )


def evaluate(cfg: DictConfig, state: dict, device) -> dict:
    """The report of one checkpoint (see docs/eval_json.md)."""
    from ..data import identity, pipeline
    from ..engine import runtime
    from ..evaluation import estimators, likelihood, reference
    from ..evaluation.samples import sample_quality_report

    data_cfg, other = data_config(cfg, state)
    dataset = pipeline.load(data_cfg)
    saved = state.get("data") or {}
    if other:
        dataset = other_data(dataset, data_cfg, saved)
    model, train_cfg, dataset = model_from_checkpoint(state, device, cfg.data_root, dataset=dataset)
    settings = estimators.estimator_settings(model, OmegaConf.to_container(cfg.estimator))
    want_nll, sample_metrics = resolve_metrics(cfg.metrics, model, settings)
    runtime.seed_everything(cfg.seed)
    x, y = getattr(dataset, cfg.split)
    if len(x) == 0:
        raise UserError(f"split={cfg.split} is empty for this run (data.val_size=0?); use split=test.")
    fingerprint = identity.fingerprint(getattr(dataset, cfg.split))
    if saved and not other and fingerprint != saved["fingerprints"][cfg.split]:
        if data_cfg.name not in pipeline.GENERATED:
            raise UserError(changed_data(cfg, state, dataset, data_cfg))
        # drawn by code with fixed seeds: another CPU's vector maths may differ in the last bits; said, not refused
        log.warning(
            "the %s split of %s, drawn by dgm's code, differs from the one this run was trained on (its "
            "fingerprint was %s, it is %s now): another dgm version or machine draws it differently; scoring "
            "it anyway",
            cfg.split,
            data_cfg.name,
            saved["fingerprints"][cfg.split],
            fingerprint,
        )
    if cfg.limit:
        x, y = x[: cfg.limit], None if y is None else y[: cfg.limit]
    rep = model.eval_representation(**settings) if hasattr(model, "eval_representation") else model.data.representation
    if rep != model.data.representation:  # a GAN's decoder AIS scores dequantized images, the flows' protocol
        model.data = dataclasses.replace(model.data, representation=rep)
    eval_binarization, train_binarization = likelihood.binarization(train_cfg.data.name, rep, train_cfg.data.binarize)
    if other:
        eval_binarization = likelihood.binarization(data_cfg.name, rep, train_cfg.data.binarize)[0]
    report = {
        "schema": SCHEMA,
        "checkpoint": state["path"],
        "model": train_cfg.model.name,
        "family": model.family,
        "objective": train_cfg.objective.name,
        "dataset": train_cfg.data.name,
        "train_step": int(state["step"]),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "device": str(device),
        "seed": cfg.seed,
        "protocol": {
            "dataset": data_cfg.name,
            "split": cfg.split,
            "num_examples": len(x),
            "representation": rep,
            "binarization": eval_binarization,
            **({"domain_b": dataset.domain_names[1]} if dataset.domains else {}),
            # which data, exactly: dgm report never puts numbers on different data in one table
            "data": {
                "name": data_cfg.name,
                "path": dataset.source.get("path"),
                "fingerprint": fingerprint,
                "own": not other,
            },
        },
        "training_binarization": train_binarization,
        **({"trained_on": {k: saved.get(k) for k in ("dataset", "path")}} if other else {}),
    }
    per_example: dict = {}
    if want_nll:
        batch = cfg.batch_size or (100 if model.likelihood != "exact" else train_cfg.trainer.eval_batch_size)
        prior = (
            likelihood.label_prior(dataset.train[1], model.data.num_classes)
            if likelihood.is_conditional(model)
            else None
        )
        if hasattr(model, "tune_on_validation"):  # a GAN's sigma for decoder AIS, chosen on validation data
            xv, split = (dataset.val[0], "validation") if len(dataset.val[0]) else (dataset.train[0], "training")
            model.tune_on_validation(pipeline.fixed(xv, rep).to(device), split=split, **settings)
        report["likelihood"] = likelihood.evaluate_likelihood(
            model, pipeline.fixed(x, rep), y, batch, device, log_prior=prior, nll_out=per_example, **settings
        )
    truth = reference.reference_report(
        data_cfg.name, x, rep, per_example.get("nll"), (report.get("likelihood") or {}).get("shared_error_nats")
    )
    if truth is not None:  # data whose generating density is known: its own NLL on these examples, and the gap
        report["reference"] = truth
    if sample_metrics:
        scored = OmegaConf.merge(train_cfg, {"data": data_cfg}) if other else train_cfg  # its feature network
        report["sample_quality"] = sample_quality_report(
            model, dataset, scored, cfg, sample_metrics, device, eval_binarization or ""
        )
    return report


def save(report: dict, checkpoint: Path, out: Optional[Path], quiet: bool = False) -> None:
    """Into ``out`` (merged with an earlier file there of the same checkpoint and protocol), or as a
    record of its own beside the checkpoint, eval.json then the most thorough of the records."""
    print(headline(report))
    if not quiet:
        print(table(report))
    if out is not None:
        write_json(merge_previous(report, out), out)
        print(f"wrote {out}")
        return
    written = keep(report, checkpoint.parent)
    chosen = json.loads(written.read_text())["records"]
    print(
        f"wrote {checkpoint.parent / RECORDS / record_name(report)}.json; {written} holds the most thorough "
        f"evaluation ({', '.join(chosen.values())})"
    )


@command("eval", validate_eval)
def app(cfg: DictConfig) -> None:
    from .. import progress
    from ..engine import checkpoint, distributed, runtime

    progress.LOG_EVERY = cfg.progress_every
    distributed.init()  # under torchrun, each process evaluates its part of the split
    device = runtime.pick_device(cfg.device, distributed.local_rank() if distributed.active() else None)
    paths = checkpoint.resolve_all(cfg.checkpoint)
    if len(paths) > 1 and cfg.out:
        raise UserError(
            f"checkpoint={cfg.checkpoint!r} holds {len(paths)} runs, and out= names one file: leave out= "
            f"out (each run's eval.json goes beside its checkpoint), or give one run."
        )
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
            save(report, path, Path(cfg.out) if cfg.out else None, quiet=len(paths) > 1)
    distributed.destroy()
    if refused:
        raise UserError(
            f"{len(refused)} of the {len(paths)} runs under {cfg.checkpoint!r} could not be evaluated "
            f"(each said why above): {', '.join(str(p.parent.parent) for p in refused)}."
        )


def main() -> None:
    """The estimator's keys belong to the model (``estimator.k=5000`` for a VAE), so the eval schema
    cannot list them and Hydra would ask for ``+estimator.k``: the ``+`` is added here, and the model
    refuses keys it does not take (evaluation/estimators.py)."""
    sys.argv = [("+" + a) if ESTIMATOR_OVERRIDE.match(a) else a for a in sys.argv]
    # metrics.features=inception (issue 22's name for it) is the features= key: metrics= itself is a list
    sys.argv = [
        a.replace("metrics.features=", "features=", 1) if a.startswith("metrics.features=") else a for a in sys.argv
    ]
    # dataset=<name> (other data on purpose) is data.name=: `dataset` is a config group of dgm train
    sys.argv = [("data.name=" + a.split("=", 1)[1]) if a.startswith("dataset=") else a for a in sys.argv]
    app()


if __name__ == "__main__":
    main()
