"""Precision and determinism: validation (which picks best.pt) computes in fp32 unless asked, fp16 is
refused where an unscaled inner gradient is taken, and trainer.deterministic sets torch's switches for
the run and puts them back."""

from __future__ import annotations

import pytest
import torch

from conftest import TOY
from dgm_cli.engine import runtime
from dgm_cli.errors import UserError
from test_faults import Regression, regression, trainer_for


class Recording(Regression):
    """Notes whether validation ran under autocast."""

    def validation_step(self, x, y):
        self.autocast_seen = torch.is_autocast_enabled("cpu")
        return super().validation_step(x, y)


@pytest.mark.parametrize("val_precision,autocast", [("32", False), ("bf16", True)])
def test_validation_is_fp32_unless_asked(tmp_path, val_precision, autocast):
    model = regression()
    model.__class__ = Recording
    trainer = trainer_for(tmp_path, model, precision="bf16", val_precision=val_precision, max_steps=2)
    trainer.fit()
    assert model.autocast_seen is autocast


def test_the_deep_ebm_refuses_fp16_like_wgan_gp():
    from dgm_cli.models.base import DataSpec
    from dgm_cli.models.registry import get_model_class

    cls = get_model_class("ebm")
    model = cls(cls.Config(network="mlp"), DataSpec((2,), "continuous", 0, "tiny"), {"name": "ml"})
    with pytest.raises(UserError, match="Langevin"):
        model.check_precision("16")
    model.check_precision("bf16")


def switches():
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    return (
        torch.are_deterministic_algorithms_enabled(),
        cudnn.deterministic,
        cudnn.benchmark,
        cudnn.allow_tf32,
        matmul.allow_tf32,
    )


def test_deterministic_sets_torchs_switches_for_the_run_and_puts_them_back():
    before = switches()
    with runtime.determinism(True, torch.device("cpu")):
        assert switches() == (True, True, False, False, False)
    assert switches() == before
    with runtime.determinism(False, torch.device("cuda")):  # a device object; nothing runs on it
        assert switches()[2] is True  # cudnn.benchmark
    assert switches() == before


def test_a_deterministic_run_trains_and_an_fp16_validation_is_refused_on_a_cpu(dgm):
    before = switches()
    dgm("train", *TOY, "trainer.max_steps=2", "trainer.deterministic=true")
    assert switches() == before
    refused = dgm("train", *TOY, "trainer.max_steps=2", "trainer.val_precision=16", check=False)
    assert refused.returncode == 2 and "CUDA" in refused.stderr
