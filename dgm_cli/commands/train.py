"""`dgm train`: compose the config, build data and model, run the engine."""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Optional

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from ..app import command
from ..data.representations import eight_bit_names
from ..errors import UserError
from ..settings.validate import validate_train

log = logging.getLogger("dgm.train")
#: the checkpoints (last.pt) of the runs this process finished, in order: `dgm_cli.train` returns them
FINISHED: list[Path] = []
#: what a resumed run may change: how long and where it runs, how often it logs
#: (and, since the global batch is fixed, how it is split: trainer.accumulate; any number of processes)
RESUMABLE_KEYS = (
    "trainer.max_steps",
    "trainer.max_epochs",
    "trainer.device",
    "trainer.progress",
    "trainer.log_every",
    "trainer.accumulate",
    "data.root",
)


def _resume_config(cfg: DictConfig, state: dict, overrides: list[str]) -> DictConfig:
    """The saved config, with the few overrides given on this command line that a resume may change."""
    saved = OmegaConf.create(state["config"])
    for override in overrides:
        key, _, value = override.partition("=")
        if key == "resume":
            continue
        if key not in RESUMABLE_KEYS:
            raise UserError(
                f"resume= continues a run with its saved config; `{override}` would change it. "
                f"With resume= only these keys may be given: {', '.join(RESUMABLE_KEYS)}."
            )
        OmegaConf.update(saved, key, OmegaConf.select(cfg, key))
    return saved


def with_absolute_data_paths(cfg: DictConfig) -> DictConfig:
    """A copy of ``cfg`` whose ``data.path`` (and a ``data.domain_b`` that names a file or folder) are absolute
    paths, the run's record: a run trained on ``data.path=patches.npz`` is evaluated from any folder. ``cfg``
    itself is left as the user gave it."""
    absolute = {}
    if cfg.data.path:
        absolute["path"] = str(Path(cfg.data.path).expanduser().resolve())
    b = cfg.data.get("domain_b")
    if b and b not in ("mnist", "fashion_mnist", "binarized_mnist", "cifar10") and Path(b).expanduser().exists():
        absolute["domain_b"] = str(Path(b).expanduser().resolve())
    return OmegaConf.merge(cfg, {"data": absolute}) if absolute else cfg


def data_identity(dataset, cfg: DictConfig, representation: str, state, resume: Optional[str]) -> dict:
    """The data's identity (data/identity.py), saved in every checkpoint. A resumed run refuses data whose
    training split is not the one it started on (it would go on training on other data in silence)."""
    from ..data import identity

    ident = identity.identity(dataset, cfg.data, representation)
    saved = (state or {}).get("data")
    if saved and saved["fingerprints"]["train"] != ident["fingerprints"]["train"]:
        raise UserError(
            f"resume={resume}: the data changed since this run started: "
            f"{identity.what_changed(saved, ident, 'train')}. A resumed run goes on with the data it "
            "started on: restore it (or point data.root at it), or start a new run on this data."
        )
    return ident


def run(cfg: DictConfig, run_dir: Path, overrides: list[str] = ()) -> dict:
    """Train as ``cfg`` says into ``run_dir`` (or, with ``cfg.resume``, continue that run in its own
    folder, where ``overrides`` are the command line's, checked against what a resume may change).
    ``cfg`` is the user's config: what the run works out (the run it resumes, the representation it
    gets) is kept in variables and the checkpoint, never written into it."""

    from ..data import identity, pipeline
    from ..engine import checkpoint, distributed, faults, loop, runtime
    from ..models.registry import build_model, get_model_class

    distributed.init()
    state, resume = None, cfg.resume
    if not resume and (run_dir / "checkpoints" / "last.pt").exists():
        # the run folder already holds this run's checkpoint: a job requeued after preemption
        # (submitit restarts it in the same folder) continues where it stopped
        resume = str(run_dir)
        overrides = [o for o in overrides if o.partition("=")[0] in RESUMABLE_KEYS]
    if resume:
        state = checkpoint.load(resume)
        cfg = _resume_config(cfg, state, list(overrides))
        run_dir = Path(state["path"]).parent.parent
        log.info("resuming %s at step %d", state["path"], state["step"])
    settings = loop.trainer_settings(cfg)
    device = runtime.pick_device(settings.device, distributed.local_rank() if distributed.active() else None)
    for precision in (settings.precision, settings.val_precision):
        runtime.autocast(device, precision)  # refuses fp16 off CUDA before anything runs
    runtime.seed_everything(cfg.seed)
    if state is None:  # the record holds them resolved: eval, sample and resume find the data from any folder
        cfg = with_absolute_data_paths(cfg)
    dataset = pipeline.load(cfg.data)
    # a resumed run goes on with the representation it started with (the checkpoint's "representation")
    chosen = state is None and not cfg.data.representation  # the model's default, or another for colour images
    representation = (state or {}).get("representation") or pipeline.resolve_representation(
        cfg.data, cfg.model, dataset, get_model_class(cfg.model.name).representations
    )
    spec = pipeline.spec(dataset, representation, cfg.data.name)
    model = build_model(cfg.model, cfg.objective, spec)
    dataset.identity = data_identity(dataset, cfg, representation, state, resume)
    if distributed.is_main():
        log.info(
            "data: %s",
            identity.summary(
                dataset.identity, dataset.source, cfg.data.binarize, cfg.model.representation if chosen else None
            ),
        )
        if (
            representation == "binary"
            and chosen
            and cfg.data.name in identity.USER_DATA
            and not pipeline.is_binary(dataset.train[0])
        ):
            others = [r for r in get_model_class(cfg.model.name).representations if r in eight_bit_names()]
            log.warning(
                "data: these greyscale images are binarized, as %s's default is on MNIST: each pixel becomes "
                "a Bernoulli draw of its intensity. %s",
                cfg.model.name,
                f"To model their grey levels, add data.representation={' or '.join(others)}."
                if others
                else "This model models binary data only; a VAE or PixelCNN models grey levels (8bit).",
            )
    trainer = loop.build(cfg, model, dataset, run_dir, device, resume_state=state, settings=settings)
    last = run_dir / "checkpoints" / "last.pt"
    if state is not None and trainer.step >= trainer.total_steps:
        print(
            f"{state['path']} has finished its {trainer.total_steps} steps: nothing to do. To train on, "
            f"resume with a larger trainer.max_steps or trainer.max_epochs."
        )
        FINISHED.append(last)
        return {}
    main = distributed.is_main()
    lock = faults.run_lock(run_dir) if main else contextlib.nullcontext()
    try:
        with lock, runtime.determinism(settings.deterministic, device):
            final = trainer.fit()
    except faults.StopRequested as stop:
        if main:
            log.warning("%s", stop)
            sys.stderr.write(f"dgm train: {stop}\n")
        faults.pass_on(stop.signame)
        sys.exit(stop.exit_code)
    except faults.NonFiniteLoss as exc:
        log.error("%s", exc)
        sys.stderr.write(f"dgm train: {exc}\n")
        sys.exit(1)
    finally:
        distributed.destroy()
    if main:
        log.info("done: %s", last)
        print(f"checkpoint: {last}")
    FINISHED.append(last)
    return final


#: what a trial of a search reports to the sweeper (hydra/sweeper=optuna): lower is better
OBJECTIVE = "val_loss"


def searching(hydra) -> bool:
    """Does the sweeper optimise on what each job returns (Optuna's), rather than run a grid?"""
    return "optuna" in str(OmegaConf.select(hydra, "sweeper._target_", default="")).lower()


@command("train", validate_train)
def main(cfg: DictConfig):
    hydra = HydraConfig.get()
    search = searching(hydra)
    if search and cfg.data.val_size == 0:
        raise UserError(
            "a search (hydra/sweeper=optuna) minimises each trial's final validation loss, and "
            "data.val_size=0 holds no validation data: leave data.val_size out (a tenth of the training "
            "data, at most 5,000) or give it a number of examples."
        )
    final = run(cfg, Path(hydra.runtime.output_dir), list(hydra.overrides.task))
    # the multirun sweeper can optimise on this: the final validation `loss`, which also picks best.pt
    objective = final.get(OBJECTIVE)
    if search:
        log.info(
            "objective of this trial for the sweeper: %s = %s (the final validation loss; lower is better)",
            OBJECTIVE,
            objective,
        )
    return objective


if __name__ == "__main__":
    main()
