"""The deep Markov model (Krishnan, Shalit & Sontag 2017, "Structured Inference Networks for Nonlinear
State Space Models"): a gated transition p(z_t | z_{t-1}), an emission p(x_t | z_t), and the structured
inference network q(z_t | z_{t-1}, x_{t:T}) that combines z_{t-1} with a backward RNN over x_{t:T}
(the "ST-R" combiner, Sec. 4)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from ..base import DataSpec
from ..nn.mlp import mlp
from ..registry import register
from .base import SequenceModel, normal_log_prob, positive


@dataclass
class DMMConfig:
    z_dim: int = 16
    transition_hidden: int = 64
    emission_hidden: int = 64
    rnn_hidden: int = 64
    emission: str = "auto"  # auto: bernoulli for binary data and piano rolls, else gaussian | bernoulli | gaussian


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


def reverse_within(x: Tensor, lengths: Tensor) -> Tensor:
    """Each sequence's real steps in reverse order (the padding stays after them)."""
    t = torch.arange(x.shape[1], device=x.device).expand(len(x), -1)
    idx = torch.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)
    return x.gather(1, idx.unsqueeze(-1).expand_as(x))


@register("dmm")
class DMM(SequenceModel):
    Config = DMMConfig

    def __init__(self, config: DMMConfig, data: DataSpec, objective: dict):
        super().__init__(config, data, objective)
        z = config.z_dim
        self.z0 = nn.Parameter(torch.zeros(z))  # z_0 of the prior and of the combiner
        self.transition = GatedTransition(z, config.transition_hidden)
        self.emission = mlp([z, config.emission_hidden, config.emission_hidden, self.emission_outputs])
        self.rnn = nn.GRU(self.x_dim, config.rnn_hidden, batch_first=True)
        self.combiner_z = nn.Linear(z, config.rnn_hidden)
        self.combiner_out = nn.Linear(config.rnn_hidden, 2 * z)

    def backward_states(self, x: Tensor, mask: Tensor) -> Tensor:
        """h_t summarising x_{t:T} of each sequence's real steps."""
        lengths = mask.sum(1)
        h, _ = self.rnn(reverse_within(x, lengths))
        return reverse_within(h, lengths)

    def trajectory(self, x: Tensor, mask: Tensor, noise: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        h = self.backward_states(x, mask)
        z_prev = self.z0.expand(len(x), -1)
        log_px = log_pz = log_qz = x.new_zeros(len(x))
        for t in range(x.shape[1]):
            combined = 0.5 * (torch.tanh(self.combiner_z(z_prev)) + h[:, t])  # Krishnan et al. eq. 8
            q_mean, q_raw = self.combiner_out(combined).chunk(2, dim=-1)
            q_std = positive(q_raw)
            z = q_mean + q_std * noise[:, t]
            p_mean, p_std = self.transition(z_prev)
            m = mask[:, t].to(x.dtype)
            log_qz = log_qz + m * normal_log_prob(z, q_mean, q_std)
            log_pz = log_pz + m * normal_log_prob(z, p_mean, p_std)
            log_px = log_px + m * self.emission_log_prob(x[:, t], self.emission(z))
            z_prev = z
        return log_px, log_pz, log_qz

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
