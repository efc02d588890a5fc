"""The trainer's settings, ``trainer.*``: one typed dataclass, declared here, below the command line, so
that the engine receives it (``Trainer(..., settings, ...)``, built by ``loop.build``) and
settings/schema.py puts it in ``dgm train``'s schema. Pure Python (no torch, no Hydra): validation and
`--help` read it cheaply.

The loop reads these values a few times per step as plain attributes of a dataclass instance: an
OmegaConf attribute read costs hundreds of times as much (timeit, commit a696611), which is why the loop
never reads ``cfg.trainer`` itself, and neither does `dgm train` (``loop.trainer_settings``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from ..rules import COMPILE, DEVICE, NON_NEGATIVE, POSITIVE, checked, choice


@dataclass
class TrainerConfig:
    """A trainer key is one line here: its type, its default with the rule its value must meet
    (``checked``, dgm_cli/rules.py: settings/validate.py refuses other values before anything runs), and its
    meaning (the comment, which `dgm train --help` prints)."""

    max_epochs: int = checked(10, NON_NEGATIVE)  # passes over the training split
    max_steps: int = checked(-1, (lambda v: v == -1 or v > 0, "-1 (train for max_epochs) or > 0"))  # > 0 stops after
    #   this many steps, whatever max_epochs says
    batch_size: int = checked(128, POSITIVE)  # the global batch: split over processes (torchrun) and accumulation
    #   micro-batches
    accumulate: int = checked(1, POSITIVE)  # micro-batches per optimizer step (gradient accumulation)
    eval_batch_size: int = checked(1000, POSITIVE)  # examples per batch in validation
    device: str = checked("auto", DEVICE)  # auto | cpu | cuda | cuda:N | mps
    precision: str = checked("32", choice(("32", "bf16", "16")))  # 32 | bf16 | 16
    #   (16 uses a gradient scaler; CUDA only)
    val_precision: str = checked("32", choice(("32", "bf16", "16")))  # validation's precision (its loss picks best.pt):
    #   32 unless asked; dgm eval computes in 32
    deterministic: bool = False  # true: deterministic algorithms and no TF32 on GPUs (exact resume, two GPUs equal one;
    #   slower); false: cuDNN picks its fastest kernels (cudnn.benchmark)
    grad_clip: float = checked(0.0, NON_NEGATIVE)  # max global gradient norm; 0 turns clipping off
    compile: Any = checked("auto", COMPILE)  # torch.compile the model's loss computation (what every step runs): true |
    #   false | auto (compiles CPU runs long enough to earn the compilation back, for the models where that was
    #   measured: pixelcnn from 500 steps, glow from 2000)
    ema_decay: float = checked(0.0, (lambda v: 0 <= v < 1, "in [0, 1) (0 turns the weight average off)"))  # > 0: keep
    #   an exponential moving average of the weights for sampling and eval
    nan: str = checked("stop", choice(("stop", "skip")))  # a non-finite loss: stop (keep the last good checkpoint) |
    #   skip (drop the batch's update)
    log_every: int = checked(50, POSITIVE)  # steps between TensorBoard scalar writes
    sample_every: int = checked(1000, NON_NEGATIVE)  # steps between sample grids; 0 turns them off
    ckpt_every: int = checked(1000, POSITIVE)  # steps between last.pt writes (also written each epoch and at the end)
    val_every: int = checked(0, NON_NEGATIVE)  # steps between validations; 0 means once per epoch
    num_samples: int = checked(64, POSITIVE)  # images in each logged sample grid
    progress: bool = True  # a tqdm bar on a terminal; otherwise a log line every progress_every seconds; false: neither
    progress_every: float = checked(30.0, POSITIVE)  # seconds between progress lines (step, rate, time left) when
    #   stderr is not a terminal

    @classmethod
    def of(cls, values: dict) -> "TrainerConfig":
        """From a config's ``trainer`` section as plain values (``OmegaConf.to_container(cfg.trainer,
        resolve=True)``): a checkpoint saved before a key existed gets its default, and one saved with a key
        this version no longer has keeps it out (the loop reads only the keys it declares)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})
