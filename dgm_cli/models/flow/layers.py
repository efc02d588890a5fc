"""Invertible layers for normalizing flows.

Every layer is a small ``nn.Module`` with

    forward(x) -> (z, log_det)     z = f(x),      log_det = log|det df/dx|     (B,)
    inverse(z) -> (x, log_det)     x = f^{-1}(z), log_det = log|det df^{-1}/dz| (B,)

so ``inverse`` returns minus the forward log-determinant at the same point. The
density of x follows from the change of variables (Dinh et al. 2017, eq. 3):

    log p(x) = log p_Z(f(x)) + log|det df/dx|.

Images are (B, C, H, W); 2-D toys and flattened images are (B, D). "Per channel"
means per C for images and per feature D for vectors.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.masked import MaskedLinear, made_degrees, made_masks
from ..nn.mlp import activation, mlp


def sum_except_batch(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1).sum(dim=1)


def _per_channel(param: Tensor, x: Tensor) -> Tensor:
    """View a (C,) parameter so it broadcasts over (B, C) or (B, C, H, W)."""
    return param.view(1, -1, *([1] * (x.dim() - 2)))


def _spatial(x: Tensor) -> int:
    """Number of positions a per-channel parameter is shared over (H*W, or 1 for vectors)."""
    return x[0, 0].numel()


def _channel_stat_dims(x: Tensor) -> tuple[int, ...]:
    return (0,) + tuple(range(2, x.dim()))


#: the most a log-scale computed by a network may reach, either way (see ``soft_clamp``)
MAX_LOG_SCALE = 3.0


def soft_clamp(log_scale: Tensor, bound: float = MAX_LOG_SCALE) -> Tensor:
    """bound * tanh(log_scale / bound): the identity near 0, never beyond +-bound ("soft clamping" of
    a coupling's scale, Ardizzone et al. 2019, Sec. 3).

    A log-scale that a network computes from the other half of the data is unbounded: at temperature 1
    the sampler meets inputs the network never saw in training, a large input gives a large negative
    log-scale, exp(-log_s) multiplies the next input by e^|log_s|, and after a few layers the values
    are inf, then NaN. Bounded, each layer's inverse grows its input by at most e^bound times."""
    return bound * torch.tanh(log_scale / bound)


class FlowSequential(nn.Module):
    """A composition f = f_K o ... o f_1; log-determinants add up (chain rule)."""

    def __init__(self, layers):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        log_det = x.new_zeros(x.shape[0])
        for layer in self.layers:
            x, ld = layer(x)
            log_det = log_det + ld
        return x, log_det

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        log_det = z.new_zeros(z.shape[0])
        for layer in reversed(self.layers):
            z, ld = layer.inverse(z)
            log_det = log_det + ld
        return z, log_det


# --- preprocessing ------------------------------------------------------------------


class LogitTransform(nn.Module):
    """Data in [0, 1) to the real line (Dinh et al. 2017, Sec. 4.1):

        y = logit(s),  s = alpha + (1 - 2 alpha) x,
        log|dy/dx| = log(1 - 2 alpha) - log s - log(1 - s)   per dimension,

    so the flow's density of x on [0,1)^D includes this term. alpha keeps s away
    from 0 and 1 (0.05 in RealNVP for CIFAR-10, 1e-6 in MAF for MNIST)."""

    def __init__(self, alpha: float = 0.05):
        super().__init__()
        self.alpha = alpha

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        s = self.alpha + (1 - 2 * self.alpha) * x
        y = torch.log(s) - torch.log1p(-s)
        log_det = math.log(1 - 2 * self.alpha) - torch.log(s) - torch.log1p(-s)
        return y, sum_except_batch(log_det)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        s = torch.sigmoid(y)
        x = (s - self.alpha) / (1 - 2 * self.alpha)
        # d x / d y = s (1 - s) / (1 - 2 alpha), with log s(1-s) = logsigmoid(y) + logsigmoid(-y)
        log_det = F.logsigmoid(y) + F.logsigmoid(-y) - math.log(1 - 2 * self.alpha)
        return x, sum_except_batch(log_det)


class Shift(nn.Module):
    """y = x + shift, volume preserving: Glow centres data in [0,1) as x - 0.5
    (Kingma & Dhariwal 2018, code)."""

    def __init__(self, shift: float):
        super().__init__()
        self.shift = shift

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x + self.shift, x.new_zeros(x.shape[0])

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return y - self.shift, y.new_zeros(y.shape[0])


# --- reshaping and multi-scale ----------------------------------------------------------


class Squeeze(nn.Module):
    """(B, C, H, W) -> (B, 4C, H/2, W/2): each 2x2 block of a channel becomes 4
    channels (Dinh et al. 2017, Sec. 3.6). A permutation: log_det = 0."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        b, c, h, w = x.shape
        x = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
        return x.reshape(b, c * 4, h // 2, w // 2), x.new_zeros(b)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        b, c, h, w = z.shape
        z = z.view(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
        return z.reshape(b, c // 4, h * 2, w * 2), z.new_zeros(b)


class Unsqueeze(Squeeze):
    """The inverse of Squeeze, so that a multi-scale flow's z has the shape of x."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return super().inverse(x)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return super().forward(z)


class Flatten(nn.Module):
    """(B, *shape) -> (B, D), for flows defined on vectors (MAF on images)."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x.reshape(x.shape[0], -1), x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return z.reshape(z.shape[0], *self.shape), z.new_zeros(z.shape[0])


class Split(nn.Module):
    """Multi-scale factoring out (Dinh et al. 2017, Sec. 3.6, eq. 16): half of the
    channels leave the flow here and go straight to the base distribution; the
    other half go on through ``inner`` (the next, coarser scale).

    With ``prior`` (Glow's learned split prior, Kingma & Dhariwal 2018, Sec. 3 and
    code ``split2d``) the factored-out half is N(mu(h), sigma(h)^2) given the other
    half h; written as the affine map out -> (out - mu(h)) / sigma(h) it is one more
    invertible layer, and the base distribution stays N(0, I). Sampling at
    temperature T then scales sigma(h) by T, as in Glow.

    z = concat(factored-out half, inner(kept half)) along channels, so z has x's shape.
    """

    def __init__(self, inner: nn.Module, prior: Optional[nn.Module] = None):
        super().__init__()
        self.inner = inner
        self.prior = prior  # h (B, C/2, ...) -> (mu, log_sigma) stacked along channels

    def _conditional(self, h: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_std = self.prior(h).chunk(2, dim=1)
        return mean, soft_clamp(log_std)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out, kept = x.chunk(2, dim=1)
        log_det = x.new_zeros(x.shape[0])
        if self.prior is not None:
            mean, log_std = self._conditional(kept)
            out = (out - mean) * torch.exp(-log_std)
            log_det = log_det - sum_except_batch(log_std)
        kept, ld = self.inner(kept)
        return torch.cat([out, kept], dim=1), log_det + ld

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        out, kept = z.chunk(2, dim=1)
        kept, log_det = self.inner.inverse(kept)
        if self.prior is not None:
            mean, log_std = self._conditional(kept)
            out = out * torch.exp(log_std) + mean
            log_det = log_det + sum_except_batch(log_std)
        return torch.cat([out, kept], dim=1), log_det


# --- normalisation --------------------------------------------------------------------


class ActNorm(nn.Module):
    """Per-channel affine y = (x + b) * exp(log_s) (Kingma & Dhariwal 2018, Sec. 3.1),
    log_det = H*W * sum(log_s). b and log_s are initialised from the first training
    batch so that y has zero mean and unit variance per channel ("data-dependent
    initialisation"); the ``initialized`` buffer records that this happened, so a
    checkpoint loaded for resume or evaluation does not initialise again."""

    def __init__(self, num_channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.log_scale = nn.Parameter(torch.zeros(num_channels))
        self.register_buffer("initialized", torch.tensor(False))
        self._known_initialized = False  # Python copy of the buffer: no device sync per step

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._known_initialized = False

    @torch.no_grad()
    def _initialize(self, x: Tensor) -> None:
        dims = _channel_stat_dims(x)
        self.bias.copy_(-x.mean(dim=dims))
        self.log_scale.copy_(-torch.log(x.std(dim=dims) + 1e-6))
        self.initialized.fill_(True)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.training and not self._known_initialized:
            if not bool(self.initialized):
                self._initialize(x)
            self._known_initialized = True
        z = (x + _per_channel(self.bias, x)) * torch.exp(_per_channel(self.log_scale, x))
        log_det = (self.log_scale.sum() * _spatial(x)).expand(x.shape[0])
        return z, log_det

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        x = z * torch.exp(-_per_channel(self.log_scale, z)) - _per_channel(self.bias, z)
        log_det = (-self.log_scale.sum() * _spatial(z)).expand(z.shape[0])
        return x, log_det


class BatchNorm(nn.Module):
    """Batch normalisation as a flow layer (Dinh et al. 2017, Sec. 3.7; Papamakarios
    et al. 2017, Sec. 3.4): y = (x - m) / sqrt(v + eps) * exp(log_gamma) + beta, per
    channel, log_det = H*W * sum(log_gamma - 0.5 log(v + eps)).

    In training mode m, v are the batch statistics (and update running averages);
    in eval mode, and always in ``inverse`` (used for sampling), the running
    averages, so that evaluation is an exact bijection of each example on its own."""

    def __init__(self, num_channels: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.log_gamma = nn.Parameter(torch.zeros(num_channels))
        self.beta = nn.Parameter(torch.zeros(num_channels))
        self.register_buffer("running_mean", torch.zeros(num_channels))
        self.register_buffer("running_var", torch.ones(num_channels))

    def _stats(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if not self.training:
            return self.running_mean, self.running_var
        dims = _channel_stat_dims(x)
        mean, var = x.mean(dim=dims), x.var(dim=dims, unbiased=False)
        with torch.no_grad():
            self.running_mean.lerp_(mean.detach(), self.momentum)
            self.running_var.lerp_(var.detach(), self.momentum)
        return mean, var

    def _log_det(self, var: Tensor, x: Tensor) -> Tensor:
        return ((self.log_gamma - 0.5 * torch.log(var + self.eps)).sum() * _spatial(x)).expand(x.shape[0])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean, var = self._stats(x)
        x_hat = (x - _per_channel(mean, x)) / torch.sqrt(_per_channel(var, x) + self.eps)
        z = x_hat * torch.exp(_per_channel(self.log_gamma, x)) + _per_channel(self.beta, x)
        return z, self._log_det(var, x)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        mean, var = self.running_mean, self.running_var
        x_hat = (z - _per_channel(self.beta, z)) * torch.exp(-_per_channel(self.log_gamma, z))
        x = x_hat * torch.sqrt(_per_channel(var, z) + self.eps) + _per_channel(mean, z)
        return x, -self._log_det(var, z)


# --- linear mixing ----------------------------------------------------------------------


class InvertibleConv1x1(nn.Module):
    """Invertible 1x1 convolution with LU parameterisation (Kingma & Dhariwal 2018,
    Sec. 3.2, eq. 10): W = P L (U + diag(sign(s) exp(log|s|))), P a fixed permutation,
    L unit lower-triangular, U strictly upper-triangular; log|det W| = sum(log|s|),
    times H*W positions. On vectors (B, D) it is an invertible linear map."""

    def __init__(self, num_channels: int, generator: Optional[torch.Generator] = None):
        super().__init__()
        c = num_channels
        q, _ = torch.linalg.qr(torch.randn(c, c, generator=generator))  # random rotation
        p, lower, upper = torch.linalg.lu(q)
        s = torch.diagonal(upper)
        self.register_buffer("permutation", p)
        self.register_buffer("sign_s", torch.sign(s))
        self.register_buffer("lower_mask", torch.tril(torch.ones(c, c), -1))
        self.register_buffer("eye", torch.eye(c))
        self.lower = nn.Parameter(lower)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(torch.log(torch.abs(s)))

    def weight(self) -> Tensor:
        lower = self.lower * self.lower_mask + self.eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
        return self.permutation @ lower @ upper

    @staticmethod
    def _multiply(w: Tensor, x: Tensor) -> Tensor:
        if x.dim() == 2:
            return x @ w.T
        return F.conv2d(x, w.view(*w.shape, 1, 1))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        log_det = (self.log_s.sum() * _spatial(x)).expand(x.shape[0])
        return self._multiply(self.weight(), x), log_det

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        log_det = (-self.log_s.sum() * _spatial(z)).expand(z.shape[0])
        return self._multiply(torch.linalg.inv(self.weight()), z), log_det


# --- coupling -----------------------------------------------------------------------------


def checkerboard_mask(x: Tensor, parity: int) -> Tensor:
    """(1, 1, H, W) with 1 where (i + j) % 2 == parity (Dinh et al. 2017, Fig. 3)."""
    h, w = x.shape[-2:]
    i = torch.arange(h, device=x.device).view(-1, 1)
    j = torch.arange(w, device=x.device).view(1, -1)
    return ((i + j) % 2 == parity).to(x.dtype).view(1, 1, h, w)


def channel_mask(x: Tensor, parity: int) -> Tensor:
    """1 on the first (parity 0) or second (parity 1) half of the channels / features."""
    c = x.shape[1]
    first = (torch.arange(c, device=x.device) < c // 2).to(x.dtype)
    mask = first if parity == 0 else 1 - first
    return _per_channel(mask, x)


class AffineCoupling(nn.Module):
    """Affine coupling (Dinh et al. 2017, eqs. 8-9, masked form):

        y = b*x + (1-b) * (x * exp(s(b*x)) + t(b*x)),   log_det = sum((1-b) * s),

    with mask b ("checkerboard" or "channel", ``parity`` 0/1 picks which half is
    kept). ``net`` maps (B, C, ...) to (B, 2C, ...) = (raw scale, shift).

    scale="tanh": s = scale * tanh(raw), a learned per-channel scale (RealNVP code);
    scale="sigmoid": s = log sigmoid(raw + 2) (Glow, Kingma & Dhariwal 2018, code),
    so each step can only contract, which keeps deep stacks stable. Either way s is then
    soft-clamped to (-MAX_LOG_SCALE, MAX_LOG_SCALE) (``soft_clamp``): log sigmoid alone is
    unbounded below, so the inverse, x = (y - t) exp(-s), could still blow up when sampling.
    """

    def __init__(self, net: nn.Module, num_channels: int, mask: str = "channel", parity: int = 0,
                 scale: str = "tanh"):
        super().__init__()
        if mask not in ("checkerboard", "channel"):
            raise ValueError(f"unknown coupling mask {mask!r}")
        if scale not in ("tanh", "sigmoid"):
            raise ValueError(f"unknown coupling scale {scale!r}")
        self.net, self.mask_type, self.parity, self.scale_type = net, mask, parity, scale
        self.tanh_scale = nn.Parameter(torch.ones(num_channels)) if scale == "tanh" else None

    def _mask(self, x: Tensor) -> Tensor:
        return checkerboard_mask(x, self.parity) if self.mask_type == "checkerboard" else channel_mask(x, self.parity)

    def _scale_shift(self, x_kept: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        raw, shift = self.net(x_kept).chunk(2, dim=1)
        if self.scale_type == "tanh":
            log_s = _per_channel(self.tanh_scale, raw) * torch.tanh(raw)
        else:
            log_s = F.logsigmoid(raw + 2.0)
        return soft_clamp(log_s) * (1 - mask), shift * (1 - mask)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mask = self._mask(x)
        log_s, shift = self._scale_shift(x * mask, mask)
        return x * torch.exp(log_s) + shift, sum_except_batch(log_s)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        mask = self._mask(z)
        log_s, shift = self._scale_shift(z * mask, mask)  # kept half is unchanged: z*b == x*b
        return (z - shift) * torch.exp(-log_s), -sum_except_batch(log_s)


# --- autoregressive -------------------------------------------------------------------------


class MADE(nn.Module):
    """Masked autoencoder (Germain et al. 2015) giving, for every dimension i, two
    numbers that depend on x_<i only (in the order ``order``): here (mu_i, alpha_i)."""

    def __init__(self, dim: int, hidden: list[int], order: Tensor, act: str = "relu",
                 generator: Optional[torch.Generator] = None):
        super().__init__()
        degrees = made_degrees(dim, hidden, order, generator=generator)
        masks = made_masks(degrees, order)
        sizes = [dim, *hidden]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            linear = MaskedLinear(a, b)
            linear.set_mask(masks[i])
            layers += [linear, activation(act)]
        out = MaskedLinear(sizes[-1], 2 * dim)
        out.set_mask(torch.cat([masks[-1], masks[-1]], dim=0))  # same connectivity for mu and alpha
        nn.init.zeros_(out.weight)  # start at the identity map
        nn.init.zeros_(out.bias)
        self.net = nn.Sequential(*layers, out)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, alpha = self.net(x).chunk(2, dim=1)
        return mu, soft_clamp(alpha)


class MaskedAffineAutoregressive(nn.Module):
    """One MAF layer (Papamakarios et al. 2017, Sec. 3.1, eqs. 3-5), data -> noise:

        u_i = (x_i - mu_i(x_<i)) * exp(-alpha_i(x_<i)),   log_det = -sum_i alpha_i,

    one MADE pass. The inverse (sampling) x_i = u_i exp(alpha_i) + mu_i is
    sequential: D passes, each fixing one more dimension in the order."""

    def __init__(self, dim: int, hidden: list[int], order: Tensor, act: str = "relu",
                 generator: Optional[torch.Generator] = None):
        super().__init__()
        self.dim = dim
        self.made = MADE(dim, hidden, order, act, generator)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, alpha = self.made(x)
        return (x - mu) * torch.exp(-alpha), -alpha.sum(dim=1)

    def inverse(self, u: Tensor) -> tuple[Tensor, Tensor]:
        x = torch.zeros_like(u)
        for _ in range(self.dim):  # after pass k the first k dimensions in the order are exact
            mu, alpha = self.made(x)
            x = u * torch.exp(alpha) + mu
        return x, alpha.sum(dim=1)


# --- coupling networks shared by the models -------------------------------------------------


def zero_initialized(layer: nn.Module) -> nn.Module:
    """A network's last layer starts at zero, so each coupling starts near the
    identity (Kingma & Dhariwal 2018, Sec. 3.3)."""
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def coupling_mlp(dim: int, hidden: int, depth: int = 2, act: str = "relu") -> nn.Sequential:
    """s, t = MLP(b*x) for vector data (2-D toys): dim -> hidden x depth -> 2*dim."""
    net = mlp([dim, *([hidden] * depth), 2 * dim], act)
    zero_initialized(net[-1])
    return net
