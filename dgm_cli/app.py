"""What the three commands share: their Hydra entry point, error handling, and rebuilding a
model from a checkpoint."""
from __future__ import annotations

import functools
import logging
import sys
from typing import Callable

import hydra
from omegaconf import DictConfig, OmegaConf

from . import cli
from .config.schema import register_configs
from .errors import UserError

CONFIG_PATH = "pkg://dgm_cli.configs"
log = logging.getLogger("dgm")


def command(config_name: str, validate: Callable[[DictConfig], None]):
    """Turn ``fn(cfg)`` into the Hydra app of ``dgm <config_name>``. A UserError raised by the
    check or the command is printed as one paragraph, with exit status 2 and no traceback."""
    register_configs()

    def decorate(fn: Callable[[DictConfig], object]):
        @hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=config_name)
        @functools.wraps(fn)
        def main(cfg: DictConfig):
            cli.job_started = True
            try:
                validate(cfg)
                return fn(cfg)
            except UserError as exc:
                sys.stderr.write(f"dgm {config_name}: {exc}\n")
                sys.exit(2)

        return main

    return decorate


def model_from_checkpoint(state: dict, device, data_root: str | None = None):
    """(model in eval mode on ``device``, saved config, dataset) from a loaded checkpoint."""
    from .data import pipeline
    from .models.registry import build_model

    cfg = OmegaConf.create(state["config"])
    if data_root is not None:
        cfg.data.root = data_root
    dataset = pipeline.load(cfg.data)
    representation = pipeline.resolve_representation(cfg.data, cfg.model, dataset)
    spec = pipeline.spec(dataset, representation, cfg.data.name)
    model = build_model(cfg.model, cfg.objective, spec)
    model.load_state_dict(state["model"])
    if "ema" in state:  # trained with trainer.ema_decay: sample and evaluate the weight average
        from .engine.ema import apply_saved

        apply_saved(model, state["ema"])
    return model.to(device).eval(), cfg, dataset
