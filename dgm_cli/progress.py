"""Progress of work that can take a while: sequential sampling (an autoregressive model's pixels, a
diffusion model's denoising steps, Langevin steps) and evaluation (examples scored). Quick work shows
nothing; work that passes PROGRESS_AFTER seconds shows a bar on a terminal and otherwise logs a line
then, one every LOG_EVERY seconds after it (each with the time left), and one at the end."""

from __future__ import annotations

import logging
import sys
import time

from tqdm import tqdm

PROGRESS_AFTER = 3.0  # seconds: work that takes longer shows its progress
LOG_EVERY = 30.0  # seconds between log lines off a terminal (dgm eval progress_every= sets it)


class Progress:
    """Progress of ``total`` units of work: on a terminal a tqdm bar, shown once the work has taken
    PROGRESS_AFTER seconds; otherwise a log line at that point and every LOG_EVERY seconds after it,
    each with the time left, and one at the end. ``enabled=False``: silent (the same loop run inside
    training, where the step's time is what counts)."""

    def __init__(self, total: int, what: str, unit: str, enabled: bool = True, logger: str = "dgm"):
        self.total, self.what, self.unit, self.done, self.logged = total, what, unit, 0, False
        self.log = logging.getLogger(logger)
        self.log_lines = enabled and not sys.stderr.isatty()
        self.start, self.next_line = time.perf_counter(), PROGRESS_AFTER
        self.bar = tqdm(
            total=total,
            desc=what,
            unit=unit,
            delay=PROGRESS_AFTER,
            leave=False,
            dynamic_ncols=True,
            disable=not (enabled and sys.stderr.isatty()),
        )

    def __enter__(self) -> "Progress":
        return self

    def update(self, n: int = 1) -> None:
        self.done += n
        self.bar.update(n)
        if self.log_lines:
            elapsed = time.perf_counter() - self.start
            if elapsed > self.next_line:
                self.logged, self.next_line = True, elapsed + LOG_EVERY
                self.log.info(
                    "%s: %d/%d %s after %.0f s, about %.0f s left",
                    self.what,
                    self.done,
                    self.total,
                    self.unit,
                    elapsed,
                    elapsed * (self.total - self.done) / max(self.done, 1),
                )

    def __exit__(self, *exc) -> None:
        self.bar.close()
        if self.logged and exc[0] is None:
            self.log.info("%s: done in %.1f s", self.what, time.perf_counter() - self.start)


class SamplingProgress(Progress):
    """Sequential sampling: units of pixels (or steps), logged as dgm.sample."""

    def __init__(self, total: int, what: str, unit: str = "px", enabled: bool = True):
        super().__init__(total, what, unit, enabled, logger="dgm.sample")
