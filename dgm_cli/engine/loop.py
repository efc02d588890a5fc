"""The training loop: one for every family.

For every batch the loop asks the model which optimizers step (``model.phases(step)``), and
for each of them, in order:

    zero_grad                                   (that optimizer only)
    for each micro-batch (trainer.accumulate):  (DDP's no_sync on all but the last)
        loss, metrics = net(x, y, phase)        (net: the model, or DDP(model); forward ->
                                                 model.training_loss: DDP arms its all-reduce)
        backward(loss / accumulate)             (scaled under fp16)
    unscale, clip (trainer.grad_clip), optimizer.step, scaler.update
    model.after_step(phase)
then the weight average (trainer.ema_decay) and the learning-rate schedules step once per
batch. A non-finite loss is flagged on the device and read where the loop reads the device anyway
(logging, validation, grids, checkpoints): trainer.nan=stop stops there, before any checkpoint holds
the bad step, and trainer.nan=skip undoes that batch's update on the device as it happens. Validation,
sample grids and checkpoints follow at their intervals. The loop never looks at what kind of model it
trains.

Randomness: before each (phase, micro-batch) the global RNG is seeded from (seed, step, phase,
shard), where the shard numbers the global batch's micro-batches across processes. So a model's
noise (a VAE's reparameterisation, a GAN's latents) depends only on the global batch layout: one
process with ``accumulate=2`` and two processes give the same parameters, and resume is exact.

Metrics and the non-finite flags stay on the device between log points (no ``.item()`` or ``bool()``
per step: with one process, a step never waits for the device), so the loop costs next to nothing over
a bare PyTorch loop (see scripts/bench_overhead.py).
"""

from __future__ import annotations

import functools
import logging
import math
import sys
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Optional

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from .. import images
from ..data import pipeline
from ..data.sequences import is_piano_roll
from ..errors import UserError
from ..models.base import GenerativeModel
from . import checkpoint, distributed, faults, runtime
from .config import TrainerConfig
from .ema import WeightAverage
from .faults import NonFiniteLoss, StopRequested, StopSignals
from .optim import build_scheduler, optimizer_factory
from .tb import Logger, NullLogger

log = logging.getLogger("dgm.train")
# A generator stepped every n_critic batches has its schedule advanced before its first step: intended.
warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before `optimizer.step\(\)`")


def step_seed(seed: int, step: int, phase_index: int, shard: int) -> int:
    """A seed for the global RNG that depends only on where in the run a micro-batch is."""
    return hash((seed, step, phase_index, shard)) & 0x7FFF_FFFF_FFFF_FFFF


#: an optimizer of the model's parameters (engine/optim.optimizer_factory: the configured class, per-player
#: overrides of its arguments)
OptimizerFactory = Callable[..., torch.optim.Optimizer]
#: the learning-rate schedule of one optimizer over ``total_steps`` (``steps_per_epoch`` long epochs), or None
ScheduleFactory = Callable[[torch.optim.Optimizer, int, int], Optional[torch.optim.lr_scheduler.LRScheduler]]


def trainer_settings(cfg: DictConfig) -> TrainerConfig:
    """The trainer's settings of a composed `dgm train` config (or a checkpoint's), typed."""
    return TrainerConfig.of(OmegaConf.to_container(cfg.trainer, resolve=True))


def build(
    cfg: DictConfig,
    model: GenerativeModel,
    data: pipeline.Dataset,
    run_dir: Path,
    device: torch.device,
    resume_state: Optional[dict] = None,
    settings: Optional[TrainerConfig] = None,
) -> "Trainer":
    """The Trainer of a composed `dgm train` config: everything it needs is built here from ``cfg`` (the
    trainer's settings, unless given as ``settings``; the batch iterator, the optimizer factory, the schedule),
    so the loop reads no config; ``cfg`` itself goes along only as the run's record (the checkpoint's and
    TensorBoard's HParams)."""
    settings = settings or trainer_settings(cfg)
    batches = pipeline.BatchIterator(
        *data.train,
        model.data.representation,
        cfg.data.binarize,
        settings.batch_size,
        device,
        cfg.seed,
        cfg.data.on_device,
    )
    schedule = functools.partial(build_scheduler, cfg.scheduler)
    return Trainer(
        model,
        data,
        batches,
        settings,
        optimizer_factory(cfg.optimizer),
        schedule,
        run_dir,
        device,
        seed=int(cfg.seed),
        record=cfg,
        resume_state=resume_state,
    )


class Trainer:
    def __init__(
        self,
        model: GenerativeModel,
        data: pipeline.Dataset,
        batches: pipeline.BatchIterator,
        settings: TrainerConfig,
        optimizer: OptimizerFactory,
        schedule: ScheduleFactory,
        run_dir: Path,
        device: torch.device,
        seed: int,
        record: DictConfig,
        resume_state: Optional[dict] = None,
    ):
        """``model`` trained on ``batches`` (data.train's, drawn by index) and validated on ``data.val``,
        with the optimizers ``model.configure_optimizers(optimizer)`` names, each on its ``schedule``, as
        ``settings`` say; ``record``: the run's config, saved with each checkpoint and in TensorBoard's
        HParams, never read for what the loop does (``build`` makes all of this from a config)."""
        # The trainer's settings (typed: engine/config.py) and the seed as plain Python values: the loop reads
        # them a few times per step, and an OmegaConf attribute read costs hundreds of times a dataclass's.
        self.settings, self.seed, self.run_dir, self.device, self.record = settings, seed, run_dir, device, record
        model.check_precision(settings.precision)
        self.world, self.rank, self.main = distributed.world_size(), distributed.rank(), distributed.is_main()
        self.shards = self.world * settings.accumulate  # micro-batches per global batch
        if settings.batch_size % self.shards:
            raise UserError(
                f"trainer.batch_size={settings.batch_size} is the global batch; it must split evenly "
                f"into {self.world} process(es) x trainer.accumulate={settings.accumulate} micro-batches."
            )
        self.model = model.to(device)
        self.representation = model.data.representation
        self.data_identity = data.identity
        self.batches = batches
        self.val = self._fixed_split(data.val)
        self.total_steps = (
            settings.max_steps if settings.max_steps > 0 else settings.max_epochs * batches.steps_per_epoch
        )
        self.optimizers = model.configure_optimizers(optimizer)
        self.schedulers = {
            k: schedule(o, self.total_steps, batches.steps_per_epoch) for k, o in self.optimizers.items()
        }
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.settings.precision == "16")
        self.params = {k: [p for g in o.param_groups for p in g["params"]] for k, o in self.optimizers.items()}
        self.ema = WeightAverage(model, self.settings.ema_decay) if self.settings.ema_decay > 0 else None
        self.step, self.best_val, self.skipped = 0, math.inf, 0
        self.watch = faults.NonFiniteWatch()
        #: trainer.nan=skip undoes a bad batch on the device (a copy of the state per batch, no host sync)
        #: where reading the flag would wait for the device; a CPU reads it for free and skips at once
        self.skip_on_device = device.type != "cpu"
        self.ckpt_dir = run_dir / "checkpoints"
        self.fresh = resume_state is None
        if resume_state is not None:
            self._load(resume_state)
        self.ddp = distributed.wrap(self.model, device, multi_player=len(self.optimizers) > 1)
        self.net = torch.compile(self.ddp) if self._compiles(model) else self.ddp
        self.logger = Logger(run_dir, purge_step=None if self.fresh else self.step + 1) if self.main else NullLogger()
        self.signals = StopSignals()
        self._stop_agreed = False  # with several processes: a stop signal reached one of them
        self._running: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}
        self.last_val: dict[str, float] = {}

    def _compiles(self, model: GenerativeModel) -> bool:
        """trainer.compile: true/false as given; auto compiles where it was measured to pay: on a CPU,
        for a run with at least the steps the model needs to earn back a cold compile (one to two
        minutes, against a tenth of a second or more saved per step)."""
        if self.settings.compile != "auto":
            return bool(self.settings.compile)
        needs = model.compile_pays_after
        if needs is None or self.device.type != "cpu" or self.total_steps - self.step < needs:
            return False
        if self.main:
            log.info(
                "trainer.compile=auto: compiling %s's loss computation (measured to pay on a CPU for runs "
                "of %d+ steps; the first step waits for the compiler); trainer.compile=false turns it off",
                type(model).__name__,
                needs,
            )
        # a machine without a working C++ compiler falls back to eager rather than failing the run
        torch._dynamo.config.suppress_errors = True
        return True

    def _fixed_split(self, split):
        x, y = split
        if len(x) == 0:
            return None
        return pipeline.fixed(x, self.representation), y

    # --- one step ----------------------------------------------------------------------
    def micro_batches(self, x: torch.Tensor, y: Optional[torch.Tensor]):
        """This process's micro-batches of a global batch: ``(x, y, shard)`` with the shard's index
        among all processes' micro-batches (contiguous: rank r holds shards r*A .. r*A + A - 1)."""
        if self.shards == 1:
            return [(x, y, 0)]
        size = len(x) // self.shards
        first = self.rank * self.settings.accumulate
        return [
            (x[i * size : (i + 1) * size], None if y is None else y[i * size : (i + 1) * size], i)
            for i in range(first, first + self.settings.accumulate)
        ]

    def train_step(self, x: torch.Tensor, y: Optional[torch.Tensor], want_grad_norm: bool) -> None:
        """One global batch: every phase the model asks for, in order (see the module docstring).
        Whether a loss was finite stays on the device (``self.watch``): no host sync per step."""
        chunks = self.micro_batches(x, y)
        skip = self.settings.nan == "skip"
        saved = faults.Snapshot(self.model, self.optimizers, self.ema) if skip and self.skip_on_device else None
        bad_batch = None
        for phase_index, phase in enumerate(self.model.phases(self.step)):
            opt = self.optimizers[phase]
            opt.zero_grad(set_to_none=True)
            metrics, bad = self._forward_backward(chunks, phase_index, phase)
            if saved is not None:  # no NaN reaches the optimizer's state; the update itself is undone below
                faults.zero_grads_where(bad, self.params[phase])
            elif skip and bool(bad):  # on a CPU, reading the flag costs nothing: skip the batch's updates here
                for o in self.optimizers.values():
                    o.zero_grad(set_to_none=True)
                self.watch.record(self.step, bad)
                break
            if self.settings.grad_clip > 0 or want_grad_norm:
                self.scaler.unscale_(opt)
                clip = self.settings.grad_clip if self.settings.grad_clip > 0 else math.inf
                metrics[f"grad_norm_{phase}"] = torch.nn.utils.clip_grad_norm_(self.params[phase], clip)
            self.scaler.step(opt)
            self.scaler.update()
            self.model.after_step(phase)
            self._accumulate(metrics, bad if saved is not None else None)
            bad_batch = bad if bad_batch is None else bad_batch | bad
        else:
            if self.ema is not None:
                self.ema.update()
            if saved is not None:  # a batch with a non-finite loss leaves no trace
                saved.restore_where(bad_batch)
            self.watch.record(self.step, bad_batch)
        # Schedules run on batches, not on each optimizer's own steps, so that a generator stepped
        # every n_critic batches decays over the same run as its critic.
        for scheduler in self.schedulers.values():
            if scheduler is not None:
                scheduler.step()

    def _forward_backward(self, chunks, phase_index: int, phase: str) -> tuple[dict, torch.Tensor]:
        """Gradients of ``phase``'s loss summed over this process's micro-batches (and averaged over
        processes by DDP on the last one); the mean metrics; whether a loss was not finite (a tensor on
        the device, and under several processes: on any process)."""
        total: dict = {}
        bad = None
        for i, (xm, ym, shard) in enumerate(chunks):
            runtime.seed_step(step_seed(self.seed, self.step, phase_index, shard), self.device)
            last = i == len(chunks) - 1
            sync = self.ddp.no_sync() if (not last and self.ddp is not self.model) else nullcontext()
            with sync:
                with runtime.autocast(self.device, self.settings.precision):
                    loss, metrics = self.net(xm, ym, phase)
                not_finite = ~torch.isfinite(loss.detach())
                bad = not_finite if bad is None else bad | not_finite
                self.scaler.scale(loss / len(chunks) if len(chunks) > 1 else loss).backward()
            for k, v in metrics.items():
                total[k] = total[k] + v if k in total else v
        if len(chunks) > 1:
            total = {k: v / len(chunks) for k, v in total.items()}
        if self.world > 1:  # one small all-reduce agrees on both: a bad loss anywhere, a stop signal anywhere
            stop = torch.tensor(0.0 if self.signals.requested is None else 1.0, device=self.device)
            flags = distributed.all_reduce_max(torch.stack([bad.float(), stop]))
            # a stop must be agreed at once (it ends the step); this read is the one sync per step
            # that several processes pay
            bad, self._stop_agreed = flags[0] > 0, bool(flags[1])
        return total, bad

    def check_finite(self) -> None:
        """Read the non-finite flags of the steps since the last check (one host sync): stop with the
        last good checkpoint (trainer.nan=stop), or count the skipped batches (skip). Called where the
        loop reads the device anyway: when it logs, validates, draws a grid or checkpoints, so a bad
        step is acted on at most trainer.log_every steps late and never reaches a checkpoint."""
        bad_steps = self.watch.read()
        if not bad_steps:
            return
        if self.settings.nan == "skip":
            self.skipped += len(bad_steps)
            log.warning(
                "step%s %s: non-finite loss; %s update was skipped (%d so far)",
                "s"[: len(bad_steps) - 1],
                ", ".join(map(str, bad_steps)),
                "that batch's" if len(bad_steps) == 1 else "those batches'",
                self.skipped,
            )
            return
        names = [k for k, v in self._running.items() if not math.isfinite(float(v))] or ["loss"]
        advice = self.model.non_finite_advice()
        last = self.ckpt_dir / "last.pt"
        saved = (
            f"the last good checkpoint is {last} (step {self._saved_step})"
            if last.exists()
            else "no checkpoint was written yet"
        )
        raise NonFiniteLoss(
            f"training stopped at step {self.step}: the loss of step {bad_steps[0]} is not finite (non-finite: "
            f"{', '.join(names)}); {saved}, left as it was. Lower optimizer.lr, set trainer.grad_clip, use "
            f"trainer.precision=32, or trainer.nan=skip to drop such batches; continue with dgm train "
            f"resume={self.run_dir}." + (f" {advice[0].upper()}{advice[1:]}." if advice else "")
        )

    def _accumulate(self, metrics: dict, bad: Optional[torch.Tensor] = None) -> None:
        """Add a step's metrics to the running sums (on the device); with ``bad`` (trainer.nan=skip), a
        step whose loss was not finite adds nothing and is not counted."""
        for k, v in metrics.items():
            v = v.detach().float() if isinstance(v, torch.Tensor) else float(v)
            count = 1
            if bad is not None:
                v, count = torch.where(bad, 0.0, v), (~bad).float()
            self._running[k] = self._running[k] + v if k in self._running else v
            self._counts[k] = self._counts[k] + count if k in self._counts else count

    def _flush(self) -> dict[str, float]:
        values = {k: float(v / self._counts[k]) for k, v in self._running.items()}
        self._running, self._counts = {}, {}
        return values

    # --- the loop ------------------------------------------------------------------------
    def fit(self) -> dict[str, float]:
        with self.signals.installed():
            return self._fit()

    def _fit(self) -> dict[str, float]:
        settings = self.settings
        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            dynamic_ncols=True,
            desc="train",
            disable=not (settings.progress and self.main and sys.stderr.isatty()),
        )
        log.info(
            "training %s for %d steps (%d per epoch) on %s%s, run folder %s",
            self.record.model.name,
            self.total_steps,
            self.batches.steps_per_epoch,
            self.device,
            f" x {self.world} processes" if self.world > 1 else "",
            self.run_dir,
        )
        log.info("%s", self.batches.placement)
        tick, tick_step = time.perf_counter(), self.step
        self._fit_started, self._grid_seconds, self._last_grid_seconds = tick, 0.0, None
        lines = settings.progress and self.main and not sys.stderr.isatty()  # off a terminal: a line now and then
        next_line, first_step = tick + settings.progress_every, self.step
        self.model.train()
        while self.step < self.total_steps:
            x, y = next(self.batches)
            self.step += 1
            if self.fresh and self.step == 1:
                self.model.initialize(x, y)  # the same global batch on every process
            log_now = self.step % settings.log_every == 0 or self.step == self.total_steps
            try:
                self.train_step(x, y, want_grad_norm=log_now)
            except RuntimeError:  # a model that fails on non-finite weights (a Bernoulli of NaN): say why
                if self.world == 1:  # (with several processes the others may not be here to agree)
                    self.check_finite()
                raise
            bar.update(1)
            if lines and time.perf_counter() >= next_line:
                next_line = time.perf_counter() + settings.progress_every
                self._progress_line(first_step)
            if log_now:
                self.check_finite()
                values = self._flush()
                if self.skipped:
                    values["nan_skipped"] = float(self.skipped)
                now = time.perf_counter()
                values[f"{self.unit}_per_sec"] = (self.step - tick_step) * settings.batch_size / max(now - tick, 1e-9)
                tick, tick_step = now, self.step
                for name, opt in self.optimizers.items():
                    values[f"lr_{name}" if len(self.optimizers) > 1 else "lr"] = opt.param_groups[0]["lr"]
                self.logger.scalars("train", values, self.step)
                bar.set_postfix({k: f"{v:.4g}" for k, v in values.items() if k.startswith("loss")})
            epoch_end = self.step % self.batches.steps_per_epoch == 0
            if settings.sample_every and self.step % settings.sample_every == 0:
                self.log_images()
            val_due = self.step % settings.val_every == 0 if settings.val_every else epoch_end
            if val_due or self.step == self.total_steps:
                self.validate()
            if self.step % settings.ckpt_every == 0 or epoch_end or self.step == self.total_steps:
                self.save()
            if self._stop_agreed if self.world > 1 else self.signals.requested is not None:
                self._stop(bar)
        bar.close()
        if settings.sample_every and self.step % settings.sample_every != 0:  # the last step's grid, once
            self.log_images()
        final = {f"val_{k}": v for k, v in self.last_val.items()}
        self.logger.hparams(
            self.record, final or {"train_steps": float(self.step)}, {"data.representation": self.representation}
        )
        self.logger.close()
        return final

    @property
    def unit(self) -> str:
        """What one example is, for rates: images, sequences (T x D) or points (a toy's vectors)."""
        return "images" if self.model.data.is_image else "sequences" if len(self.model.data.shape) == 2 else "points"

    def _progress_line(self, first_step: int) -> None:
        """Off a terminal (nohup, SLURM), where the bar stays off: where the run is, how fast, the time left."""
        elapsed = time.perf_counter() - self._fit_started
        done = max(self.step - first_step, 1)
        left = elapsed / done * (self.total_steps - self.step)
        log.info(
            "step %d/%d (%.0f%%), %.3g %s/s, about %s left",
            self.step,
            self.total_steps,
            100 * self.step / self.total_steps,
            done * self.settings.batch_size / max(elapsed, 1e-9),
            self.unit,
            f"{left / 60:.1f} min" if left >= 90 else f"{left:.0f} s",
        )

    def _stop(self, bar) -> None:
        """A stop signal arrived (on any process): checkpoint this step and leave."""
        bar.close()
        self.check_finite()
        self.save()
        distributed.barrier()
        self.logger.close()
        raise StopRequested(self.signals.requested or "SIGTERM", self.step, self.ckpt_dir / "last.pt")

    def averaged(self):
        """Validation and samples use the weight average when there is one."""
        return self.ema.applied() if self.ema is not None else nullcontext()

    @torch.no_grad()
    def validate(self) -> None:
        """Validation metrics under a forked RNG (a VAE's bound is stochastic): how often it
        runs never changes the training trajectory. Each process takes its part of the split."""
        if self.val is None:
            return
        self.check_finite()
        with runtime.fork_rng(self.device), self.averaged():
            values = self._validation_metrics()
        self.logger.scalars("val", values, self.step)
        self.last_val = values
        if "loss" in values and values["loss"] < self.best_val:
            self.best_val = values["loss"]
            self.save("best.pt")
        log.info("step %d validation: %s", self.step, ", ".join(f"{k}={v:.4f}" for k, v in values.items()))

    def _validation_metrics(self) -> dict[str, float]:
        self.model.eval()
        sums: dict[str, torch.Tensor] = {}
        x_all, y_all = self.val
        part = distributed.shard(len(x_all))
        x_mine, y_mine = x_all[part], None if y_all is None else y_all[part]
        n = torch.zeros((), dtype=torch.float64, device=self.device)
        # fp32 unless trainer.val_precision asks: best.pt is chosen by this number (the RBM's exact NLL was
        # off by up to 0.585 nats an example in bf16)
        precision = self.settings.val_precision
        for x, y in pipeline.eval_batches(x_mine, y_mine, self.settings.eval_batch_size, self.device):
            with runtime.autocast(self.device, precision):
                for k, v in self.model.validation_step(x, y).items():
                    sums[k] = sums.get(k, 0.0) + torch.as_tensor(v, device=self.device).detach().double() * len(x)
            n += len(x)
        names = sorted(sums)
        if self.world > 1:  # every process reports the same metrics; reduce them in one call
            packed = distributed.all_reduce_sum(torch.stack([n] + [sums[k] for k in names]))
            n, sums = packed[0], {k: packed[i + 1] for i, k in enumerate(names)}
        values = {k: float(sums[k] / n) for k in names}
        real = x_all[: self.settings.eval_batch_size].to(self.device)
        values.update({k: float(v) for k, v in self.model.monitor(real).items()})
        self.model.train()
        return values

    #: the share of training wall time that logged sample grids may take
    GRID_BUDGET = 0.10

    def grid_size(self) -> int:
        """Samples per logged grid: ``trainer.num_samples``, or fewer for a model whose sampler costs
        many network passes (``grid_samples``: one per dimension, a long chain)."""
        cap = self.model.grid_samples
        return min(self.settings.num_samples, cap) if cap else self.settings.num_samples

    def grid_affordable(self) -> bool:
        """Whether one more grid keeps all grids within GRID_BUDGET of the run's wall time so far
        (judged by the last grid's cost; the first grid is always drawn). Says so when it is not."""
        if self._last_grid_seconds is None:
            return True
        elapsed = time.perf_counter() - self._fit_started
        if self._grid_seconds + self._last_grid_seconds <= self.GRID_BUDGET * elapsed:
            return True
        log.info(
            "step %d: sample grid skipped: grids took %.0f s of %.0f s so far and one takes ~%.0f s, over the "
            "%d%% budget (raise trainer.sample_every, lower trainer.num_samples, or set trainer.sample_every=0)",
            self.step,
            self._grid_seconds,
            elapsed,
            self._last_grid_seconds,
            round(100 * self.GRID_BUDGET),
        )
        return False

    @torch.no_grad()
    def log_images(self) -> None:
        """Sample grid (and, where the model has them, reconstructions of fixed validation images),
        within the time budget above. Runs under a forked RNG, so how often it runs never changes the
        training trajectory."""
        self.check_finite()
        if not self.main or not self.grid_affordable():
            return
        start = time.perf_counter()
        n = self.grid_size()
        if n < self.settings.num_samples and self._last_grid_seconds is None:
            log.info(
                "sample grids hold %d samples, not trainer.num_samples=%d: a %s sample costs many network passes",
                n,
                self.settings.num_samples,
                self.record.model.name,
            )
        self.model.eval()
        with runtime.fork_rng(self.device), self.averaged():
            samples = self.model.sample_for_logging(n)
            if self.model.data.is_image:
                self.logger.image("samples", images.grid(samples), self.step)
                if "reconstruct" in self.model.sample_modes and self.val is not None:
                    x = self.val[0][: min(32, self.settings.num_samples)].to(self.device)
                    self.logger.image("reconstructions", images.grid(self.model.sample_reconstruct(x)), self.step)
                for tag, extra in self.model.images(n).items():  # e.g. an RBM's filters
                    self.logger.image(tag, images.grid(extra), self.step)
            else:
                self.logger.image("samples", images.of_samples(samples, is_piano_roll(self.model.data)), self.step)
        self.model.train()
        self._last_grid_seconds = time.perf_counter() - start
        self._grid_seconds += self._last_grid_seconds

    # --- checkpoints -------------------------------------------------------------------------
    _saved_step = 0

    def state(self) -> dict:
        state = {
            "config": OmegaConf.to_container(self.record, resolve=True),  # as the user gave it
            "representation": self.representation,  # the one the model got (data.representation may be null)
            "model": self.model.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items() if s is not None},
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "best_val": self.best_val,
            "skipped": self.skipped,
            "batches": self.batches.state_dict(),
            "rng": runtime.rng_state(),
            "run_dir": str(self.run_dir),
            "data": self.data_identity,  # data/identity.py: which data, and its splits' fingerprints
        }
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def save(self, name: str = "last.pt") -> None:
        """Only the first process writes; every process holds the same state (a finite one: checked first)."""
        self.check_finite()
        if self.main:
            checkpoint.save(self.state(), self.ckpt_dir / name)
        if name == "last.pt":
            self._saved_step = self.step

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
        self.skipped = int(state.get("skipped", 0))
        self._saved_step = self.step
        self.batches.load_state_dict(state["batches"])
        runtime.set_rng_state(state["rng"])
        if self.ema is not None:
            if "ema" in state:
                self.ema.load_state_dict(state["ema"])
            else:  # a run that had no average: start it from the resumed weights
                self.ema = WeightAverage(self.model, self.settings.ema_decay)
