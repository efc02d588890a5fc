"""The package's version where no installed metadata says it (a checkout on ``sys.path``); pyproject.toml's
``version`` is the one that ships. A module of its own, so ``cli.py`` reads it without importing the
package's Python API (``dgm_cli/__init__.py`` loads ``api.py`` on demand, and ``api.py`` imports ``cli.py``)."""

__version__ = "0.1.0"
