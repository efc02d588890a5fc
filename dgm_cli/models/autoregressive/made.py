"""MADE: Masked Autoencoder for Distribution Estimation (Germain et al. 2015).

An MLP whose weight masks let output i see only inputs before i in an order: with
degrees m(k) for the hidden units, a hidden unit connects to the units of degree <=
its own, an output to the units of degree < its input's position (Sec. 4, eqs. 12-13;
``made_degrees`` and ``made_masks`` in ``nn/masked.py``).

Order/connectivity-agnostic training (Sec. 4.2): the model keeps ``num_masks`` mask
sets, each drawn once from a generator seeded with ``mask_seed`` (its degrees live in
buffers, so checkpoints reproduce them), and trains on mask set
(step // resample_every) mod num_masks. Each mask set m defines a proper density p_m;
``log_likelihood`` evaluates their uniform mixture,

  log p(x) = logsumexp_m log p_m(x) - log M,

itself a proper density (the paper averages the probabilities of several masks at
test time). Sampling draws a mask set per sample, then samples in that set's order.
Mask set 0 always keeps the raster order, so completion (which uses it) sees the
observed upper half first.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import List, Optional

import torch
from torch import Tensor, nn

from ...rules import NON_NEGATIVE, POSITIVE, SIZES, checked, checked_choice, checked_list
from ..nn.masked import MaskedLinear, made_degrees, made_masks
from ..nn.mlp import ACTIVATIONS, activation
from ..objectives import Objective
from ..registry import register
from .base import AutoregressiveModel


@register("made")
class MADE(AutoregressiveModel):
    @dataclass
    class Config:
        hidden_sizes: List[int] = checked_list([500], SIZES)  # units of each hidden layer
        activation: str = checked_choice("relu", ACTIVATIONS)  # {choices}
        num_masks: int = checked(1, POSITIVE)  # M, distinct mask sets (1: a single fixed MADE)
        resample_every: int = checked(1, POSITIVE)  # training steps between mask-set changes
        order_agnostic: bool = False  # mask sets > 0 also draw a random input order
        mask_seed: int = checked(0, NON_NEGATIVE)  # seeds the generator the mask sets are drawn from

    def __init__(self, config: Config, data, objective: Objective):
        super().__init__(config, data, objective)
        d, hidden = data.dim, list(config.hidden_sizes)
        sizes = [d, *hidden, d * self.bins]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(MaskedLinear(a, b))
            if i < len(sizes) - 2:
                layers.append(activation(config.activation))
        self.net = nn.Sequential(*layers)
        self.masked = [m for m in self.net if isinstance(m, MaskedLinear)]

        # Each mask set's degrees: the input order (position 1..D of each input) and
        # the hidden units' degrees, drawn once from the seeded generator.
        generator = torch.Generator().manual_seed(config.mask_seed)
        orders, hidden_degrees = [], []
        for m in range(config.num_masks):
            if m > 0 and config.order_agnostic:
                order = torch.randperm(d, generator=generator) + 1
            else:
                order = torch.arange(1, d + 1)
            degrees = made_degrees(d, hidden, order, generator)
            orders.append(order)
            hidden_degrees.append(degrees[1:])
        self.register_buffer("orders", torch.stack(orders))  # (M, D)
        for layer in range(len(hidden)):
            self.register_buffer(f"degrees_{layer}", torch.stack([h[layer] for h in hidden_degrees]))
        self.register_buffer("mask_index", torch.zeros((), dtype=torch.long))  # the mask set in use
        self.register_buffer("step", torch.zeros((), dtype=torch.long))  # training steps taken
        self.use_masks(self.mask_index)

    @property
    def num_masks(self) -> int:
        return self.config.num_masks

    def use_masks(self, m) -> None:
        """Load mask set m (an int or a 0-dim tensor, so that training never syncs)."""
        m = torch.as_tensor(m, device=self.orders.device)
        order = self.orders[m]
        degrees = [order] + [getattr(self, f"degrees_{i}")[m] for i in range(len(self.masked) - 1)]
        masks = made_masks(degrees, order)
        masks[-1] = masks[-1].repeat_interleave(self.bins, dim=0)  # output (D*bins): bins per input
        for layer, mask in zip(self.masked, masks):
            layer.set_mask(mask)
        self.mask_index.copy_(m)

    @contextmanager
    def masks_kept(self):
        """Restore the mask set in use afterwards (evaluation between training steps)."""
        before = self.mask_index.clone()
        try:
            yield
        finally:
            self.use_masks(before)

    def generation_order(self) -> Tensor:
        return torch.argsort(self.orders[self.mask_index]).cpu()

    def logits(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        out = self.net(self.to_sequence(x))  # (B, D * bins)
        if self.bins > 1:
            out = out.view(x.shape[0], self.data.dim, self.bins).transpose(1, 2)  # (B, bins, D)
        return self.from_sequence(out)

    def training_loss(self, x: Tensor, y: Optional[Tensor], phase: str):
        if self.num_masks > 1:
            self.use_masks(torch.div(self.step, self.config.resample_every, rounding_mode="floor") % self.num_masks)
        return super().training_loss(x, y, phase)

    def after_step(self, phase: str) -> None:
        self.step += 1

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, y: Optional[Tensor] = None, **settings) -> Tensor:
        if self.num_masks == 1:
            return self.log_prob(x)
        with self.masks_kept():
            per_mask = []
            for m in range(self.num_masks):
                self.use_masks(m)
                per_mask.append(self.log_prob(x))
        # The uniform mixture of the M mask sets' densities.
        return torch.logsumexp(torch.stack(per_mask), dim=0) - math.log(self.num_masks)

    def estimator(self, **settings) -> str:
        if self.num_masks == 1:
            return "exact (one MADE mask set)"
        return (
            f"exact (uniform mixture of {self.num_masks} MADE mask sets: logsumexp_m log p_m(x) - log {self.num_masks})"
        )

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, label: Optional[int] = None) -> Tensor:
        """Ancestral sampling from the mixture: a mask set per sample, then its conditionals."""
        self.check_temperature(temperature)
        self.sample_labels(n, label)  # refuses a label
        which = torch.randint(self.num_masks, (n,))
        x = torch.zeros(n, *self.data.shape, device=self.device)
        with self.masks_kept():
            for m in which.unique().tolist():
                rows = (which == m).nonzero().squeeze(1).to(x.device)
                self.use_masks(m)
                x[rows] = self.fill(x[rows], None, torch.zeros_like(x[rows], dtype=torch.bool), temperature)
        return x

    @contextmanager
    def completion_context(self):
        """Completions use mask set 0 (raster order), one component of the mixture."""
        with self.masks_kept():
            self.use_masks(0)
            yield
