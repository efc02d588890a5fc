"""Dataclass schemas, stored in Hydra's ConfigStore under names that are not
config groups (``train_schema`` etc.), so they type-check every key the YAML and
the command line set but never show up as choices."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from ..data.representations import BINARIZATIONS, REPRESENTATIONS
from ..engine.config import TrainerConfig
from ..engine.schedules import SCHEDULES
from ..models.objectives import OBJECTIVES
from ..rules import POSITIVE, checked, checked_choice


@dataclass
class DataConfig:
    name: str = MISSING  # mnist | fashion_mnist | cifar10 | image_folder | npz | moons | ...
    root: str = "${oc.env:DGM_DATA_ROOT,./data}"  # the folder that holds the datasets (env DGM_DATA_ROOT, else ./data)
    path: Optional[str] = None  # image_folder, midi_folder: a folder; npz, sequences, jsb_chorales, piano_midi,
    #   musedata, nottingham: a file
    representation: Optional[str] = checked_choice(None, REPRESENTATIONS, null=True)  # null: the model's own; {choices}
    binarize: str = checked_choice("dynamic", BINARIZATIONS)  # {choices} (binary representation only)
    val_size: Optional[int] = None  # examples held out of training for validation; null: 10%, at most 5000
    image_size: Optional[int] = None  # image_folder/npz: resize to this size
    channels: Optional[int] = None  # image_folder: 1 (grayscale) or 3 (RGB); null keeps the files'
    steps_per_quarter: int = checked(1, POSITIVE)  # midi_folder: piano-roll time steps per quarter note (1:
    #   quarter-note steps, as bach_chorales; 4: sixteenths)
    domain_b: Optional[str] = None  # unpaired translation (CycleGAN): a second image domain, a dataset name
    #   (fashion_mnist) or an image folder / .npz file, sized like dataset=
    download: bool = True
    on_device: bool = True  # hold the training set on the GPU when it takes at most half its free memory (else pinned
    #   host memory, batches copied without blocking)
    train_size: int = 50000  # 2-D toys: points drawn for training
    test_size: int = 10000  # 2-D toys: points drawn for testing


@dataclass
class OptimizerConfig:
    """The keys every optimizer config has; the rest of configs/optimizer/<name>.yaml are the
    arguments of the class ``_target_`` names (checked against its constructor)."""

    _target_: str = "torch.optim.Adam"  # the optimizer class (Hydra's convention)
    name: str = "adam"  # the config's name: adam | adamw | sgd | rmsprop | ... (ls configs/optimizer)
    lr: float = 1e-3


@dataclass
class SchedulerConfig:
    name: str = checked_choice("cosine", SCHEDULES)  # {choices}
    warmup_steps: int = 0
    min_lr: float = 0.0
    step_size: int = 1000
    gamma: float = 0.5


@dataclass
class TrainConfig:
    model: Any = MISSING
    objective: Any = MISSING
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: Any = MISSING  # configs/optimizer/<name>.yaml: _target_, name, and its constructor's arguments
    scheduler: Optional[SchedulerConfig] = None
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    seed: int = 0
    resume: Optional[str] = None  # a run folder or a checkpoint file to continue


@dataclass
class SampleDataConfig:
    path: Optional[str] = None  # where the run's folder or file of its own is now, if it moved


@dataclass
class SampleConfig:
    checkpoint: str = MISSING  # a .pt file written by dgm train, or its run folder (checkpoints/last.pt)
    num_samples: int = 64  # images to draw (reconstruct/complete/interpolate: data examples to start from)
    mode: str = "sample"  # sample | reconstruct | interpolate | complete (as the model allows)
    out: Optional[str] = None  # a picture (.png, .jpg, .pdf), the raw samples (.npz) or, for music, a .mid file; null:
    #   <mode>.png in a new outputs/sample/<date>/<time>-<pid>/
    data_root: Optional[str] = None  # where the data is, if not where the checkpoint's run found it
    data: SampleDataConfig = field(default_factory=SampleDataConfig)  # data.path=: the run's own data, moved
    temperature: float = 1.0  # scales the std of the noise sampling starts from: 1 as trained, < 1 smoother (Glow)
    steps: Optional[int] = None  # sampler steps (model.sample_steps): DDPM/DDIM denoising steps (fewer: a respaced
    #   chain), flow matching's ODE steps (fixed-step solvers), EBM Langevin steps, RBM/DBN/DBM Gibbs sweeps;
    #   null: the model's
    sampler: Optional[str] = None  # diffusion: ddpm (ancestral) | ddim; flow matching's ODE solver: euler | midpoint |
    #   rk4 | dopri5 (model.sampler); null: the model's
    eta: Optional[float] = None  # DDIM's noise (model.eta): 0 deterministic, 1 ancestral-like; needs sampler=ddim;
    #   null: the model's
    length: Optional[int] = None  # sequence models (piano rolls, paths): time steps per sample; null: the training
    #   data's length
    label: Optional[int] = None  # class to sample from, for class-conditional models
    nrow: Optional[int] = None  # images per grid row; null: a square grid
    split: str = "test"  # data that reconstruct/complete/interpolate start from
    seed: int = 0  # random seed of the samples
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps


@dataclass
class EvalDataConfig:
    name: Optional[str] = None  # score on other data, on purpose (dataset=<name> says the same): a dataset name; its
    #   protocol says so and dgm report keeps it apart from the run's own test split
    path: Optional[str] = None  # where the run's data is now, if it moved (accepted when its fingerprint matches); with
    #   dataset=image_folder|npz: the other data's folder or file


@dataclass
class EvalConfig:
    checkpoint: str = MISSING  # a .pt file written by dgm train, its run folder (checkpoints/last.pt), or a folder of
    #   runs (a sweep: each one is evaluated)
    split: str = "test"  # test | val | train
    metrics: Optional[List[str]] = None  # null: the model's own (nll, or fid,kid,pr,is without a likelihood)
    estimator: Dict[str, Any] = field(default_factory=dict)  # the model's estimator settings: estimator.k=5000 (VAE)
    limit: Optional[int] = None  # evaluate on the first n examples only
    batch_size: int = 0  # examples per batch; 0: 100 for estimated likelihoods, else trainer.eval_batch_size
    num_samples: int = 10000  # generated samples for sample-quality metrics
    features: str = "auto"  # the network FID/KID/PR/IS look through: auto (classifier with labels, else autoencoder) |
    #   classifier (trained on the labels) | autoencoder (no labels needed) | inception (the standard FID network,
    #   weights from $DGM_FID_INCEPTION_WEIGHTS or $DGM_CACHE)
    out: Optional[str] = None  # a .json file for the report; default: a record beside the checkpoint
    #   (checkpoints/evals/), eval.json the most thorough
    data_root: Optional[str] = None  # where the data is, if not where the checkpoint's run found it
    data: EvalDataConfig = field(default_factory=EvalDataConfig)  # the run's own data moved (data.path=), or other data
    #   on purpose (dataset=)
    seed: int = 0  # random seed of the evaluation's samples and estimators
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    progress_every: float = 30.0  # seconds between progress lines (examples scored, time left) when stderr is not a
    #   terminal


@dataclass
class ReportConfig:
    runs: List[str] = field(default_factory=list)  # run folders, sweep folders or globs (or bare: dgm report <paths>)
    out: Optional[str] = None  # folder for report.csv, report.md and the PNGs; default: this report's run folder
    plot: Optional[str] = None  # a column to plot (nll_nats, val/loss, fid, ...) against x
    x: Optional[str] = None  # plot: a config key (optimizer.lr), column or wall_time; curves: step or wall_time
    curves: Optional[str] = None  # a TensorBoard scalar tag (val/loss): every run's learning curve on one axis
    evals: str = "best"  # best: each run's most thorough evaluation (its eval.json); all: a row for every evaluation
    #   kept (checkpoints/evals/)


#: when this process started: the run folder's time where no command stamped one (cli._stamp_run
#: sets DGM_RUN_TIME / DGM_RUN_PID per command; under torchrun, rank 0's: engine/distributed.py)
_STARTED = time.time()


def data_label(name: str, path: Optional[str]) -> str:
    """A run folder's name for its data: the dataset, and for a user's folder or file (image_folder,
    npz, midi_folder, sequences) its name too, so runs on two folders are told apart: midi_folder-songs."""
    if not path:
        return name
    stem = Path(str(path).rstrip("/\\")).name.rsplit(".", 1)[0]
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)[:40]
    return f"{name}-{stem}" if stem else name


def _register_resolvers() -> None:
    if not OmegaConf.has_resolver("dgm.data"):
        OmegaConf.register_new_resolver("dgm.data", data_label)
    if not OmegaConf.has_resolver("dgm.pid"):
        OmegaConf.register_new_resolver("dgm.pid", lambda: os.environ.get("DGM_RUN_PID", str(os.getpid())))
    if not OmegaConf.has_resolver("dgm.now"):
        OmegaConf.register_new_resolver(
            "dgm.now", lambda fmt: time.strftime(fmt, time.localtime(float(os.environ.get("DGM_RUN_TIME", _STARTED))))
        )


def register_configs() -> None:
    _register_resolvers()
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    for name, objective in OBJECTIVES.items():  # objective=<name>: its dataclass is the option (models/objectives.py)
        cs.store(group="objective", name=name, node=objective)
    cs.store(name="sample_schema", node=SampleConfig)
    cs.store(name="eval_schema", node=EvalConfig)
    cs.store(name="report_schema", node=ReportConfig)
