"""What each key of a command means, read from one place: the trailing comment of its field in the
schema dataclasses (``schema.py``, a model's ``Config``, an objective's dataclass in models/objectives.py),
with the rule the field declares (rules.py). `dgm <command> --help` lists the keys
with their values and meanings, and a mistyped key is answered with the closest real ones."""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import io
import tokenize
import typing
from typing import Any, Iterable, Optional

from omegaconf import DictConfig, OmegaConf

from ..commands import COMMANDS
from ..models import load_all
from ..models.objectives import OBJECTIVES
from ..models.registry import MODELS
from ..rules import declared
from . import schema


def command_schemas() -> dict[str, type]:
    """Command -> the dataclass of its config: each Hydra command stores one as ``<command>_schema``."""
    from hydra.core.config_store import ConfigStore

    schema.register_configs()
    suffix = "_schema.yaml"
    return {
        name[: -len(suffix)]: OmegaConf.get_type(entry.node)
        for name, entry in ConfigStore.instance().repo.items()
        if name.endswith(suffix)
    }


#: the schema of each command's config
SCHEMAS = command_schemas()
#: the config groups of `dgm train` (each picks one YAML file of configs/<group>/)
TRAIN_GROUPS = ("model", "dataset", "objective", "optimizer", "scheduler", "experiment", "hparams_search", "debug")


def field_comments(cls: type) -> dict[str, str]:
    """The comment that ends each field's line in the source of dataclass ``cls`` (with the ``CONTINUED``
    lines below it), or of the dataclass it inherits the field from (a subclass that changes a default may
    restate it); ``{choices}``
    in it is the names a ``checked_choice`` field accepts, and a field declared with another rule
    (``checked``) says what its value must be."""
    docs: dict[str, str] = {}
    for base in reversed([c for c in cls.__mro__ if dataclasses.is_dataclass(c)]):
        docs.update(_own_field_comments(base))
    for name, meta in declared(cls).items():
        if "choices" in meta:  # a choice among a table's names (rules.checked_choice) lists them
            docs[name] = docs.get(name, "{choices}").replace("{choices}", " | ".join(meta["choices"]))
        elif " | " not in docs.get(name, ""):  # the rule its value must meet, unless the comment lists the values
            docs[name] = "; ".join(filter(None, (docs.get(name), f"must be {meta['rule'][1]}")))
    return docs


#: a comment-only line that starts so, directly below a field (or below such a line), goes on with that field's
#: comment: a long comment wraps onto lines that ``ruff format`` keeps (it re-indents them, and splits a field's
#: line too long for 120 columns, moving its trailing comment)
CONTINUED = "#   "


def _own_field_comments(cls: type) -> dict[str, str]:
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    names = {f.name for f in dataclasses.fields(cls)}
    docs: dict[str, str] = {}
    line_start: Optional[str] = None  # the first name on the current logical line (a field's, if it is one)
    continued: Optional[str] = None  # the field whose comment a CONTINUED line on row `next_row` goes on with
    next_row = 0
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.NEWLINE:  # the end of a logical line: a field's may go on in CONTINUED lines
            continued, next_row = (line_start, tok.start[0] + 1) if line_start in names else (None, 0)
            line_start = None
        elif tok.type == tokenize.NAME and line_start is None:
            line_start, continued = tok.string, None
        elif tok.type != tokenize.COMMENT:
            continue
        elif line_start is None:  # a comment-only line
            if continued is not None and tok.start[0] == next_row and tok.string.startswith(CONTINUED):
                docs[continued] = " ".join(filter(None, (docs.get(continued), tok.string[1:].strip())))
                next_row += 1
            else:
                continued = None
        elif line_start in names and line_start not in docs:  # the first comment on a field's logical line
            docs[line_start] = tok.string.lstrip("#").strip()
    return docs


def _dataclass_of(annotation: Any) -> Optional[type]:
    """The dataclass an annotation names, looking through Optional[...]."""
    if dataclasses.is_dataclass(annotation):
        return annotation
    return next((a for a in typing.get_args(annotation) if dataclasses.is_dataclass(a)), None)


def schema_keys(cls: type, prefix: str = "") -> dict[str, str]:
    """Every dotted key under dataclass ``cls`` -> its comment ('' where it has none)."""
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    keys: dict[str, str] = {}
    for f in dataclasses.fields(cls):
        inner = _dataclass_of(hints.get(f.name))
        if inner is not None:
            keys.update(schema_keys(inner, f"{prefix}{f.name}."))
        else:
            keys[prefix + f.name] = comments.get(f.name, "")
    return keys


def model_keys(name: Optional[str] = None) -> dict[str, str]:
    """``model.*`` keys: of the model ``name``, or of every registered model."""
    load_all()
    classes = [MODELS[name]] if name in MODELS else list(MODELS.values())
    keys = {
        "model.name": "the model (pick with model=<name>)",
        "model.representation": "the data representation the model gets by default",
    }
    for cls in classes:
        keys.update({f"model.{k}": v for k, v in schema_keys(cls.Config).items()})
    return keys


def known_keys(command: str, cfg: Optional[DictConfig] = None, model: Optional[str] = None) -> dict[str, str]:
    """The keys ``command`` accepts -> their meanings. For `dgm train`, the model and objective keys
    are those of the composed ``cfg``'s choices (or of ``model``), else of every model and objective."""
    keys = {k: v for k, v in schema_keys(SCHEMAS[command]).items() if k not in ("model", "objective")}
    if command == "train":
        keys.update(model_keys(OmegaConf.select(cfg, "model.name") if cfg is not None else model))
        keys.update(objective_keys(OmegaConf.select(cfg, "objective.name") if cfg is not None else None))
    return keys


def objective_keys(name: Optional[str] = None) -> dict[str, str]:
    """``objective.*`` keys and their meanings: of the objective ``name``, or of every objective
    (models/objectives.py, where each is declared)."""
    classes = [OBJECTIVES[name]] if name in OBJECTIVES else list(OBJECTIVES.values())
    keys: dict[str, str] = {}
    for cls in classes:
        keys.update({f"objective.{k}": v for k, v in schema_keys(cls).items() if k != "name"})
    return keys


def closest(word: str, candidates: Iterable[str], cutoff: float = 0.6) -> list[str]:
    """The candidates most like ``word`` (difflib's ratio), best first: those within 0.1 of the best."""
    scored = sorted(((difflib.SequenceMatcher(None, word, c).ratio(), c) for c in set(candidates)), reverse=True)
    return [c for r, c in scored[:3] if r >= max(cutoff, scored[0][0] - 0.1)] if scored else []


def suggest(key: str, candidates: Iterable[str]) -> str:
    """' Did you mean a or b?' for the candidates closest to ``key``, or ''."""
    candidates = list(candidates)
    section, _, last = key.rpartition(".")  # a mistyped last part under the right section comes first
    under = {c.rpartition(".")[2]: c for c in candidates if c.rpartition(".")[0] == section}
    close = [under[c] for c in closest(last, under)] or closest(key, candidates)
    return f" Did you mean {' or '.join(close)}?" if close else ""


def _value(cfg: DictConfig, key: str) -> str:
    parent, _, last = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if node is None or last not in node.keys():
        return ""
    if OmegaConf.is_missing(node, last):
        return "???"
    try:
        value = OmegaConf.to_container(OmegaConf.create({"v": node[last]}), resolve=True)["v"]
    except Exception:  # an interpolation that cannot be resolved here (an unset environment variable)
        value = OmegaConf.to_container(node, resolve=False)[last]
    text = "null" if value is None else str(value).replace(" ", "")
    return text if len(text) <= 18 else text[:15] + "..."


def key_table(keys: dict[str, str], cfg: DictConfig) -> str:
    """One line per key: the key, its value in ``cfg`` (??? where it must be given), its meaning."""
    rows = [(k, _value(cfg, k), doc) for k, doc in keys.items()]
    kw, vw = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
    return "\n".join(f"  {k:<{kw}}  {v:<{vw}}  {doc}".rstrip() for k, v, doc in rows)


def help_text(command: str, cfg: DictConfig) -> str:
    """`dgm <command> --help`: what the command does, its groups (train) and every key it accepts,
    with the value it has with the given overrides and what it means. A Hydra help template: Hydra
    fills in $APP_CONFIG_GROUPS, so a literal dollar is written twice."""
    keys = known_keys(command, cfg)
    lines = [f"dgm {command}: {COMMANDS[command][1]}", ""]
    if command == "train":
        model = OmegaConf.select(cfg, "model.name")
        if model in MODELS:  # show the model's defaults for the keys its YAML does not set
            defaults = OmegaConf.to_container(OmegaConf.structured(MODELS[model].Config))
            cfg = OmegaConf.merge(OmegaConf.create({"model": defaults}), cfg)
        lines += [
            "usage: dgm train [group=option ...] [key=value ...] [-m]",
            "",
            "Groups (group=option; `experiment=` applies a published setting):",
            "$APP_CONFIG_GROUPS",
            f"Keys (key, value with these overrides, meaning; model.* are those of model={model}):",
        ]
    else:
        required = "".join(f"{k}=<...> " for k in keys if _value(cfg, k) == "???")
        lines += [
            f"usage: dgm {command} {required}[key=value ...] [-m]",
            "",
            "Keys (key, value with these overrides, meaning; ??? must be given):",
        ]
    table = key_table(keys, cfg).replace("$", "$$")
    lines += [
        table,
        "",
        f"`dgm {command} --cfg job` prints the composed config; -m runs a sweep (key=a,b); "
        "--hydra-help lists Hydra's own flags.",
    ]
    return "\n".join(lines)
