"""A model's and an objective's settings are declared once, with their rules (``checked`` in the model's
``Config``, models/objectives.py for the objectives): every rule refuses a value that breaks it, naming the
key and what it must be; the command line refuses such a value before the run's folder exists; and
`dgm train --help` shows each rule."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from conftest import TOY
from dgm_cli import app
from dgm_cli.errors import UserError
from dgm_cli.models import load_all
from dgm_cli.models.base import DataSpec
from dgm_cli.models.objectives import OBJECTIVES, typed
from dgm_cli.models.registry import MODELS, check_model
from dgm_cli.rules import declared

load_all()
#: every model declares its settings' rules (no constructor checks a setting)
DECLARED = sorted(MODELS)


def breaking_value(hint, meta: dict):
    """A value of the field's type that its rule refuses."""
    if "choices" in meta:
        return "no_such_choice"
    ok = meta["rule"][0]
    base = typing.get_origin(hint) or hint
    if base is typing.Union:  # Optional[...]
        base = typing.get_origin(typing.get_args(hint)[0]) or typing.get_args(hint)[0]
    candidates = {int: (-1, 0, 1), float: (-1.0, 0.0, 1.0), list: ([], [0], [-1], [0.5])}[base]
    return next(v for v in candidates if not ok(v))


@pytest.mark.parametrize("name", DECLARED)
def test_every_setting_of_a_model_declares_its_rule_and_a_bad_value_is_refused(name):
    """Each number, size list and name of the model's Config carries a rule (switches and free lists
    excepted), its default meets it, and a value that breaks it is refused before the model is built."""
    cls = MODELS[name]
    rules, hints = declared(cls.Config), typing.get_type_hints(cls.Config)
    for f in dataclasses.fields(cls.Config):
        if hints[f.name] is bool or f.name in rules:
            continue
        raise AssertionError(f"model={name}: model.{f.name} declares no rule (rules.checked)")
    defaults = cls.Config()
    objective = {"name": cls.objectives[0]}
    for key, meta in rules.items():
        ok, allowed = meta["rule"]
        assert ok(getattr(defaults, key)), f"model={name}: the default of model.{key} breaks its rule"
        bad = breaking_value(hints[key], meta)
        with pytest.raises(UserError, match=rf"model\.{key}=.* must be "):
            check_model({"name": name, key: bad}, objective)


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_every_objective_key_declares_its_rule_and_a_bad_value_is_refused(name):
    cls = OBJECTIVES[name]
    assert typed({"name": name}) == cls() and cls().name == name
    rules, hints = declared(cls), typing.get_type_hints(cls)
    assert set(rules) == {f.name for f in dataclasses.fields(cls) if f.name != "name" and hints[f.name] is not bool}
    for key, meta in rules.items():
        bad = breaking_value(hints[key], meta)
        with pytest.raises(UserError, match=rf"objective\.{key}=.* must be "):
            typed({"name": name, key: bad})
    with pytest.raises(UserError, match=rf"objective={name} takes only .*got no_such_key"):
        typed({"name": name, "no_such_key": 1})


@pytest.mark.parametrize(
    "overrides, needles",
    [
        (["model.latent_dim=0"], ["model.latent_dim=0", "must be > 0"]),
        (["model.activation=swish"], ["model.activation='swish'", "tanh"]),
        (["objective=iwae", "objective.k=0"], ["objective.k=0", "must be > 0"]),
        (["objective=beta_elbo", "objective.free_bits=-1"], ["objective.free_bits=-1", "must be >= 0"]),
        (
            ["model=ddpm", "objective=simple", "model.variance=learned_range"],
            ["model.variance=learned_range", "hybrid"],
        ),
        (["model=dcgan", "objective=elbo"], ["objective=elbo does not fit a DCGAN", "nonsaturating"]),
        (["model=dcgan", "data.representation=binary"], ["cannot model data.representation='binary'", "8bit"]),
    ],
    ids=[
        "model",
        "model choice",
        "objective",
        "objective float",
        "model against objective",
        "objective of another family",
        "representation",
    ],
)
def test_bad_model_and_objective_values_are_refused_before_the_run_folder_exists(dgm, tmp_path, overrides, needles):
    """Refused by validation (app.RunFolder, before Hydra makes the folder and the job starts), with one
    paragraph, exit status 2 and nothing written."""
    toy = ["dataset=moons"] if any(o.startswith("model=") for o in overrides) else TOY
    proc = dgm("train", *toy, "trainer.max_steps=1", *overrides, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr
    assert not app.job_started, "the refusal came after Hydra started the job (and made its folder)"
    assert not (tmp_path / "outputs").exists()


def test_help_shows_each_objective_and_model_key_with_its_rule(dgm):
    out = dgm("train", "objective=iwae", "--help").stdout
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert "importance samples per example; must be > 0" in lines["objective.k"]
    assert "must be > 0" in lines["model.latent_dim"]
    assert "mlp | conv" in lines["model.architecture"]
    out = dgm("train", "model=ddpm", "--help").stdout
    assert "linear | cosine" in out and "objective.vlb_weight" not in out


@pytest.mark.parametrize(
    "name, objective, shape, representation, message",
    [
        ("conv_vae", "elbo", (1, 30, 30), "binary", r"divide by 2\*\*2"),
        ("dcgan", "nonsaturating", (1, 6, 6), "8bit", "at least 8"),
        ("vq_vae", "vq", (1, 30, 30), "binary", "divide by 4"),
        ("ddpm", "simple", (1, 28, 30), "8bit", "square images"),
        ("dmm", "elbo", (7,), "continuous", r"sequences \(T, D\)"),
    ],
)
def test_data_the_model_cannot_take_is_refused_by_check_settings(name, objective, shape, representation, message):
    """A check that needs the data's shape is the model's check_settings with the data, which build_model
    runs before it builds anything (validation, before the data is read, runs it without)."""
    cls = MODELS[name]
    cls.check_settings(cls.Config(), typed({"name": objective}), None)
    with pytest.raises(UserError, match=message):
        cls.check_settings(cls.Config(), typed({"name": objective}), DataSpec(shape, representation))
