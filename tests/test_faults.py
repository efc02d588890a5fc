"""Runs that survive faults: stop signals checkpoint and resume to the uninterrupted result,
non-finite losses stop (or skip) without harming the last good checkpoint, a failed checkpoint write
never replaces a good one, two trainers never share a run; and the engine's switches
(accumulation, the weight average) do what they say."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from conftest import TINY, dgm_executable, run_folders
from dgm_cli.data import pipeline
from dgm_cli.engine import checkpoint
from dgm_cli.engine.ema import WeightAverage
from dgm_cli.engine.faults import NonFiniteLoss, run_lock
from dgm_cli.engine.loop import Trainer, build
from dgm_cli.errors import UserError
from dgm_cli.models.base import DataSpec, GenerativeModel
from dgm_cli.models.registry import build_model
from dgm_cli.settings.schema import TrainConfig


@dataclass
class LinearConfig:
    nan_at: int = 0  # the training step whose loss is NaN (0: never)


class Regression(GenerativeModel):
    """A deterministic stand-in: least squares of a linear map, NaN on request."""

    family, objectives, representations, Config = "test", ("test",), ("continuous",), LinearConfig

    def __init__(self, config, data, objective):
        super().__init__(config, data, objective)
        self.linear = nn.Linear(2, 2)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.calls = 0

    def training_loss(self, x, y, phase):
        self.calls += 1
        loss = (self.linear(x) - x.flip(1)).pow(2).mean()
        if self.calls == self.config.nan_at:
            loss = loss * float("nan")
        return loss, {"loss": loss.detach(), "squared_error": loss.detach()}

    def after_step(self, phase):
        self.steps += 1

    def validation_step(self, x, y):
        return {"loss": (self.linear(x) - x.flip(1)).pow(2).mean()}

    def sample(self, n, temperature=1.0, label=None):
        return torch.randn(n, 2)


def trainer_for(tmp_path, model, **trainer) -> Trainer:
    cfg = OmegaConf.merge(
        OmegaConf.structured(TrainConfig),
        {
            "model": {"name": "test"},
            "objective": {"name": "test"},
            "data": {"name": "moons", "train_size": 640, "test_size": 64, "val_size": 64},
            "optimizer": {"_target_": "torch.optim.SGD", "name": "sgd", "lr": 0.05},
            "trainer": {
                "batch_size": 32,
                "max_steps": 8,
                "log_every": 2,
                "progress": False,
                "ckpt_every": 1,
                "sample_every": 0,
                **trainer,
            },
        },
    )
    return build(cfg, model, pipeline.load(cfg.data), tmp_path, torch.device("cpu"))


def regression(**config) -> Regression:
    torch.manual_seed(0)
    return Regression(LinearConfig(**config), DataSpec((2,), "continuous"), {"name": "test"})


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    trainer = trainer_for(tmp_path, regression(nan_at=5))
    with pytest.raises(NonFiniteLoss) as info:
        trainer.fit()
    message = str(info.value)
    assert "step 5" in message and "squared_error" in message and "last.pt (step 4)" in message
    state = checkpoint.load(str(tmp_path))
    assert state["step"] == 4 and all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


@pytest.mark.parametrize("on_device", [False, True])
def test_nan_skip_drops_the_update_and_finishes(tmp_path, on_device):
    model = regression(nan_at=5)
    trainer = trainer_for(tmp_path, model, nan="skip")
    trainer.skip_on_device = on_device  # a GPU's way (undone on the device) or a CPU's (skipped at once)
    trainer.fit()
    assert trainer.step == 8 and trainer.skipped == 1
    assert int(model.steps) == 7  # the skipped batch never reached after_step (or was undone)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert checkpoint.load(str(tmp_path))["skipped"] == 1


def test_a_nan_loss_between_checkpoints_stops_at_the_next_log_point_with_the_last_good_checkpoint(tmp_path):
    """The flag is read where the loop reads the device anyway: here the log point 3 steps after the bad
    step, before the checkpoint of that step could hold the bad update."""
    trainer = trainer_for(tmp_path, regression(nan_at=5), log_every=4, ckpt_every=4, max_steps=12)
    with pytest.raises(NonFiniteLoss) as info:
        trainer.fit()
    assert trainer.step == 8 and "loss of step 5 is not finite" in str(info.value)
    assert "last.pt (step 4)" in str(info.value)
    state = checkpoint.load(str(tmp_path))
    assert state["step"] == 4 and all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_the_models_advice_ends_the_stop_message(tmp_path):
    model = regression(nan_at=3)
    model.non_finite_advice = lambda: "try a smaller step"
    with pytest.raises(NonFiniteLoss, match=r"resume=.*\. Try a smaller step\.$"):
        trainer_for(tmp_path, model).fit()


def test_nan_skip_puts_back_the_weights_optimizer_state_and_weight_average_of_the_batch(tmp_path):
    model = regression(nan_at=3)
    trainer = trainer_for(tmp_path, model, nan="skip", ema_decay=0.9)
    trainer.skip_on_device = True  # as on a GPU
    trainer.optimizers["model"] = torch.optim.Adam(model.parameters(), lr=0.05)  # a state to put back
    trainer.params["model"] = list(model.parameters())

    def state():
        adam = [v.clone() for s in trainer.optimizers["model"].state.values() for v in s.values()]
        return [t.detach().clone() for t in [*model.parameters(), *model.buffers(), *trainer.ema.shadow, *adam]]

    for step in (1, 2):
        trainer.step = step
        trainer.train_step(*next(trainer.batches), want_grad_norm=False)
    before = state()
    trainer.step = 3
    trainer.train_step(*next(trainer.batches), want_grad_norm=True)  # its loss is NaN
    after = state()
    assert len(after) == len(before) and all(torch.equal(a, b) for a, b in zip(after, before))
    trainer.check_finite()
    assert trainer.skipped == 1 and int(model.steps) == 2


def test_accumulating_two_micro_batches_equals_the_whole_batch(tmp_path):
    spec = DataSpec((2,), "continuous", dataset="moons")
    models = []
    for accumulate in (1, 2):
        torch.manual_seed(0)
        model = build_model({"name": "realnvp", "num_couplings": 2, "hidden_features": 16}, {"name": "nll"}, spec)
        trainer = trainer_for(tmp_path / str(accumulate), model, accumulate=accumulate, batch_size=64, max_steps=5)
        trainer.fit()
        models.append(model)
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_the_weight_average_follows_its_recursion_and_is_what_is_saved(tmp_path):
    model = regression()
    ema = WeightAverage(model, 0.9)
    expected = [p.detach().clone() for p in model.parameters()]
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        ema.update()
        expected = [0.9 * e + 0.1 * p.detach() for e, p in zip(expected, model.parameters())]
    assert all(torch.allclose(s, e) for s, e in zip(ema.shadow, expected))
    raw = [p.detach().clone() for p in model.parameters()]
    with ema.applied():
        assert all(torch.equal(p, s) for p, s in zip(model.parameters(), ema.shadow))
    assert all(torch.equal(p, r) for p, r in zip(model.parameters(), raw))
    trainer = trainer_for(tmp_path, regression(), ema_decay=0.5)
    trainer.fit()
    state = checkpoint.load(str(tmp_path))
    assert set(state["ema"]) == {"linear.weight", "linear.bias"}
    assert not torch.equal(state["ema"]["linear.weight"], state["model"]["linear.weight"])


def test_a_failed_checkpoint_write_leaves_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoint.save({"step": 1}, path)

    def half_write(obj, f):
        f.write(b"\x80\x02partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", half_write)
    with pytest.raises(OSError):
        checkpoint.save({"step": 2}, path)
    monkeypatch.undo()
    assert checkpoint.load(str(path))["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_a_second_trainer_of_one_run_is_refused(tmp_path):
    with run_lock(tmp_path):
        with pytest.raises(UserError, match="being trained right now"):
            with run_lock(tmp_path):
                pass
    # a lock left by a process that died is taken over
    (tmp_path / "train.lock").write_text(f"{socket.gethostname()} 999999999\n")
    with run_lock(tmp_path):
        assert (tmp_path / "train.lock").read_text().split()[1] == str(os.getpid())
    assert not (tmp_path / "train.lock").exists()


# --- through the CLI ------------------------------------------------------------------------------
# No scheduler: the trajectory does not depend on max_steps, so a run stopped at step s and resumed
# to s + 20 can be compared with a run trained to s + 20 in one go.
LONG = [
    *TINY,
    "trainer.max_steps=1000000",
    "trainer.ckpt_every=100000",
    "trainer.sample_every=0",
    "trainer.val_every=100000",
]


def start(cwd, *args) -> subprocess.Popen:
    """`dgm train` as a process of its own (signals are sent to it), one thread like this process
    (conftest), in which the runs it is compared with train."""
    return subprocess.Popen(
        [dgm_executable(), "train", *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for_training(cwd, proc) -> None:
    deadline = time.time() + 300
    while time.time() < deadline:
        logs = list((cwd / "outputs").rglob("train.log")) if (cwd / "outputs").exists() else []
        if logs and "training vae" in logs[0].read_text():
            time.sleep(0.5)
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    raise AssertionError("training did not start")


@pytest.mark.slow
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_a_stop_signal_checkpoints_and_resume_finishes_as_if_uninterrupted(signame, tmp_path, dgm, data_root):
    proc = start(tmp_path, *LONG)
    wait_for_training(tmp_path, proc)
    proc.send_signal(getattr(signal, signame))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + getattr(signal, signame).value, err
    (run,) = run_folders(tmp_path)
    stopped = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"]
    assert f"after step {stopped};" in err and "resume=" in err and "Traceback" not in err
    assert not (run / "train.lock").exists()
    end = stopped + 20
    dgm("train", f"resume={run}", f"trainer.max_steps={end}")
    (tmp_path / "whole").mkdir()
    dgm("train", *LONG, f"trainer.max_steps={end}", cwd=tmp_path / "whole")
    (whole,) = run_folders(tmp_path / "whole")
    a = torch.load(whole / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == end
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


@pytest.mark.slow
def test_resume_is_refused_while_the_run_trains_and_a_finished_run_has_nothing_to_do(tmp_path, dgm, data_root):
    dgm("train", *TINY, "trainer.max_steps=5")
    (run,) = run_folders(tmp_path)
    before = (run / "checkpoints" / "last.pt").read_bytes()
    done = dgm("train", f"resume={run}")
    assert "nothing to do" in done.stdout
    (run / "train.lock").write_text(f"{socket.gethostname()} {os.getpid()}\n")  # this live process "trains" it
    refused = dgm("train", f"resume={run}", "trainer.max_steps=10", check=False)
    assert refused.returncode == 2 and "being trained right now" in refused.stderr and "Traceback" not in refused.stderr
    assert (run / "checkpoints" / "last.pt").read_bytes() == before


def test_compile_captures_the_loss_computation_of_every_step(tmp_path, monkeypatch):
    """trainer.compile=true hands dynamo the module call that computes the loss (forward ->
    training_loss): a counting backend sees the graph with the model's operations in it."""
    from torch._dynamo.testing import CompileCounter

    counter = CompileCounter()
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda module, **kw: real_compile(module, backend=counter))
    torch._dynamo.reset()
    model = regression()
    trainer = trainer_for(tmp_path, model, compile=True)
    assert trainer.net is not trainer.model
    trainer.fit()
    assert counter.frame_count >= 1 and counter.op_count >= 3  # linear, sub, pow, mean: the loss itself
    torch._dynamo.reset()


@pytest.mark.parametrize("pays_after, max_steps, compiled", [(100, 100, True), (100, 99, False), (None, 5000, False)])
def test_compile_auto_compiles_cpu_runs_long_enough_to_pay(tmp_path, monkeypatch, pays_after, max_steps, compiled):
    """trainer.compile=auto (the default) compiles only where it was measured to pay: a model that
    says after how many steps, on a CPU, for a run at least that long; false never compiles."""
    monkeypatch.setattr(torch, "compile", lambda module, **kw: ("compiled", module))
    model = regression()
    monkeypatch.setattr(type(model), "compile_pays_after", pays_after)
    with torch._dynamo.config.patch(suppress_errors=False):  # auto sets it where it compiles
        trainer = trainer_for(tmp_path, model, max_steps=max_steps)
    assert trainer.settings.compile == "auto"
    assert trainer.net[1] is trainer.ddp if compiled else trainer.net is trainer.ddp
    off = trainer_for(tmp_path / "off", model, max_steps=max_steps, compile=False)
    assert off.net is off.ddp


def test_compile_auto_is_on_for_the_models_measured_to_pay():
    from dgm_cli.models.registry import MODELS, get_model_class

    get_model_class("vae")  # loads every family
    assert {n for n in MODELS if get_model_class(n).compile_pays_after} == {"pixelcnn", "glow"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["bf16", "16"])
def test_cuda_precisions_and_compile_train(tmp_path, precision):
    spec = DataSpec((2,), "continuous", dataset="moons")
    torch.manual_seed(0)
    model = build_model({"name": "realnvp", "num_couplings": 2, "hidden_features": 16}, {"name": "nll"}, spec)
    cfg_trainer = {"precision": precision, "compile": True, "device": "cuda"}
    cfg = OmegaConf.merge(
        OmegaConf.structured(TrainConfig),
        {
            "model": {"name": "realnvp"},
            "objective": {"name": "nll"},
            "optimizer": {"_target_": "torch.optim.Adam", "name": "adam", "lr": 1e-3},
            "data": {"name": "moons", "train_size": 640, "test_size": 64, "val_size": 64},
            "trainer": {"batch_size": 32, "max_steps": 20, "progress": False, "sample_every": 0, **cfg_trainer},
        },
    )
    trainer = build(cfg, model, pipeline.load(cfg.data), tmp_path, torch.device("cuda"))
    trainer.fit()
    assert all(torch.isfinite(p).all() for p in model.parameters())


class StandInClock:
    """The training loop's clock, for tests whose outcome would otherwise depend on the machine's
    speed: each reading is ``tick`` seconds after the last; ``advance`` spends time without a reading."""

    def __init__(self, monkeypatch, tick: float):
        import types

        from dgm_cli.engine import loop

        self.now, self.tick = 0.0, tick
        monkeypatch.setattr(loop, "time", types.SimpleNamespace(perf_counter=self.perf_counter))

    def perf_counter(self) -> float:
        self.now += self.tick
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_sample_grids_stay_within_their_share_of_training_time(tmp_path, monkeypatch, caplog):
    """A grid that costs more than the budget allows is skipped, with a log line saying why. The
    loop's clock is a stand-in: each reading is 10 ms of training later, and a grid's sampler
    costs 10 ms, so how many grids fit is arithmetic, not the machine's speed."""
    import logging

    clock = StandInClock(monkeypatch, tick=0.01)
    model = regression()

    def slow_samples(n, temperature=1.0, label=None):
        clock.advance(0.01)
        return torch.randn(n, 2)

    monkeypatch.setattr(model, "sample_for_logging", slow_samples)
    trainer = trainer_for(tmp_path, model, sample_every=1, max_steps=30, ckpt_every=1000)
    with caplog.at_level(logging.INFO, logger="dgm.train"):
        trainer.fit()
    drawn = round(trainer._grid_seconds / 0.02)  # a grid: the sampler's 10 ms and the reading that ends it
    assert 2 <= drawn < 30 and "sample grid skipped" in caplog.text
    elapsed = clock.perf_counter() - trainer._fit_started
    # at most one grid over the budget (the check lets a grid start while it still fits)
    assert trainer._grid_seconds <= Trainer.GRID_BUDGET * elapsed + trainer._last_grid_seconds


def test_sample_every_zero_draws_no_grid_at_all(tmp_path, monkeypatch):
    model = regression()
    monkeypatch.setattr(model, "sample_for_logging", lambda n: pytest.fail("a grid was drawn"))
    trainer_for(tmp_path, model, sample_every=0).fit()


@pytest.mark.parametrize("nan", ["stop", "skip"])
def test_a_training_step_reads_nothing_back_from_the_device(tmp_path, nan):
    """One process: neither the loss's finiteness nor the metrics are read on the host per step."""
    from host_sync import no_host_reads

    trainer = trainer_for(tmp_path, regression(nan_at=2), nan=nan, ema_decay=0.9)
    trainer.skip_on_device = True  # as on a GPU (a CPU reads the flag under nan=skip: it costs nothing there)
    for step in (1, 2, 3):
        trainer.step = step
        batch = next(trainer.batches)
        with no_host_reads():
            trainer.train_step(*batch, want_grad_norm=False)
    if nan == "stop":
        with pytest.raises(NonFiniteLoss, match="loss of step 2"):
            trainer.check_finite()
    else:
        trainer.check_finite()
        assert trainer.skipped == 1


def test_off_a_terminal_training_logs_where_it_is_every_progress_every_seconds(tmp_path, monkeypatch, caplog):
    """Under nohup or SLURM (stderr not a terminal) the bar is off; a line says the step, the rate and
    the time left every trainer.progress_every seconds. The loop's clock is a stand-in: each reading
    is a second later, so the lines' count and numbers are arithmetic."""
    import logging

    StandInClock(monkeypatch, tick=1.0)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    trainer = trainer_for(tmp_path, regression(), max_steps=40, progress=True, progress_every=10.0, ckpt_every=1000)
    with caplog.at_level(logging.INFO, logger="dgm.train"):
        trainer.fit()
    lines = [r.getMessage() for r in caplog.records if "/s, about" in r.getMessage()]
    assert len(lines) >= 2 and all(
        m.startswith("step ") and " points/s, about " in m and m.endswith(" left") for m in lines
    ), lines
    steps = [m.split()[1].split("/") for m in lines]
    assert {total for _, total in steps} == {"40"} and [int(s) for s, _ in steps] == sorted(int(s) for s, _ in steps)
    quiet = trainer_for(tmp_path / "quiet", regression(), max_steps=40, progress=False, ckpt_every=1000)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="dgm.train"):
        quiet.fit()
    assert not [r for r in caplog.records if "/s, about" in r.getMessage()]
