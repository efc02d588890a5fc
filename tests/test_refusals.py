"""Settings that would fail later (a division by zero, a NaN) are refused up front."""

from __future__ import annotations

import re

import pytest

from conftest import compose_train
from dgm_cli.errors import UserError
from dgm_cli.models.base import DataSpec
from dgm_cli.models.registry import build_model
from dgm_cli.settings.validate import validate_train


def test_checkpoint_interval_zero_is_refused():
    with pytest.raises(UserError, match=r"trainer.ckpt_every=0.*> 0"):
        validate_train(compose_train("trainer.ckpt_every=0"))
    validate_train(compose_train("trainer.ckpt_every=1"))


def test_every_trainer_key_declares_its_rule_and_a_bad_value_is_refused():
    """A trainer key is declared once (engine/config.TrainerConfig: type, default, rule, meaning):
    every key but the switches has a rule, the default meets it, and a value that breaks it is
    refused naming the key and what it must be."""
    import dataclasses

    from dgm_cli.engine.config import TrainerConfig

    for f in dataclasses.fields(TrainerConfig):
        if f.type in (bool, "bool"):
            continue
        ok, allowed = f.metadata["rule"]
        assert ok(f.default), f.name
        bad = next(v for v in ((-2, 0, 1) if f.type in ("int", "float") else ("nope",)) if not ok(v))
        with pytest.raises(UserError, match=rf"trainer\.{f.name}=.* must be {re.escape(allowed)}"):
            validate_train(compose_train(f"trainer.{f.name}={bad}"))


def test_an_optimizer_name_that_is_another_optimizer_is_refused():
    """optimizer.name labels the config; _target_ picks the class, so optimizer.name=rmsprop over
    Adam would train with Adam under RMSProp's name (an experiment preset once did)."""
    with pytest.raises(UserError, match=r"optimizer.name=rmsprop.*torch.optim.Adam.*optimizer=rmsprop"):
        validate_train(compose_train("optimizer.name=rmsprop"))
    validate_train(compose_train("optimizer=rmsprop"))
    validate_train(compose_train("optimizer.name=my_adam"))  # a label of one's own is fine


@pytest.mark.parametrize("alpha", [0.0, -0.1, 0.5])
def test_logit_alpha_outside_the_open_interval_is_refused(alpha):
    with pytest.raises(UserError, match=rf"model.alpha={alpha}.*must be in \(0, 0.5\)"):
        build_model({"name": "realnvp", "alpha": alpha}, {"name": "nll"}, DataSpec((1, 4, 4), "dequantized"))


def test_a_run_is_checked_once_and_each_job_of_a_sweep_once(dgm, tmp_path, monkeypatch):
    """validate_train runs once per run: before a single run's folder exists (app.RunFolder), or in each
    job of a sweep (whose configs Hydra composes one by one); and the user's config comes back unchanged
    in the checkpoint, the representation the model got beside it."""
    import torch

    import dgm_cli.commands.train  # noqa: F401 -- registers train's check
    from conftest import TOY, run_folders
    from dgm_cli import app

    seen = []
    check = app.VALIDATORS["train"]
    monkeypatch.setitem(app.VALIDATORS, "train", lambda cfg: (seen.append(cfg.trainer.max_steps), check(cfg)))
    dgm("train", *TOY, "trainer.max_steps=1")
    assert seen == [1]
    (run,) = run_folders(tmp_path)
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["config"]["data"]["representation"] is None and state["config"]["resume"] is None
    assert state["representation"] == "continuous"
    seen.clear()
    dgm("train", "-m", *TOY, "trainer.max_steps=1,2")
    assert sorted(seen) == [1, 2]
