"""What the sequential latent-variable models share: the ELBO (with KL warm-up) and the importance-weighted
bound over whole trajectories, masks for ragged sequences, per-step reporting.

Every model draws one latent trajectory z_{1:T} ~ q(z|x) and returns, per sequence and summed over its
real steps only,

    log p(x|z),   log p(z),   log q(z|x),

from which ELBO = E[log p(x|z) + log p(z) - log q(z|x)] and the IWAE bound with k trajectories,
log (1/k) sum_i w_i with w_i = p(x, z_i)/q(z_i|x) (Burda et al. 2015), both <= log p(x).
Sequences arrive padded with NaN (data/sequences.py): a step is real where it is not NaN. An image is
read as the sequence of its rows (binarized MNIST as 28 steps of 28 pixels), so these models also run on
image datasets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...data.sequences import is_piano_roll, mask_of
from ...errors import UserError
from ...rules import POSITIVE, checked, checked_choice
from ..base import DataSpec, GenerativeModel, Metrics, PhaseLoss
from ..nn.distributions import LOG_2PI
from ..objectives import ELBO, IWAE, Objective
from ..vae.importance import importance_log_likelihood

EMISSIONS = ("auto", "gaussian", "bernoulli")
MIN_STD = 1e-3


@dataclass
class SequenceConfig:
    """The hyperparameters of VRNN, STORN and SRNN (DMM names its networks' widths apart)."""

    z_dim: int = checked(16, POSITIVE)  # units of z_t
    hidden: int = checked(64, POSITIVE)  # width of the networks around the RNN (prior, posterior, emission, feature
    #   extractors)
    rnn_hidden: int = checked(64, POSITIVE)  # units of the RNN's state
    emission: str = checked_choice("auto", EMISSIONS)  # {choices} (auto: bernoulli for binary data and piano rolls,
    #   else gaussian)


@dataclass
class TrajectoryEstimator:
    """`dgm eval estimator.k=...`: latent trajectories per sequence in the importance-weighted bound."""

    k: int = 100

    def __post_init__(self):
        if self.k < 1:
            raise UserError(f"estimator.k={self.k} is not allowed: it must be >= 1.")


#: trajectory steps (samples x sequences x time steps) computed at once by the IWAE bound: about 1.4 GB for a DMM
STEP_ROWS_PER_CHUNK = 1 << 19


def normal_log_prob(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """log N(x; mean, diag(std^2)), summed over the last dimension."""
    return (-0.5 * (LOG_2PI + ((x - mean) / std) ** 2) - torch.log(std)).sum(-1)


def positive(t: Tensor) -> Tensor:
    """A standard deviation from an unconstrained output."""
    return F.softplus(t) + MIN_STD


def diagonal_gaussian(net: nn.Module, *inputs: Tensor) -> tuple[Tensor, Tensor]:
    """(mean, std) of a diagonal Gaussian from a network applied to the concatenated inputs."""
    mean, raw = net(torch.cat(inputs, -1)).chunk(2, dim=-1)
    return mean, positive(raw)


def add_step(
    totals: tuple[Tensor, Tensor, Tensor],
    real: Tensor,
    z: Tensor,
    posterior: tuple[Tensor, Tensor],
    prior: tuple[Tensor, Tensor],
    log_px_t: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """(log p(x|z), log p(z), log q(z|x)) with step t's terms added where the step is ``real``."""
    m = real.to(z.dtype)
    log_px, log_pz, log_qz = totals
    return (log_px + m * log_px_t, log_pz + m * normal_log_prob(z, *prior), log_qz + m * normal_log_prob(z, *posterior))


def reverse_within(x: Tensor, lengths: Tensor) -> Tensor:
    """Each sequence's real steps in reverse order (the padding stays after them)."""
    t = torch.arange(x.shape[1], device=x.device).expand(len(x), -1)
    idx = torch.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def backward_rnn(rnn: nn.Module, inputs: Tensor, mask: Tensor) -> Tensor:
    """Outputs of ``rnn`` run from each sequence's last real step back to its first: at step t, a summary
    of inputs t..end (no padding ever enters it)."""
    lengths = mask.sum(1)
    out, _ = rnn(reverse_within(inputs, lengths))
    return reverse_within(out, lengths)


def shifted(x: Tensor) -> Tensor:
    """x_{t-1} at step t, with x_0 = 0: the input of a model that predicts x_t from the past."""
    return torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)


class SequenceModel(GenerativeModel):
    family = "sequence"
    objectives = ("elbo", "iwae")
    representations = ("binary", "continuous")  # binary: images as sequences of rows; continuous: sequence data
    likelihood = "iwae"
    Estimator = TrajectoryEstimator

    @classmethod
    def check_settings(cls, config, objective: Objective, data: Optional[DataSpec] = None) -> None:
        super().check_settings(config, objective, data)
        if isinstance(objective, ELBO) and objective.free_bits:
            raise UserError("objective.free_bits is not implemented for sequence models; use kl_warmup_steps.")
        if data is not None and len(data.shape) != 2 and not data.is_image:
            raise UserError(
                f"{cls.__name__} models sequences (T, D) or images (rows as steps), not data of shape {data.shape}."
            )

    def __init__(self, config, data: DataSpec, objective: Objective):
        super().__init__(config, data, objective)
        self.length, self.x_dim = (data.shape[1], data.shape[0] * data.shape[2]) if data.is_image else data.shape
        self.emission_kind = config.emission
        if config.emission == "auto":
            binary = data.representation == "binary" or is_piano_roll(data)
            self.emission_kind = "bernoulli" if binary else "gaussian"
        self.emission_outputs = self.x_dim * (2 if self.emission_kind == "gaussian" else 1)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self._scored: Optional[tuple[Tensor, Tensor]] = None  # (batch, its bound) from the last log_likelihood

    # --- what each model defines ------------------------------------------------------------------
    def trajectory(self, x: Tensor, mask: Tensor, noise: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(log p(x|z), log p(z), log q(z|x)) per sequence for z drawn with ``noise`` (B, T, z_dim)."""
        raise NotImplementedError

    def markov_trajectory(
        self, x: Tensor, mask: Tensor, noise: Tensor, transition, emission
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``trajectory`` of a model whose latents form a Markov chain from z_0 = ``self.z0`` (DMM, SRNN):
        ``transition(t, z_{t-1})`` gives the posterior's and the prior's (mean, std) of z_t, ``emission(t,
        z_t)`` the emission's parameters."""
        z_prev = self.z0.expand(len(x), -1)
        totals = (x.new_zeros(len(x)),) * 3
        for t in range(x.shape[1]):
            (q_mean, q_std), prior = transition(t, z_prev)
            z = q_mean + q_std * noise[:, t]
            totals = add_step(
                totals, mask[:, t], z, (q_mean, q_std), prior, self.emission_log_prob(x[:, t], emission(t, z))
            )
            z_prev = z
        return totals

    def as_sequences(self, x: Tensor) -> Tensor:
        """(B, T, D) as they are; images (B, C, H, W) as their rows, (B, H, C W)."""
        return x.permute(0, 2, 1, 3).flatten(2) if self.data.is_image else x

    def as_data(self, seqs: Tensor) -> Tensor:
        """Generated (B, T, D) sequences in the data's own shape."""
        if not self.data.is_image:
            return seqs
        c, h, w = self.data.shape
        return seqs.view(-1, h, c, w).permute(0, 2, 1, 3)

    def emission_log_prob(self, x: Tensor, out: Tensor) -> Tensor:
        if self.emission_kind == "bernoulli":
            return -F.binary_cross_entropy_with_logits(out, x, reduction="none").sum(-1)
        mean, raw = out.chunk(2, dim=-1)
        return normal_log_prob(x, mean, positive(raw))

    def emission_sample(self, out: Tensor) -> Tensor:
        if self.emission_kind == "bernoulli":
            return torch.bernoulli(torch.sigmoid(out))
        mean, raw = out.chunk(2, dim=-1)
        return mean + positive(raw) * torch.randn_like(mean)

    # --- bounds -------------------------------------------------------------------------------------
    def log_weights(self, x: Tensor, k: int, noise: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
        """(log p(x|z), log p(z), log q(z|x)), each (k, B), for k trajectories per sequence."""
        x = self.as_sequences(x)
        mask = mask_of(x)
        mask = mask[:, : int(mask.sum(1).max())]  # no step past the batch's longest sequence is computed
        b, t = mask.shape
        x = x[:, :t]
        x = torch.nan_to_num(x).repeat(k, 1, 1)
        if noise is None:
            noise = torch.randn(k * b, t, self.config.z_dim, device=x.device)
        terms = self.trajectory(x, mask.repeat(k, 1), noise)
        return tuple(v.view(k, b) for v in terms)

    def iwae(self, x: Tensor, k: int) -> Tensor:
        """log (1/k) sum of k importance weights per sequence, computed in chunks of trajectories: all k
        trajectories of a batch of long sequences at once would not fit in memory."""

        def log_weights(m: int) -> Tensor:
            log_px, log_pz, log_qz = self.log_weights(x, m)
            return log_px + log_pz - log_qz

        steps = int(mask_of(self.as_sequences(x)).sum(1).max())
        return importance_log_likelihood(log_weights, k, x.shape[0] * max(1, steps), STEP_ROWS_PER_CHUNK)

    def kl_weight(self) -> Tensor:
        """1, or during the KL warm-up step / kl_warmup_steps: a 0-dim tensor from the step buffer (no host read)."""
        warmup = self.objective.kl_warmup_steps
        one = torch.ones((), device=self.step.device)
        return one if warmup <= 0 else (self.step / warmup).clamp(max=1.0)

    def training_loss(self, x: Tensor, y: Optional[Tensor], phase: str) -> PhaseLoss:
        """Nats per time step of the batch (sums over sequences / real steps), so the learning rate does
        not depend on sequence length."""
        steps = mask_of(self.as_sequences(x)).sum().clamp(min=1)
        if isinstance(self.objective, IWAE):
            bound = self.iwae(x, self.objective.k).sum() / steps
            return -bound, {"iwae_per_step": bound.detach()}
        log_px, log_pz, log_qz = (v[0] for v in self.log_weights(x, 1))
        kl = (log_qz - log_pz).sum() / steps
        rec = log_px.sum() / steps
        beta = self.kl_weight()
        return -(rec - beta * kl), {"elbo_per_step": (rec - kl).detach(), "kl_per_step": kl.detach(), "kl_weight": beta}

    def after_step(self, phase: str) -> None:
        self.step += 1

    @torch.no_grad()
    def validation_step(self, x: Tensor, y: Optional[Tensor]) -> Metrics:
        steps = mask_of(self.as_sequences(x)).sum().clamp(min=1)
        elbo = self.iwae(x, 1).sum() / steps
        return {"loss": -elbo, "elbo_per_step": elbo}

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, y: Optional[Tensor] = None, k: int = 100, **_) -> Tensor:
        """The IWAE bound with k trajectories per sequence, nats per sequence."""
        bound = self.iwae(x, k)
        self._scored = (x, bound)  # for extra_eval's per-step report of this batch
        return bound

    def estimator(self, k: int = 100, **_) -> str:
        return f"IWAE over latent trajectories, k={k} (Burda et al. 2015); a lower bound on log p(x_1:T)"

    def example_dims(self, x: Tensor) -> Tensor:
        """Real time steps times the values per step: padding holds no dimension."""
        return mask_of(self.as_sequences(x)).sum(1) * self.x_dim

    @torch.no_grad()
    def extra_eval(self, x: Tensor, y: Optional[Tensor] = None) -> Metrics:
        """Real time steps, the single-trajectory ELBO and the bound ``log_likelihood`` just gave this
        batch, to report nats per step."""
        sums = {"steps": mask_of(self.as_sequences(x)).sum().double(), "elbo": self.iwae(x, 1).double().sum()}
        if self._scored is not None and self._scored[0] is x:
            sums["bound"] = self._scored[1].double().sum()
        self._scored = None
        return sums

    def finalize_eval(self, sums: dict[str, float], count: int) -> dict[str, float]:
        steps = float(sums["steps"])
        out = {
            "elbo_nats_per_sequence": float(sums["elbo"]) / count,
            "elbo_nats_per_step": float(sums["elbo"]) / steps,
            "steps_per_sequence": steps / count,
        }
        if "bound" in sums:
            out["nll_nats_per_step"] = -float(sums["bound"]) / steps
        return out
