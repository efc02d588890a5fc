"""Name -> model class. Every model module registers itself with ``@register``;
``dgm_cli.models`` imports every family package so the registry is complete."""

from __future__ import annotations

from typing import Type

from ..errors import UserError
from ..rules import check_declared
from . import load_all
from .objectives import Objective, typed

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


def model_config(model_cfg) -> tuple[type, object]:
    """(the class a config builds, its ``Config`` instance): the config's keys, minus ``name`` and
    ``representation``, merged into the named model's ``Config`` dataclass, so unknown keys and wrong types
    are refused; the class is the one the named class says that config builds (``class_for``)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    cls = get_model_class(model_cfg["name"])
    as_dict = OmegaConf.to_container(model_cfg, resolve=True) if OmegaConf.is_config(model_cfg) else dict(model_cfg)
    keys = {k: v for k, v in as_dict.items() if k not in ("name", "representation")}
    try:
        config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls.Config), keys))
    except OmegaConfBaseException as exc:
        allowed = ", ".join(f"{f}" for f in cls.Config.__dataclass_fields__)
        raise UserError(
            f"model={model_cfg['name']}: {str(exc).splitlines()[0]} (key model.{getattr(exc, 'full_key', '?')}); "
            f"the keys of this model are: name, representation, {allowed}."
        ) from None
    return cls.class_for(config), config


def check_model(model_cfg, objective_cfg, data=None) -> tuple[type, object, Objective]:
    """Refuse the model's or the objective's settings before anything is built: each field's declared rule
    (``checked``), then the model's ``check_settings`` (across fields, against the objective and, when ``data``
    is given, against the data). Returns (class, Config instance, typed objective)."""
    cls, config = model_config(model_cfg)
    objective = typed(objective_cfg)
    check_declared({"model": config}, "model", type(config))
    cls.check_settings(config, objective, data)
    return cls, config, objective


def build_model(model_cfg, objective_cfg, data):
    """Instantiate the model a config names, after ``check_model``'s checks against ``data``."""
    cls, config, objective = check_model(model_cfg, objective_cfg, data)
    return cls(config, data, objective)
