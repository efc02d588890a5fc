"""Conditional flow matching (Lipman et al. 2023): a velocity field v_theta(x, t) regressed onto the
velocity of a conditional probability path from noise x_0 ~ N(0, I) (t = 0) to data x_1 (t = 1),

    x_t = (1 - (1 - sigma_min) t) x_0 + t x_1,    u_t = x_1 - (1 - sigma_min) x_0,
    L = E_{t ~ U[0,1], (x_0, x_1)} |v_theta(x_t, t) - u_t|^2                  (Lipman et al. eq. 20-23)

``model.path=linear`` pairs noise and data independently: with sigma_min = 0 this is the rectified
flow's straight path (Liu et al. 2023, eq. 1); ``model.path=ot`` pairs them by the minibatch
optimal-transport plan (Tong et al. 2024, OT-CFM; coupling.py), which straightens the learned paths.
The marginal field that the loss's minimiser is transports N(0, I) to the data distribution, so
sampling solves dx/dt = v_theta from t = 0 to 1 (``model.sampler``: euler, midpoint, rk4 with
``model.sample_steps`` steps, or the adaptive dopri5), and ``dgm eval`` integrates the instantaneous
change of variables back from t = 1 (ode.py): log p(x) with the exact trace (small dimension) or
Hutchinson's estimate with its standard error (images).

Images arrive dequantized, x = (k + u)/256, and the model works on y = 2x - 1, so log p(x) = log p(y)
+ D ln 2 is the density on [0, 1)^D, as a flow's; ``dgm eval`` adds D ln 256 (an upper bound on the
discrete NLL, in expectation, the flows' protocol). The flow's density is positive everywhere on R^D;
the mass it puts outside the cube makes the number conservative (too high an NLL), never optimistic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
from torch import Tensor, nn

from ...errors import UserError
from ...rules import NON_EMPTY_SIZES, POSITIVE, PROBABILITY, SIZES, checked, checked_choice, checked_list
from ..base import DataSpec, GenerativeModel, Metrics, PhaseLoss
from ..diffusion.unet import UNet
from ..nn.distributions import standard_normal_log_prob
from ..nn.mlp import mlp
from ..objectives import Objective
from ..registry import register
from . import ode
from .coupling import ot_pairing

PATHS = ("linear", "ot")
NETWORKS = ("auto", "mlp", "unet")
TRACES = ("auto", "exact", "hutchinson")
#: dimensions up to which estimator.trace=auto takes the exact trace (one backward pass per dimension)
EXACT_TRACE_MAX_DIM = 16
#: the largest minibatch an OT plan pairs (training batches are paired whole up to this size, larger ones and
#: validation's in chunks of it): the auction's cost grows faster than n^2
OT_CHUNK = 256
#: the U-Net reads t scaled to DDPM's step range, so its sinusoidal embedding resolves [0, 1]
TIME_SCALE = 1000.0


@dataclass
class FlowMatchingConfig:
    path: str = checked_choice("linear", PATHS)  # {choices}: linear: independent pairs (rectified flow, Liu et al.
    #   2023), ot: minibatch OT pairs (Tong et al. 2024)
    sigma_min: float = checked(0.0, PROBABILITY)  # the conditional path's width at t = 1 (Lipman et al. 2023); 0: the
    #   straight path
    network: str = checked_choice("auto", NETWORKS)  # {choices} (auto: unet for images, mlp otherwise)
    hidden: int = checked(256, POSITIVE)  # mlp: units per hidden layer
    depth: int = checked(3, POSITIVE)  # mlp: hidden layers
    channels: int = checked(32, POSITIVE)  # unet: base width (as model=ddpm's U-Net)
    channel_mult: list[int] = checked_list([1, 2, 2], NON_EMPTY_SIZES)  # unet: width per resolution
    num_res_blocks: int = checked(1, POSITIVE)  # unet: residual blocks per resolution
    attention_resolutions: list[int] = checked_list([], SIZES)  # unet: feature-map sizes with attention
    dropout: float = checked(0.0, PROBABILITY)  # unet: dropout in the residual blocks
    sampler: str = checked_choice("rk4", ode.SOLVERS)  # ODE solver of `dgm sample`: {choices} (dopri5: adaptive)
    sample_steps: int = checked(50, POSITIVE)  # steps of a fixed-step sampler (dgm sample steps=N); dopri5 sets its own
    rtol: float = checked(1e-5, POSITIVE)  # dopri5's relative tolerance (sampling)
    atol: float = checked(1e-5, POSITIVE)  # dopri5's absolute tolerance (sampling)


@dataclass
class ODELikelihoodEstimator:
    """`dgm eval estimator.<key>=...`: how log p(x) is integrated."""

    trace: str = "auto"  # auto (exact up to 16 dimensions, else hutchinson) | exact | hutchinson
    probes: int = 2  # hutchinson: Rademacher probes per example (>= 2 gives the probes' own standard error)
    solver: str = "dopri5"  # euler | midpoint | rk4 | dopri5 (adaptive)
    steps: int = 100  # fixed-step solvers' steps
    rtol: float = 1e-5  # dopri5's tolerances
    atol: float = 1e-5

    def __post_init__(self):
        if self.trace not in TRACES or self.solver not in ode.SOLVERS:
            raise UserError(
                f"estimator.trace must be one of {', '.join(TRACES)} and estimator.solver one of "
                f"{', '.join(ode.SOLVERS)}; got trace={self.trace}, solver={self.solver}."
            )
        if self.probes < 1 or self.steps < 1 or self.rtol <= 0 or self.atol <= 0:
            raise UserError("estimator.probes and estimator.steps must be >= 1, estimator.rtol and estimator.atol > 0.")


class MLPVelocity(nn.Module):
    """v(x, t) for vectors: an MLP of [x, t]."""

    def __init__(self, dim: int, hidden: int, depth: int):
        super().__init__()
        self.net = mlp([dim + 1, *[hidden] * depth, dim], act="silu")

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.net(torch.cat([x, t[:, None].to(x.dtype)], dim=1))


class UNetVelocity(nn.Module):
    """v(x, t) for images: DDPM's U-Net (diffusion/unet.py) with t scaled to its step range."""

    def __init__(self, unet: UNet):
        super().__init__()
        self.unet = unet

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.unet(x, t * TIME_SCALE)


@register("flow_matching")
class FlowMatching(GenerativeModel):
    family = "flow_matching"
    objectives = ("cfm",)
    representations = ("dequantized", "continuous")
    likelihood = "exact"
    Config = FlowMatchingConfig
    Estimator = ODELikelihoodEstimator
    #: `dgm sample`'s density picture of a toy (40,000 points): a fixed-step solve, which drew the same picture
    #: as dopri5 at eval's tolerances and rk4 with 20 steps in a fraction of their time
    plot_settings: ClassVar[dict] = {"solver": "midpoint", "steps": 8}

    def __init__(self, config: FlowMatchingConfig, data: DataSpec, objective: Objective):
        super().__init__(config, data, objective)
        network = config.network if config.network != "auto" else ("unet" if data.is_image else "mlp")
        if network == "unet":
            c = data.shape[0]
            self.velocity = UNetVelocity(
                UNet(
                    c,
                    c,
                    image_size=data.shape[-1],
                    channels=config.channels,
                    channel_mult=list(config.channel_mult),
                    num_res_blocks=config.num_res_blocks,
                    attention_resolutions=list(config.attention_resolutions),
                    dropout=config.dropout,
                )
            )
        else:
            self.velocity = MLPVelocity(data.dim, config.hidden, config.depth)
        self.network = network
        self._eval_parts: Optional[tuple[Tensor, dict[str, Tensor]]] = None

    @classmethod
    def check_settings(cls, config: FlowMatchingConfig, objective: Objective, data: Optional[DataSpec] = None) -> None:
        super().check_settings(config, objective, data)
        if data is None:
            return
        wants_unet = config.network == "unet" or (config.network == "auto" and data.is_image)
        if wants_unet:
            if not data.is_image or data.shape[1] != data.shape[2]:
                raise UserError(
                    f"model.network=unet models square images (C, H, H), not data of shape {data.shape}; "
                    "use model.network=mlp."
                )
            halvings = len(config.channel_mult) - 1
            if data.shape[1] % (2**halvings):
                raise UserError(
                    f"model.channel_mult={list(config.channel_mult)} halves the {data.shape[1]}-pixel "
                    f"image {halvings} times, which needs a size divisible by {2**halvings}."
                )

    # --- data space <-> the flow's space ------------------------------------------------------------
    def to_model_space(self, x: Tensor) -> Tensor:
        return 2 * x - 1 if self.data.is_image else x

    def to_data_space(self, y: Tensor) -> Tensor:
        return ((y + 1) / 2).clamp(0, 1) if self.data.is_image else y

    def log_det_to_model_space(self) -> float:
        """log |det d(model space)/d(data space)| per example: D ln 2 for images (y = 2x - 1)."""
        return self.data.dim * math.log(2.0) if self.data.is_image else 0.0

    def field(self, x: Tensor, t: float | Tensor) -> Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(len(x))
        return self.velocity(x, t)

    # --- training -------------------------------------------------------------------------------------
    def pairs(self, x1: Tensor, coupling: str) -> tuple[Tensor, Tensor]:
        """(x_0, x_1): noise paired with data independently (``linear``), or by the minibatch OT plan (``ot``)."""
        x0 = torch.randn_like(x1)
        if coupling == "ot":
            x0 = torch.cat([ot_pairing(n, d) for n, d in zip(x0.split(OT_CHUNK), x1.split(OT_CHUNK))])
        return x0, x1

    def cfm_loss(self, x: Tensor, coupling: str) -> Tensor:
        x0, x1 = self.pairs(self.to_model_space(x), coupling)
        t = torch.rand(len(x1), device=x1.device, dtype=x1.dtype)
        tb = t.view(-1, *[1] * (x1.dim() - 1))
        s = self.config.sigma_min
        xt = (1 - (1 - s) * tb) * x0 + tb * x1
        target = x1 - (1 - s) * x0
        return (self.velocity(xt, t) - target).pow(2).mean()  # a mean over dimensions, as torchcfm

    def training_loss(self, x: Tensor, y: Optional[Tensor], phase: str) -> PhaseLoss:
        loss = self.cfm_loss(x, self.config.path)
        return loss, {"cfm_loss": loss.detach()}

    @torch.no_grad()
    def validation_step(self, x: Tensor, y: Optional[Tensor]) -> Metrics:
        """The regression loss on held-out data (the likelihood costs a whole ODE solve per batch); OT pairs are
        drawn within chunks of ``OT_CHUNK`` examples, as in training (an OT plan over a whole
        evaluation batch of 1,000 costs most of a minute, and is a different coupling than training uses)."""
        loss = self.cfm_loss(x, self.config.path)
        return {"loss": loss, "cfm_loss": loss}

    # --- likelihood -----------------------------------------------------------------------------------
    def trace_kind(self, trace: str) -> str:
        if trace == "auto":
            return "exact" if self.data.dim <= EXACT_TRACE_MAX_DIM else "hutchinson"
        return trace

    def density_support(self, **_) -> Optional[str]:
        """Where the density is normalised, for images (whose data lie in [0, 1]^D): all of R^D."""
        return "R^D" if self.data.is_image else None

    def likelihood_name(self, **settings) -> str:
        """``exact`` with the exact trace; ``hutchinson`` (an estimate) otherwise."""
        return self.trace_kind(self.Estimator(**settings).trace)

    def ode_log_prob(
        self, y: Tensor, trace: str, solver: str, steps: int, rtol: float, atol: float, eps: Optional[Tensor] = None
    ) -> tuple[Tensor, int]:
        """log p_1(y) in the flow's space by the instantaneous change of variables (ode.py), and the
        number of field evaluations."""
        f = ode.likelihood_field(self.field, trace, eps)
        zero = torch.zeros(len(y), dtype=y.dtype, device=y.device)
        (y0, a), calls = ode.solve(f, (y, zero), 1.0, 0.0, solver, steps, rtol, atol)
        return standard_normal_log_prob(y0) + a, calls

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, y: Optional[Tensor] = None, **settings) -> Tensor:
        s = self.Estimator(**settings)
        trace = self.trace_kind(s.trace)
        z = self.to_model_space(x)
        probes = s.probes if trace == "hutchinson" else 1
        rep = z.repeat_interleave(probes, dim=0)
        eps = ode.rademacher_like(rep) if trace == "hutchinson" else None
        log_p, calls = self.ode_log_prob(rep, trace, s.solver, s.steps, s.rtol, s.atol, eps)
        log_p = log_p.view(len(x), probes) + self.log_det_to_model_space()
        parts = {"function_evaluations": torch.full((len(x),), float(calls), dtype=torch.float64)}
        if probes > 1:  # the variance of each example's mean over its probes
            parts["hutchinson_variance"] = log_p.double().var(dim=1) / probes
        self._eval_parts = (x, parts)
        return log_p.mean(dim=1)

    def estimator(self, **settings) -> str:
        s = self.Estimator(**settings)
        trace = self.trace_kind(s.trace)
        how = (
            "exact trace of dv/dx"
            if trace == "exact"
            else f"Hutchinson's trace estimate, {s.probes} Rademacher probe(s) per example (FFJORD): an unbiased "
            "estimate of the solver's log p, with its own error"
        )
        solver = f"dopri5, rtol={s.rtol:g}, atol={s.atol:g}" if s.solver == "dopri5" else f"{s.solver}, {s.steps} steps"
        text = f"instantaneous change of variables (Chen et al. 2018), {how}; ODE solver {solver}"
        if self.data.is_image:
            text += "; uniform dequantization, y = 2x - 1"
        return text

    @torch.no_grad()
    def extra_eval(self, x: Tensor, y: Optional[Tensor] = None) -> Metrics:
        """Sums over the batch that ``log_likelihood`` just scored: field evaluations, the probes' variance."""
        kept, self._eval_parts = self._eval_parts, None
        return {k: v.sum() for k, v in kept[1].items()} if kept is not None and kept[0] is x else {}

    def finalize_eval(self, sums: dict[str, float], count: int) -> dict[str, float]:
        """Mean field evaluations per solve; ``hutchinson_stderr_nats``: the share of the mean NLL's
        standard error that comes from the trace probes (already inside the spread over examples)."""
        variance = sums.pop("hutchinson_variance", None)
        out = {k: float(v) / count for k, v in sums.items()}
        return out if variance is None else {**out, "hutchinson_stderr_nats": math.sqrt(float(variance)) / count}

    # --- sampling -------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, label: Optional[int] = None) -> Tensor:
        """x(1) of dx/dt = v(x, t) from x(0) ~ N(0, temperature^2 I)."""
        self.sample_labels(n, label, conditional=False)
        ref = next(self.parameters())
        y0 = temperature * torch.randn(n, *self.data.shape, device=ref.device, dtype=ref.dtype)
        c = self.config
        (y1,), _ = ode.solve(
            lambda t, s: (self.field(s[0], t),), (y0,), 0.0, 1.0, c.sampler, c.sample_steps, c.rtol, c.atol
        )
        return self.to_data_space(y1)
