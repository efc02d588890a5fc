"""dgm: an experiment runner for deep generative models.

From Python: ``dgm_cli.train([...]) -> Run``, ``dgm_cli.load(path) -> Run``, ``dgm_cli.evaluate(...)``,
``dgm_cli.sample(...)`` (dgm_cli/api.py; docs/python_api.md). They are imported on first use, so the
command line starts without them."""

from .version import __version__  # noqa: F401

_API = ("load", "train", "evaluate", "sample", "Run", "LogLikelihood", "CommandFailed")


def __getattr__(name: str):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'dgm_cli' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_API])
