"""Test log-likelihood in nats and bits/dim, with a standard error over the examples.

Conversions (D = dimensions per example):
  binary / 8bit    nll = -log P(x)                        (a probability mass; no offset)
  dequantized      nll = -log p(y) + D ln 256             y = (k + u)/256 on [0,1)^D: p(y)/256^D is the
                   density on the 0..256 scale, and E_u[log p] bounds log P(k) from below (Theis et al. 2016),
                   so the reported discrete NLL is an upper bound
  bits/dim         nll / (D ln 2)
"""
from __future__ import annotations

import math
import time

import torch

from ..data import pipeline

REPRESENTATION_NOTES = {
    "binary": f"binarized pixels; the evaluation split is binarized once with seed {pipeline.EVAL_SEED}",
    "8bit": "discrete 8-bit pixel values",
    "dequantized": f"8-bit values with uniform dequantization (seed {pipeline.EVAL_SEED}); NLL includes D ln 256, "
                   "an upper bound on the discrete NLL",
    "continuous": "continuous data (a density; bits/dim not comparable with image likelihoods)",
}


def nll_offset(representation: str, dim: int) -> float:
    return dim * math.log(256) if representation == "dequantized" else 0.0


def evaluate_likelihood(model, x: torch.Tensor, y, batch_size: int, device, **settings) -> dict:
    """Run ``model.log_likelihood`` and ``model.extra_eval`` over a transformed split."""
    start = time.perf_counter()
    logps, sums = [], {}
    for xb, yb in pipeline.eval_batches(x, y, batch_size, device):
        logps.append(model.log_likelihood(xb, yb, **settings).double().cpu())
        for k, v in model.extra_eval(xb, yb).items():
            sums[k] = sums[k] + v.double() if k in sums else v.double()
    rep, dim = model.data.representation, model.data.dim
    nll = -torch.cat(logps) + nll_offset(rep, dim)
    n = len(nll)
    stderr = float(nll.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
    report = {
        "estimator": model.estimator(**settings),
        "data": REPRESENTATION_NOTES[rep],
        "num_examples": n,
        "dim": dim,
        "nll_nats": float(nll.mean()),
        "nll_nats_stderr": stderr,
        "bits_per_dim": float(nll.mean()) / (dim * math.log(2)),
        "bits_per_dim_stderr": stderr / (dim * math.log(2)),
    }
    if sums:
        report["bound_terms"] = {k: v if isinstance(v, (int, float)) else float(v) for k, v in model.finalize_eval(sums, n).items()}
    report["seconds"] = round(time.perf_counter() - start, 2)
    return report
