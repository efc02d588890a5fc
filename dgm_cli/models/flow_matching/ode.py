"""ODE solvers for a velocity field, and log p(x) by the instantaneous change of variables.

Solvers are explicit Runge-Kutta methods over a tuple of tensors (the state and, for the likelihood,
the accumulated divergence): fixed steps (``euler``, ``midpoint``, ``rk4``) or adaptive steps
(``dopri5``: Dormand & Prince 1980's 5(4) pair with the usual error control, one step size for the
whole batch, as torchdiffeq does).

Log-likelihood (Chen et al. 2018, Thm. 1; FFJORD, Grathwohl et al. 2019): for dx/dt = v(x, t),
d log p_t(x(t))/dt = -tr(dv/dx), so with x(1) = x the data and x(0) its preimage under the flow,

    log p_1(x) = log p_0(x(0)) - int_0^1 tr(dv/dx)(x(t), t) dt.

The trace is exact (one backward pass per dimension: the toys) or Hutchinson's estimate eps^T (dv/dx)
eps with a Rademacher eps (Hutchinson 1989; FFJORD Sec. 3.1), one vector-Jacobian product per
evaluation, with the same eps along the whole solve. The trajectory does not depend on eps and the
estimate is linear in the integrand, so the solver's log p is estimated without bias.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from ...errors import UserError

State = tuple[Tensor, ...]
Field = Callable[[float, State], State]
FIXED_STEP = ("euler", "midpoint", "rk4")
SOLVERS = FIXED_STEP + ("dopri5",)
MAX_ADAPTIVE_STEPS = 10_000

#: Butcher tableaux (A rows, b): c_i = sum_j A_ij
TABLEAUX = {
    "euler": ([], [1.0]),
    "midpoint": ([[0.5]], [0.0, 1.0]),
    "rk4": ([[0.5], [0.0, 0.5], [0.0, 0.0, 1.0]], [1 / 6, 1 / 3, 1 / 3, 1 / 6]),
}
#: Dormand & Prince (1980): 7 stages, the last at the new point (first same as last); b: 5th order, b_err = b - b*
DOPRI5_A = [
    [1 / 5],
    [3 / 40, 9 / 40],
    [44 / 45, -56 / 15, 32 / 9],
    [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
    [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
    [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84],
]
DOPRI5_B = [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0]
DOPRI5_B4 = [5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40]


def _combine(y: State, h: float, ks: list[State], coeffs: list[float]) -> State:
    """y + h sum_j coeffs_j k_j, component by component."""
    out = []
    for i, yi in enumerate(y):
        acc = yi
        for c, k in zip(coeffs, ks):
            if c:
                acc = acc + (h * c) * k[i]
        out.append(acc)
    return tuple(out)


def _stages(f: Field, t: float, y: State, h: float, a: list[list[float]], k1: State) -> list[State]:
    ks = [k1]
    for row in a:
        ks.append(f(t + h * sum(row), _combine(y, h, ks, row)))
    return ks


class Counter:
    """Counts the field's evaluations (the solve's cost)."""

    def __init__(self, f: Field):
        self.f, self.calls = f, 0

    def __call__(self, t: float, y: State) -> State:
        self.calls += 1
        return self.f(t, y)


def solve(
    f: Field,
    y0: State,
    t0: float,
    t1: float,
    method: str = "rk4",
    steps: int = 100,
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> tuple[State, int]:
    """y(t1) from y(t0) = y0 (t1 < t0 integrates backwards), and the number of evaluations of ``f``."""
    f = Counter(f)
    if method in TABLEAUX:
        a, b = TABLEAUX[method]
        h, y, t = (t1 - t0) / steps, y0, t0
        for i in range(steps):
            ks = _stages(f, t, y, h, a, f(t, y))
            y, t = _combine(y, h, ks, b), t0 + (i + 1) * h
        return y, f.calls
    if method != "dopri5":
        raise UserError(f"solver {method!r} is not allowed; allowed: {', '.join(SOLVERS)}.")
    return _dopri5(f, y0, t0, t1, rtol, atol), f.calls


def _dopri5(f: Counter, y: State, t0: float, t1: float, rtol: float, atol: float) -> State:
    """Adaptive steps: accept where the RMS of err / (atol + rtol max(|y|, |y_new|)), the largest over the
    state's components, is <= 1; the next step is h * clamp(0.9 err^(-1/5), 0.2, 10) (Hairer et al. 1993,
    II.4)."""
    span, t = t1 - t0, t0
    h = 0.05 * span
    k1 = f(t, y)
    for _ in range(MAX_ADAPTIVE_STEPS):
        if (t1 - t) * math.copysign(1, span) <= 1e-12 * abs(span):
            return y
        if abs(h) > abs(t1 - t):
            h = t1 - t
        ks = _stages(f, t, y, h, DOPRI5_A, k1)
        new = _combine(y, h, ks[:-1], DOPRI5_B[:-1])
        err = _combine(tuple(torch.zeros_like(c) for c in y), h, ks, [b - e for b, e in zip(DOPRI5_B, DOPRI5_B4)])
        norm = max(
            float(((e / (atol + rtol * torch.maximum(o.abs(), n.abs()))) ** 2).mean().sqrt())
            for e, o, n in zip(err, y, new)
        )
        if not math.isfinite(norm):
            raise FloatingPointError("the velocity field gave non-finite values during the ODE solve")
        if norm <= 1.0:
            t, y, k1 = t + h, new, ks[-1]
        h = h * min(10.0, max(0.2, 0.9 * (norm if norm > 0 else 1e-10) ** -0.2))
    raise UserError(
        f"the adaptive solver (dopri5) took more than {MAX_ADAPTIVE_STEPS:,} steps; loosen its "
        "tolerances or use a fixed-step solver (rk4, with steps=N)."
    )


# --- the divergence ------------------------------------------------------------------------------
def exact_divergence(v: Tensor, x: Tensor) -> Tensor:
    """tr(dv/dx) per example, one backward pass per dimension (v computed from x with a graph)."""
    flat = v.flatten(1)
    total = torch.zeros(len(x), dtype=v.dtype, device=v.device)
    for i in range(flat.shape[1]):
        grad = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=True)[0]
        total = total + grad.flatten(1)[:, i]
    return total


def hutchinson_divergence(v: Tensor, x: Tensor, eps: Tensor) -> Tensor:
    """eps^T (dv/dx) eps per example: one vector-Jacobian product; unbiased when E[eps eps^T] = I."""
    grad = torch.autograd.grad(v, x, eps, retain_graph=False)[0]
    return (grad * eps).flatten(1).sum(1)


def rademacher_like(x: Tensor) -> Tensor:
    return torch.randint(0, 2, x.shape, device=x.device).to(x.dtype) * 2 - 1


def likelihood_field(velocity: Callable[[Tensor, float], Tensor], trace: str, eps: Tensor | None = None) -> Field:
    """d/dt (x, a) = (v(x, t), tr(dv/dx)): integrated from t = 1 to 0 with a(1) = 0, a(0) =
    -int_0^1 tr dt, so log p_1(x) = log p_0(x(0)) + a(0)."""

    def f(t: float, state: State) -> State:
        with torch.enable_grad():
            x = state[0].detach().requires_grad_(True)
            v = velocity(x, t)
            div = exact_divergence(v, x) if trace == "exact" else hutchinson_divergence(v, x, eps)
        return v.detach(), div.detach()

    return f
