"""The variational RNN (Chung et al. 2015, "A Recurrent Latent Variable Model for Sequential Data"): a
GRU state h_{t-1} conditions the prior p(z_t | h_{t-1}), the approximate posterior q(z_t | x_t, h_{t-1})
and the emission p(x_t | z_t, h_{t-1}); then h_t = GRU([phi_x(x_t), phi_z(z_t)], h_{t-1}) (eq. 5-9)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..base import DataSpec
from ..nn.mlp import mlp
from ..objectives import Objective
from ..registry import register
from .base import SequenceConfig, SequenceModel, add_step, diagonal_gaussian


@register("vrnn")
class VRNN(SequenceModel):
    Config = SequenceConfig

    def __init__(self, config: SequenceConfig, data: DataSpec, objective: Objective):
        super().__init__(config, data, objective)
        h, r, z = config.hidden, config.rnn_hidden, config.z_dim
        self.phi_x = mlp([self.x_dim, h, h], last_act=True)
        self.phi_z = mlp([z, h], last_act=True)
        self.prior = mlp([r, h, 2 * z])
        self.encoder = mlp([h + r, h, 2 * z])
        self.decoder = mlp([h + r, h, self.emission_outputs])
        self.cell = nn.GRUCell(2 * h, r)

    def trajectory(self, x: Tensor, mask: Tensor, noise: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        state = x.new_zeros(len(x), self.config.rnn_hidden)
        totals = (x.new_zeros(len(x)),) * 3
        for t in range(x.shape[1]):
            fx = self.phi_x(x[:, t])
            q_mean, q_std = diagonal_gaussian(self.encoder, fx, state)
            z = q_mean + q_std * noise[:, t]
            fz = self.phi_z(z)
            totals = add_step(
                totals,
                mask[:, t],
                z,
                (q_mean, q_std),
                diagonal_gaussian(self.prior, state),
                self.emission_log_prob(x[:, t], self.decoder(torch.cat([fz, state], -1))),
            )
            state = self.cell(torch.cat([fx, fz], -1), state)
        return totals

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, label: Optional[int] = None) -> Tensor:
        self.sample_labels(n, label, conditional=False)
        state = self.phi_z[0].weight.new_zeros(n, self.config.rnn_hidden)
        xs = []
        for _ in range(self.length):
            p_mean, p_std = diagonal_gaussian(self.prior, state)
            fz = self.phi_z(p_mean + temperature * p_std * torch.randn_like(p_mean))
            x = self.emission_sample(self.decoder(torch.cat([fz, state], -1)))
            xs.append(x)
            state = self.cell(torch.cat([self.phi_x(x), fz], -1), state)
        return self.as_data(torch.stack(xs, 1))
