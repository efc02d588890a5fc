"""Optimizers and learning-rate schedules from the config."""

from __future__ import annotations

import inspect
from typing import Iterable

import torch
from omegaconf import ListConfig

from ..errors import UserError
from .schedules import lr_lambda


def optimizer_class(cfg) -> type:
    """The class an optimizer config's ``_target_`` names (Hydra's convention): a new optimizer is one
    YAML file in configs/optimizer/. Only ``torch.optim.Optimizer`` subclasses are accepted."""
    from hydra.utils import get_class

    target = cfg.get("_target_")
    try:
        cls = get_class(target) if target else None
    except Exception:
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise UserError(
            f"optimizer._target_={target!r} is not an optimizer class; name a subclass of "
            "torch.optim.Optimizer, e.g. torch.optim.Adam (see configs/optimizer/*.yaml)."
        )
    return cls


def optimizer_arguments(cfg) -> dict:
    """The constructor's keyword arguments: every key but ``_target_`` and ``name``."""
    args = {k: v for k, v in dict(cfg).items() if k not in ("_target_", "name")}
    return {k: tuple(v) if isinstance(v, (list, ListConfig)) else v for k, v in args.items()}


def check_optimizer(cfg) -> None:
    """Refuse keys the optimizer's constructor does not take, naming the ones it does."""
    cls = optimizer_class(cfg)
    accepted = [p for p in inspect.signature(cls).parameters if p != "params"]
    unknown = sorted(set(optimizer_arguments(cfg)) - set(accepted))
    if unknown:
        raise UserError(
            f"optimizer.{unknown[0]} is not an argument of {cls.__module__}.{cls.__name__}; "
            f"optimizer.name={cfg.get('name')} takes: {', '.join(accepted)}."
        )


def optimizer_factory(cfg):
    """``build(params, **overrides)``: the configured optimizer; a model may override lr, betas etc.
    per player (e.g. a GAN's two learning rates)."""
    cls, base = optimizer_class(cfg), optimizer_arguments(cfg)

    def build(params: Iterable, **overrides) -> torch.optim.Optimizer:
        return cls(params, **{**base, **overrides})

    return build


def build_scheduler(cfg, optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int = 1):
    if cfg is None:
        return None
    base_lr = optimizer.param_groups[0]["lr"]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total_steps, base_lr, steps_per_epoch))
