"""What the Boltzmann machines (RBM, GRBM, DBN, DBM) share.

* The objectives: ``cd`` (contrastive divergence with ``k`` Gibbs sweeps from the data, Hinton 2002)
  and ``pcd`` (persistent CD, Tieleman 2008: ``chains`` fantasy particles carried across updates,
  ``k`` sweeps per update). The training loss is the CD surrogate mean F(v_data) - mean F(v_model)
  with v_model a constant, whose gradient is the CD estimate of -∇ log-likelihood.
* Sampler state in registered buffers, so checkpoints hold it and resume is exact: the persistent
  chains, the running mean (and mean square) of the training data (the AIS base model is built from it), and a
  fixed set of training examples for the free-energy gap (Hinton 2010, Sec. 6: the mean free energy of
  validation data minus that of training data; a gap that grows is the sign of overfitting). Under
  DistributedDataParallel (broadcast_buffers=False) every process keeps its own chains; the chains
  start from noise drawn under the engine's per-shard seed, so they differ across processes.
  With ``trainer.accumulate=N`` every micro-batch advances the chains k sweeps (N·k per update).
* Evaluation: ``prepare_eval`` estimates log Z once by AIS (forward, and reverse for the other side of
  the bracket; exact enumeration where a layer is small), ``log_likelihood`` subtracts it from the
  model's unnormalised log-probability (or its bound), and the log Z error is reported apart, as an
  error shared by every example.

A subclass supplies ``ais_path()``, ``unnormalized_log_prob(x)``, ``exact_log_z()`` and its sampler.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import List, Optional

import torch
from torch import Tensor

from ...errors import UserError
from ..base import GenerativeModel
from ..nn.host_flags import forget_known, known_set, marked, set_known
from ..objectives import PCD, Objective
from . import ais

REFERENCE_SIZE = 500  # training examples kept for the free-energy gap


@dataclass
class AISSchedule:
    """The annealing runs and temperatures of AIS (`dgm eval estimator.<key>=...`)."""

    ais_runs: int = 100  # independent annealing runs
    ais_temperatures: List[int] = field(default_factory=lambda: list(ais.DEFAULT_TEMPERATURES))  # per segment
    ais_segment_ends: List[float] = field(default_factory=lambda: list(ais.DEFAULT_SEGMENT_ENDS))

    def __post_init__(self):
        if self.ais_runs < 2:
            raise UserError(f"estimator.ais_runs={self.ais_runs} is not allowed: at least 2 runs, for an error bar.")
        try:
            ais.schedule(self.ais_temperatures, self.ais_segment_ends)
        except ValueError as exc:
            raise UserError(f"estimator.ais_temperatures / estimator.ais_segment_ends: {exc}.") from None

    def betas(self):
        return ais.schedule(self.ais_temperatures, self.ais_segment_ends)


@dataclass
class AISEstimator(AISSchedule):
    """`dgm eval estimator.<key>=...`: how log Z is estimated (Salakhutdinov & Murray 2008)."""

    reverse: bool = True  # reverse AIS from model samples: the other side of the bracket
    reverse_burn_in: int = 1000  # Gibbs sweeps that draw reverse AIS's starting samples
    exact: bool = True  # enumerate log Z where one layer has <= 20 units

    def __post_init__(self):
        super().__post_init__()
        if self.reverse_burn_in < 0:
            raise UserError(f"estimator.reverse_burn_in={self.reverse_burn_in} is not allowed: it must be >= 0.")


def weight_decay_groups(params) -> list[dict]:
    """Parameter groups: matrices take the configured weight decay, vectors (biases) none."""
    params = list(params)
    return [
        {"params": [p for p in params if p.dim() >= 2]},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def estimate_key(model, settings: dict) -> tuple:
    """What a cached log Z estimate depends on: the weights and buffers as they are now, and the settings."""
    versions = tuple(t._version for t in list(model.parameters()) + list(model.buffers()))
    return versions, repr(sorted(settings.items()))


def flat(x: Tensor) -> Tensor:
    return x.reshape(len(x), -1)


def filter_images(W: Tensor, data, n: int) -> dict[str, Tensor]:
    """``{"filters": ...}``: the first ``n`` columns of the visible-to-hidden weights ``W`` (V x H), each
    shown as an image of the data's shape and scaled to [0, 1] on its own; nothing for non-image data."""
    if not data.is_image:
        return {}
    w = W.detach()[:, :n].t().float()
    lo, hi = w.min(1, keepdim=True)[0], w.max(1, keepdim=True)[0]
    return {"filters": ((w - lo) / (hi - lo).clamp(min=1e-12)).view(-1, *data.shape)}


class BoltzmannMachine(GenerativeModel):
    family = "energy"
    objectives = ("cd", "pcd")
    likelihood = "ais"
    Estimator = AISEstimator
    # A grid is a long Gibbs chain per sample: 16 samples, not 64, keep the training grids a small share of a
    # run (measured with scripts/bench_models.py --sections models: docs/results.md)
    grid_samples = 16

    def __init__(self, config, data, objective: Objective):
        super().__init__(config, data, objective)
        self.register_load_state_dict_post_hook(forget_known)
        self.k = self.objective.k  # Gibbs sweeps per update (objectives.CD, PCD: their rules refuse k < 1)
        self.persistent = isinstance(self.objective, PCD)
        self.num_chains = self.objective.chains if self.persistent else 0
        self._log_z: Optional[tuple] = None  # (key, log Z) of the last estimate

    def configure_optimizers(self, build) -> dict[str, torch.optim.Optimizer]:
        """Weight decay (``optimizer.weight_decay``) on the weights only, not the biases (Hinton 2010, Sec. 10)."""
        return {"model": build(weight_decay_groups(self.parameters()))}

    def register_statistics(self, dim: int) -> None:
        """Buffers: the running mean of the training data (the base-rate model) and the fixed training
        examples of the free-energy gap."""
        self.register_buffer("data_mean", torch.full((dim,), 0.5))
        self.register_buffer("data_sq_mean", torch.full((dim,), 0.5))
        self.register_buffer("data_count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("reference", torch.zeros(REFERENCE_SIZE, dim))
        self.register_buffer("reference_filled", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def observe(self, v: Tensor) -> None:
        """Fold a training batch into the running data mean and the reference set."""
        n = len(v)
        total = self.data_count + n
        rate = (n / total).to(self.data_mean)
        self.data_mean += (v.mean(0) - self.data_mean) * rate
        self.data_sq_mean += ((v * v).mean(0) - self.data_sq_mean) * rate
        self.data_count.copy_(total)
        if marked(self.reference_filled):  # full: the device is not read again (nn/host_flags.py)
            return
        filled = int(self.reference_filled)
        take = max(0, min(n, REFERENCE_SIZE - filled))
        if take:
            self.reference[filled : filled + take] = v[:take]
            self.reference_filled += take
        if filled + take >= REFERENCE_SIZE:
            set_known(self.reference_filled, value=None)

    @torch.no_grad()
    def negatives(self, v: Tensor, chains: Tensor, started: Tensor, sweeps) -> Tensor:
        """The negative phase: CD-k runs ``sweeps(state, k)`` from the data ``v``; PCD advances the
        persistent ``chains`` (started from noise under the engine's per-shard seed, so each process
        has its own) and keeps the result."""
        if not self.persistent:
            return sweeps(v, self.k)
        if not known_set(started):
            chains.copy_(self.chain_start(chains))
            set_known(started)
        chains.copy_(sweeps(chains, self.k))
        return chains

    def chain_start(self, like: Tensor) -> Tensor:
        """Where persistent chains start: uniform binary noise (a GRBM: uniform on [0, 1))."""
        return torch.bernoulli(torch.full_like(like, 0.5))

    def base_rate(self) -> Tensor:
        """The AIS base model's visible biases: smoothed log-odds of the training pixel means."""
        return ais.base_rate_biases(self.data_mean, float(self.data_count)).to(self.data_mean)

    def free_energy_gap(self, free_energy_val: Tensor, free_energy) -> dict:
        """mean F(validation batch) - mean F(training reference set) (Hinton 2010, Sec. 6)."""
        filled = int(self.reference_filled)
        if filled == 0:
            return {}
        return {"free_energy_gap": free_energy_val.mean() - free_energy(self.reference[:filled]).mean()}

    def check_temperature(self, temperature: float, label) -> None:
        if temperature != 1.0:
            raise UserError(
                f"temperature={temperature}: a {type(self).__name__} samples its own distribution "
                "(Gibbs chains); leave temperature at 1."
            )
        self.sample_labels(1, label, conditional=False)

    # --- what a subclass supplies ---------------------------------------------------------------
    def ais_path(self):
        raise NotImplementedError

    def unnormalized_log_prob(self, x: Tensor, **settings) -> Tensor:
        """log p*(x) = -F(x), or a lower bound on it (DBN, DBM), per example."""
        raise NotImplementedError

    def exact_log_z(self) -> Optional[float]:
        raise NotImplementedError

    def estimate_kind(self) -> str:
        """What ``log_likelihood`` returns, for the report."""
        return "-F(x) - log Z"

    # --- evaluation -----------------------------------------------------------------------------

    @torch.no_grad()
    def prepare_eval(self, x: Optional[Tensor] = None, y: Optional[Tensor] = None, **settings) -> dict:
        """Estimate log Z once (forward AIS), bracket it (reverse AIS), enumerate it if small."""
        s = self.Estimator(**settings)
        start = time.perf_counter()
        betas = s.betas()
        path = self.ais_path()
        forward = ais.forward_ais(path, s.ais_runs, betas)
        out = {
            **forward.as_dict(""),
            "ais_runs": s.ais_runs,
            "ais_temperatures": len(betas) - 1,
            "log_z_base_rate_model": path.log_z_base(),
        }
        if s.reverse:
            start_samples = path.sample_target(path.sample_base(s.ais_runs), s.reverse_burn_in)
            reverse = ais.reverse_ais(path, start_samples, betas)
            out.update(reverse.as_dict("reverse_"))
            # [lower, upper]: forward AIS errs low on average, reverse AIS high (if its starts are exact)
            out["log_z_bracket"] = sorted([forward.log_z, reverse.log_z])
            out["reverse_starts"] = f"{s.reverse_burn_in} Gibbs sweeps from the base-rate model (approximate samples)"
        exact = self.exact_log_z() if s.exact else None
        if exact is not None:
            out["exact_log_z"] = exact
        out["shared_error_nats"] = forward.stderr
        out["log_z_seconds"] = round(time.perf_counter() - start, 2)
        self._log_z = (estimate_key(self, settings), forward.log_z)
        return out

    def log_z(self, **settings) -> float:
        if self._log_z is None or self._log_z[0] != estimate_key(self, settings):
            self.prepare_eval(**settings)
        return self._log_z[1]

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, y: Optional[Tensor] = None, **settings) -> Tensor:
        log_z = self.log_z(**settings)
        return self.unnormalized_log_prob(x, **settings).double() - log_z

    def estimator(self, **settings) -> str:
        s = self.Estimator(**settings)
        k = sum(s.ais_temperatures)
        text = (
            f"{self.estimate_kind()}, log Z by AIS: {s.ais_runs} runs x {k} temperatures "
            f"(segments ending at {s.ais_segment_ends}), base-rate model from smoothed training pixel means "
            "(Salakhutdinov & Murray 2008); the log Z error (shared_error_nats) is shared by every example"
        )
        if s.reverse:
            text += "; reverse AIS from Gibbs-chain samples gives the other end of log_z_bracket"
        return text
