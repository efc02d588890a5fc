"""Minibatch optimal-transport couplings (Tong et al. 2024, OT-CFM; Pooladian et al. 2023): pair a batch
of noise draws with a batch of data by the assignment that minimises the summed squared distance --
the exact OT plan between two uniform empirical measures of equal size is a permutation (Birkhoff).

The assignment is solved in torch by Bertsekas' auction algorithm (Bertsekas 1988; Jacobi bidding,
every unassigned row bids at once) with epsilon-scaling: it ends with every row "eps-happy", so the
assignment's cost is within n * eps of the optimum; the last eps is ``tolerance`` / n of the cost
matrix's range, so it is within ``tolerance`` of that range of the optimum (exact once that is below
the gap to the second-best assignment). No scipy needed.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def assignment(cost: Tensor, tolerance: float = 1e-6) -> Tensor:
    """``perm`` with row i assigned to column perm[i], minimising sum_i cost[i, perm[i]] to within
    ``tolerance`` times (max cost - min cost). Runs in NumPy on the host: each bidding round is a few
    small array operations, and torch's per-operation overhead would be most of the time."""
    n = cost.shape[0]
    if cost.shape != (n, n):
        raise ValueError(f"an assignment needs a square cost matrix, got {tuple(cost.shape)}")
    c = cost.detach().double().cpu().numpy()
    spread = float(c.max() - c.min()) if n else 0.0
    if n < 2 or spread == 0.0:
        return torch.arange(n, device=cost.device)
    benefit = -(c - c.min()) / spread  # in [-1, 0]
    price = np.zeros(n)
    final, eps = tolerance / n, 0.1
    while True:
        eps = max(eps, final)
        owner = np.full(n, -1)  # column -> row
        assigned = np.full(n, -1)  # row -> column
        while True:
            bidders = np.flatnonzero(assigned < 0)
            if len(bidders) == 0:
                break
            values = benefit[bidders] - price
            two = np.argpartition(-values, 1, axis=1)[:, :2]
            v = np.take_along_axis(values, two, 1)
            first = v[:, 0] >= v[:, 1]
            best = np.where(first, two[:, 0], two[:, 1])
            bid = price[best] + np.abs(v[:, 0] - v[:, 1]) + eps
            high = np.full(n, -np.inf)
            np.maximum.at(high, best, bid)
            wins = bid == high[best]
            winner = np.full(n, -1)
            winner[best[wins]] = bidders[wins]  # ties: one of them
            cols = np.flatnonzero(winner >= 0)
            losers = owner[cols]
            assigned[losers[losers >= 0]] = -1
            owner[cols] = winner[cols]
            assigned[winner[cols]] = cols
            price[cols] = high[cols]
        if eps <= final:
            return torch.as_tensor(assigned, device=cost.device)
        eps /= 8


#: the pairing's summed cost is within this share of one entry's range of the optimum (a looser final eps
#: ends the auction's price wars sooner; docs/results.md has the time of a training step with it)
PAIRING_TOLERANCE = 1e-4


def ot_pairing(x0: Tensor, x1: Tensor) -> Tensor:
    """``x0`` reordered so that (x0[i], x1[i]) are the minibatch OT plan's pairs (squared Euclidean cost)."""
    cost = torch.cdist(x1.flatten(1).double(), x0.flatten(1).double()) ** 2
    return x0[assignment(cost, PAIRING_TOLERANCE).to(x0.device)]
