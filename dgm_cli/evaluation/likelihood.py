"""Test log-likelihood in nats and bits/dim, with the kind of number it is and its errors.

Conversions (D = dimensions per example):
  binary / 8bit    nll = -log P(x)                        (a probability mass; no offset)
  dequantized      nll = -log p(y) + D ln 256             y = (k + u)/256 on [0,1)^D: p(y)/256^D is the
                   density on the 0..256 scale, and E_u[log p] bounds log P(k) from below (Theis et al. 2016),
                   so the reported discrete NLL is an upper bound
  bits/dim         nll / (D ln 2)

Class-conditional models report -log p(x) = -log sum_y p(y) p(x|y), with p(y) the training label
frequencies, as the NLL, comparable with every unconditional model; -log p(x|y) with the true labels,
which is up to ln(#classes) lower, is reported beside it as ``conditional``.

Errors: ``nll_nats_stderr`` is the spread over examples divided by sqrt(n). An estimator with an error
shared by every example (AIS's log Z) returns it from ``prepare_eval`` as ``shared_error_nats``; it is
reported apart, not divided by sqrt(n), and ``nll_nats_error`` combines the two.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Optional

import torch

from ..data import pipeline, sequences
from ..data.representations import BINARIZATIONS, REPRESENTATIONS
from ..engine import distributed
from ..progress import Progress
from . import estimators

log = logging.getLogger("dgm.eval")

FIXED_BINARIZATION = {
    "binarized_mnist": "fixed: the Larochelle & Murray 2011 files",
    **{name: "none: the sequences' own 0/1 values" for name in sequences.SEQUENCE_DATASETS},
}


def nll_offset(representation: str, dim: int) -> float:
    """What a representation's -log p adds up to a discrete NLL over ``dim`` dimensions (the table's offset)."""
    return dim * REPRESENTATIONS[representation].nll_offset_per_dim


def binarization(dataset: str, representation: str, binarize: str) -> tuple[Optional[str], Optional[str]]:
    """(how the evaluation split was binarized, how the training data was) for binary data, else (None, None)."""
    if representation != "binary":
        return None, None
    if dataset in FIXED_BINARIZATION:
        return FIXED_BINARIZATION[dataset], FIXED_BINARIZATION[dataset]
    training = f"{binarize}: {BINARIZATIONS[binarize]}" + (
        f", seed {pipeline.EVAL_SEED}" if binarize == "static" else ""
    )
    return f"one Bernoulli draw of the intensities, seed {pipeline.EVAL_SEED}", training


def label_prior(labels: Optional[torch.Tensor], num_classes: int) -> Optional[torch.Tensor]:
    """log p(y) from label frequencies (the training split's), shape (num_classes,)."""
    if labels is None or num_classes == 0:
        return None
    counts = torch.bincount(labels.long().cpu(), minlength=num_classes).double()
    return (counts / counts.sum()).log()


def marginal_log_likelihood(model, x: torch.Tensor, log_prior: torch.Tensor, **settings) -> torch.Tensor:
    """log p(x) = logsumexp_y [log p(y) + log p(x|y)] of a class-conditional model: one pass per class."""
    per_class = []
    for c in range(len(log_prior)):
        y = torch.full((len(x),), c, dtype=torch.long, device=x.device)
        per_class.append(model.log_likelihood(x, y, **settings).double().cpu() + log_prior[c])
    return torch.logsumexp(torch.stack(per_class), dim=0)


def summary(nll: torch.Tensor, dims) -> dict:
    """Mean NLL in nats and bits/dim with standard errors over the examples.

    ``dims``: the values per example, an int or (N,) where examples differ in size (sequences). Bits/dim
    is then the data set's total nats over its total dimensions, sum(nll) / (sum(dims) ln 2), whose
    standard error is the ratio estimator's (the delta method): sqrt(sum(e_i^2) / (n (n-1))) / mean(d)
    with e_i = nll_i - r d_i; for equal dims both reduce to mean(nll) / (D ln 2) and stderr / (D ln 2)."""
    n = len(nll)
    stderr = float(nll.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
    d = torch.as_tensor(dims, dtype=torch.float64).expand(n).to(nll.device)
    rate = float(nll.sum() / d.sum())
    rate_stderr = float((((nll - rate * d) ** 2).sum() / (n * (n - 1))).sqrt() / d.mean()) if n > 1 else float("nan")
    return {
        "nll_nats": float(nll.mean()),
        "nll_nats_stderr": stderr,
        "bits_per_dim": rate / math.log(2),
        "bits_per_dim_stderr": rate_stderr / math.log(2),
    }


def is_conditional(model) -> bool:
    return bool(getattr(model, "conditional", False))


def score_batches(
    model, x: torch.Tensor, y, batch_size: int, device, log_prior: Optional[torch.Tensor] = None, **settings
):
    """Per batch of a transformed split, in order: ``(xb, yb, log_p, own)`` with ``log_p`` = log p(x) per
    example in nats (float64, on the CPU; a class-conditional model's marginal over its labels, with
    ``log_prior`` = log p(y)) and ``own`` = what ``model.log_likelihood`` gives (log p(x|y) for a
    conditional model, else ``log_p`` itself). The dequantization offset is not included (``nll_offset``).
    ``dgm eval`` and ``dgm_cli.Run.log_likelihood`` both score through this."""
    conditional = is_conditional(model)
    if conditional and (log_prior is None or y is None):
        raise ValueError("a class-conditional model's NLL needs the labels and the label prior p(y)")
    for xb, yb in pipeline.eval_batches(x, y, batch_size, device):
        marginal = marginal_log_likelihood(model, xb, log_prior, **settings) if conditional else None
        own = model.log_likelihood(xb, yb, **settings).double().cpu()
        yield xb, yb, own if marginal is None else marginal, own


def evaluate_likelihood(
    model,
    x: torch.Tensor,
    y,
    batch_size: int,
    device,
    log_prior: Optional[torch.Tensor] = None,
    nll_out: Optional[dict] = None,
    **settings,
) -> dict:
    """Run ``model.log_likelihood`` and ``model.extra_eval`` over a transformed split; ``nll_out``, a
    dict, receives the NLL of each example (``"nll"``, nats, float64) for comparisons on the same examples.

    ``settings`` are the model's estimator settings; ``prepare_eval(x, y, **settings)``, where the model
    has it, runs once before the per-example pass (AIS's log Z) and returns fields for the report.
    ``log_prior`` (log p(y)) is needed for a class-conditional model."""
    start = time.perf_counter()
    prepared = dict(model.prepare_eval(x, y, **settings) or {})
    conditional = is_conditional(model)
    marginal, own, sums, dims = [], [], {}, []  # own: log p(x), or log p(x|y) of a conditional model
    part = distributed.shard(len(x))  # under torchrun, each process takes its part; gathered below
    what = f"scoring {len(x):,} examples: {model.estimator(**settings)}"
    log.info("%s", what)
    with Progress(len(x[part]), what, "examples", enabled=distributed.is_main(), logger="dgm.eval") as progress:
        for xb, yb, log_p, own_b in score_batches(
            model, x[part], None if y is None else y[part], batch_size, device, log_prior, **settings
        ):
            marginal.append(log_p)
            own.append(own_b)
            varying = model.example_dims(xb) if hasattr(model, "example_dims") else None  # optional in the interface
            if varying is not None:
                dims.append(varying.double().cpu())
            for k, v in model.extra_eval(xb, yb).items():
                sums[k] = sums[k] + v.double() if k in sums else v.double()
            progress.update(len(xb))
    if distributed.active():
        mine = lambda parts: torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)  # noqa: E731
        own = [distributed.all_gather_cat(mine(own))]
        dims = [distributed.all_gather_cat(mine(dims))] if dims else dims
        marginal = [distributed.all_gather_cat(mine(marginal))] if conditional else marginal
        sums = {k: distributed.all_reduce_sum(torch.as_tensor(v, device=device).double()) for k, v in sums.items()}
    rep, dim = model.data.representation, model.data.dim
    per_example = torch.cat(dims) if dims else dim
    offset = nll_offset(rep, dim)
    nll = -torch.cat(marginal if conditional else own) + offset
    if nll_out is not None:
        nll_out["nll"] = nll
    report = {
        "kind": estimators.likelihood_kind(model, settings),
        "estimator": model.estimator(**settings),
        "estimator_settings": dict(settings),
        "data": REPRESENTATIONS[rep].scored.format(seed=pipeline.EVAL_SEED),
        "num_examples": len(nll),
        "dim": dim if not dims else f"varies: {float(per_example.mean()):.1f} on average (padding excluded)",
        **summary(nll, per_example),
    }
    support = model.density_support(**settings) if hasattr(model, "density_support") else None
    if support is not None:  # a density of data in [0, 1]^D that is normalised on a larger set: its NLL errs high
        report["density_support"] = support
    shared = prepared.pop("shared_error_nats", None)
    if shared is not None:
        report["shared_error_nats"] = float(shared)
        report["nll_nats_error"] = math.hypot(report["nll_nats_stderr"], float(shared))
    if prepared:
        report["prepared"] = prepared
    if conditional:
        report["label_prior"] = "training label frequencies"
        report["conditional"] = {
            "kind": estimators.CONDITIONAL,
            "what": "-log p(x|y) with the true labels; not comparable with -log p(x)",
            **summary(-torch.cat(own) + offset, per_example),
        }
    if sums:
        report["bound_terms"] = {
            k: v if isinstance(v, (int, float)) else float(v) for k, v in model.finalize_eval(sums, len(nll)).items()
        }
    report["seconds"] = round(time.perf_counter() - start, 2)
    return report
