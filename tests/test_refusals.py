"""Settings that would fail later (a division by zero, a NaN) are refused up front."""
from __future__ import annotations

import pytest
from hydra import compose, initialize_config_module

from dgm_cli.settings.schema import register_configs
from dgm_cli.settings.validate import validate_train
from dgm_cli.errors import UserError
from dgm_cli.models.base import DataSpec
from dgm_cli.models.registry import build_model


def compose_train(*overrides):
    register_configs()
    with initialize_config_module(config_module="dgm_cli.configs", version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_checkpoint_interval_zero_is_refused():
    with pytest.raises(UserError, match=r"trainer.ckpt_every=0.*> 0"):
        validate_train(compose_train("trainer.ckpt_every=0"))
    validate_train(compose_train("trainer.ckpt_every=1"))


@pytest.mark.parametrize("alpha", [0.0, -0.1, 0.5])
def test_logit_alpha_outside_the_open_interval_is_refused(alpha):
    with pytest.raises(UserError, match=rf"model.alpha={alpha}.*0 < alpha < 0.5"):
        build_model({"name": "realnvp", "alpha": alpha}, {"name": "nll"}, DataSpec((1, 4, 4), "dequantized"))
