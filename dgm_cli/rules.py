"""Rules on a key's value, declared with the key (``checked`` in a schema dataclass) and applied by
``settings/validate.py`` before anything runs. In the bottom layer, so that a schema below the command
line (engine/config.py's TrainerConfig) declares its rules too; nothing here imports the package above."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable

from omegaconf import DictConfig

from .errors import UserError

DEVICES = ("auto", "cpu", "cuda", "mps")

#: a rule on a key's value: (ok(value), what the value must be), for the message that refuses it
Rule = tuple[Callable[[Any], bool], str]
POSITIVE: Rule = (lambda v: v > 0, "> 0")
NON_NEGATIVE: Rule = (lambda v: v >= 0, ">= 0")
DEVICE: Rule = (lambda v: v in DEVICES or (isinstance(v, str) and v.startswith("cuda:") and v[5:].isdigit()),
                "one of auto, cpu, cuda, cuda:N, mps")
COMPILE: Rule = (lambda v: v is True or v is False or v == "auto", "true, false or auto")


def choice(choices: Iterable[str]) -> Rule:
    choices = tuple(choices)
    return (lambda v: v in choices, "one of " + ", ".join(choices))


def checked(default: Any, rule: Rule) -> Any:
    """A schema field declared with its rule, so a key's type, default, check and meaning (its
    comment) sit on one line; ``check_declared`` applies the rules."""
    return dataclasses.field(default=default, metadata={"rule": rule})


def _get(cfg: DictConfig, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = node[part]
    return node


def checked_choice(default: Any, choices: Iterable[str], null: bool = False) -> Any:
    """A schema field whose value is one of ``choices`` (or null, with ``null``), a table's names: its
    comment's ``{choices}`` reads "a | b | c" in `--help` (docs.field_comments), so the names live only in
    the table."""
    choices = tuple(choices)
    ok, allowed = choice(choices)
    rule: Rule = ((lambda v: v is None or ok(v)), f"null or {allowed}") if null else (ok, allowed)
    return dataclasses.field(default=default, metadata={"rule": rule, "choices": choices})


def check(cfg: DictConfig, key: str, ok: Callable[[Any], bool], allowed: str) -> None:
    value = _get(cfg, key)
    if not ok(value):
        raise UserError(f"{key}={value!r} is not allowed: {key} must be {allowed}.")


def check_declared(cfg: DictConfig, section: str, schema: type) -> None:
    """Apply the rule of every field of dataclass ``schema`` that declares one to ``cfg.<section>``."""
    for f in dataclasses.fields(schema):
        if "rule" in f.metadata:
            check(cfg, f"{section}.{f.name}", *f.metadata["rule"])
