"""What every flow layer shares: the composition of layers, and the helpers the layers use (``per_channel``,
``positions_per_channel``, ``channel_stat_dims``, ``soft_clamp``).

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

import torch
from torch import Tensor, nn

from ...nn.distributions import sum_except_batch  # noqa: F401  (the layers import it from here)


def per_channel(param: Tensor, x: Tensor) -> Tensor:
    """View a (C,) parameter so it broadcasts over (B, C) or (B, C, H, W)."""
    return param.view(1, -1, *([1] * (x.dim() - 2)))


def positions_per_channel(x: Tensor) -> int:
    """Number of positions a per-channel parameter is shared over (H*W, or 1 for vectors)."""
    return x[0, 0].numel()


def channel_stat_dims(x: Tensor) -> tuple[int, ...]:
    """The dimensions a per-channel statistic averages over: the batch and every position."""
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
