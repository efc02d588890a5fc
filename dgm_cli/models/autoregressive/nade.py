"""NADE: Neural Autoregressive Distribution Estimator (Larochelle & Murray 2011).

Every conditional has its own hidden layer, and all of them share the input weights W:

  h_i = act(a_i),   a_i = c + W[:, <i] x_<i           (Larochelle & Murray 2011, Sec. 3; act = sigmoid)
  p(x_i = 1 | x_<i) = sigmoid(b_i + V_i . h_i)        (idem; a 256-way softmax for 8-bit data)

Because a_{i+1} = a_i + W[:, i] x_i (idem, the recurrence that makes NADE O(HD)), the pre-activations
of all D conditionals are an exclusive cumulative sum over i of W[:, i] x_i: training and
evaluation compute every conditional of a batch in one vectorised pass. Only sampling
runs over the dimensions, carrying a_i forward (``fill``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from ...errors import UserError
from ..registry import register
from .common import AutoregressiveModel

ACTIVATIONS = {"sigmoid": torch.sigmoid, "relu": torch.relu, "tanh": torch.tanh}
EVAL_CHUNK = 256  # examples per slice at evaluation: the (B, D, H) pre-activations get large


@register("nade")
class NADE(AutoregressiveModel):
    @dataclass
    class Config:
        hidden_units: int = 200  # H, every conditional's hidden layer (500 in the paper)
        activation: str = "sigmoid"  # sigmoid (the paper) | relu | tanh

    def __init__(self, config: Config, data, objective):
        super().__init__(config, data, objective)
        if config.activation not in ACTIVATIONS:
            raise UserError(f"model.activation={config.activation!r} is not allowed; "
                            f"allowed: {', '.join(ACTIVATIONS)}.")
        self.act = ACTIVATIONS[config.activation]
        d, h, k = data.dim, config.hidden_units, self.bins
        self.W = nn.Parameter(torch.randn(h, d) / math.sqrt(d))  # input -> hidden, shared
        self.c = nn.Parameter(torch.zeros(h))
        self.V = nn.Parameter(torch.randn(d, k, h) / math.sqrt(h))  # hidden i -> output i
        self.b = nn.Parameter(torch.zeros(d, k))

    def hidden_preactivations(self, seq: Tensor) -> Tensor:
        """a_i = c + sum_{j<i} W[:, j] x_j for every i at once: (B, D) -> (B, D, H).

        A cumulative sum over i of the terms (c, W[:, 1] x_1, ..., W[:, D-1] x_{D-1}):
        the bias enters as a constant first input, so no shifted copy of the big tensor
        is made."""
        inputs = torch.cat([torch.ones_like(seq[:, :1]), seq[:, :-1]], dim=1)  # (1, x_1 .. x_{D-1})
        weights = torch.cat([self.c[:, None], self.W[:, :-1]], dim=1)  # (c, W_1 .. W_{D-1})
        return torch.cumsum(inputs[:, :, None] * weights.t(), dim=1)

    def output_logits(self, h: Tensor, i: Optional[int] = None) -> Tensor:
        """b_i + V_i . h_i: (B, D, H) -> (B, D, bins), or one dimension (B, H) -> (B, bins)."""
        if i is None:
            return torch.einsum("bdh,dkh->bdk", h, self.V) + self.b
        return h @ self.V[i].t() + self.b[i]

    def logits(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        out = self.output_logits(self.act(self.hidden_preactivations(self.to_sequence(x))))
        out = out.squeeze(-1) if self.bins == 1 else out.transpose(1, 2)  # (B, D) | (B, bins, D)
        return self.from_sequence(out)

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, y: Optional[Tensor] = None, **settings) -> Tensor:
        return torch.cat([self.log_prob(chunk) for chunk in x.split(EVAL_CHUNK)])

    @torch.no_grad()
    def fill(self, x: Tensor, y: Optional[Tensor], observed: Tensor, temperature: float = 1.0) -> Tensor:
        """Sequential sampling in O(HD) per example, carrying a_i forward."""
        seq = self.to_sequence(torch.where(observed, x, torch.zeros_like(x))).clone()
        known = self.to_sequence(observed)
        a = self.c.expand(seq.shape[0], -1)
        for i in range(self.data.dim):
            if not bool(known[:, i].all()):
                logits = self.output_logits(self.act(a), i)
                drawn = self.draw(logits.squeeze(-1) if self.bins == 1 else logits, temperature)
                seq[:, i] = torch.where(known[:, i], seq[:, i], drawn)
            a = a + seq[:, i, None] * self.W[:, i]  # a_{i+1} = a_i + W[:, i] x_i
        return self.from_sequence(seq)
