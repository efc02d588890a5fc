"""Name -> model class. Every model module registers itself with ``@register``;
``dgm_cli.models`` imports every family package so the registry is complete."""
from __future__ import annotations

from typing import Type

from ..errors import UserError
from . import load_all

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
    load_all()
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}.")
    return MODELS[name]


def build_model(model_cfg, objective_cfg, data):
    """Instantiate the model a config names: its keys, minus ``name`` and ``representation``, are
    merged into the model's ``Config`` dataclass, so unknown keys and wrong types are refused; the class
    built is the one the named class says that config builds (``class_for``)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    cls = get_model_class(model_cfg["name"])
    as_dict = lambda c: OmegaConf.to_container(c, resolve=True) if OmegaConf.is_config(c) else dict(c)  # noqa: E731
    keys = {k: v for k, v in as_dict(model_cfg).items() if k not in ("name", "representation")}
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls.Config), keys)
    except OmegaConfBaseException as exc:
        allowed = ", ".join(f"{f}" for f in cls.Config.__dataclass_fields__)
        raise UserError(f"model={model_cfg['name']}: {str(exc).splitlines()[0]} (key model.{getattr(exc, 'full_key', '?')}); "
                        f"the keys of this model are: name, representation, {allowed}.") from None
    config = OmegaConf.to_object(merged)
    return cls.class_for(config)(config, data, as_dict(objective_cfg))
