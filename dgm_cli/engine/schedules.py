"""Learning-rate schedules: one table, name -> multiplier of the base learning rate after warm-up.

``scheduler.name`` is validated against this table, `--help` lists it, and ``engine.optim`` builds from
it, so a new schedule is one function and one entry here (plus its YAML in configs/scheduler/). Pure
Python (no torch): validation reads the names before anything heavy is imported."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Progress:
    """Where training is, after the warm-up: ``step`` optimizer steps into the schedule of ``total``."""

    step: int
    total: int
    steps_per_epoch: int


def cosine(cfg, at: Progress, floor: float) -> float:
    """Cosine decay from the base learning rate to ``min_lr`` over the run (Loshchilov & Hutter 2017, no restarts)."""
    progress = min(1.0, at.step / max(1, at.total))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def step(cfg, at: Progress, floor: float) -> float:
    """Multiply by ``gamma`` every ``step_size`` optimizer steps."""
    return cfg.gamma ** (at.step // cfg.step_size)


def exponential(cfg, at: Progress, floor: float) -> float:
    """lr * gamma^(t / step_size): the smooth version of ``step``."""
    return cfg.gamma ** (at.step / cfg.step_size)


def constant(cfg, at: Progress, floor: float) -> float:
    return 1.0


def burda2015_stage(epoch: int) -> int:
    """Stage i of Burda et al. 2015's schedule: 3^i epochs at lr 1e-3 * 10^(-i/7), i = 0..7
    (3280 epochs in all); stage i starts at epoch (3^i - 1) / 2."""
    i = 0
    while i < 7 and epoch >= (3 ** (i + 1) - 1) // 2:
        i += 1
    return i


def burda2015(cfg, at: Progress, floor: float) -> float:
    """Burda et al. 2015, Sec. 5: the learning rate times 10^(-i/7) in stage i (epochs (3^i - 1)/2 on)."""
    return 10 ** (-burda2015_stage(at.step // at.steps_per_epoch) / 7)


#: scheduler.name -> the multiplier after warm-up
SCHEDULES: dict[str, Callable] = {
    "cosine": cosine,
    "step": step,
    "exponential": exponential,
    "constant": constant,
    "burda2015": burda2015,
}


def lr_lambda(cfg, total_steps: int, base_lr: float, steps_per_epoch: int = 1) -> Callable[[int], float]:
    """Multiplier of the base learning rate at each optimizer step: a linear warm-up over
    ``warmup_steps``, then the schedule ``cfg.name`` names (cosine decays to ``min_lr``)."""
    warm, floor = cfg.warmup_steps, (cfg.min_lr / base_lr if base_lr > 0 else 0.0)
    schedule = SCHEDULES[cfg.name]

    def factor(t: int) -> float:
        if warm and t < warm:
            return (t + 1) / warm
        return schedule(cfg, Progress(t - warm, total_steps - warm, steps_per_epoch), floor)

    return factor
