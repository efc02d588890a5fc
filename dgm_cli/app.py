"""What the three commands share: their Hydra entry point, error handling, and rebuilding a
model from a checkpoint."""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Callable, Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from .errors import UserError
from .models.registry import build_model
from .settings import docs
from .settings.schema import register_configs

CONFIG_PATH = "pkg://dgm_cli.configs"
log = logging.getLogger("dgm")


#: each command's check of its config (``validate_<command>``), run before Hydra makes a folder
VALIDATORS: dict[str, Callable[[DictConfig], None]] = {}
#: folders this process's Hydra makes for its run or sweep: the outermost one that did not exist before
NEW_FOLDERS: list[Path] = []
#: what Hydra itself writes into a run folder before the command runs (besides ``<command>.log``)
HYDRA_FILES = (".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml")
#: set once Hydra has composed the command's config and its job runs: a SystemExit(1) from Hydra before
#: that is a composition error (user input), which cli.py rewords into one paragraph
job_started = False
#: set once RunFolder has checked a single run's config, before its folder existed: the job does not check
#: it again (the jobs of a sweep, which Hydra composes one by one, are checked each in its job)
run_checked = False


def reset() -> None:
    """Forget an earlier command of this process (``cli.main`` runs each call as in a fresh process)."""
    global job_started, run_checked
    job_started = run_checked = False
    NEW_FOLDERS.clear()


def check(command: str, cfg: DictConfig) -> None:
    """Refuse a config that lacks a mandatory key or has a value the command cannot use."""
    task = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    missing = sorted(OmegaConf.missing_keys(task))
    if missing:
        meaning = docs.known_keys(command)
        raise UserError(
            "; ".join(f"{k}= must be given: {meaning.get(k) or 'it has no default'}" for k in missing)
            + f". `dgm {command} --help` lists the keys."
        )
    VALIDATORS.get(command, lambda cfg: None)(cfg)


def refuse(command: str, exc: UserError) -> None:
    sys.stderr.write(f"dgm {command}: {exc}\n")
    sys.exit(2)


def _outermost_new(folder: str) -> Optional[Path]:
    """The outermost of ``folder`` and its parents that does not exist yet (None: it exists)."""
    path, new = Path(folder).absolute(), None
    while not path.exists():
        path, new = path.parent, path
    return new


class RunFolder(Callback):
    """Runs before Hydra makes the run (or sweep) folder: notes which folders will be new, so that a
    command that is refused, or writes nothing there, can remove what Hydra made for it and nothing
    else; and checks a single run's config, so that a bad value is refused before any folder exists."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        global run_checked
        self._note(config, "hydra.run.dir")
        try:
            check(config.hydra.job.name, config)
        except UserError as exc:
            refuse(config.hydra.job.name, exc)
        run_checked = True

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self._note(config, "hydra.sweep.dir")

    @staticmethod
    def _note(config: DictConfig, key: str) -> None:
        try:
            new = _outermost_new(OmegaConf.select(config, key))
        except Exception:  # a folder name that does not resolve yet: Hydra says why, later
            return
        if new is not None:
            NEW_FOLDERS.append(new)


def remove_if_unused(run_dir: Path, log_name: str) -> None:
    """Remove ``run_dir`` if Hydra made it for this command (it did not exist when the command
    started) and it holds nothing but Hydra's own files (.hydra/, the log); then each parent Hydra
    made that is left empty (a sweep's, holding only multirun.yaml). A folder that existed before, or
    that holds anything else, is left as it is."""
    run_dir = Path(run_dir).absolute()
    top = next((t for t in NEW_FOLDERS if t == run_dir or t in run_dir.parents), None)
    if top is None:
        return
    ours = {*HYDRA_FILES, log_name}
    try:
        files = [p for p in run_dir.rglob("*") if not p.is_dir()]
        if any(p.relative_to(run_dir).as_posix() not in ours for p in files):
            return
        for p in files:
            p.unlink()
        (run_dir / ".hydra").exists() and (run_dir / ".hydra").rmdir()
        folder = run_dir
        while folder == top or top in folder.parents:
            if [p.name for p in folder.iterdir()] == ["multirun.yaml"]:
                (folder / "multirun.yaml").unlink()
            folder.rmdir()  # only if empty: stops at the first folder that holds something
            folder = folder.parent
    except OSError:
        pass


def remove_unused_jobs(log_name: str) -> None:
    """After a sweep stopped on a refused job: every job folder under the sweep folders this process
    made that holds nothing but Hydra's files, then each sweep folder left with nothing else (a
    launcher's jobs run in other processes, which cannot know which folders are new)."""
    for top in NEW_FOLDERS:
        for hydra_dir in sorted(top.rglob(".hydra")) if top.is_dir() else []:
            remove_if_unused(hydra_dir.parent, log_name)


def command(config_name: str, validate: Callable[[DictConfig], None]):
    """Turn ``fn(cfg)`` into the Hydra app of ``dgm <config_name>``. A UserError raised by the
    check or the command is printed as one paragraph, with exit status 2 and no traceback; a folder
    Hydra made for a command that was refused or wrote nothing into it is removed."""
    register_configs()
    if not OmegaConf.has_resolver("dgm.help"):
        OmegaConf.register_new_resolver("dgm.help", lambda name, _root_: docs.help_text(name, _root_))
    VALIDATORS[config_name] = validate

    def decorate(fn: Callable[[DictConfig], object]):
        @hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=config_name)
        @functools.wraps(fn)
        def main(cfg: DictConfig):
            global job_started
            job_started = True
            run_dir = Path(HydraConfig.get().runtime.output_dir)
            log_name = f"{HydraConfig.get().job.name}.log"
            try:
                if not run_checked:  # a sweep's job, or a run started without dgm's callback
                    check(config_name, cfg)
                result = fn(cfg)
            except UserError as exc:
                remove_if_unused(run_dir, log_name)
                refuse(config_name, exc)
            except BrokenPipeError:  # whoever read the output has gone (dgm eval ... | head): nothing to say
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
                sys.exit(141)
            except KeyboardInterrupt:  # Ctrl-C outside a training step (dgm train's own: engine/faults.py)
                remove_if_unused(run_dir, log_name)
                sys.stderr.write(f"dgm {config_name}: interrupted (Ctrl-C); nothing more was written.\n")
                sys.exit(128 + signal.SIGINT)
            remove_if_unused(run_dir, log_name)
            return result

        return main

    return decorate


def repoint_data(data, path: Optional[str], other: str = "") -> None:
    """A run's saved data config (``data``, changed in place) pointed at ``path``, where the run's own
    folder or file is now if it moved (``data.path=``); a moved one not given is refused by name, with
    the key that points the run at it. ``other``: how the command scores other data, for the message."""
    if path:
        if not data.get("path"):
            raise UserError(
                f"data.path={path}: this run trained on dataset={data['name']}, which is not read from a "
                f"folder or file of your own; data_root= says where its files are now{other}."
            )
        data["path"] = str(Path(path).expanduser().resolve())
    elif data.get("path") and not Path(data["path"]).exists():
        raise UserError(
            f"the data this run trained on, data.path={data['path']}, is not there any more. If it moved, "
            f"point the run at its new place with data.path=<new place> (accepted when its contents are the "
            f"data the run was trained and split on){other}."
        )


def model_from_checkpoint(state: dict, device, data_root: str | None = None, dataset=None):
    """(model in eval mode on ``device``, saved config, dataset) from a loaded checkpoint; ``dataset``:
    the run's data when it is already loaded (else it is read as the run's config says)."""
    from .data import pipeline  # (torch: `dgm <command> --help` starts without it)

    cfg = OmegaConf.create(state["config"])
    if data_root is not None:
        cfg.data.root = data_root
    dataset = pipeline.load(cfg.data) if dataset is None else dataset
    # the representation the model was trained on: the checkpoint says (before it did, the saved config held it)
    representation = state.get("representation") or pipeline.resolve_representation(cfg.data, cfg.model, dataset)
    spec = pipeline.spec(dataset, representation, cfg.data.name)
    model = build_model(cfg.model, cfg.objective, spec)
    model.load_state_dict(state["model"])
    if "ema" in state:  # trained with trainer.ema_decay: sample and evaluate the weight average
        from .engine.ema import apply_saved

        apply_saved(model, state["ema"])
    return model.to(device).eval(), cfg, dataset
