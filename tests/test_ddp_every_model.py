"""Every registered model trains two steps under DistributedDataParallel (2 gloo processes): a model
that leaves a parameter without gradient, or that only one process reaches a collective in, fails
here by name before it ships. Both processes start once for all models (tests/ddp_steps.py)."""

from __future__ import annotations

import pytest

import ddp_steps
from dgm_cli.models import load_all
from dgm_cli.models.registry import MODELS

load_all()
NAMES = sorted(MODELS)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("torchrun")]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict:
    return ddp_steps.run(NAMES, tmp_path_factory.mktemp("ddp_every_model"))


@pytest.mark.parametrize("name", NAMES)
def test_every_model_trains_two_steps_in_two_processes(name, outcomes):
    assert name in outcomes, f"{name} was not trained (the processes stopped before it)"
    assert outcomes[name] is None, f"model={name} under 2-process DDP:\n{outcomes[name]}"
