"""Name -> model class. Every model module registers itself with ``@register``;
``dgm_cli.models`` imports every family package so the registry is complete."""
from __future__ import annotations

from typing import Type

from ..errors import UserError

MODELS: dict[str, type] = {}


def register(name: str):
    def wrap(cls: Type) -> Type:
        if name in MODELS:
            raise RuntimeError(f"model name {name!r} registered twice")
        MODELS[name] = cls
        cls.name = name
        return cls

    return wrap


def get_model_class(name: str):
    from . import load_all

    load_all()
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}.")
    return MODELS[name]
