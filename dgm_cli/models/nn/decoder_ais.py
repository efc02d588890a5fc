"""log p(x) of a decoder-based model by annealed importance sampling with HMC transitions, and
bidirectional Monte Carlo (Wu, Burda, Salakhutdinov & Grosse 2017, "On the quantitative analysis of
decoder-based generative models"; BDMC: Grosse, Ghahramani & Adams 2015).

For one x, the path runs from the prior to the posterior over the latent z ~ N(0, I):

    f_beta(z) = p(z) p(x|z)^beta,   beta_0 = 0 < beta_1 < ... < beta_T = 1,   Z_0 = 1, Z_T = p(x),

and each chain's weight is w = prod_k p(x|z_{k-1})^(beta_k - beta_{k-1}), z_{k-1} then moved by an HMC
transition that leaves f_{beta_k} invariant (Neal 2001; 2011). E[w] = p(x), so log mean(w) over the
chains is a stochastic lower bound on log p(x) (Jensen). Run backwards from an exact posterior sample
-- which only simulated data have: z* ~ p(z), x ~ p(x|z*) makes z* an exact draw of p(z|x) -- the
reverse weight has E[w_rev] = 1 / p(x), so -log mean(w_rev) is a stochastic upper bound; the gap
between the two on simulated data bounds how far the forward estimate can be from the truth there.

The schedule is sigmoidal (Grosse et al. 2015, Sec. 6; Wu et al. App.): beta_k ∝ sigmoid(delta (2k/T - 1)),
rescaled to [0, 1]. HMC step sizes are per example and per temperature, tuned by a pilot anneal whose
acceptance rate moves each next step size toward ``target_accept`` (0.65: Neal 2011, Sec. 4.4; Wu et al.
adapt toward it too), then held fixed in fresh estimating chains -- so the weights stay unbiased for
p(x) (adapting inside the estimating run would make the transitions depend on the chains' past).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, ClassVar, Optional

import torch
from torch import Tensor

#: log p(x|z) per chain from latents (N, d), differentiable in z
LogLikelihood = Callable[[Tensor], Tensor]
SIGMOID_DELTA = 4.0
MIN_STEP, MAX_STEP = 1e-4, 1.0


def sigmoid_schedule(temperatures: int, delta: float = SIGMOID_DELTA, dtype=torch.float64) -> Tensor:
    """beta_0 = 0, ..., beta_T = 1 spaced by a sigmoid: dense at both ends, where the weights change fastest."""
    if temperatures < 1:
        raise ValueError("a schedule needs at least one temperature")
    s = torch.sigmoid(delta * (2 * torch.arange(temperatures + 1, dtype=dtype) / temperatures - 1))
    return (s - s[0]) / (s[-1] - s[0])


@dataclass
class AISResult:
    log_w: Tensor  # (B, C): each chain's log weight
    step_sizes: Tensor  # (T + 1, B): the HMC step size used when targeting beta_k (row 0: beta_0's, for reverse runs)
    acceptance: float  # mean acceptance over chains and temperatures

    def log_mean(self) -> Tensor:
        """log mean(w) per example (B,)."""
        return torch.logsumexp(self.log_w, dim=1) - math.log(self.log_w.shape[1])


class HMCPath:
    """The path f_beta(z) = N(z; 0, I) p(x|z)^beta for a batch of B examples with C chains each (chains
    of example b at rows b*C .. b*C + C - 1), HMC with ``leapfrog`` steps per transition."""

    def __init__(
        self,
        log_likelihood: LogLikelihood,
        examples: int,
        chains: int,
        latent_dim: int,
        leapfrog: int = 10,
        target_accept: float = 0.65,
    ):
        self.log_likelihood, self.b, self.c, self.d = log_likelihood, examples, chains, latent_dim
        self.leapfrog, self.target = leapfrog, target_accept

    def value_and_grad(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """(log p(x|z), its gradient in z) per chain."""
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            ll = self.log_likelihood(z)
            grad = torch.autograd.grad(ll.sum(), z)[0]
        return ll.detach().double(), grad.detach()

    def hmc(
        self, z: Tensor, ll: Tensor, gll: Tensor, beta: float, eps: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One HMC transition leaving f_beta invariant (Neal 2011, Sec. 5.2): potential U = |z|^2/2 - beta log p(x|z);
        ``eps`` (N,) per chain. Returns (z, ll, gll, accepted (N,))."""
        eps_col = eps.to(z.dtype)[:, None]
        momentum = torch.randn_like(z)
        grad_u = z - beta * gll
        p = momentum - 0.5 * eps_col * grad_u
        z_new, ll_new, gll_new = z, ll, gll
        for step in range(self.leapfrog):
            z_new = z_new + eps_col * p
            ll_new, gll_new = self.value_and_grad(z_new)
            grad_u = z_new - beta * gll_new
            p = p - (eps_col if step < self.leapfrog - 1 else 0.5 * eps_col) * grad_u
        h_old = 0.5 * (z.double() ** 2).sum(1) - beta * ll + 0.5 * (momentum.double() ** 2).sum(1)
        h_new = 0.5 * (z_new.double() ** 2).sum(1) - beta * ll_new + 0.5 * (p.double() ** 2).sum(1)
        log_ratio = torch.nan_to_num(h_old - h_new, nan=-math.inf)
        accept = torch.log(torch.rand_like(log_ratio)) < log_ratio
        keep = accept[:, None]
        return (
            torch.where(keep, z_new, z),
            torch.where(accept, ll_new, ll),
            torch.where(keep, gll_new, gll),
            accept.double(),
        )

    def anneal(
        self, z: Tensor, betas: Tensor, step_sizes: Optional[Tensor] = None, initial_step: float = 0.05
    ) -> AISResult:
        """Anneal chains ``z`` (B*C, d) along ``betas``: with ``step_sizes`` (len(betas), B) held fixed (indexed by
        the target's position in ``betas``), or, without, tuning them as it goes (a pilot run)."""
        ll, gll = self.value_and_grad(z)
        log_w = torch.zeros(len(z), dtype=torch.float64, device=z.device)
        tuning = step_sizes is None
        if tuning:
            step_sizes = torch.full((len(betas), self.b), initial_step, dtype=torch.float64, device=z.device)
        eps = step_sizes[1] if not tuning else step_sizes[0].clone()
        b = betas.tolist()
        accepted = 0.0
        for k in range(1, len(b)):
            log_w += (b[k] - b[k - 1]) * ll
            if not tuning:
                eps = step_sizes[k]
            z, ll, gll, acc = self.hmc(z, ll, gll, b[k], eps.repeat_interleave(self.c))
            rate = acc.view(self.b, self.c).mean(1)
            accepted += float(rate.mean())
            if tuning:
                step_sizes[k] = eps
                eps = (eps * torch.exp(rate - self.target)).clamp(MIN_STEP, MAX_STEP)
        if tuning:
            step_sizes[0] = step_sizes[1]
        return AISResult(log_w.view(self.b, self.c), step_sizes, accepted / max(len(b) - 1, 1))

    def prior(self, like: Tensor) -> Tensor:
        return torch.randn(self.b * self.c, self.d, device=like.device, dtype=like.dtype)


def forward_ais(path: HMCPath, betas: Tensor, pilot: Optional[HMCPath], like: Tensor) -> AISResult:
    """Forward AIS from the prior, the step sizes tuned first by a ``pilot`` path (same examples, fewer
    chains); without a pilot the run tunes itself (only approximately unbiased)."""
    step_sizes = pilot.anneal(pilot.prior(like), betas).step_sizes if pilot is not None else None
    return path.anneal(path.prior(like), betas, step_sizes)


def reverse_ais(path: HMCPath, z_exact: Tensor, betas: Tensor, step_sizes: Tensor) -> AISResult:
    """Reverse AIS from exact posterior samples ``z_exact`` (B, d), each chain of an example starting at its
    sample; the step size targeting beta_k is the forward run's. log_w holds the log reverse weights."""
    z = z_exact.repeat_interleave(path.c, dim=0)
    return path.anneal(z, betas.flip(0), step_sizes.flip(0))


# --- what `dgm eval estimator.ais=true` runs for a decoder-based model -----------------------------------
@dataclass
class DecoderAISSettings:
    """`dgm eval estimator.<key>=...` of decoder-based AIS (Wu et al. 2017)."""

    ais: bool = False  # estimate log p(x) by AIS from the prior to the posterior over z, with HMC
    ais_chains: int = 16  # independent chains per example
    ais_temperatures: int = 1000  # intermediate distributions (sigmoidal schedule)
    ais_leapfrog: int = 10  # leapfrog steps per HMC transition
    ais_pilot_chains: int = 4  # chains per example of the pilot run that tunes the step sizes toward acceptance 0.65
    bdmc_examples: int = 10  # examples simulated from the model for bidirectional Monte Carlo; 0: none

    #: a subclass's own keys that only AIS reads (a GAN's sigma grid)
    extra_ais_keys: ClassVar[tuple[str, ...]] = ()

    def in_effect(self) -> dict:
        """The settings that apply, for the report and the record's name: with ``ais``, the AIS keys; without,
        only the model's other estimator's (a VAE's k), so its records read as they did before AIS existed."""
        values = dataclasses.asdict(self)
        own = {f.name for f in dataclasses.fields(DecoderAISSettings)} | set(self.extra_ais_keys)
        return {k: v for k, v in values.items() if (k in own) == bool(self.ais)}

    def check_ais(self) -> Optional[str]:
        """What is wrong with the AIS settings, or None."""
        if (
            self.ais_chains < 1
            or self.ais_temperatures < 1
            or self.ais_leapfrog < 1
            or self.ais_pilot_chains < 1
            or self.bdmc_examples < 0
        ):
            return (
                "estimator.ais_chains, ais_temperatures, ais_leapfrog and ais_pilot_chains must be >= 1 and "
                "estimator.bdmc_examples >= 0"
            )
        return None

    def describe(self) -> str:
        return (
            f"{self.ais_chains} chains x {self.ais_temperatures} temperatures (sigmoidal schedule, delta "
            f"{SIGMOID_DELTA:g}), HMC with {self.ais_leapfrog} leapfrog steps, step sizes tuned per example "
            f"toward acceptance 0.65 by a {self.ais_pilot_chains}-chain pilot run"
        )


#: (x (B, ...), chains) -> log p(x_b | z) for the B * chains latents, example-major
Factory = Callable[[Tensor, int], LogLikelihood]


def log_likelihood(
    factory: Factory,
    x: Tensor,
    latent_dim: int,
    s: DecoderAISSettings,
    temperatures: Optional[int] = None,
    chains: Optional[int] = None,
) -> tuple[Tensor, float]:
    """Forward AIS estimate of log p(x) per example (a stochastic lower bound), and the mean acceptance."""
    betas = sigmoid_schedule(temperatures or s.ais_temperatures)
    chains = chains or s.ais_chains
    path = HMCPath(factory(x, chains), len(x), chains, latent_dim, s.ais_leapfrog)
    pilot = HMCPath(factory(x, s.ais_pilot_chains), len(x), s.ais_pilot_chains, latent_dim, s.ais_leapfrog)
    result = forward_ais(path, betas, pilot, x)
    return result.log_mean(), result.acceptance


def bdmc(factory: Factory, z_exact: Tensor, x_simulated: Tensor, s: DecoderAISSettings) -> dict:
    """Bidirectional Monte Carlo on data simulated from exact latents: forward AIS (a stochastic lower bound)
    and reverse AIS from z_exact (a stochastic upper bound) per example, and the report's numbers."""
    b, d = z_exact.shape
    betas = sigmoid_schedule(s.ais_temperatures)
    path = HMCPath(factory(x_simulated, s.ais_chains), b, s.ais_chains, d, s.ais_leapfrog)
    pilot = HMCPath(factory(x_simulated, s.ais_pilot_chains), b, s.ais_pilot_chains, d, s.ais_leapfrog)
    forward = forward_ais(path, betas, pilot, z_exact)
    reverse = reverse_ais(path, z_exact, betas, forward.step_sizes)
    lower, upper = forward.log_mean(), -reverse.log_mean()
    return {
        "forward": lower,
        "reverse": upper,
        "report": {
            "bdmc_examples": b,
            "bdmc_forward_log_p": float(lower.mean()),
            "bdmc_reverse_log_p": float(upper.mean()),
            "bdmc_gap_nats": float((upper - lower).mean()),
            "bdmc_acceptance": (forward.acceptance + reverse.acceptance) / 2,
        },
    }
