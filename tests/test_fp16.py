"""trainer.precision=16: the gradient scaler skips a step whose fp16 gradients overflow, halves its
scale, trains once the scale fits, and its state is checkpointed. Needs CUDA (fp16 autocast with a
scaler is CUDA only; elsewhere dgm refuses precision=16)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from dgm_cli.data import pipeline
from dgm_cli.engine.checkpoint import load
from dgm_cli.engine.loop import build
from dgm_cli.models.base import DataSpec, GenerativeModel
from dgm_cli.settings.schema import TrainConfig

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 with a gradient scaler needs CUDA")
INITIAL_SCALE = 2.0**16  # torch.amp.GradScaler's default


@dataclass
class NoConfig:
    pass


class Overflowing(GenerativeModel):
    """loss = mean(w . 1000 x): its fp16 weight gradient, times the initial scale 65536, exceeds fp16's
    largest value (65504) until the scale has been halved about ten times."""

    family, objectives, representations, Config = "test", ("test",), ("continuous",), NoConfig

    def __init__(self, config, data, objective):
        super().__init__(config, data, objective)
        self.net = nn.Linear(2, 1, bias=False)

    def training_loss(self, x, y, phase):
        loss = self.net(1000 * x).float().mean()
        return loss, {"loss": loss.detach()}

    def sample(self, n, temperature=1.0, label=None):
        return torch.zeros(n, 2, device=self.net.weight.device)


def make(tmp_path, steps):
    cfg = OmegaConf.merge(
        OmegaConf.structured(TrainConfig),
        {
            "model": {"name": "overflowing"},
            "objective": {"name": "test"},
            "data": {"name": "moons", "train_size": 640, "test_size": 64, "val_size": 64},
            "optimizer": {"_target_": "torch.optim.SGD", "name": "sgd", "lr": 1e-6},
            "trainer": {
                "batch_size": 32,
                "max_steps": steps,
                "log_every": 5,
                "progress": False,
                "precision": "16",
                "device": "cuda",
                "sample_every": 0,
            },
        },
    )
    model = Overflowing(NoConfig(), DataSpec((2,), "continuous"), {"name": "test"})
    return build(cfg, model, pipeline.load(cfg.data), tmp_path, torch.device("cuda")), model


def test_an_overflowing_step_is_skipped_and_the_scale_halved(tmp_path):
    trainer, model = make(tmp_path, steps=1)
    before = model.net.weight.detach().clone()
    trainer.step = 1
    trainer.train_step(*next(trainer.batches), want_grad_norm=False)
    assert torch.equal(model.net.weight.detach(), before), "an inf gradient reached the weights"
    assert trainer.scaler.get_scale() == INITIAL_SCALE / 2


def test_training_proceeds_once_the_scale_fits_and_the_scale_is_checkpointed(tmp_path):
    trainer, model = make(tmp_path, steps=30)
    before = model.net.weight.detach().clone()
    trainer.fit()
    scale = trainer.scaler.get_scale()
    assert scale <= INITIAL_SCALE / 2**6 and not torch.equal(model.net.weight.detach(), before)
    assert torch.isfinite(model.net.weight).all()
    assert load(str(tmp_path / "checkpoints" / "last.pt"))["scaler"]["scale"] == scale
