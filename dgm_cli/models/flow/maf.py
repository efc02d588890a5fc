"""Masked Autoregressive Flow (Papamakarios, Pavlakou & Murray 2017).

A stack of MADEs (Germain et al. 2015), each an affine autoregressive layer
u_i = (x_i - mu_i(x_<i)) exp(-alpha_i(x_<i)) (Sec. 3.1), with the order reversed
between layers (Sec. 3.4) and, optionally, batch normalisation between them
(Sec. 3.4, Appendix B). Density evaluation is one pass per layer; sampling is
D passes per layer. Images are flattened to vectors of D = C*H*W. alpha is soft-clamped to
(-3, 3) (layers.soft_clamp): unbounded, one large alpha overflows the sampler.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch
from torch import nn

from ...rules import NON_EMPTY_SIZES, POSITIVE, checked, checked_choice, checked_list
from ..nn.mlp import ACTIVATIONS
from ..registry import register
from .base import FlowConfig, VectorFlow
from .layers import BatchNorm, MaskedAffineAutoregressive


@dataclass
class MAFConfig(FlowConfig):
    preprocess: str = "logit"
    alpha: float = 1.0e-6  # the MAF paper's lambda for MNIST
    num_layers: int = checked(5, POSITIVE)  # MADEs in the stack
    hidden: List[int] = checked_list([512], NON_EMPTY_SIZES)  # hidden layer sizes of each MADE
    activation: str = checked_choice("relu", ACTIVATIONS)  # {choices}
    batch_norm: bool = True  # batch-norm flow layer between MADEs


@register("maf")
class MAF(VectorFlow):
    Config = MAFConfig

    def build_layers(self) -> list[nn.Module]:
        c, d = self.config, self.data.dim
        layers: list[nn.Module] = []
        natural = torch.arange(1, d + 1)
        for k in range(c.num_layers):
            order = natural if k % 2 == 0 else natural.flip(0)  # reverse the order between layers
            # fixed seed per layer: the random MADE hidden degrees (Germain et al. 2015, Sec. 4) are reproducible
            made = MaskedAffineAutoregressive(
                d, list(c.hidden), order, act=c.activation, generator=torch.Generator().manual_seed(k)
            )
            layers.append(made)
            if c.batch_norm and k < c.num_layers - 1:
                layers.append(BatchNorm(d))
        return layers
