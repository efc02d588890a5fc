"""dgm from Python (a notebook, a script): the same code as the commands, in this process.

    import dgm_cli
    run = dgm_cli.train(["model=vae", "dataset=moons", "trainer.max_steps=500"])   # -> Run
    run = dgm_cli.load("outputs/train/<date>/<run>")     # a run folder or a checkpoint file
    x, _ = run.split("test")                               # the test split as `dgm eval` scores it
    ll = run.log_likelihood(x)                             # per example, nats, with its kind
    samples = run.sample(64, temperature=0.7)
    report = run.evaluate(limit=1000, estimator={"k": 500})   # the dict eval.json holds

``train``, ``evaluate`` and ``sample(out=...)`` run ``dgm <command>`` through ``cli.main``, which treats each
call as a fresh process; a refusal raises :class:`~dgm_cli.errors.UserError` with the command's
one-paragraph message, a failure :class:`CommandFailed` (never SystemExit). ``load`` rebuilds the model
as ``dgm sample`` and ``dgm eval`` do (``app.model_from_checkpoint``). See docs/python_api.md.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from .errors import UserError

PathLike = Union[str, Path]


class CommandFailed(RuntimeError):
    """A command that stopped with exit status 1 (a bug, a non-finite loss) or a signal's status; its
    message ends with what the command wrote to stderr last."""


@dataclass(frozen=True)
class LogLikelihood:
    """Per-example log p(x) in nats (float64), the kind of number it is (evaluation/estimators.py:
    exact, a stochastic lower bound, an estimate with its own error, an upper bound on the discrete NLL)
    and the estimator that computed it. ``-nats.mean()`` is what ``dgm eval`` reports as ``nll_nats`` on the
    same examples and settings (for dequantized data it includes -D ln 256, the discrete scale)."""

    nats: Any
    kind: str
    estimator: str

    @property
    def nll_nats(self) -> float:
        return float(-self.nats.mean())


# --- running a command ----------------------------------------------------------------------------
class _Tee(io.TextIOBase):
    """Writes through to ``real`` (the notebook still shows the command's output) and keeps a copy."""

    def __init__(self, real) -> None:
        self.real, self.kept = real, io.StringIO()

    def write(self, text: str) -> int:
        self.kept.write(text)
        return self.real.write(text)

    def flush(self) -> None:
        self.real.flush()

    def isatty(self) -> bool:
        return False  # log lines rather than a bar: a notebook cell is not a terminal


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if v is None:
        return "null"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_value(x) for x in v) + "]"
    return str(v)


def overrides_of(args: tuple = (), kwargs: Optional[dict] = None) -> list[str]:
    """``"key=value"`` strings as given, then keyword arguments as overrides; a dict is a config node
    (``estimator={"k": 500}`` -> ``estimator.k=500``), a list a list (``metrics=["nll", "fid"]``)."""
    out = [str(a) for a in args]

    def add(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                add(f"{prefix}.{k}", v)
        else:
            out.append(f"{prefix}={_value(value)}")

    for key, value in (kwargs or {}).items():
        add(key, value)
    return out


def run_command(argv: list[str]) -> str:
    """``dgm <argv>`` in this process; returns what it printed to stdout. Status 2 raises UserError with
    the command's one paragraph, any other failure CommandFailed."""
    from . import cli

    out, err = _Tee(sys.stdout), _Tee(sys.stderr)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    if code == 0:
        return out.kept.getvalue()
    said = [ln for ln in err.kept.getvalue().splitlines() if ln.strip()]
    if code == 2:
        prefix = f"dgm {argv[0]}: "
        message = next((ln for ln in reversed(said) if ln.startswith(prefix)), said[-1] if said else "")
        raise UserError(message[len(prefix) :] if message.startswith(prefix) else message)
    raise CommandFailed(
        f"dgm {' '.join(argv)} failed with exit status {code}"
        + (f": {said[-1]}" if said else " and said nothing on stderr")
    )


# --- the API ---------------------------------------------------------------------------------------
def train(overrides: list[str] = (), **kwargs) -> Union["Run", list["Run"]]:
    """``dgm train <overrides>`` in this process; the finished run, loaded (a sweep -- ``"-m"`` or a
    ``hparams_search=`` preset among the overrides -- its finished runs, in order).
    ``dgm_cli.train(["model=vae", "dataset=moons"])``, keyword arguments as in :func:`overrides_of`
    (``trainer={"max_steps": 100}``)."""
    from .commands import train as train_command

    argv = overrides_of(tuple(overrides), kwargs)
    sweep = any(
        a in ("-m", "--multirun") or a.startswith("hparams_search=") or a == "hydra.mode=MULTIRUN" for a in argv
    )  # a search preset sets hydra.mode=MULTIRUN itself
    train_command.FINISHED.clear()
    run_command(["train", *argv])
    finished = list(dict.fromkeys(train_command.FINISHED))
    if sweep:
        from . import app

        # a launcher's workers (joblib, submitit) finish their runs in processes of their own
        for top in app.NEW_FOLDERS:
            finished += [p for p in sorted(top.rglob("checkpoints/last.pt")) if p not in finished]
        return [load(p) for p in finished]
    if not finished:
        raise CommandFailed(f"dgm train {' '.join(argv)} finished without a checkpoint")
    return load(finished[-1])


def evaluate(checkpoint: PathLike, *overrides: str, **kwargs) -> Union[dict, list[dict]]:
    """``dgm eval checkpoint=<checkpoint> <overrides>`` in this process: the report of this evaluation,
    the dict its record (and, when it is the most thorough, eval.json) holds; for a folder of runs, one
    per run evaluated. ``evaluate(run_folder, limit=1000, estimator={"k": 500})``."""
    from .engine import checkpoint as checkpoints

    argv = overrides_of(overrides, kwargs)
    if any(a.startswith("out=") for a in argv):
        run_command(["eval", f"checkpoint={checkpoint}", *argv])
        target = Path(next(a for a in argv if a.startswith("out=")).split("=", 1)[1]).expanduser()
        return json.loads(target.read_text())
    paths = checkpoints.resolve_all(str(checkpoint))
    started = time.time()
    run_command(["eval", f"checkpoint={checkpoint}", *argv])
    reports = []
    for path in paths:  # the record each evaluation wrote (or rewrote) just now
        from .commands.evaluate import RECORDS

        written = [p for p in (path.parent / RECORDS).glob("*.json") if p.stat().st_mtime >= started - 1]
        if written:
            reports.append(json.loads(max(written, key=lambda p: p.stat().st_mtime).read_text()))
    return reports[0] if len(paths) == 1 and reports else reports


def sample(checkpoint: PathLike, n: int = 64, temperature: float = 1.0, out: Optional[PathLike] = None, **settings):
    """Samples from a checkpoint: a tensor as the model draws them (``Run.sample``), or with ``out=`` the
    file ``dgm sample`` writes (a picture, .npz, .mid), whose path is returned."""
    if out is None:
        return load(checkpoint).sample(n, temperature=temperature, **settings)
    run_command(
        [
            "sample",
            f"checkpoint={checkpoint}",
            f"num_samples={n}",
            f"temperature={temperature}",
            f"out={out}",
            *overrides_of((), settings),
        ]
    )
    return Path(out)


def load(path: PathLike, device: Optional[str] = None, data_root: Optional[str] = None) -> "Run":
    """A run from its folder (its checkpoints/last.pt) or a checkpoint file (best.pt, ...): the model in
    eval mode on ``device`` (default: a GPU where there is one), with the weight average when the run
    kept one, its config and its data as the run saw them."""
    from .app import model_from_checkpoint
    from .engine import checkpoint, runtime

    dev = runtime.pick_device(device or "auto")
    state = checkpoint.load(str(path))
    model, cfg, dataset = model_from_checkpoint(state, dev, data_root)
    return Run(Path(state["path"]).absolute(), state, model, cfg, dataset, dev, data_root)


class Run:
    """A trained run: ``model`` (eval mode), ``config`` (the resolved config it trained with), ``data`` (its
    splits, ``data.train/val/test`` = (x, labels or None) as stored: uint8 images, float points or NaN-padded
    sequences), ``checkpoint`` and ``folder``, ``step``."""

    def __init__(self, checkpoint: Path, state: dict, model, config, dataset, device, data_root=None) -> None:
        self.checkpoint, self.model, self.config, self.data, self.device = checkpoint, model, config, dataset, device
        self.folder = checkpoint.parent.parent
        self.step = int(state["step"])
        self._state, self._data_root = state, data_root
        self._prepared: dict = {}

    def __repr__(self) -> str:
        return (
            f"Run({str(self.folder)!r}: {self.config.model.name} on {self.config.data.name}, step {self.step}, "
            f"{self.model.data.representation} data, on {self.device})"
        )

    @property
    def representation(self) -> str:
        return self.model.data.representation

    def split(self, name: str = "test", limit: Optional[int] = None):
        """(x, labels or None) of a split as ``dgm eval`` scores it: in the model's representation,
        binarized or dequantized once with dgm's fixed seed (``limit``: its first examples)."""
        from .data import pipeline

        if name not in ("train", "val", "test"):
            raise UserError(f"split {name!r}: choose train, val or test.")
        x, y = getattr(self.data, name)
        if limit:
            x, y = x[:limit], None if y is None else y[:limit]
        return pipeline.fixed(x, self.representation), y

    def sample(
        self, n: int, temperature: float = 1.0, label: Optional[int] = None, seed: Optional[int] = None, **sampler
    ):
        """``n`` samples as the model draws them (images in [0, 1] in its representation, points, sequences),
        with ``dgm sample``'s sampler settings: ``steps=``, ``sampler=``, ``eta=`` (a model without one
        refuses it, as the command does), ``length=`` for sequence models. ``seed``: seed torch first."""
        from omegaconf import OmegaConf

        from .app import model_from_checkpoint
        from .commands import sample as sample_command
        from .engine import runtime

        length = sampler.pop("length", None)
        unknown = sorted(set(sampler) - set(sample_command.SAMPLER_KEYS))
        if unknown:
            raise UserError(
                f"sample() takes no setting {', '.join(unknown)}; its sampler settings are "
                f"{', '.join(sample_command.SAMPLER_KEYS)} and length."
            )
        cfg = OmegaConf.create(
            {"steps": None, "sampler": None, "eta": None, "mode": "sample", "length": length, **sampler}
        )
        model = self.model
        settings = sample_command.sampler_settings(cfg, self._state["config"]["model"])
        if settings:  # the model rebuilt with them, as dgm sample does; this run's model stays as it was
            state = {
                **self._state,
                "config": {**self._state["config"], "model": {**self._state["config"]["model"], **settings}},
            }
            model, _, _ = model_from_checkpoint(state, self.device, self._data_root, dataset=self.data)
        if length is not None:
            before = getattr(model, "length", None)
            sample_command.set_length(model, cfg)
        if seed is not None:
            runtime.seed_everything(seed)
        try:  # as dgm sample calls it (a Langevin sampler takes gradients of its own)
            return model.sample(n, temperature=temperature, label=label)
        finally:
            if length is not None and model is self.model:
                model.length = before

    def log_likelihood(
        self, x, y=None, batch_size: Optional[int] = None, seed: Optional[int] = None, **estimator
    ) -> LogLikelihood:
        """log p(x) per example in nats, computed as ``dgm eval`` computes it, with the kind of number and
        the estimator. ``x`` in the model's representation (``split()``, ``sample()``); ``y`` labels for a
        class-conditional model (its log p(x) sums over them with the training label frequencies);
        ``estimator``: the model's estimator settings (``k=500`` for a VAE; defaults as dgm eval's). A model
        whose estimator needs a pass first (AIS's log Z) runs it once per settings, on the first ``x``.
        ``seed``: seed torch first, as dgm eval does with its ``seed=`` (0): a sampling estimator then gives
        dgm eval's numbers on the same examples."""
        import torch

        from .evaluation import estimators, likelihood

        if self.model.likelihood is None:
            raise UserError(
                f"model {self.config.model.name} has no likelihood; evaluate() reports its sample "
                "quality (FID, KID, precision/recall)."
            )
        settings = estimators.estimator_settings(self.model, estimator)
        x = torch.as_tensor(x)
        prior = None
        if likelihood.is_conditional(self.model):
            if y is None:
                raise UserError(
                    "a class-conditional model's log p(x) sums over the labels and needs y (the labels, "
                    "as split() returns them)."
                )
            prior = likelihood.label_prior(self.data.train[1], self.model.data.num_classes)
        if seed is not None:
            from .engine import runtime

            runtime.seed_everything(seed)
        key = json.dumps(settings, sort_keys=True, default=str)
        if key not in self._prepared:
            self._prepared[key] = self.model.prepare_eval(x, y, **settings)
        batch = batch_size or (100 if self.model.likelihood != "exact" else self.config.trainer.eval_batch_size)
        parts = [
            log_p
            for _, _, log_p, _ in likelihood.score_batches(self.model, x, y, batch, self.device, prior, **settings)
        ]
        offset = likelihood.nll_offset(self.representation, self.model.data.dim)
        return LogLikelihood(
            torch.cat(parts) - offset, estimators.likelihood_kind(self.model), self.model.estimator(**settings)
        )

    def evaluate(self, *overrides: str, **kwargs) -> dict:
        """``dgm eval`` of this run's checkpoint (``limit=1000``, ``split="val"``, ``estimator={"k": 500}``,
        ``metrics=["nll", "fid"]``): the dict eval.json holds for this evaluation, kept as a record beside the
        checkpoint as the command keeps it."""
        if self._data_root is not None and not any(str(a).startswith("data_root=") for a in overrides):
            kwargs.setdefault("data_root", self._data_root)
        return evaluate(self.checkpoint, *overrides, **kwargs)


#: the names ``dgm_cli`` exports (``dgm_cli.load`` ...)
__all__ = ["load", "train", "evaluate", "sample", "Run", "LogLikelihood", "CommandFailed", "UserError"]
