"""Normalisation layers with an exact log-determinant: ActNorm (Glow) and batch norm (RealNVP)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import channel_stat_dims, per_channel, positions_per_channel


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
        dims = channel_stat_dims(x)
        self.bias.copy_(-x.mean(dim=dims))
        self.log_scale.copy_(-torch.log(x.std(dim=dims) + 1e-6))
        self.initialized.fill_(True)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.training and not self._known_initialized:
            if not bool(self.initialized):
                self._initialize(x)
            self._known_initialized = True
        z = (x + per_channel(self.bias, x)) * torch.exp(per_channel(self.log_scale, x))
        log_det = (self.log_scale.sum() * positions_per_channel(x)).expand(x.shape[0])
        return z, log_det

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        x = z * torch.exp(-per_channel(self.log_scale, z)) - per_channel(self.bias, z)
        log_det = (-self.log_scale.sum() * positions_per_channel(z)).expand(z.shape[0])
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
        dims = channel_stat_dims(x)
        mean, var = x.mean(dim=dims), x.var(dim=dims, unbiased=False)
        with torch.no_grad():
            self.running_mean.lerp_(mean.detach(), self.momentum)
            self.running_var.lerp_(var.detach(), self.momentum)
        return mean, var

    def _log_det(self, var: Tensor, x: Tensor) -> Tensor:
        return ((self.log_gamma - 0.5 * torch.log(var + self.eps)).sum() * positions_per_channel(x)).expand(x.shape[0])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean, var = self._stats(x)
        x_hat = (x - per_channel(mean, x)) / torch.sqrt(per_channel(var, x) + self.eps)
        z = x_hat * torch.exp(per_channel(self.log_gamma, x)) + per_channel(self.beta, x)
        return z, self._log_det(var, x)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        mean, var = self.running_mean, self.running_var
        x_hat = (z - per_channel(self.beta, z)) * torch.exp(-per_channel(self.log_gamma, z))
        x = x_hat * torch.sqrt(per_channel(var, z) + self.eps) + per_channel(mean, z)
        return x, -self._log_det(var, z)
