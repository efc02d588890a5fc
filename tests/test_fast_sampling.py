"""Generation from cached activations (Ramachandran et al. 2017) draws exactly what the naive
sampler -- one full network pass per dimension -- draws with the same random numbers, for
PixelCNN (mask A, then B) and Gated PixelCNN (both stacks), binary and 8-bit, one and three
channels (R, G, B order within a pixel), unconditional and class-conditional, and for completion;
and it never runs the full network. Speed is measured in scripts/bench_models.py, not here."""

import logging

import pytest
import torch

from dgm_cli import progress
from dgm_cli.models.autoregressive.base import PixelStepper
from test_autoregressive import make

CONVOLUTIONAL = ["pixelcnn", "gated_pixelcnn"]
CASES = [((1, 5, 6), "binary"), ((3, 4, 3), "binary"), ((3, 3, 3), "8bit"), ((1, 4, 4), "8bit")]


def both(model, draw, seed=0):
    """``draw()`` from cached activations and naively, each from the same seed."""
    torch.manual_seed(seed)
    cached = draw()
    torch.manual_seed(seed)
    with model.naive_sampling():
        naive = draw()
    return cached, naive


@pytest.mark.parametrize("name", CONVOLUTIONAL)
@pytest.mark.parametrize("shape,representation", CASES)
def test_cached_samples_equal_naive_samples(name, shape, representation):
    model = make(name, shape, representation)
    cached, naive = both(model, lambda: model.sample(9, temperature=0.8))
    assert torch.equal(cached, naive)
    assert not (cached == cached[:1]).all()  # the examples differ: the check is not vacuous


@pytest.mark.parametrize("name", CONVOLUTIONAL)
def test_kernels_larger_than_the_image(name):
    """The default 7x7 first layer on a 3x4 image: windows reach far into the padding."""
    model = make(name, (1, 3, 4), input_kernel_size=7, kernel_size=5)
    assert torch.equal(*both(model, lambda: model.sample(8)))


@pytest.mark.parametrize("name", CONVOLUTIONAL)
@pytest.mark.parametrize("shape,representation", CASES)
def test_cached_completion_equals_naive_completion(name, shape, representation):
    """The default mask (top half observed) and a scattered one, where observed pixels come after
    drawn ones; a pixel whose channels are partly observed too."""
    model = make(name, shape, representation)
    levels = 1 if representation == "binary" else 255
    x = torch.randint(levels + 1, (3, *shape)).float() / levels
    assert torch.equal(*both(model, lambda: model.sample_complete(x, num_completions=2)))
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(3)) < 0.4
    cached, naive = both(model, lambda: model.sample_complete(x, mask=mask, num_completions=2))
    assert torch.equal(cached, naive)
    assert torch.equal(cached[:, 1:3][..., mask], x[:, None].expand(-1, 2, *shape)[..., mask])


def test_conditional_gated_pixelcnn():
    model = make("gated_pixelcnn", (3, 4, 4), num_classes=3, conditional=True)
    assert torch.equal(*both(model, lambda: model.sample(6)))
    assert torch.equal(*both(model, lambda: model.sample(4, label=2)))
    x = torch.bernoulli(torch.full((2, 3, 4, 4), 0.5))
    assert torch.equal(*both(model, lambda: model.sample_complete(x, torch.tensor([0, 2]), num_completions=2)))


@pytest.mark.parametrize("name", CONVOLUTIONAL)
def test_cached_sampling_never_runs_the_whole_network(name, monkeypatch):
    """Each new pixel costs only what depends on it: ``logits`` (the full pass) is never called,
    where the naive sampler calls it once per dimension."""
    model = make(name, (3, 3, 4))
    assert isinstance(model.stepper(torch.zeros(1, 3, 3, 4), None), PixelStepper)
    calls = []
    full_pass = model.logits
    monkeypatch.setattr(model, "logits", lambda *a: calls.append(1) or full_pass(*a))
    model.sample(2)
    assert calls == []
    with model.naive_sampling():
        model.sample(2)
    assert len(calls) == model.data.dim


def sampler_under_test(name: str):
    """(model, draw two samples) for a sampler of each kind: pixels, denoising steps, Langevin steps."""
    if name == "pixelcnn":
        model = make("pixelcnn", (1, 3, 3))
        return lambda: model.sample(2), model
    if name == "ddpm":
        from test_diffusion import tiny

        model = tiny()
        return lambda: model.sample(2), model
    from test_energy import build

    model = build("ebm", shape=(1, 8, 8), buffer_size=32, sgld_steps=2, sample_steps=3, width=4)
    return lambda: model.sample(2), model


@pytest.mark.parametrize("name, unit", [("pixelcnn", "px"), ("ddpm", "step"), ("ebm", "step")])
def test_slow_sampling_reports_progress_in_the_log(monkeypatch, caplog, name, unit):
    """Off a terminal, sampling that takes longer than PROGRESS_AFTER logs where it is and when it ends."""
    monkeypatch.setattr(progress, "PROGRESS_AFTER", 0.0)
    draw, _ = sampler_under_test(name)
    with caplog.at_level(logging.INFO, logger="dgm.sample"):
        draw()
    lines = [r.getMessage() for r in caplog.records]
    assert any(f" {unit} after" in m and "left" in m for m in lines) and any("done in" in m for m in lines), lines


def test_a_training_steps_langevin_chain_logs_no_progress(monkeypatch, caplog):
    """The EBM's negatives in a training step run the same sampler, silently: the step is timed, not shown."""
    monkeypatch.setattr(progress, "PROGRESS_AFTER", 0.0)
    _, model = sampler_under_test("ebm")
    with caplog.at_level(logging.INFO, logger="dgm.sample"):
        model(torch.rand(4, 1, 8, 8), None, "model")
    assert not caplog.records
