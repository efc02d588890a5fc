"""log Z of a Boltzmann machine: annealed importance sampling, its reverse, and exact enumeration; and
log Z of a continuous energy (the deep EBM) by AIS with Langevin (MALA) transitions (``LangevinPath``).

AIS (Neal 2001) as Salakhutdinov & Murray (2008, Sec. 3-4) use it for RBMs. A path of distributions
p_k ∝ p*_k, k = 0..K, runs from a base model A with a known Z_A (independent visible units with the
training data's smoothed log-odds as biases: the "base-rate" model) to the target B. For an RBM the
path interpolates parameters (their eq. 12-13): p_β is the RBM with weights βW, hidden biases βc and
visible biases (1-β) b_A + β b, so each p_β has a Gibbs kernel T_β that leaves it invariant. With
v_1 ~ p_0 and v_{k+1} ~ T_{β_k}(v_k):

    w = prod_k p*_{β_k}(v_k) / p*_{β_{k-1}}(v_k),     E[w] = Z_B / Z_A            (their eq. 9-11)

and log Ẑ_B = log Z_A + log mean(w) over M independent runs. By Jensen's inequality E[log Ẑ] <= log Z:
forward AIS underestimates log Z on average, i.e. *overestimates* log-likelihoods.

Reverse AIS runs the same chain backwards from samples of B: E[w_rev] = Z_A / Z_B, so
log Ẑ_B = log Z_A - log mean(w_rev) overestimates log Z on average (the conservative side; Burda,
Grosse & Salakhutdinov 2015 discuss this bracket and RAISE). It is a bound only if the starting
samples are exact draws from B; on a large model they come from long Gibbs chains, which the report
says.

The uncertainty of log Ẑ is reported as Salakhutdinov & Murray do: log(mean(w) ± 3 se(w)), se the
standard error of the mean of the M weights; ``stderr`` is the delta-method standard error se/mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

#: Salakhutdinov & Murray 2008: β in steps of 1/1000 to 0.5, 1/10,000 to 0.9, 1/100,000 to 1.0
DEFAULT_TEMPERATURES = (500, 4000, 10000)
DEFAULT_SEGMENT_ENDS = (0.5, 0.9, 1.0)
MAX_ENUMERATED_UNITS = 20  # 2^20 states: enumerated in chunks in a few seconds


def schedule(
    counts: Sequence[int] = DEFAULT_TEMPERATURES, ends: Sequence[float] = DEFAULT_SEGMENT_ENDS, dtype=torch.float64
) -> Tensor:
    """β_0 = 0 < β_1 < ... < β_K = 1: ``counts[i]`` equal steps on (ends[i-1], ends[i]]."""
    if len(counts) != len(ends) or not counts or ends[-1] != 1.0 or any(n < 1 for n in counts):
        raise ValueError(
            f"a schedule needs one positive count per segment and segments ending at 1; "
            f"got counts {list(counts)}, ends {list(ends)}"
        )
    parts, start = [torch.zeros(1, dtype=dtype)], 0.0
    for n, end in zip(counts, ends):
        if not start < end <= 1.0:
            raise ValueError(f"segment ends must increase within (0, 1]; got {list(ends)}")
        parts.append(torch.linspace(start, end, n + 1, dtype=dtype)[1:])
        start = end
    return torch.cat(parts)


def scaled_schedule(total: int) -> Tensor:
    """The default schedule's shape with about ``total`` temperatures (for quick estimates and tests)."""
    scale = total / sum(DEFAULT_TEMPERATURES)
    return schedule([max(1, round(n * scale)) for n in DEFAULT_TEMPERATURES])


def base_rate_biases(mean: Tensor, count: float, pseudo_count: float = 5.0) -> Tensor:
    """Log-odds of the smoothed pixel means (p·n + a) / (n + 2a): the base-rate model's visible
    biases, never ±inf for pixels that are always off (Salakhutdinov & Murray 2008, Sec. 4.1)."""
    p = (mean.double() * count + pseudo_count) / (count + 2 * pseudo_count)
    return torch.log(p) - torch.log1p(-p)


class BernoulliPath:
    """The RBM path: p_β is the RBM (βW, (1-β) b_A + β b, βc); binary visible and hidden units.

    log p*_β(v) = v·((1-β) b_A + β b) + Σ_j softplus(β (c_j + v·W_j))        (h summed out)

    At β = 0 the hidden units are free: log Z_0 = Σ_i softplus(b_A,i) + H log 2."""

    def __init__(self, W: Tensor, b: Tensor, c: Tensor, base_bias: Tensor):
        self.W, self.b, self.c, self.base = W, b, c, base_bias.to(W)

    def log_z_base(self) -> float:
        return float(F.softplus(self.base.double()).sum() + self.W.shape[1] * math.log(2))

    def sample_base(self, n: int) -> Tensor:
        return torch.bernoulli(torch.sigmoid(self.base).expand(n, -1))

    def step(self, v: Tensor, beta_from: float, beta_to: float) -> tuple[Tensor, Tensor]:
        """(log p*_to(v) - log p*_from(v), a draw of T_to(v)): one AIS weight factor and one transition."""
        a = v @ self.W + self.c
        lin = (v @ self.b - v @ self.base).double()
        ad = a.double()
        delta = (beta_to - beta_from) * lin + (F.softplus(beta_to * ad) - F.softplus(beta_from * ad)).sum(-1)
        h = torch.bernoulli(torch.sigmoid(beta_to * a))
        v = torch.bernoulli(torch.sigmoid((1 - beta_to) * self.base + beta_to * (h @ self.W.t() + self.b)))
        return delta, v

    def sample_target(self, v: Tensor, sweeps: int) -> Tensor:
        """``sweeps`` Gibbs sweeps of the target (β = 1) from ``v``."""
        for _ in range(sweeps):
            v = self.step(v, 1.0, 1.0)[1]
        return v


@dataclass
class LogZ:
    """An estimate of log Z from importance weights, with its Salakhutdinov & Murray ±3σ interval."""

    log_z: float
    stderr: float  # delta method: se(mean w) / mean w
    lower: float  # log(mean w - 3 se) (−inf when that is <= 0), mapped to log Z
    upper: float
    runs: int
    temperatures: int
    direction: str  # "forward" | "reverse"
    log_weights: Tensor = field(repr=False, default=None)

    def as_dict(self, prefix: str) -> dict:
        return {
            f"{prefix}log_z": self.log_z,
            f"{prefix}log_z_stderr": self.stderr,
            f"{prefix}log_z_minus_3sigma": self.lower,
            f"{prefix}log_z_plus_3sigma": self.upper,
        }


def _log_mean_and_interval(log_w: Tensor) -> tuple[float, float, float, float]:
    """log mean(w), se/mean, log(mean - 3se), log(mean + 3se), computed relative to max(log w)."""
    m = len(log_w)
    top = log_w.max()
    w = torch.exp(log_w - top)
    mean = w.mean()
    se = w.std(unbiased=True) / math.sqrt(m) if m > 1 else torch.tensor(float("nan"))
    log_mean = float(top + mean.log())
    low = float(top + (mean - 3 * se).log()) if mean - 3 * se > 0 else -math.inf
    high = float(top + (mean + 3 * se).log())
    return log_mean, float(se / mean), low, high


def anneal(path, v: Tensor, betas: Tensor) -> Tensor:
    """Σ_k log p*_{β_k}(v_k) - log p*_{β_{k-1}}(v_k) along ``betas``, per chain (float64)."""
    log_w = torch.zeros(len(v), dtype=torch.float64, device=v.device)
    b = betas.tolist()
    for prev, nxt in zip(b[:-1], b[1:]):
        delta, v = path.step(v, prev, nxt)
        log_w += delta
    return log_w


@torch.no_grad()
def forward_ais(path, runs: int, betas: Tensor) -> LogZ:
    """log Ẑ_B = log Z_A + log mean w, chains started from the base model."""
    log_w = anneal(path, path.sample_base(runs), betas)
    log_mean, stderr, low, high = _log_mean_and_interval(log_w)
    z_a = path.log_z_base()
    return LogZ(
        z_a + log_mean,
        stderr,
        lower=z_a + low,
        upper=z_a + high,
        runs=runs,
        temperatures=len(betas) - 1,
        direction="forward",
        log_weights=log_w,
    )


@torch.no_grad()
def reverse_ais(path, samples: Tensor, betas: Tensor) -> LogZ:
    """log Ẑ_B = log Z_A - log mean w_rev, chains started from ``samples`` of the target, annealed to
    the base model. The interval flips: a larger mean w_rev means a smaller log Z."""
    log_w = anneal(path, samples, betas.flip(0))
    log_mean, stderr, low, high = _log_mean_and_interval(log_w)
    z_a = path.log_z_base()
    return LogZ(
        z_a - log_mean,
        stderr,
        lower=z_a - high,
        upper=z_a - low,
        runs=len(samples),
        temperatures=len(betas) - 1,
        direction="reverse",
        log_weights=log_w,
    )


# --- exact enumeration ----------------------------------------------------------------------------
def all_states(n: int, device=None, dtype=torch.float64, start: int = 0, stop: Optional[int] = None) -> Tensor:
    """Binary vectors number ``start`` .. ``stop`` - 1 of all 2^n of length n (all by default)."""
    idx = torch.arange(start, min(stop or 2**n, 2**n), device=device)
    return ((idx[:, None] >> torch.arange(n, device=device)) & 1).to(dtype)


def enumerable(*sizes: int) -> bool:
    return min(sizes) <= MAX_ENUMERATED_UNITS


def exact_log_z(W: Tensor, b: Tensor, c: Tensor, chunk: int = 1 << 14) -> Optional[float]:
    """log Z of the Bernoulli RBM (W, b, c) by summing out one layer analytically and enumerating the
    other (the smaller); None when both layers have more than 20 units."""
    V, H = W.shape
    if not enumerable(V, H):
        return None
    W, b, c = W.double(), b.double(), c.double()
    if H <= V:  # Σ_h exp(h·c + Σ_i softplus(b_i + W_i·h))
        n, weights, own, other = H, W.t(), c, b
    else:  # Σ_v exp(v·b + Σ_j softplus(c_j + v·W_j))
        n, weights, own, other = V, W, b, c
    parts = []
    for start in range(0, 2**n, chunk):
        s = all_states(n, W.device, start=start, stop=start + chunk)
        parts.append(torch.logsumexp(s @ own + F.softplus(s @ weights + other).sum(-1), 0))
    return float(torch.logsumexp(torch.stack(parts), 0))


# --- continuous energies: a geometric path with MALA transitions -----------------------------------
class UniformBox:
    """The base model f_0 = 1 on [low, high]^D (0 outside): log Z_0 = D log(high - low). Its samples are
    made on ``like``'s device and in its dtype (the energy's parameters: a GPU model anneals on its GPU)."""

    def __init__(self, shape: tuple, low: float = -1.0, high: float = 1.0, like: Optional[Tensor] = None):
        self.shape, self.low, self.high = tuple(shape), low, high
        self.log_z = math.prod(self.shape) * math.log(high - low)
        self.like = torch.empty(0) if like is None else like

    def sample(self, n: int) -> Tensor:
        u = torch.rand(n, *self.shape, device=self.like.device, dtype=self.like.dtype)
        return u * (self.high - self.low) + self.low

    def log_prob_and_grad(self, x: Tensor) -> tuple[Tensor, Tensor]:
        inside = ((x >= self.low) & (x <= self.high)).flatten(1).all(1)
        return torch.where(inside, 0.0, -math.inf).double(), torch.zeros_like(x)


class DiagonalGaussian:
    """The base model N(mean, diag(std²)), normalised: log Z_0 = 0; samples on the mean's device, in its dtype."""

    def __init__(self, mean: Tensor, std: Tensor):
        self.mean, self.std, self.log_z = mean, std, 0.0

    def sample(self, n: int) -> Tensor:
        return self.mean + self.std * torch.randn(n, *self.mean.shape, device=self.mean.device, dtype=self.mean.dtype)

    def log_prob_and_grad(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = (x - self.mean) / self.std
        log_p = -0.5 * z**2 - self.std.log() - 0.5 * math.log(2 * math.pi)
        return log_p.flatten(1).sum(1).double(), -z / self.std


class LangevinPath:
    """The geometric path p_β ∝ f_0(x)^{1-β} exp(-β E(x)) (Neal 2001, eq. 3) from a normalised or
    known base f_0 to an energy E, with ``mcmc_steps`` Metropolis-adjusted Langevin steps per
    temperature as the transitions T_β (MALA: Roberts & Tweedie 1996; a proposal outside the base's
    support is rejected, so each T_β leaves p_β invariant).

    The step size of each temperature is either tuned by a pilot run (``tune``: the acceptance rate at
    one temperature moves the next one's step size towards ``target_accept``) and then held fixed in the
    estimating run, whose chains are fresh, so the estimate stays unbiased in Z; or one fixed value.
    The log-weight factor at each temperature, (β' - β)(-E(x) - log f_0(x)), reuses the energy the last
    MALA step computed: one energy gradient per step, none for the weights."""

    def __init__(self, energy, base, step_size: float, mcmc_steps: int = 1, target_accept: float = 0.574):
        self.energy, self.base, self.mcmc_steps, self.target = energy, base, mcmc_steps, target_accept
        self.step_sizes: list[float] = []
        self.initial_step = step_size
        self.tune = False
        self._k, self._cache, self._next = 0, None, step_size
        self.acceptance: list[float] = []

    def log_z_base(self) -> float:
        return float(self.base.log_z)

    def sample_base(self, n: int) -> Tensor:
        self._k, self._cache, self.acceptance, self._next = 0, None, [], self.initial_step
        if self.tune:
            self.step_sizes = []
        return self.base.sample(n)

    def terms(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(u, ∇u, log f_0, ∇ log f_0) with u = -E(x) - log f_0(x), so log p*_β = log f_0 + β u."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            neg_energy = -self.energy(x).reshape(len(x))
            grad = torch.autograd.grad(neg_energy.sum(), x)[0]
        log_f0, grad_f0 = self.base.log_prob_and_grad(x.detach())
        return neg_energy.detach().double() - log_f0, grad - grad_f0, log_f0, grad_f0

    def _state(self, x: Tensor):
        if self._cache is None or self._cache[0] is not x:
            self._cache = (x, *self.terms(x))
        return self._cache

    def step(self, x: Tensor, beta_from: float, beta_to: float) -> tuple[Tensor, Tensor]:
        x, u, gu, l0, g0 = self._state(x)
        delta = (beta_to - beta_from) * u
        eps = self._step_size()
        accepted = torch.zeros(len(x), dtype=torch.float64, device=x.device)
        for _ in range(self.mcmc_steps):
            x, u, gu, l0, g0, acc = self._mala(x, u, gu, l0, g0, beta_to, eps)
            accepted += acc
        self._cache = (x, u, gu, l0, g0)
        rate = float(accepted.mean()) / self.mcmc_steps
        self.acceptance.append(rate)
        if self.tune:  # the next temperature's step size, from this one's acceptance
            self.step_sizes.append(eps)
            self._next = eps * math.exp(min(max(rate - self.target, -1.0), 1.0))
        self._k += 1
        return delta, x

    def _step_size(self) -> float:
        if self.tune:
            return self._next
        return self.step_sizes[self._k] if self.step_sizes else self.initial_step

    def _mala(self, x, u, gu, l0, g0, beta: float, eps: float):
        """One MALA step targeting log p*_β = log f_0 + β u (Roberts & Tweedie 1996)."""
        grad = g0 + beta * gu
        noise = torch.randn_like(x)
        proposal = x + 0.5 * eps**2 * grad + eps * noise
        u2, gu2, l02, g02 = self.terms(proposal)
        grad2 = g02 + beta * gu2
        back = ((x - proposal - 0.5 * eps**2 * grad2) ** 2).flatten(1).sum(1).double() / (2 * eps**2)
        log_ratio = (l02 + beta * u2) - (l0 + beta * u) - back + 0.5 * (noise**2).flatten(1).sum(1).double()
        log_ratio = torch.nan_to_num(log_ratio, nan=-math.inf)
        accept = torch.log(torch.rand_like(log_ratio)) < log_ratio
        pick = lambda new, old: torch.where(accept.view(-1, *[1] * (new.dim() - 1)), new, old)  # noqa: E731
        return (pick(proposal, x), pick(u2, u), pick(gu2, gu), pick(l02, l0), pick(g02, g0), accept.double())


@torch.no_grad()
def tuned_forward_ais(path: LangevinPath, runs: int, betas: Tensor, pilot_runs: int) -> LogZ:
    """Forward AIS on ``path``; with ``pilot_runs`` > 0, a pilot anneal first tunes each temperature's
    step size, and the estimate comes from fresh chains run with those step sizes held fixed."""
    if pilot_runs > 0:
        path.tune = True
        anneal(path, path.sample_base(pilot_runs), betas)
        path.tune = False
    return forward_ais(path, runs, betas)
