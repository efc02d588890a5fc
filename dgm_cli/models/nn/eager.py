"""``eager_only``: torch.compiler.disable without its import cost.

The decorator ``torch.compiler.disable`` imports torch._dynamo (seconds on a CPU) when the module
defining the function is imported, so every dgm command that loads the model classes would pay it.
Nothing can be compiling before torch._dynamo is imported; so until then the function runs as it is,
and from then on through torch.compiler.disable, built once.
"""

from __future__ import annotations

import functools
import sys
from typing import Callable

import torch


def eager_only(fn: Callable) -> Callable:
    """``fn`` never traced by torch.compile (a graph break around it; it runs eagerly)."""
    disabled = None

    @functools.wraps(fn)
    def call(*args, **kwargs):
        nonlocal disabled
        if "torch._dynamo" not in sys.modules:
            return fn(*args, **kwargs)
        if disabled is None:
            disabled = torch.compiler.disable(fn)
        return disabled(*args, **kwargs)

    return call
