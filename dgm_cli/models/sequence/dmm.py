"""The deep Markov model (Krishnan, Shalit & Sontag 2017, "Structured Inference Networks for Nonlinear
State Space Models"): a gated transition p(z_t | z_{t-1}), an emission p(x_t | z_t), and the structured
inference network q(z_t | z_{t-1}, x_{t:T}) that combines z_{t-1} with a backward RNN over x_{t:T}
(the "ST-R" combiner, Sec. 4)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from ...rules import POSITIVE, checked, checked_choice
from ..base import DataSpec
from ..nn.mlp import mlp
from ..objectives import Objective
from ..registry import register
from .base import EMISSIONS, SequenceModel, backward_rnn, diagonal_gaussian, positive


@dataclass
class DMMConfig:
    z_dim: int = checked(16, POSITIVE)  # units of z_t
    transition_hidden: int = checked(64, POSITIVE)  # units of the gated transition's hidden layers
    emission_hidden: int = checked(64, POSITIVE)  # units of the emission network's hidden layers
    rnn_hidden: int = checked(64, POSITIVE)  # units of the inference network's backward RNN
    emission: str = checked_choice("auto", EMISSIONS)  # {choices} (auto: bernoulli for binary data and piano rolls,
    #   else gaussian)


class GatedTransition(nn.Module):
    """mean = (1 - g) * (W z + b) + g * h(z), std = softplus(W' relu(h(z))) (Krishnan et al. 2017, Sec. 5)."""

    def __init__(self, z_dim: int, hidden: int):
        super().__init__()
        self.gate = nn.Sequential(mlp([z_dim, hidden, z_dim]), nn.Sigmoid())
        self.proposed = mlp([z_dim, hidden, z_dim])
        self.linear = nn.Linear(z_dim, z_dim)
        nn.init.eye_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.scale = nn.Linear(z_dim, z_dim)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        g, h = self.gate(z), self.proposed(z)
        return (1 - g) * self.linear(z) + g * h, positive(self.scale(torch.relu(h)))


@register("dmm")
class DMM(SequenceModel):
    Config = DMMConfig

    def __init__(self, config: DMMConfig, data: DataSpec, objective: Objective):
        super().__init__(config, data, objective)
        z = config.z_dim
        self.z0 = nn.Parameter(torch.zeros(z))  # z_0 of the prior and of the combiner
        self.transition = GatedTransition(z, config.transition_hidden)
        self.emission = mlp([z, config.emission_hidden, config.emission_hidden, self.emission_outputs])
        self.rnn = nn.GRU(self.x_dim, config.rnn_hidden, batch_first=True)
        self.combiner_z = nn.Linear(z, config.rnn_hidden)
        self.combiner_out = nn.Linear(config.rnn_hidden, 2 * z)

    def trajectory(self, x: Tensor, mask: Tensor, noise: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        h = backward_rnn(self.rnn, x, mask)  # h_t summarises x_{t:T}

        def transition(t: int, z_prev: Tensor):
            combined = 0.5 * (torch.tanh(self.combiner_z(z_prev)) + h[:, t])  # Krishnan et al. eq. 8
            return diagonal_gaussian(self.combiner_out, combined), self.transition(z_prev)

        return self.markov_trajectory(x, mask, noise, transition, lambda t, z: self.emission(z))

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, label: Optional[int] = None) -> Tensor:
        self.sample_labels(n, label, conditional=False)
        z = self.z0.expand(n, -1)
        xs = []
        for _ in range(self.length):
            mean, std = self.transition(z)
            z = mean + temperature * std * torch.randn_like(mean)
            xs.append(self.emission_sample(self.emission(z)))
        return self.as_data(torch.stack(xs, 1))
