"""One-way flags a training step gates on (persistent chains started, pretrained layers composed, a
reference set or an image pool full), read from the device only until they are set.

On a GPU every read of a tensor's value on the host (``bool(t)``, ``int(t)``) waits for the device, and
``training_loss`` runs every step. A flag that is set once and never cleared needs reading only until it
is: ``known_set`` remembers the answer on the tensor itself, ``set_known`` sets a flag and remembers it
(or marks a counter as at its end, which ``marked`` tells without a read), and ``forget_known``, a
``load_state_dict`` post-hook, makes loaded flags be read again.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def known_set(flag: Tensor) -> bool:
    """Whether the one-way flag ``flag`` is set: read from the device until it is, then remembered."""
    if getattr(flag, "_known_set", False):
        return True
    if bool(flag):
        flag._known_set = True
        return True
    return False


def marked(counter: Tensor) -> bool:
    """Whether ``set_known(counter, value=None)`` marked a counter as at its end (never reads the device)."""
    return getattr(counter, "_known_set", False)


def set_known(flag: Tensor, value: Optional[bool] = True) -> None:
    """Mark ``flag`` as set (filling it with ``value`` first, unless None: a counter that reached its end)."""
    if value is not None:
        flag.fill_(value)
    flag._known_set = True


def forget_known(module: torch.nn.Module, incompatible_keys=None) -> None:
    """A load_state_dict post-hook: the loaded flags are read again."""
    for buffer in module.buffers():
        if hasattr(buffer, "_known_set"):
            del buffer._known_set
