"""TensorBoard logging of a run: scalars, images and the hyperparameters with final metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from omegaconf import OmegaConf
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

#: config keys shown in TensorBoard's HParams view (plus every model.* key)
HPARAM_KEYS = (
    "objective.name",
    "optimizer.name",
    "optimizer.lr",
    "trainer.batch_size",
    "seed",
    "data.name",
    "data.representation",
    "objective.k",
    "objective.beta",
)


class Logger:
    def __init__(self, run_dir: Path, purge_step: int | None = None):
        # purge_step drops events a killed run wrote after its last checkpoint, so a resumed run's curves are clean
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge_step)

    def scalars(self, prefix: str, values: Mapping[str, float], step: int) -> None:
        for k, v in values.items():
            self.writer.add_scalar(f"{prefix}/{k}", v, step)

    def image(self, tag: str, image: Tensor, step: int) -> None:
        self.writer.add_image(tag, image, step)

    def hparams(self, cfg, metrics: Mapping[str, float], resolved: Mapping[str, object] | None = None) -> None:
        """``resolved``: values the run worked out for keys the config may leave null (the representation)."""
        flat, resolved = {}, resolved or {}
        for key in HPARAM_KEYS:
            v = resolved.get(key, OmegaConf.select(cfg, key, default=None))
            if v is not None:
                flat[key] = v
        for k, v in cfg.model.items():
            # HParams takes numbers, strings and booleans; show lists and nulls as text
            flat[f"model.{k}"] = (
                v
                if isinstance(v, (int, float, str, bool))
                else str(OmegaConf.to_container(v) if OmegaConf.is_config(v) else v)
            )
        # SummaryWriter.add_hparams would open a second event file; write its summaries into ours
        metrics = {f"hparam/{k}": v for k, v in metrics.items()}
        for summary in hparams(flat, metrics):
            self.writer.file_writer.add_summary(summary)
        for k, v in metrics.items():
            self.writer.add_scalar(k, v)

    def close(self) -> None:
        self.writer.close()


class NullLogger:
    """What processes other than the first log: nothing (one run folder, one event file)."""

    def scalars(self, *args, **kwargs) -> None: ...

    def image(self, *args, **kwargs) -> None: ...

    def hparams(self, *args, **kwargs) -> None: ...

    def close(self) -> None: ...
