"""Value checks that types alone cannot express, run before anything is written."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from omegaconf import DictConfig

from ..errors import UserError
from ..models.registry import check_model, get_model_class
from ..rules import DEVICE, NON_NEGATIVE, POSITIVE, check, check_declared, choice
from .schema import DataConfig, SchedulerConfig, TrainerConfig

SPLITS = ("train", "val", "test")


def one_of(cfg: DictConfig, key: str, choices: Iterable[str]) -> None:
    check(cfg, key, *choice(choices))


def check_device(cfg: DictConfig, key: str) -> None:
    check(cfg, key, *DEVICE)


def positive(cfg: DictConfig, key: str) -> None:
    check(cfg, key, *POSITIVE)


def non_negative(cfg: DictConfig, key: str) -> None:
    check(cfg, key, *NON_NEGATIVE)


def validate_train(cfg: DictConfig) -> None:
    check_declared(cfg, "trainer", TrainerConfig)
    check_declared(cfg, "data", DataConfig)
    from ..engine.optim import check_optimizer  # (torch: imported only when a run is checked)

    check_optimizer(cfg.optimizer)
    check_optimizer_name(cfg.optimizer)
    positive(cfg, "optimizer.lr")
    if "weight_decay" in cfg.optimizer:
        non_negative(cfg, "optimizer.weight_decay")
    if "betas" in cfg.optimizer:
        check(cfg, "optimizer.betas", lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "two numbers in [0, 1)")
    if cfg.scheduler is not None:
        check_declared(cfg, "scheduler", SchedulerConfig)  # its name: engine/schedules.py's table
        non_negative(cfg, "scheduler.warmup_steps")
        positive(cfg, "scheduler.step_size")
    check(
        cfg,
        "data.val_size",
        lambda v: v is None or v >= 0,
        "null (a tenth of the training examples, at most 5000) or a number >= 0",
    )
    check(cfg, "data.channels", lambda v: v in (None, 1, 3), "null, 1 or 3")
    model, _, _ = check_model(
        cfg.model, cfg.objective
    )  # the model's and objective's declared rules, its check_settings
    if cfg.data.representation:  # asked for (else the model's own, or one chosen for the data once it is read)
        model.check_representation(cfg.data.representation)
    check_domains(cfg)


def check_domains(cfg: DictConfig) -> None:
    """data.domain_b (a second image domain) goes with a translation model, and a translation model needs it."""
    translates = getattr(get_model_class(cfg.model.name), "two_domains", False)
    if cfg.data.get("domain_b") and not translates:
        raise UserError(
            f"data.domain_b={cfg.data.domain_b} names a second image domain, which only translation "
            f"models (model=cyclegan) use; model={cfg.model.name} would ignore it. Drop data.domain_b."
        )
    if translates and not cfg.data.get("domain_b"):
        raise UserError(
            f"model={cfg.model.name} translates between two image domains: name the second with "
            "data.domain_b=<dataset name, image folder or .npz file>, e.g. dataset=mnist "
            "data.domain_b=fashion_mnist (the default)."
        )


def check_optimizer_name(optimizer: DictConfig) -> None:
    """``optimizer.name`` only labels the config; ``_target_`` picks the class. A name that is one of
    configs/optimizer's files with another class (optimizer.name=rmsprop over Adam) would run one
    optimizer while the run's folder, TensorBoard and report name another: refuse it."""
    from importlib import resources

    from omegaconf import OmegaConf

    shipped = resources.files("dgm_cli.configs") / "optimizer" / f"{optimizer.get('name')}.yaml"
    target = OmegaConf.create(shipped.read_text()).get("_target_") if shipped.is_file() else None
    if target is not None and target != optimizer.get("_target_"):
        raise UserError(
            f"optimizer.name={optimizer.name} names configs/optimizer/{optimizer.name}.yaml ({target}), "
            f"but the optimizer is {optimizer.get('_target_')}: the name only labels the config. Pick "
            f"the optimizer with optimizer={optimizer.name} (the group), not optimizer.name=."
        )


MIDI_SUFFIXES = (".mid", ".midi")  # dgm sample out=: samples of music as a MIDI file
ARRAY_SUFFIX = ".npz"  # dgm sample out=: the raw samples as an array, for analysis of one's own
SAMPLERS = (
    "ddpm",
    "ddim",
    "euler",
    "midpoint",
    "rk4",
    "dopri5",
)  # dgm sample sampler=: diffusion's samplers, flow matching's ODE solvers


def validate_sample(cfg: DictConfig) -> None:
    from ..images import IMAGE_FORMATS

    image_suffixes = tuple(IMAGE_FORMATS)
    positive(cfg, "num_samples")
    check(
        cfg,
        "out",
        lambda v: (
            v is None
            or Path(v).expanduser().is_dir()
            or Path(v).suffix.lower() in (*image_suffixes, *MIDI_SUFFIXES, ARRAY_SUFFIX)
        ),
        "null, a folder, a picture's file name ending in " + ", ".join(image_suffixes) + f", {ARRAY_SUFFIX} (the "
        "raw samples as an array) or (samples of music) a MIDI file name ending in " + ", ".join(MIDI_SUFFIXES),
    )
    positive(cfg, "temperature")
    check(cfg, "steps", lambda v: v is None or v >= 1, "null or >= 1")
    check(cfg, "sampler", lambda v: v is None or v in SAMPLERS, "null or one of " + ", ".join(SAMPLERS))
    check(cfg, "eta", lambda v: v is None or v >= 0, "null or >= 0")
    check(cfg, "length", lambda v: v is None or v >= 1, "null or >= 1")
    check_device(cfg, "device")
    one_of(cfg, "split", SPLITS)


def _can_write_beside(path: Path) -> bool:
    """Whether files can be made where ``path`` would go: tried, with a temporary file made and
    removed in its nearest existing folder (permission bits say nothing for root or /proc)."""
    import os
    import tempfile

    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        return False
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".dgm-probe-")
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


def check_out(cfg: DictConfig, command: str, kind: str, suffix: str | None = None) -> None:
    """``out=`` names a ``kind`` ("file" with ``suffix``, or "folder") that can be written, so that a
    command never computes for minutes and then fails to save (or leaves half a file)."""
    if cfg.out is None:
        return
    path = Path(cfg.out).expanduser()
    if kind == "file" and path.is_dir():
        raise UserError(
            f"out={cfg.out!r} is a folder; dgm {command} writes one {suffix} file: give its name, e.g. "
            f"out={Path(cfg.out) / ('eval' + suffix)}."
        )
    if kind == "file" and path.suffix.lower() != suffix:
        raise UserError(
            f"out={cfg.out!r}: dgm {command} writes a {suffix} file; give a file name ending in {suffix} "
            f"(or leave out= out for the default place)."
        )
    if kind == "folder" and path.exists() and not path.is_dir():
        raise UserError(f"out={cfg.out!r} is a file; dgm {command} writes its tables and plots into a folder.")
    if not _can_write_beside(path / "probe" if kind == "folder" else path):
        raise UserError(
            f"cannot write out={cfg.out!r}: nothing can be created in {path.parent} (a missing or "
            f"read-only folder, or a file where a folder should be). Give a place you can write to."
        )


def validate_eval(cfg: DictConfig) -> None:
    check_out(cfg, "eval", "file", ".json")
    non_negative(cfg, "batch_size")
    positive(cfg, "num_samples")
    one_of(cfg, "features", ("auto", "classifier", "autoencoder", "inception"))  # evaluation/features.FEATURE_KINDS
    positive(cfg, "progress_every")
    check(cfg, "limit", lambda v: v is None or v > 0, "null or > 0")
    check_device(cfg, "device")
    one_of(cfg, "split", SPLITS)
