"""Progress of work that can take a while: sequential sampling (an autoregressive model's pixels, a
diffusion model's denoising steps, Langevin steps). Quick work shows nothing; work that passes
PROGRESS_AFTER seconds shows a bar on a terminal and otherwise logs a line then and one at the end."""
from __future__ import annotations

import logging
import sys
import time

from tqdm import tqdm

PROGRESS_AFTER = 3.0  # seconds: sampling that takes longer shows its progress
log = logging.getLogger("dgm.sample")


class SamplingProgress:
    """Progress of sequential sampling: on a terminal a tqdm bar, shown once sampling has taken
    PROGRESS_AFTER seconds; otherwise a log line at that point (with the time left) and one at the end.
    ``enabled=False``: silent (the same loop run inside training, where the step's time is what counts)."""

    def __init__(self, total: int, what: str, unit: str = "px", enabled: bool = True):
        self.total, self.what, self.unit, self.done, self.logged = total, what, unit, 0, False
        self.log_lines = enabled and not sys.stderr.isatty()
        self.start = time.perf_counter()
        self.bar = tqdm(total=total, desc=what, unit=unit, delay=PROGRESS_AFTER, leave=False, dynamic_ncols=True,
                        disable=not (enabled and sys.stderr.isatty()))

    def __enter__(self) -> "SamplingProgress":
        return self

    def update(self) -> None:
        self.done += 1
        self.bar.update()
        if self.log_lines and not self.logged:
            elapsed = time.perf_counter() - self.start
            if elapsed > PROGRESS_AFTER:
                self.logged = True
                log.info("%s: %d/%d %s after %.0f s, about %.0f s left", self.what, self.done, self.total,
                         self.unit, elapsed, elapsed * (self.total - self.done) / self.done)

    def __exit__(self, *exc) -> None:
        self.bar.close()
        if self.logged and exc[0] is None:
            log.info("%s: done in %.1f s", self.what, time.perf_counter() - self.start)
