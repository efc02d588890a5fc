"""The commands behind `dgm train`, `dgm sample`, `dgm eval` and `dgm report`: each composes its Hydra
config (``app.py``), checks it (``settings``) and calls the engine, models and evaluation code.

``COMMANDS`` is the one table of them, read by the dispatcher (``cli.py``) and by each command's
``--help`` (``settings/docs.py``); it names the modules, so reading it imports none of them."""

#: command -> (its module, what it does: `dgm --help` and the first line of `dgm <command> --help`)
COMMANDS = {
    "train": ("dgm_cli.commands.train", "train a model (Hydra overrides: model=vae dataset=mnist ...)"),
    "sample": ("dgm_cli.commands.sample", "write samples from a checkpoint (checkpoint=... num_samples=64)"),
    "eval": ("dgm_cli.commands.evaluate", "test log-likelihood and sample-quality metrics (checkpoint=...)"),
    "report": (
        "dgm_cli.commands.report",
        "one table of runs and sweeps, as text, CSV, Markdown and plots (<run folders>)",
    ),
}
