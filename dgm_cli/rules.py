"""Rules on a key's value, declared with the key (``checked`` in a schema dataclass) and applied by
``settings/validate.py`` before anything runs. In the bottom layer, so that a schema below the command
line (engine/config.py's TrainerConfig) declares its rules too; nothing here imports the package above."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable

from .errors import UserError

DEVICES = ("auto", "cpu", "cuda", "mps")

#: a rule on a key's value: (ok(value), what the value must be), for the message that refuses it
Rule = tuple[Callable[[Any], bool], str]
POSITIVE: Rule = (lambda v: v > 0, "> 0")
NON_NEGATIVE: Rule = (lambda v: v >= 0, ">= 0")
DEVICE: Rule = (
    lambda v: v in DEVICES or (isinstance(v, str) and v.startswith("cuda:") and v[5:].isdigit()),
    "one of auto, cpu, cuda, cuda:N, mps",
)
COMPILE: Rule = (lambda v: v is True or v is False or v == "auto", "true, false or auto")
#: a list of layer sizes (widths, channels): each >= 1; empty is allowed (no hidden layer)
SIZES: Rule = (lambda v: all(int(h) == h and h >= 1 for h in v), "a list of sizes >= 1")
NON_EMPTY_SIZES: Rule = (lambda v: len(v) > 0 and SIZES[0](v), "a non-empty list of sizes >= 1")
#: a probability that may be 0 (dropout)
PROBABILITY: Rule = (lambda v: 0 <= v < 1, "in [0, 1)")


def choice(choices: Iterable[Any]) -> Rule:
    choices = tuple(choices)
    return (lambda v: v in choices, "one of " + ", ".join(map(str, choices)))


def at_least(low: Any) -> Rule:
    return (lambda v: v >= low, f">= {low}")


def checked(default: Any, rule: Rule) -> Any:
    """A schema field declared with its rule, so a key's type, default, check and meaning (its
    comment) sit on one line; ``check_declared`` applies the rules."""
    return dataclasses.field(default=default, metadata={"rule": rule})


def _get(cfg: Any, key: str) -> Any:
    """``key``'s value in a config, a mapping or (past a point) a dataclass instance: a typed model config."""
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part) if dataclasses.is_dataclass(node) else node[part]
    return node


def checked_list(default: list, rule: Rule) -> Any:
    """``checked`` for a list-valued field (a fresh copy of ``default`` per instance)."""
    return dataclasses.field(default_factory=lambda: list(default), metadata={"rule": rule})


def checked_choice(default: Any, choices: Iterable[str], null: bool = False) -> Any:
    """A schema field whose value is one of ``choices`` (or null, with ``null``), a table's names: its
    comment's ``{choices}`` reads "a | b | c" in `--help` (docs.field_comments), so the names live only in
    the table."""
    choices = tuple(choices)
    ok, allowed = choice(choices)
    rule: Rule = ((lambda v: v is None or ok(v)), f"null or {allowed}") if null else (ok, allowed)
    return dataclasses.field(default=default, metadata={"rule": rule, "choices": choices})


def check(cfg: Any, key: str, ok: Callable[[Any], bool], allowed: str) -> None:
    value = _get(cfg, key)
    if not ok(value):
        raise UserError(f"{key}={value!r} is not allowed: {key} must be {allowed}.")


def declared(schema: type) -> dict[str, dict]:
    """Field name -> its declared metadata (``rule``, ``choices``) in dataclass ``schema``: a subclass that
    restates a field only to change its default (``latent_dim: int = 32``) keeps its base's rule."""
    found: dict[str, dict] = {}
    for base in reversed([c for c in schema.__mro__ if dataclasses.is_dataclass(c)]):
        for f in dataclasses.fields(base):
            if "rule" in f.metadata:
                found[f.name] = dict(f.metadata)
    return {f.name: found[f.name] for f in dataclasses.fields(schema) if f.name in found}


def check_declared(cfg: Any, section: str, schema: type) -> None:
    """Apply the rule of every field of dataclass ``schema`` that declares one to ``cfg.<section>`` (``cfg`` a
    config, or a mapping whose ``section`` is a config or a dataclass instance)."""
    for name, meta in declared(schema).items():
        check(cfg, f"{section}.{name}", *meta["rule"])
