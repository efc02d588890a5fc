"""The Python API (dgm_cli/api.py): a run loaded in Python scores its data as `dgm eval` does, and
`dgm_cli.train` trains any number of runs in one process, refusing bad input with the command's message."""

from __future__ import annotations

import pytest
import torch

import dgm_cli
from conftest import TOY, copy_run
from dgm_cli.errors import UserError


def test_a_loaded_run_samples_and_scores_its_test_split_as_dgm_eval_does(toy_run, tmp_path):
    run = dgm_cli.load(copy_run(toy_run, tmp_path))
    assert not run.model.training and run.config.data.name == "moons" and run.step == 5
    assert len(run.data.test[0]) == 500  # the splits as the run saw them (TOY's data.test_size)
    samples = run.sample(7, temperature=0.5, seed=0)
    assert samples.shape == (7, 2) and torch.isfinite(samples).all()
    assert torch.equal(samples, run.sample(7, temperature=0.5, seed=0))

    x, _ = run.split("test")
    # one batch of all 500, seeded as dgm eval seeds (seed=0): the same importance samples, the same numbers
    ll = run.log_likelihood(x, seed=0, batch_size=500, k=20)
    report = run.evaluate(batch_size=500, estimator={"k": 20})
    assert report["likelihood"]["nll_nats"] == pytest.approx(ll.nll_nats, rel=1e-12)
    assert report["likelihood"]["kind"] == ll.kind == "stochastic lower bound on log p"
    assert report["likelihood"]["estimator"] == ll.estimator and ll.nats.shape == (500,)
    assert (run.folder / "checkpoints" / "eval.json").is_file()  # kept as the command keeps it

    # another seed: another estimate of the same number, within its Monte Carlo error
    other = run.log_likelihood(x, seed=1, k=20)
    assert abs(other.nll_nats - ll.nll_nats) < 4 * float(ll.nats.std() / len(x) ** 0.5)
    assert torch.isfinite(run.log_likelihood(samples, k=5).nats).all()  # samples score in the same space

    best = dgm_cli.load(run.folder / "checkpoints" / "best.pt")  # a checkpoint file loads as well
    assert best.checkpoint.name == "best.pt" and best.folder == run.folder


def test_train_twice_in_one_process_and_refusals_raise_the_commands_message(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    first = dgm_cli.train([*TOY, "trainer.max_steps=3"])
    second = dgm_cli.train([*TOY, "trainer.max_steps=4", "model.latent_dim=3"], seed=1)
    assert first.folder != second.folder and first.folder.parent.parent == tmp_path / "outputs" / "train"
    assert (first.step, second.step) == (3, 4)
    assert second.config.model.latent_dim == 3 and second.config.seed == 1
    assert first.config.model.latent_dim == 2  # nothing of the second call leaked into the first run

    with pytest.raises(UserError, match=r"trainer\.max_step.*Did you mean trainer\.max_steps\?") as refused:
        dgm_cli.train([*TOY, "trainer.max_step=3"])
    assert "\n" not in str(refused.value) and not str(refused.value).startswith("dgm train")
    with pytest.raises(UserError, match="steps= cannot be used with model=vae"):
        first.sample(2, steps=5)
    assert len(list((tmp_path / "outputs" / "train").glob("*/*"))) == 2  # the refusal left no folder
