"""Finished runs, read for `dgm report`: which folders are runs, and what each one measured.

A run folder (`dgm train`) holds ``.hydra/`` (the composed config and the command line's overrides),
``train.log``, ``tensorboard/`` and ``checkpoints/`` (``last.pt``, and ``eval.json`` from `dgm eval`).
A sweep folder (`dgm train -m`) holds ``multirun.yaml`` and one run folder per job; the keys its jobs
were given different values of are its swept hyperparameters. An Optuna search (hydra/sweeper=optuna)
writes no multirun.yaml but, when it ends, ``optimization_results.yaml`` (the best trial's parameters
and objective), from which `dgm report` marks that trial.

Nothing here runs code from a file: checkpoints load with ``weights_only=True``, the rest is YAML,
JSON and TensorBoard's event protocol buffers.
"""

from __future__ import annotations

import glob
import json
import logging
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..errors import UserError
from ..models.registry import build_model

log = logging.getLogger("dgm.report")
#: `key=value` overrides of a group choice name the group; the config holds the choice as <node>.name
GROUP_NODES = {
    "dataset": "data",
    "model": "model",
    "objective": "objective",
    "optimizer": "optimizer",
    "scheduler": "scheduler",
}
DEVICE_LINE = re.compile(r"training \S+ for \d+ steps \(\d+ per epoch\) on (.+?), run folder")


def is_run(folder: Path) -> bool:
    return (folder / "checkpoints" / "last.pt").is_file() or (
        (folder / "tensorboard").is_dir() and (folder / ".hydra" / "config.yaml").is_file()
    )


def find_runs(patterns: list[str]) -> list[Path]:
    """Run folders named by ``patterns``: run folders, folders holding runs (a sweep, outputs/), checkpoint
    or eval.json files inside a run, or globs of any of these. Each run once, in a stable order."""
    found: dict[Path, None] = {}
    for pattern in patterns:
        matches = sorted(glob.glob(str(Path(pattern).expanduser()), recursive=True))
        if not matches:
            raise UserError(f"{pattern!r} matches no file or folder; give run folders, sweep folders or globs of them.")
        before = len(found)
        for m in map(Path, matches):
            for run in _runs_under(m):
                found[run.resolve()] = None
        if len(found) == before:
            raise UserError(
                f"{pattern!r} holds no `dgm train` run (a folder with checkpoints/last.pt or tensorboard/ and .hydra/)."
            )
    return list(found)


def _runs_under(path: Path) -> list[Path]:
    if path.is_file():  # checkpoints/last.pt, checkpoints/eval.json
        path = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    if is_run(path):
        return [path]
    if not path.is_dir():
        return []
    runs = {p.parent.parent for p in path.rglob("checkpoints/last.pt")}
    runs |= {p.parent for p in path.rglob("tensorboard") if is_run(p.parent)}
    return sorted(runs)


#: what a sweep folder holds: Hydra's basic sweeper writes the first, Optuna's sweeper the second (at its end)
STUDY_FILE = "optimization_results.yaml"
SWEEP_FILES = ("multirun.yaml", STUDY_FILE)


MULTIRUN = re.compile(r"^  mode: MULTIRUN$", re.M)


def sweep_of(run: Path) -> Optional[Path]:
    """The sweep folder (with multirun.yaml, or a finished search's optimization_results.yaml) a run belongs
    to, if any; a job of a search that has not finished (no results file yet) by its .hydra/hydra.yaml."""
    for parent in run.parents[:3]:
        if any((parent / name).is_file() for name in SWEEP_FILES):
            return parent
    hydra_yaml = run / ".hydra" / "hydra.yaml"
    if hydra_yaml.is_file() and MULTIRUN.search(hydra_yaml.read_text(errors="replace")):
        return run.parent
    return None


def _same(override: Optional[str], value: Any) -> bool:
    """Does an override's text (``0.0063``, ``[64]``) give the value a study reports (0.0063, '[64]')?"""
    if override is None:
        return False
    if isinstance(value, str):
        return override.replace(" ", "") == value.replace(" ", "")
    import yaml

    try:
        given = yaml.safe_load(override)
        return given == value or float(given) == float(value)  # float(): YAML 1.1 reads 1e-05 as text
    except (yaml.YAMLError, ValueError, TypeError):
        return False


def best_trials(runs: list["Run"]) -> dict[Path, bool]:
    """For each run of a finished Optuna search: is it the trial the study reports as best (its
    optimization_results.yaml: the best parameters and value)? The run with those parameters whose final
    validation loss is that value (several trials may share parameters). Runs of no study are left out."""
    out: dict[Path, bool] = {}
    by_study: dict[Path, list[Run]] = {}
    for r in runs:
        sweep = sweep_of(r.path)
        if sweep is not None and (sweep / STUDY_FILE).is_file():
            by_study.setdefault(sweep, []).append(r)
    for sweep, members in by_study.items():
        study = _read_yaml(sweep / STUDY_FILE) or {}
        params, value = study.get("best_params") or {}, study.get("best_value")
        matching = [r for r in members if all(_same(r.overrides.get(k), v) for k, v in params.items())]
        scored = [
            (abs(r.final("val/loss") - value), r)
            for r in matching
            if isinstance(value, (int, float)) and r.final("val/loss") is not None
        ]
        best = min(scored, key=lambda sr: sr[0])[1] if scored else (matching[0] if len(matching) == 1 else None)
        out.update({r.path: r is best for r in members})
    return out


def config_value(config: dict, key: str) -> Any:
    """The value of a config key (``optimizer.lr``), or of a group choice (``objective`` -> objective.name)."""
    node: Any = config
    for part in GROUP_NODES.get(key, key).split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    if isinstance(node, dict):
        return node.get("name")
    return node


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """{"optimizer.lr": 0.001, ...}: every leaf of a nested config, lists kept whole."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _read_yaml(path: Path) -> Any:
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False) if path.is_file() else None


@dataclass
class Run:
    path: Path
    config: dict
    overrides: dict[str, str]
    train_step: Optional[int]
    eval: dict = field(default_factory=dict)
    #: the representation the model was trained on, where its checkpoint says (data.representation may be null)
    representation: Optional[str] = None

    @classmethod
    def read(cls, path: Path) -> "Run":
        ckpt = path / "checkpoints" / "last.pt"
        state = None
        if ckpt.is_file():
            try:
                state = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
            except Exception as exc:  # a truncated file: report what else the run has
                log.warning("%s is unreadable (%s); reading the run without it.", ckpt, type(exc).__name__)
        config = state["config"] if state else (_read_yaml(path / ".hydra" / "config.yaml") or {})
        overrides = dict(
            o.lstrip("+").split("=", 1) for o in (_read_yaml(path / ".hydra" / "overrides.yaml") or []) if "=" in o
        )
        report = path / "checkpoints" / "eval.json"
        evaluation = json.loads(report.read_text()) if report.is_file() else {}
        return cls(
            path,
            config,
            overrides,
            int(state["step"]) if state else None,
            evaluation,
            state.get("representation") if state else None,
        )

    # --- TensorBoard --------------------------------------------------------------------------
    @cached_property
    def scalars(self) -> dict[str, list[tuple[int, float, float]]]:
        """tag -> [(step, wall time, value)] from the run's event files."""
        from tensorboard.backend.event_processing import event_accumulator as ea

        folder = self.path / "tensorboard"
        if not folder.is_dir():
            return {}
        acc = ea.EventAccumulator(
            str(folder), size_guidance={ea.SCALARS: 0, ea.IMAGES: 1, ea.TENSORS: 1, ea.HISTOGRAMS: 1}
        )
        acc.Reload()
        return {tag: [(e.step, e.wall_time, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}

    @cached_property
    def segments(self) -> list[tuple[float, float]]:
        """(first, last) wall time of each event file: one per uninterrupted stretch of training (a
        resumed run starts a new file), so that the time between a kill and a resume is not counted."""
        from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

        spans = []
        for f in sorted((self.path / "tensorboard").rglob("events.out.tfevents.*")):
            times = [e.wall_time for e in EventFileLoader(str(f)).Load()]
            if times:
                spans.append((min(times), max(times)))
        return sorted(spans)

    def training_seconds(self, wall_time: Optional[float] = None) -> Optional[float]:
        """Seconds of training up to ``wall_time`` (default: the end), summed over the segments."""
        if not self.segments:
            return None
        total = 0.0
        for start, end in self.segments:
            if wall_time is not None and wall_time < start:
                break
            total += (min(end, wall_time) if wall_time is not None else end) - start
        return total

    def final(self, tag: str) -> Optional[float]:
        values = self.scalars.get(tag)
        return values[-1][2] if values else None

    # --- the rest ----------------------------------------------------------------------------
    @property
    def device(self) -> Optional[str]:
        """The training device, as the run's log names it (else the configured one)."""
        logfile = self.path / "train.log"
        if logfile.is_file():
            match = DEVICE_LINE.search(logfile.read_text(errors="replace"))
            if match:
                return match.group(1)
        return config_value(self.config, "trainer.device")

    def num_parameters(self, data_cache: dict) -> Optional[int]:
        """From eval.json, else by building the model from its config (the data is read for its shape)."""
        if "num_parameters" in self.eval:
            return int(self.eval["num_parameters"])
        if not self.config.get("model"):
            return None
        from ..data import pipeline  # (its readers: `dgm report` starts without them)

        cfg = OmegaConf.create(self.config)
        try:
            key = json.dumps(OmegaConf.to_container(cfg.data, resolve=True), sort_keys=True)
            if key not in data_cache:
                data_cache[key] = pipeline.load(cfg.data)
            dataset = data_cache[key]
            rep = self.representation or pipeline.resolve_representation(cfg.data, cfg.model, dataset)
            model = build_model(cfg.model, cfg.objective, pipeline.spec(dataset, rep, cfg.data.name))
        except (UserError, OmegaConfBaseException) as exc:  # no data here, a config of an older dgm: no count
            log.warning("no parameter count for %s: %s", self.path, exc)
            return None
        return sum(p.numel() for p in model.parameters())


def swept_keys(runs: list[Run]) -> list[str]:
    """Override keys whose values differ between the jobs of one sweep, in the order first seen."""
    keys: dict[str, None] = {}
    by_sweep: dict[Path, list[Run]] = {}
    for r in runs:
        sweep = sweep_of(r.path)
        if sweep is not None:
            by_sweep.setdefault(sweep, []).append(r)
    for members in by_sweep.values():
        for r in members:
            for k in r.overrides:
                if len({m.overrides.get(k) for m in members}) > 1:
                    keys[k] = None
    return list(keys)
