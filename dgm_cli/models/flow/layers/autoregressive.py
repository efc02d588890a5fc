"""Masked autoregressive flow layers (Papamakarios et al. 2017) and their MADE conditioner."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ...nn.masked import MaskedLinear, made_degrees, made_masks
from ...nn.mlp import activation
from .base import soft_clamp


class MADEConditioner(nn.Module):
    """Masked autoencoder (Germain et al. 2015) giving, for every dimension i, two
    numbers that depend on x_<i only (in the order ``order``): here (mu_i, alpha_i)."""

    def __init__(
        self,
        dim: int,
        hidden: list[int],
        order: Tensor,
        *,
        act: str = "relu",
        generator: Optional[torch.Generator] = None,
    ):
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

    def __init__(
        self,
        dim: int,
        hidden: list[int],
        order: Tensor,
        *,
        act: str = "relu",
        generator: Optional[torch.Generator] = None,
    ):
        super().__init__()
        self.dim = dim
        self.made = MADEConditioner(dim, hidden, order, act=act, generator=generator)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, alpha = self.made(x)
        return (x - mu) * torch.exp(-alpha), -alpha.sum(dim=1)

    def inverse(self, u: Tensor) -> tuple[Tensor, Tensor]:
        x = torch.zeros_like(u)
        for _ in range(self.dim):  # after pass k the first k dimensions in the order are exact
            mu, alpha = self.made(x)
            x = u * torch.exp(alpha) + mu
        return x, alpha.sum(dim=1)
