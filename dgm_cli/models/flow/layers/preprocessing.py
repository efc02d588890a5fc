"""Fixed maps into the space a flow models: the logit transform and a shift (Dinh et al. 2017)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import sum_except_batch


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
