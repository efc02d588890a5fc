"""STORN (Bayer & Osendorfer 2014, "Learning Stochastic Recurrent Networks"): independent latents
z_t ~ N(0, I) drive a generative RNN h_t = GRU([x_{t-1}, z_t], h_{t-1}) with emission p(x_t | h_t); a
recognition RNN over x_{1:t} gives q(z_t | x_{1:t})."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..base import DataSpec
from ..nn.mlp import mlp
from ..objectives import Objective
from ..registry import register
from .base import SequenceConfig, SequenceModel, diagonal_gaussian, normal_log_prob, shifted


@register("storn")
class STORN(SequenceModel):
    Config = SequenceConfig

    def __init__(self, config: SequenceConfig, data: DataSpec, objective: Objective):
        super().__init__(config, data, objective)
        z, h, r = config.z_dim, config.hidden, config.rnn_hidden
        self.generator = nn.GRUCell(self.x_dim + z, r)
        self.emission = mlp([r, h, self.emission_outputs])
        self.recognition = nn.GRU(self.x_dim, r, batch_first=True)
        self.posterior = mlp([r, h, 2 * z])

    def trajectory(self, x: Tensor, mask: Tensor, noise: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        e, _ = self.recognition(x)  # e_t summarises x_{1:t}
        q_mean, q_std = diagonal_gaussian(self.posterior, e)
        z = q_mean + q_std * noise
        m = mask.to(x.dtype)
        log_qz = (m * normal_log_prob(z, q_mean, q_std)).sum(1)
        log_pz = (m * normal_log_prob(z, torch.zeros_like(z), torch.ones_like(z))).sum(1)
        state, previous = x.new_zeros(len(x), self.config.rnn_hidden), shifted(x)
        log_px = x.new_zeros(len(x))
        for t in range(x.shape[1]):
            state = self.generator(torch.cat([previous[:, t], z[:, t]], -1), state)
            log_px = log_px + m[:, t] * self.emission_log_prob(x[:, t], self.emission(state))
        return log_px, log_pz, log_qz

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, label: Optional[int] = None) -> Tensor:
        self.sample_labels(n, label, conditional=False)
        state = self.emission[0].weight.new_zeros(n, self.config.rnn_hidden)
        x = state.new_zeros(n, self.x_dim)
        xs = []
        for _ in range(self.length):
            z = temperature * torch.randn(n, self.config.z_dim, device=state.device)
            state = self.generator(torch.cat([x, z], -1), state)
            x = self.emission_sample(self.emission(state))
            xs.append(x)
        return self.as_data(torch.stack(xs, 1))
