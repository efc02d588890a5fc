"""Model families, one sub-package each; shared layers live in ``nn``."""

import importlib
import pkgutil

_loaded = False


def load_all() -> None:
    """Import every model module so that each registers itself."""
    global _loaded
    if _loaded:
        return
    for info in pkgutil.walk_packages(__path__, prefix=__name__ + "."):
        importlib.import_module(info.name)
    _loaded = True
