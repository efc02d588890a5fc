"""The truth beside a model: on data whose generating density is known, the data's own NLL under that
density on the same examples `dgm eval` scored, and the model's gap to it (``reference`` in eval.json,
docs/eval_json.md).

Known densities: every 2-D toy of data/toy.py (``toy.TRUE_DENSITIES``: closed forms for the Gaussian
mixtures and the checkerboard, a 1-D integral for the moons, a change of variables over the roots of a 1-D
equation for the pinwheel) and ``linear_gaussian``, whose exact marginal likelihood the Kalman filter gives
(data/sequences.py). The gap, model NLL - true NLL per
example averaged, estimates KL(p_data || p_model) >= 0 for an exact likelihood (plus the bound's own gap for
a bound); its standard error is over the paired differences, much smaller than either NLL's own, since both
vary with the same examples. A model whose gap is below zero by more than a few standard errors is scoring
something other than the density of these examples (a bug, or data that is not the toy's).
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from ..data import sequences, toy
from .likelihood import summary

#: dataset -> (log p(x) per example in nats, how it is computed)
KNOWN: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], str]] = {
    **toy.TRUE_DENSITIES,
    "linear_gaussian": (
        lambda x: sequences.LinearGaussianSSM.toy().log_likelihood(x),
        "exact: the Kalman filter's prediction-error decomposition of the linear-Gaussian state-space "
        "model that draws the data (LinearGaussianSSM.toy())",
    ),
}
WHAT = "the data's own NLL under the density that generated it, on the same examples"
GAP = (
    "model NLL - true NLL per example, averaged (standard error over the paired differences): an estimate of "
    "KL(p_data || p_model), >= 0 in expectation for an exact likelihood; a bound adds its own gap"
)


def example_dims(x: torch.Tensor):
    """Values per example: 2 for points; a sequence's real steps x its dimensions (NaN padding excluded)."""
    if x.dim() == 3:
        return sequences.mask_of(x).sum(1) * x.shape[-1]
    return int(x[0].numel())


def true_nll(dataset: str, x: torch.Tensor) -> Optional[tuple[torch.Tensor, str]]:
    """(-log p(x) per example in nats, float64, how it was computed), or None where the density is unknown."""
    if dataset not in KNOWN:
        return None
    log_density, how = KNOWN[dataset]
    return -log_density(x.cpu()).double(), how


def reference_report(
    dataset: str,
    x: torch.Tensor,
    representation: str,
    model_nll: Optional[torch.Tensor] = None,
    shared_error: Optional[float] = None,
) -> Optional[dict]:
    """eval.json's ``reference`` for ``x`` (the examples as the data set holds them), with the model's gap when
    ``model_nll`` (its per-example NLL on the same examples) is given; None for data with no known density.
    ``shared_error``: an error every example's NLL shares (AIS's log Z), added to the gap's as to the NLL's."""
    found = true_nll(dataset, x) if representation == "continuous" else None
    if found is None:
        return None
    nll, how = found
    out = {"what": WHAT, "true_nll": {**summary(nll, example_dims(x)), "num_examples": len(nll), "how": how}}
    if model_nll is not None:
        gap = model_nll.double().cpu() - nll
        n = len(gap)
        out["model_gap_nats"] = float(gap.mean())
        out["model_gap_nats_stderr"] = float(gap.std() / math.sqrt(n)) if n > 1 else float("nan")
        if shared_error is not None:
            out["model_gap_nats_error"] = math.hypot(out["model_gap_nats_stderr"], shared_error)
        out["gap"] = GAP
    return out
