"""Runs that survive faults: stop requests by signal, non-finite losses, and one trainer per run.

* SIGTERM, SIGUSR1 and SIGUSR2 (what SLURM sends before preemption or the time limit: ``--signal``;
  submitit asks for USR2) and a first Ctrl-C (SIGINT) ask the trainer to stop at the end of the
  current step, write ``last.pt`` and exit; ``dgm train resume=<run>`` continues to the same result
  as an uninterrupted run. A second Ctrl-C stops at once. If someone else handled the signal before
  dgm did (submitit, which then requeues the job), it is passed on to them after the checkpoint.
* A non-finite loss stops the run (``trainer.nan=stop``), naming the step, the loss term and the
  last good checkpoint, which is left as it was; ``trainer.nan=skip`` drops that batch's update.
  Neither reads the device per step: the flag stays there (``NonFiniteWatch``) until the loop reads
  it when it logs, validates, draws a grid or checkpoints; skip undoes the update on the device
  (``Snapshot``: the batch's starting state, put back where the flag is set).
* A run folder being trained holds ``train.lock`` with the trainer's host and pid: a second
  ``dgm train resume=`` of it is refused while that process lives.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import torch

from ..errors import UserError
from . import distributed

log = logging.getLogger("dgm.train")
STOP_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGUSR2", "SIGINT")


class StopRequested(Exception):
    """Raised by the trainer after it saved ``last.pt`` on a stop request."""

    def __init__(self, signame: str, step: int, checkpoint: Path):
        self.signame, self.step, self.checkpoint = signame, step, checkpoint
        self.exit_code = 128 + getattr(signal, signame, signal.SIGTERM).value
        super().__init__(
            f"stopped by {signame} after step {step}; checkpoint {checkpoint}. "
            f"Continue with: dgm train resume={checkpoint.parent.parent}"
        )


class NonFiniteLoss(Exception):
    """A training loss was NaN or infinite and ``trainer.nan=stop``."""


class NonFiniteWatch:
    """Per step, whether a loss was not finite, kept as the device's own tensor; ``read`` returns the
    steps whose loss was not finite since the last read (one host sync; under several processes the
    flags are combined first, so every process reads the same steps)."""

    def __init__(self):
        self._flags: list[tuple[int, torch.Tensor]] = []

    def record(self, step: int, bad: torch.Tensor) -> None:
        self._flags.append((step, bad))

    def read(self) -> list[int]:
        if not self._flags:
            return []
        steps = [s for s, _ in self._flags]
        flags = distributed.all_reduce_max(torch.stack([b.reshape(()).float() for _, b in self._flags]))
        self._flags = []
        return [steps[i] for i in flags.nonzero().flatten().tolist()]


def zero_grads_where(bad: torch.Tensor, params) -> None:
    """Gradients set to zero if ``bad`` (a flag on the device): no NaN reaches an optimizer's state."""
    for p in params:
        if p.grad is not None:
            p.grad.masked_fill_(bad, 0.0)


class Snapshot:
    """The state a batch starts from (the model's parameters and buffers, the optimizers' state, the
    weight average), put back by ``restore_where(bad)`` if ``bad``, on the device: trainer.nan=skip's
    dropped update, with no host sync. Costs a copy of that state per batch; counters a model keeps in
    Python (not in buffers) are not put back."""

    def __init__(self, model: torch.nn.Module, optimizers: dict, ema=None):
        tensors = list(model.parameters()) + list(model.buffers())
        for opt in optimizers.values():
            tensors += [v for state in opt.state.values() for v in state.values() if isinstance(v, torch.Tensor)]
        if ema is not None:
            tensors += list(ema.shadow)
        self.saved = [(t, t.detach().clone()) for t in tensors]

    @torch.no_grad()
    def restore_where(self, bad: torch.Tensor) -> None:
        for t, old in self.saved:
            if t.device == bad.device:  # not a host-side step count of a GPU optimizer: reading bad would sync
                t.copy_(torch.where(bad, old, t))


class StopSignals:
    """Records stop requests; the trainer polls ``requested`` once per step."""

    def __init__(self):
        self.requested: Optional[str] = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if name == "SIGINT" and self.requested == "SIGINT":
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt  # the second Ctrl-C: stop at once
        if self.requested is None:
            self.requested = name
            hint = " (Ctrl-C again to stop at once)" if name == "SIGINT" else ""
            log.warning("%s received: stopping after this step and writing a checkpoint%s", name, hint)

    @contextmanager
    def installed(self):
        """Handlers in place for the duration (main thread only; elsewhere a no-op)."""
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        for name in STOP_SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None:
                self._previous[sig] = signal.signal(sig, self._handle)
        try:
            yield self
        finally:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)
            self._previous.clear()


def pass_on(signame: str) -> None:
    """After dgm's checkpoint, deliver the signal again to the handler that was there before dgm's
    (a Python handler, such as submitit's requeue on SLURM); default handlers are left alone."""
    sig = getattr(signal, signame, None)
    handler = signal.getsignal(sig) if sig is not None else None
    if callable(handler) and handler is not signal.default_int_handler:
        handler(sig, None)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def run_lock(run_dir: Path):
    """Hold ``run_dir/train.lock`` while training; refuse if another live process holds it."""
    path = Path(run_dir) / "train.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    me = f"{socket.gethostname()} {os.getpid()}"
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = path.read_text().split() if path.exists() else []
            host, pid = (owner + ["", "0"])[:2]
            if host == socket.gethostname() and pid.isdigit() and _alive(int(pid)):
                raise UserError(
                    f"{run_dir} is being trained right now by process {pid} (its lock file "
                    f"{path} says so); wait for it to finish or stop it first. Two trainers "
                    "must not write one run."
                ) from None
            if host and host != socket.gethostname():
                raise UserError(
                    f"{run_dir} is locked by a trainer on host {host} (pid {pid}); if that run "
                    f"is gone, delete {path} and resume again."
                ) from None
            path.unlink(missing_ok=True)  # a stale lock of a process that died
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me + "\n")
        break
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
