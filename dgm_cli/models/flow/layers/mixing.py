"""Linear mixing of channels: Glow's invertible 1x1 convolution."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import positions_per_channel


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
        log_det = (self.log_s.sum() * positions_per_channel(x)).expand(x.shape[0])
        return self._multiply(self.weight(), x), log_det

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        log_det = (-self.log_s.sum() * positions_per_channel(z)).expand(z.shape[0])
        return self._multiply(torch.linalg.inv(self.weight()), z), log_det
