"""The training loop: one for every family.

It asks the model for ``(optimizer name, loss, metrics)`` steps and does the rest the
same way for everyone: zero_grad, backward (scaled under fp16), gradient clipping,
optimizer and scheduler steps, metric averaging, validation, sample grids,
checkpoints and resume. It never looks at what kind of model it trains.

Metrics stay on the device between log points (no ``.item()`` per step), so the loop
costs next to nothing over a bare PyTorch loop (see scripts/bench_overhead.py).
"""
from __future__ import annotations

import logging
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Optional

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from .. import images
from ..data import pipeline
from ..models.base import GenerativeModel
from . import checkpoint, runtime
from .optim import build_scheduler, optimizer_factory
from .tb import Logger

log = logging.getLogger("dgm.train")
# A generator stepped every n_critic batches has its schedule advanced before its first step: intended.
warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before `optimizer.step\(\)`")


class Trainer:
    def __init__(self, cfg: DictConfig, model: GenerativeModel, data: pipeline.Dataset, run_dir: Path,
                 device: torch.device, resume_state: Optional[dict] = None):
        self.cfg, self.t, self.run_dir, self.device = cfg, cfg.trainer, run_dir, device
        model.check_precision(cfg.trainer.precision)
        self.model = model.to(device)
        self.representation = model.data.representation
        self.batches = pipeline.BatchIterator(*data.train, self.representation, cfg.data.binarize, self.t.batch_size,
                                              device, cfg.seed, cfg.data.on_device)
        self.val = self._fixed_split(data.val)
        self.total_steps = self.t.max_steps if self.t.max_steps > 0 else self.t.max_epochs * self.batches.steps_per_epoch
        self.optimizers = model.configure_optimizers(optimizer_factory(cfg.optimizer))
        self.schedulers = {k: build_scheduler(cfg.scheduler, o, self.total_steps, self.batches.steps_per_epoch)
                           for k, o in self.optimizers.items()}
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.t.precision == "16")
        self.params = {k: [p for g in o.param_groups for p in g["params"]] for k, o in self.optimizers.items()}
        self.step, self.best_val = 0, math.inf
        self.ckpt_dir = run_dir / "checkpoints"
        if resume_state is not None:
            self._load(resume_state)
        self.logger = Logger(run_dir, purge_step=self.step + 1 if resume_state is not None else None)
        self._running: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}
        self.last_val: dict[str, float] = {}

    def _fixed_split(self, split):
        x, y = split
        if len(x) == 0:
            return None
        return pipeline.fixed(x, self.representation), y

    # --- one step ----------------------------------------------------------------------
    def train_step(self, x: torch.Tensor, y: Optional[torch.Tensor], want_grad_norm: bool) -> None:
        steps = self.model.training_step(x, y)
        while True:
            with runtime.autocast(self.device, self.t.precision):
                item = next(steps, None)
            if item is None:
                break
            name, loss, metrics = item
            opt = self.optimizers[name]
            opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.t.grad_clip > 0 or want_grad_norm:
                self.scaler.unscale_(opt)
                clip = self.t.grad_clip if self.t.grad_clip > 0 else math.inf
                metrics = {**metrics, f"grad_norm_{name}": torch.nn.utils.clip_grad_norm_(self.params[name], clip)}
            self.scaler.step(opt)
            self.scaler.update()
            self._accumulate(metrics)
        # Schedules run on batches, not on each optimizer's own steps, so that a generator stepped
        # every n_critic batches decays over the same run as its critic.
        for scheduler in self.schedulers.values():
            if scheduler is not None:
                scheduler.step()

    def _accumulate(self, metrics: dict) -> None:
        for k, v in metrics.items():
            v = v.detach().float() if isinstance(v, torch.Tensor) else float(v)
            self._running[k] = self._running[k] + v if k in self._running else v
            self._counts[k] = self._counts.get(k, 0) + 1

    def _flush(self) -> dict[str, float]:
        values = {k: float(v) / self._counts[k] for k, v in self._running.items()}
        self._running, self._counts = {}, {}
        return values

    # --- the loop ------------------------------------------------------------------------
    def fit(self) -> dict[str, float]:
        t = self.t
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not (t.progress and sys.stderr.isatty()),
                   dynamic_ncols=True, desc="train")
        log.info("training %s for %d steps (%d per epoch) on %s, run folder %s", self.cfg.model.name,
                 self.total_steps, self.batches.steps_per_epoch, self.device, self.run_dir)
        tick, tick_step = time.perf_counter(), self.step
        self.model.train()
        while self.step < self.total_steps:
            x, y = next(self.batches)
            self.step += 1
            log_now = self.step % t.log_every == 0 or self.step == self.total_steps
            self.train_step(x, y, want_grad_norm=log_now)
            bar.update(1)
            if log_now:
                values = self._flush()
                now = time.perf_counter()
                values["images_per_sec"] = (self.step - tick_step) * t.batch_size / max(now - tick, 1e-9)
                tick, tick_step = now, self.step
                for name, opt in self.optimizers.items():
                    values[f"lr_{name}" if len(self.optimizers) > 1 else "lr"] = opt.param_groups[0]["lr"]
                self.logger.scalars("train", values, self.step)
                bar.set_postfix({k: f"{v:.4g}" for k, v in values.items() if k.startswith("loss")})
            epoch_end = self.step % self.batches.steps_per_epoch == 0
            if t.sample_every and self.step % t.sample_every == 0:
                self.log_images()
            if (t.val_every and self.step % t.val_every == 0) or (not t.val_every and epoch_end) or self.step == self.total_steps:
                self.validate()
            if self.step % t.ckpt_every == 0 or epoch_end or self.step == self.total_steps:
                self.save()
        bar.close()
        if not (t.sample_every and self.step % t.sample_every == 0):  # the last step's grid, once
            self.log_images()
        final = {f"val_{k}": v for k, v in self.last_val.items()}
        self.logger.hparams(self.cfg, final or {"train_steps": float(self.step)})
        self.logger.close()
        return final

    @torch.no_grad()
    def validate(self) -> None:
        """Validation metrics under a forked RNG (a VAE's bound is stochastic): how often it
        runs never changes the training trajectory."""
        if self.val is None:
            return
        with runtime.fork_rng(self.device):
            values = self._validation_metrics()
        self.logger.scalars("val", values, self.step)
        self.last_val = values
        if "loss" in values and values["loss"] < self.best_val:
            self.best_val = values["loss"]
            self.save("best.pt")
        log.info("step %d validation: %s", self.step, ", ".join(f"{k}={v:.4f}" for k, v in values.items()))

    def _validation_metrics(self) -> dict[str, float]:
        self.model.eval()
        sums: dict[str, float] = {}
        x_all, y_all = self.val
        n = 0
        for x, y in pipeline.eval_batches(x_all, y_all, self.t.eval_batch_size, self.device):
            with runtime.autocast(self.device, self.t.precision):
                for k, v in self.model.validation_step(x, y).items():
                    sums[k] = sums.get(k, 0.0) + float(v) * len(x)
            n += len(x)
        values = {k: v / n for k, v in sums.items()}
        real = x_all[: self.t.eval_batch_size].to(self.device)
        values.update({k: float(v) for k, v in self.model.monitor(real).items()})
        self.model.train()
        return values

    @torch.no_grad()
    def log_images(self) -> None:
        """Sample grid (and, where the model has them, reconstructions of fixed validation images).
        Runs under a forked RNG, so how often it runs never changes the training trajectory."""
        self.model.eval()
        with runtime.fork_rng(self.device):
            samples = self.model.sample_for_logging(self.t.num_samples)
            if self.model.data.is_image:
                self.logger.image("samples", images.grid(samples), self.step)
                if "reconstruct" in self.model.sample_modes and self.val is not None:
                    x = self.val[0][: min(32, self.t.num_samples)].to(self.device)
                    self.logger.image("reconstructions", images.grid(self.model.sample_reconstruct(x)), self.step)
            else:
                self.logger.image("samples", images.histogram(samples[:, :2]), self.step)
        self.model.train()

    # --- checkpoints -------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "model": self.model.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items() if s is not None},
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "best_val": self.best_val,
            "batches": self.batches.state_dict(),
            "rng": runtime.rng_state(),
            "run_dir": str(self.run_dir),
        }

    def save(self, name: str = "last.pt") -> None:
        checkpoint.save(self.state(), self.ckpt_dir / name)

    def _load(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        for k, s in self.schedulers.items():
            if s is not None:
                s.load_state_dict(state["schedulers"][k])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.best_val = int(state["step"]), float(state["best_val"])
        self.batches.load_state_dict(state["batches"])
        runtime.set_rng_state(state["rng"])
