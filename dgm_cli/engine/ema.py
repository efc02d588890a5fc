"""An exponential moving average of the weights (``trainer.ema_decay``).

    theta_ema <- decay * theta_ema + (1 - decay) * theta        after every training batch

as DDPM (Ho et al. 2020, App. B: decay 0.9999) and most GANs since Karras et al. (2018) use it.
When set, validation, the logged sample grids, ``dgm sample`` and ``dgm eval`` use the averaged
weights; checkpoints hold them beside the raw ones (``ema``), so training resumes exactly.
Buffers (batch-norm statistics, counters) are not averaged: the model's own are used.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


class WeightAverage:
    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        params = dict(model.named_parameters())
        self.params = [params[n] for n in self.names]
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1.0 - self.decay)

    @contextmanager
    @torch.no_grad()
    def applied(self):
        """Inside: the model holds the averaged weights; afterwards, its own again."""
        saved = [p.detach().clone() for p in self.params]
        for p, s in zip(self.params, self.shadow):
            p.copy_(s)
        try:
            yield
        finally:
            for p, s in zip(self.params, saved):
                p.copy_(s)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.shadow))

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for n, s in zip(self.names, self.shadow):
            s.copy_(state[n])


def apply_saved(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Put a checkpoint's averaged weights into ``model`` (for sampling and evaluation)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)
