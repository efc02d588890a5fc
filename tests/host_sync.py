"""``no_host_reads()``: a context in which reading a tensor's value on the host (``bool``, ``int``,
``float``, ``.item()``, ``.tolist()``) raises. On a GPU each such read waits for the device; on a CPU
this shows where a step would wait, without a GPU. (Reads inside torch's C++ kernels are not seen.)"""

from __future__ import annotations

import contextlib

import torch

READS = ("__bool__", "__int__", "__float__", "__index__", "item", "tolist")


class HostRead(AssertionError):
    pass


@contextlib.contextmanager
def no_host_reads(allow: tuple[str, ...] = ()):
    """``allow``: reads left alone (e.g. ``tolist`` where code reads random numbers it drew on the CPU)."""
    guarded = [name for name in READS if name not in allow]
    saved = {name: torch.Tensor.__dict__.get(name) for name in guarded}

    def refuse(name):
        def read(self, *args, **kwargs):
            raise HostRead(f"Tensor.{name} read a value on the host (shape {tuple(self.shape)})")

        return read

    for name in guarded:
        setattr(torch.Tensor, name, refuse(name))
    try:
        yield
    finally:
        for name, method in saved.items():
            if method is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, method)
