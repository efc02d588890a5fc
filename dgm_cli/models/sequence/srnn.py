"""SRNN (Fraccaro et al. 2016, "Sequential Neural Models with Stochastic Layers"): a deterministic RNN
d_t = GRU(d_{t-1}, x_{t-1}) under a state-space layer p(z_t | z_{t-1}, d_t), emission p(x_t | z_t, d_t);
inference runs a backward RNN a_t over [d_t, x_t] and q(z_t | z_{t-1}, a_t) shifts the prior's mean
(the "resq" parameterisation, Sec. 3)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..base import DataSpec
from ..nn.mlp import mlp
from ..objectives import Objective
from ..registry import register
from .base import SequenceConfig, SequenceModel, backward_rnn, diagonal_gaussian, shifted


@register("srnn")
class SRNN(SequenceModel):
    Config = SequenceConfig

    def __init__(self, config: SequenceConfig, data: DataSpec, objective: Objective):
        super().__init__(config, data, objective)
        z, h, r = config.z_dim, config.hidden, config.rnn_hidden
        self.forward_rnn = nn.GRU(self.x_dim, r, batch_first=True)
        self.backward_rnn = nn.GRU(r + self.x_dim, r, batch_first=True)
        self.prior = mlp([z + r, h, 2 * z])
        self.posterior = mlp([z + r, h, 2 * z])
        self.emission = mlp([z + r, h, self.emission_outputs])
        self.z0 = nn.Parameter(torch.zeros(z))

    def trajectory(self, x: Tensor, mask: Tensor, noise: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        d, _ = self.forward_rnn(shifted(x))
        a = backward_rnn(self.backward_rnn, torch.cat([d, x], -1), mask)

        def transition(t: int, z_prev: Tensor):
            p_mean, p_std = diagonal_gaussian(self.prior, z_prev, d[:, t])
            shift, q_std = diagonal_gaussian(self.posterior, z_prev, a[:, t])
            return (p_mean + shift, q_std), (p_mean, p_std)

        return self.markov_trajectory(
            x, mask, noise, transition, lambda t, z: self.emission(torch.cat([z, d[:, t]], -1))
        )

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, label: Optional[int] = None) -> Tensor:
        self.sample_labels(n, label, conditional=False)
        z = self.z0.expand(n, -1)
        x = z.new_zeros(n, 1, self.x_dim)
        state, xs = None, []
        for _ in range(self.length):
            d, state = self.forward_rnn(x, state)
            p_mean, p_std = diagonal_gaussian(self.prior, z, d[:, 0])
            z = p_mean + temperature * p_std * torch.randn_like(p_mean)
            x = self.emission_sample(self.emission(torch.cat([z, d[:, 0]], -1))).unsqueeze(1)
            xs.append(x[:, 0])
        return self.as_data(torch.stack(xs, 1))
