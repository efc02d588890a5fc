"""Importance-sampled log p(x) for latent-variable models (Burda et al. 2015, eq. 8 with k samples):

    log p(x) ~ log (1/k) sum_i w_i,  w_i = p(x, h_i) / q(h_i | x),  h_i ~ q(h | x),

whose expectation is a lower bound on log p(x) that tightens as k grows (Burda et al., Thm. 1),
computed in chunks of samples so that k = 5000 fits in memory."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

#: rows (samples x examples) evaluated at once
ROWS_PER_CHUNK = 1 << 16


def importance_log_likelihood(
    log_weights: Callable[[int], Tensor], k: int, batch: int, rows_per_chunk: int = ROWS_PER_CHUNK
) -> Tensor:
    """``log_weights(m)`` gives (m, batch) fresh log importance weights; returns log (1/k) sum of k of them.
    ``batch``: the rows one sample costs (examples; for sequences, examples x time steps)."""
    chunk = max(1, min(k, rows_per_chunk // max(1, batch)))
    parts = [torch.logsumexp(log_weights(min(chunk, k - i)), dim=0) for i in range(0, k, chunk)]
    return torch.logsumexp(torch.stack(parts), dim=0) - math.log(k)
