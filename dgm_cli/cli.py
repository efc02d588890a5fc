"""`dgm <command> [hydra overrides]`: dispatches to one Hydra app per command.

Each command is a Hydra app with its own primary config, so `--help`, `--cfg job`,
`-m` and shell completion work per command. Mistakes a user can fix exit with
status 2 and a one-paragraph message, without a traceback: Hydra's own
composition errors (an unknown config choice, an unknown key, a wrong type) as
well as ours (:class:`dgm_cli.errors.UserError`).
"""
from __future__ import annotations

import sys

COMMANDS = {
    "train": ("dgm_cli.train", "train a model (Hydra overrides: model=vae dataset=mnist ...)"),
    "sample": ("dgm_cli.sample", "write samples from a checkpoint (checkpoint=... num_samples=64)"),
    "eval": ("dgm_cli.evaluate", "test log-likelihood and sample-quality metrics (checkpoint=...)"),
}

USAGE = "usage: dgm {train,sample,eval} [overrides ...] [--help] [-m]\n\ncommands:\n" + "".join(
    f"  {name:<8}{doc}\n" for name, (_, doc) in COMMANDS.items()
) + "\n`dgm <command> --help` lists the config groups and keys of that command.\n"

# Set by a command once Hydra has composed its config and the job has started:
# a SystemExit(1) from Hydra before that point is a composition error (user input).
job_started = False


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        sys.stdout.write(USAGE)
        return
    command = argv[0]
    if command not in COMMANDS:
        sys.stderr.write(f"dgm: unknown command {command!r}; choose one of: {', '.join(COMMANDS)}.\n")
        sys.exit(2)
    import importlib

    module = importlib.import_module(COMMANDS[command][0])
    sys.argv = [f"dgm {command}"] + argv[1:]
    try:
        module.main()
    except SystemExit as exc:
        if exc.code == 1 and not job_started:
            sys.stderr.write(f"dgm {command}: the configuration was refused (see above); "
                             f"`dgm {command} --help` lists what is allowed.\n")
            sys.exit(2)
        raise


if __name__ == "__main__":
    main()
