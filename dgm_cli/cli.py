"""`dgm <command> [hydra overrides]`: dispatches to one Hydra app per command.

Each command is a Hydra app with its own primary config, so `--help`, `--cfg job`,
`-m` and shell completion work per command. Mistakes a user can fix exit with
status 2 and a one-paragraph message, without a traceback: Hydra's own
composition errors (an unknown config choice, an unknown key, a wrong type) as
well as ours (:class:`dgm_cli.errors.UserError`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import signal
import sys
import threading
import time

from .commands import COMMANDS
from .errors import UserError
from .version import __version__

# settings.docs and settings.schema (and with them Hydra, about 0.1 s) are imported inside the functions
# that use them, so that `dgm --help` and `dgm --version` start without them

USAGE = (
    "usage: dgm {train,sample,eval,report} [overrides ...] [--help] [-m]\n\ncommands:\n"
    + "".join(f"  {name:<8}{doc}\n" for name, (_, doc) in COMMANDS.items())
    + "\n`dgm <command> --help` lists the config groups and keys of that command; `dgm --version` the version.\n"
)

#: calls of main() in this process: the second and later calls name their run folders
#: ``<time>-<pid>-<call>`` (a fresh process would have had a pid of its own)
_calls = 0

NOISE = (
    "Config search path",
    "provider=",
    "Set the environment variable HYDRA_FULL_ERROR",
    "reference_type=",
    "object_type=",
)


class _HeldStderr(io.StringIO):
    """Holds what Hydra writes to stderr before the job starts, so that a composition error
    can be reworded into one paragraph; passes everything through to ``real`` once the job runs."""

    def __init__(self, real, job_started) -> None:
        super().__init__()
        self.real = real
        self.job_started = job_started  # () -> whether the command's job runs (app.job_started)

    def write(self, text: str) -> int:
        if self.job_started():
            return self.real.write(text)
        return super().write(text)

    def flush(self) -> None:
        self.real.flush()

    def isatty(self) -> bool:  # so tqdm still shows its bar on a terminal
        return self.real.isatty()


def _optimizer_keys(args: tuple[str, ...]) -> str:
    """The keys of the optimizer config the command line picks: its YAML's (the arguments of its
    ``_target_`` class)."""
    from pathlib import Path

    import yaml

    configs = Path(__file__).parent / "configs"
    name = next((a.split("=", 1)[1] for a in args if a.startswith("optimizer=")), None)
    if name is None:  # the model's own default (WGAN: rmsprop), else train.yaml's
        model = next((a.split("=", 1)[1] for a in args if a.startswith("model=")), "vae")
        model_yaml = configs / "model" / f"{model}.yaml"
        defaults = (yaml.safe_load(model_yaml.read_text()) or {}).get("defaults", []) if model_yaml.is_file() else []
        name = next((v for d in defaults if isinstance(d, dict) for k, v in d.items() if "optimizer" in k), "adam")
    path = configs / "optimizer" / f"{name}.yaml"
    if not path.is_file():
        return ""
    keys = yaml.safe_load(path.read_text())
    return (
        f" The keys of optimizer={name} are: {', '.join(keys)} (the arguments of {keys.get('_target_')}; "
        f"another optimizer is another file in configs/optimizer/)."
    )


def _schema_keys(full_key: str, args: tuple[str, ...] = ()) -> str:
    from dataclasses import fields

    from .settings import schema

    section = full_key.split(".")[0]
    if section == "optimizer":
        return _optimizer_keys(args)
    cls = {"trainer": schema.TrainerConfig, "data": schema.DataConfig, "scheduler": schema.SchedulerConfig}.get(section)
    return f" The keys of {section} are: {', '.join(f.name for f in fields(cls))}." if cls else ""


def condense(command: str, text: str, args: tuple[str, ...] = ()) -> str:
    """Hydra's composition error -> one paragraph naming the key and what is allowed (``args``: the
    command line, whose model= narrows the suggestions for a mistyped model key)."""
    if "Traceback (most recent call last)" in text:  # Hydra failed on the file system (an unwritable run dir)
        last = [ln for ln in text.splitlines() if re.match(r"^\w+(Error|Exception): ", ln)]
        return (
            f"dgm {command}: Hydra stopped before the command ran: {last[-1] if last else text.strip()}. "
            f"Check hydra.run.dir / hydra.sweep.dir, or run where the folder can be written."
        )
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith(NOISE)]
    full_key = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("full_key:")), "")
    lines = [ln for ln in lines if not ln.startswith("full_key:")]
    out, options = [], []
    for ln in lines:
        if ln.startswith("Available options in"):
            out.append(ln.rstrip(":") + ":")
        elif out and out[-1].endswith(":") and " " not in ln:
            options.append(ln)
        else:
            out.append(ln)
    # Hydra's advice to append the key with + would only make dgm ignore it: say which keys exist instead
    msg = re.sub(r" ?To append to your config use \+\S+", "", " ".join(out))
    from .settings import docs

    if options:
        msg += " " + ", ".join(options) + "."
        missing = re.search(r"Could not find '[\w/]+/([^'/]+)'", msg)
        if missing:  # a mistyped choice of a group (model=vea): the closest choices, as for keys
            msg += docs.suggest(missing.group(1), options)
    if full_key:
        msg += f" (key: {full_key})." + _schema_keys(full_key, args)
    unknown = re.search(r"Could not override '([^']+)'", msg)
    if unknown and command in docs.SCHEMAS:
        model = next((a.split("=", 1)[1] for a in args if a.startswith("model=")), None)
        msg += docs.suggest(unknown.group(1), docs.known_keys(command, model=model))
    return f"dgm {command}: {msg} `dgm {command} --help` lists the config groups and keys."


def refuse_added_keys(command: str, args: list[str]) -> None:
    """``+key=value`` (and ``++``) would add a key that no code reads, so the run would go on as if
    it had not been given: refuse it, with the keys it was probably meant to be. ``+hydra.*`` stays
    Hydra's own business."""
    from .settings import docs

    for arg in args:
        if not arg.startswith("+") or "=" not in arg:
            continue
        key, plain = arg.lstrip("+").split("=", 1)[0].split("@")[0], arg.lstrip("+")
        if key.startswith(("hydra.", "hydra/")):
            continue
        groups = docs.TRAIN_GROUPS if command == "train" else ()
        keys = docs.known_keys(command)
        if key in keys or key in groups:
            msg = f"`{arg}` would add {key}, but the config has it already: set it without the +, as `{plain}`."
        else:
            msg = (
                f"`{arg}` adds a key that nothing reads: dgm {command} has no key {key}, and dgm refuses new "
                f"keys rather than run as if they had not been given."
                + docs.suggest(key, [*keys, *groups])
                + f" `dgm {command} --help` lists the keys."
            )
        sys.stderr.write(f"dgm {command}: {msg}\n")
        sys.exit(2)


#: what `dgm eval` may say about data: where the run's data is now, or other data to score on purpose
EVAL_DATA_KEYS = ("dataset", "data.name", "data.path")


def refuse_training_choices(command: str, args: list[str]) -> None:
    """``dgm sample``/``dgm eval`` given ``model=``, ``dataset=`` or a training key (``trainer.*``,
    ``optimizer.*``, ...): the checkpoint decides those, so say so instead of Hydra's advice to append
    the group, which dgm would then refuse."""
    from .settings import docs

    sections = (*docs.TRAIN_GROUPS, "data", "trainer")
    for arg in args:
        key = arg.lstrip("+").split("=", 1)[0]
        if "=" not in arg or key.split(".")[0].split("/")[0] not in sections:
            continue
        if key in EVAL_DATA_KEYS and (command == "eval" or key == "data.path"):  # moved data, or other data on purpose
            continue
        instead = (
            f"For another {key}, give a checkpoint of a run trained with it (`dgm train {arg} ...`)"
            if key in docs.TRAIN_GROUPS
            else "Training settings change with `dgm train` (`resume=<run>` goes on with this run)"
        )
        sys.stderr.write(
            f"dgm {command}: `{arg}` would change how the run was trained, and dgm {command} takes the model, its data "
            f"and its training settings from checkpoint=. {instead}; for data that moved, "
            + (
                "data.path= (a folder or file of your own) or data_root= says where the run's data is now, and "
                "dataset=<name> [data.path=...] scores the model on other data on purpose"
                if command == "eval"
                else "data.path= (a folder or file of your own) or data_root= says where the run's data is now"
            )
            + f". `dgm {command} --help` lists the keys.\n"
        )
        sys.exit(2)


def shell_completion(argv: list[str]) -> None:
    """`eval "$(dgm -sc install=bash)"` installs completion for `dgm`; the shell then asks
    `dgm -sc query=bash` with COMP_LINE set, which completes the command name or hands the rest of
    the line to that command's Hydra app (its groups, options and keys)."""
    import importlib
    import os

    request = argv[1] if len(argv) > 1 else "install=bash"
    if not request.startswith("query="):
        sys.argv = ["dgm", "-sc", request]
        importlib.import_module(COMMANDS["train"][0]).main()
        return
    parts = os.environ.get("COMP_LINE", "").split(" ")
    if len(parts) <= 2:
        prefix = parts[1] if len(parts) == 2 else ""
        print(" ".join(c for c in COMMANDS if c.startswith(prefix)))
        return
    if parts[1] not in COMMANDS:
        return
    os.environ["COMP_LINE"] = " ".join(["dgm", *parts[2:]])
    sys.argv = ["dgm", "-sc", request]
    if parts[1] == "train":
        importlib.import_module(COMMANDS["train"][0]).main()
        return
    # the config groups (model=, dataset=, ...) share the search path of every command but are dgm
    # train's alone: leave them out of the other commands' completions
    from contextlib import redirect_stdout

    from .settings.docs import TRAIN_GROUPS

    with redirect_stdout(io.StringIO()) as out:
        importlib.import_module(COMMANDS[parts[1]][0]).main()
    print(" ".join(w for w in out.getvalue().split() if w.split("=")[0].split("/")[0] not in TRAIN_GROUPS))


def _torchrun_overrides(command: str, args: list[str]) -> list[str]:
    """Under torchrun (one process per GPU), the ranks agree on one run folder before Hydra runs."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return []
    if any(a in ("-m", "--multirun") for a in args):
        sys.stderr.write(
            f"dgm {command}: -m (a sweep) cannot run inside torchrun: each sweep job would start "
            "its own processes. Sweep with a launcher instead (hydra/launcher=submitit_slurm with "
            "hydra.launcher.tasks_per_node=<GPUs>), or run torchrun once per setting.\n"
        )
        sys.exit(2)
    from .engine.distributed import agree_on_run

    return agree_on_run()


def _quote(value: str) -> str:
    """A value for a Hydra override, quoted so that commas, spaces and '=' in a path stay in it."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


PATH_KEYS = ("checkpoint", "resume", "out", "data.path", "data.root", "data_root")


def quote_paths(args: list[str]) -> list[str]:
    """Quote a path value that names an existing file or folder when Hydra would misread it: sweep
    folders are named ``<job>_<overrides>`` and hold '=', ',' and '[' (``checkpoint=<such a run>``
    works as typed). Values that are not existing paths (a sweep list ``a,b``) are left alone."""
    import os

    out = []
    for a in args:
        key, sep, value = a.partition("=")
        if (
            sep
            and key in PATH_KEYS
            and value
            and value[0] not in "'\""
            and any(c in value for c in "=,[]{}() '\"")
            and os.path.exists(os.path.expanduser(value))
        ):
            a = f"{key}={_quote(value)}"
        out.append(a)
    return out


def _resume_folder(command: str, args: list[str]) -> list[str]:
    """`dgm train resume=<run>` logs into that run's folder (its train.log goes on where it stopped),
    not into a new one, and leaves the run's .hydra/ (the config it was trained with) as it is."""
    value = next((a.split("=", 1)[1] for a in args if a.startswith("resume=")), "")
    if (
        command != "train"
        or not value
        or any(a in ("-m", "--multirun") or a.startswith("hydra.run.dir=") for a in args)
    ):
        return []
    from .engine.checkpoint import resolve  # (torch: imported only for a resume)

    try:
        run = resolve(value).absolute().parent.parent  # the folder `dgm train` continues (train.run)
    except UserError:
        return []  # `dgm train` refuses it, with the reason
    return [f"hydra.run.dir={_quote(str(run))}", "hydra.output_subdir=null"]


def hydra_overrides(command: str, args: list[str]) -> list[str]:
    """What dgm adds to the command line of each Hydra command: help that lists the command's own keys
    with their meanings, the callback that checks the config before Hydra makes the run folder and
    removes a folder that a refused command leaves holding nothing (app.RunFolder), the run folder of
    a resume, and under torchrun the run folder the processes agree on."""
    added = [
        f"hydra.help.template=${{dgm.help:{command}}}",
        "+hydra.callbacks.dgm_run_folder._target_=dgm_cli.app.RunFolder",
    ]
    added += _torchrun_overrides(command, args)
    keys = {a.split("=", 1)[0] for a in added}
    return added + [a for a in _resume_folder(command, args) if a.split("=", 1)[0] not in keys]


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("dgm")
    except PackageNotFoundError:
        return __version__


def _forget_hydra() -> None:
    """Clear Hydra's process-wide singletons (the initialised app, the running job's config), so
    that the next Hydra app in this process starts as in a fresh one."""
    if "hydra.core.global_hydra" not in sys.modules:
        return
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    GlobalHydra.instance().clear()
    HydraConfig.instance().cfg = None


@contextlib.contextmanager
def _fresh_process():
    """Run one command as if in a process of its own: on the way in, no state of an earlier call
    (this module's run stamp, Hydra's singletons; ``_dispatch`` resets app.py's flags); on the way out,
    the caller's sys.argv, stderr, environment, signal handlers and root-logger handlers back as they
    were (the handlers Hydra opened on the run's log file closed)."""
    global _calls
    argv, stderr, environ = sys.argv, sys.stderr, dict(os.environ)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    signals = {}
    if threading.current_thread() is threading.main_thread():
        signals = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    _forget_hydra()
    _calls += 1
    _stamp_run()
    try:
        yield
    finally:
        _forget_hydra()
        sys.argv, sys.stderr = argv, stderr
        if dict(os.environ) != environ:
            os.environ.clear()
            os.environ.update(environ)
        for sig, handler in signals.items():
            signal.signal(sig, handler)
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)


def _stamp_run() -> None:
    """The start time and id that name this command's run folder (``${dgm.now:}``, ``${dgm.pid:}``),
    fixed once per command and handed to the processes it starts (a launcher's workers resolve the
    same sweep folder); a ``dgm`` started by one that already set them keeps them (torchrun's ranks
    then agree on rank 0's, engine/distributed.agree_on_run)."""
    if "DGM_RUN_TIME" not in os.environ:
        os.environ["DGM_RUN_TIME"] = repr(time.time())
        os.environ["DGM_RUN_PID"] = str(os.getpid()) if _calls == 1 else f"{os.getpid()}-{_calls}"


def _exit_status(code) -> int:
    """``SystemExit.code`` as a process's exit status (a message: printed, status 1)."""
    if code is None or isinstance(code, int):
        return code or 0
    sys.stderr.write(f"{code}\n")
    return 1


def main(argv: list[str] | None = None) -> int:
    """``dgm <argv>`` (default: ``sys.argv[1:]``): run one command and return its exit status
    (0 done, 2 refused with a one-paragraph message, 1 failed). Each call is as independent as a
    fresh process, so a notebook or a test may call it any number of times in one process; the
    console script exits with what it returns."""
    argv = list(sys.argv[1:] if argv is None else argv)
    with _fresh_process(), _one_refusal_per_run() as status:
        try:
            _dispatch(argv)
        except SystemExit as exc:
            status.code = _exit_status(exc.code)
    return status.code


@contextlib.contextmanager
def _one_refusal_per_run():
    """Under torchrun every process composes the same config and refuses the same mistake: the
    first process says it; the others hold what they write to stderr and drop it if they, too,
    exit with status 2 (anything else, a crash of theirs included, is passed on at the end)."""
    import types

    status = types.SimpleNamespace(code=0)
    if int(os.environ.get("RANK", "0")) == 0:
        yield status
        return
    real, held = sys.stderr, io.StringIO()
    sys.stderr = held
    try:
        yield status
    finally:
        sys.stderr = real
        if status.code != 2:
            real.write(held.getvalue())


def _dispatch(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help", "help"):
        sys.stdout.write(USAGE)
        return
    if argv[0] in ("-V", "--version"):
        print(f"dgm {version()}")
        return
    if argv[0] in ("-sc", "--shell-completion"):
        shell_completion(argv)
        return
    command = argv[0]
    if command not in COMMANDS:
        sys.stderr.write(f"dgm: unknown command {command!r}; choose one of: {', '.join(COMMANDS)}.\n")
        sys.exit(2)
    import importlib

    module = importlib.import_module(COMMANDS[command][0])
    from . import app  # imported by the command's module (with Hydra); deferred so `dgm --help` starts without it
    from .settings.docs import SCHEMAS

    app.reset()

    if command in SCHEMAS:  # a Hydra app
        if command in ("sample", "eval"):
            refuse_training_choices(command, argv[1:])
        refuse_added_keys(command, argv[1:])
        # dgm's overrides join the user's (Hydra parses overrides as one run of positionals, and flags
        # such as --cfg or --package may come before or after them)
        args = quote_paths(argv[1:])
        at = next((i for i, a in enumerate(args) if "=" in a and not a.startswith("-")), len(args))
        sys.argv = [f"dgm {command}"] + args[:at] + hydra_overrides(command, argv[1:]) + args[at:]
    else:
        sys.argv = [f"dgm {command}"] + argv[1:]
    real_stderr = sys.stderr
    held = _HeldStderr(real_stderr, lambda: app.job_started)
    sys.stderr = held
    try:
        module.main()
    except SystemExit as exc:
        if exc.code == 1 and not app.job_started:
            text = held.getvalue()
            held.seek(0)
            held.truncate(0)
            real_stderr.write(condense(command, text, tuple(argv[1:])) + "\n")
            sys.exit(2)
        if exc.code == 2 and any(a in ("-m", "--multirun") for a in argv):  # a refused job stopped the sweep
            app.remove_unused_jobs(f"{command}.log")
        raise
    finally:
        sys.stderr = real_stderr
        real_stderr.write(held.getvalue())  # warnings Hydra printed before a job that then ran


if __name__ == "__main__":
    sys.exit(main())
