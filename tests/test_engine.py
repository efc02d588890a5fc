"""The loop treats every family alike: it steps the optimizers a model's phases name, in order."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from dgm_cli.data import pipeline
from dgm_cli.engine.checkpoint import load
from dgm_cli.engine.loop import build
from dgm_cli.engine.optim import build_scheduler
from dgm_cli.models.base import DataSpec, GenerativeModel
from dgm_cli.settings.schema import TrainConfig


@dataclass
class TwoPlayerConfig:
    n_critic: int = 3


class TwoPlayers(GenerativeModel):
    """A stand-in for a GAN: a critic stepped every batch, a generator every n_critic batches."""

    family, objectives, representations, Config = "test", ("test",), ("continuous",), TwoPlayerConfig

    def __init__(self, config, data, objective):
        super().__init__(config, data, objective)
        self.critic, self.generator = nn.Linear(2, 1), nn.Linear(2, 2)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.log: list[str] = []

    def configure_optimizers(self, build):
        return {"critic": build(self.critic.parameters()), "generator": build(self.generator.parameters(), lr=0.5)}

    def phases(self, step):
        return ("critic", "generator") if step % self.config.n_critic == 0 else ("critic",)

    def training_loss(self, x, y, phase):
        self.log.append(phase)
        net = self.critic if phase == "critic" else self.generator
        return net(x).pow(2).mean(), {f"loss_{phase}": torch.tensor(1.0)}

    def after_step(self, phase):
        self.log.append(f"after {phase}")
        if phase == "critic":
            self.calls += 1

    def sample(self, n, temperature=1.0, label=None):
        return self.generator(torch.randn(n, 2))


def toy_cfg(tmp_path, **trainer):
    cfg = OmegaConf.merge(
        OmegaConf.structured(TrainConfig),
        {
            "model": {"name": "two_players"},
            "objective": {"name": "test"},
            "optimizer": {"_target_": "torch.optim.Adam", "name": "adam", "lr": 1e-3},
            "data": {"name": "moons", "train_size": 640, "test_size": 64, "val_size": 64},
            "trainer": {"batch_size": 32, "max_steps": 9, "log_every": 3, "progress": False, **trainer},
        },
    )
    return cfg


def make(tmp_path, **trainer):
    cfg = toy_cfg(tmp_path, **trainer)
    ds = pipeline.load(cfg.data)
    model = TwoPlayers(TwoPlayerConfig(), DataSpec((2,), "continuous"), {"name": "test"})
    return build(cfg, model, ds, tmp_path, torch.device("cpu")), model


def test_each_named_optimizer_steps_only_its_player(tmp_path):
    trainer, model = make(tmp_path)
    g_before = [p.clone() for p in model.generator.parameters()]
    c_before = [p.clone() for p in model.critic.parameters()]
    trainer.step = 1
    trainer.train_step(*next(trainer.batches), want_grad_norm=False)  # step 1: critic only
    assert all(torch.equal(a, b) for a, b in zip(g_before, model.generator.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(c_before, model.critic.parameters()))
    trainer.step = 0
    model.log.clear()
    trainer.fit()
    # 9 steps: 9 critic steps, a generator step at steps 3, 6 and 9, each followed by its hook
    assert model.log.count("critic") == 9 and model.log.count("generator") == 3
    assert model.log[:8] == ["critic", "after critic"] * 3 + ["generator", "after generator"]
    assert trainer.optimizers["generator"].param_groups[0]["lr"] == 0.5


def test_gradient_clipping_bounds_the_update(tmp_path):
    trainer, model = make(tmp_path, grad_clip=1e-3)
    x, y = next(trainer.batches)
    x = x * 1000  # huge gradients
    before = model.critic.weight.detach().clone()
    opt = trainer.optimizers["critic"]
    trainer.optimizers["critic"] = torch.optim.SGD(model.critic.parameters(), lr=1.0)
    trainer.train_step(x, y, want_grad_norm=False)
    assert float((model.critic.weight.detach() - before).norm()) <= 1e-3 + 1e-6
    trainer.optimizers["critic"] = opt


def test_bf16_autocast_runs_on_cpu(tmp_path):
    trainer, model = make(tmp_path, precision="bf16")
    trainer.fit()
    assert trainer.step == 9


def test_checkpoint_holds_everything_a_resume_needs(tmp_path):
    trainer, model = make(tmp_path)
    trainer.fit()
    state = load(str(tmp_path / "checkpoints" / "last.pt"))
    assert {"model", "optimizers", "schedulers", "scaler", "step", "batches", "rng", "config"} <= set(state)
    assert set(state["optimizers"]) == {"critic", "generator"} and state["step"] == 9
    assert int(state["model"]["calls"]) == 9


@pytest.mark.parametrize("name, expected", [("cosine", [1.0, 0.5, 0.0]), ("step", [1.0, 0.5, 0.25])])
def test_schedules(name, expected):
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    cfg = OmegaConf.create({"name": name, "warmup_steps": 0, "min_lr": 0.0, "step_size": 10, "gamma": 0.5})
    sched = build_scheduler(cfg, opt, total_steps=20)
    lrs = []
    for step in range(21):
        if step in (0, 10, 20):
            lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx(expected, abs=1e-9)


def test_every_scheduler_config_names_a_schedule_and_every_schedule_has_a_config():
    """scheduler.name is checked against the same table the engine builds from (engine/schedules.py)."""
    import dataclasses
    from pathlib import Path

    from dgm_cli.engine.schedules import SCHEDULES
    from dgm_cli.settings.schema import SchedulerConfig

    configs = Path(__file__).resolve().parents[1] / "dgm_cli" / "configs" / "scheduler"
    names = {OmegaConf.load(p).name for p in configs.glob("*.yaml")}
    (name,) = [f for f in dataclasses.fields(SchedulerConfig) if f.name == "name"]
    assert names == set(SCHEDULES) == set(name.metadata["choices"])
