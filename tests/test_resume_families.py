"""Resume is exact for the families with state beyond their weights: a GAN (which optimizer steps
depends on the step: n_critic), a flow with ActNorm (data-dependent initialisation, done once),
MADE with several mask sets (the set depends on the step), a VQ-VAE (its prior's stage starts at a
step; its dead-code clock is a buffer) and flow matching with minibatch OT pairs (a coupling computed
on the host from the step's draws). Through the CLI: `dgm train` for 15 steps
equals `dgm train` for 7 steps, then `dgm train resume=<run> trainer.max_steps=15`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import run_dgm, run_folders

pytestmark = pytest.mark.slow
COMMON = ["trainer.progress=false", "trainer.log_every=3", "trainer.sample_every=4", "trainer.batch_size=50", "seed=5"]
TOY = ["data.train_size=400", "data.test_size=100", "data.val_size=100"]  # 6 batches an epoch: 15 steps cross two


def small_images(path):
    """300 8x8 grey images with structure (a bright square at a random place), as an npz."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 60, (300, 8, 8)).astype(np.uint8)
    for img, (i, j) in zip(x, rng.integers(0, 5, (300, 2))):
        img[i : i + 3, j : j + 3] = 230
    np.savez(path, x=x)
    return path


CASES = {
    "wgan_gp": ["model=wgan_gp", "dataset=eight_gaussians", "model.hidden=16", "model.depth=2", *TOY],
    "glow": ["model=glow", "dataset=moons", "model.depth=2", "model.hidden_features=16", *TOY],
    "made": ["model=made", "dataset=npz", "model.hidden_sizes=[32]", "model.num_masks=3", "data.val_size=30"],
    # the prior's stage starts at step 10, inside the resumed part: which optimizer steps depends on the step
    "vq_vae": [
        "model=vq_vae",
        "dataset=npz",
        "model.hidden_channels=8",
        "model.num_codes=8",
        "model.code_dim=4",
        "model.prior_start=9",
        "model.prior_channels=4",
        "model.prior_blocks=1",
        "model.prior_head_channels=8",
        "data.val_size=30",
    ],
    # minibatch OT pairs: the noise, its pairing and t come from the per-step seeded RNG alone
    "flow_matching": [
        "model=flow_matching",
        "dataset=moons",
        "model.path=ot",
        "model.hidden=16",
        "model.depth=2",
        "model.sample_steps=4",
        *TOY,
    ],
    "draw": ["model=draw", "dataset=npz", "model.steps=3", "model.hidden=16", "model.latent_dim=4", "data.val_size=30"],
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_resumed_run_equals_an_uninterrupted_one(name, tmp_path):
    args = [*CASES[name], *COMMON]
    if "dataset=npz" in args:
        args.append(f"data.path={small_images(tmp_path / 'images.npz')}")
    straight, split = tmp_path / "straight", tmp_path / "split"
    straight.mkdir(), split.mkdir()
    run_dgm("train", *args, "trainer.max_steps=15", cwd=straight)
    run_dgm("train", *args, "trainer.max_steps=7", cwd=split)
    (run,) = run_folders(split)
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"] == 7
    run_dgm("train", f"resume={run}", "trainer.max_steps=15", cwd=split)
    a = torch.load(run_folders(straight)[0] / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 15
    assert a["model"].keys() == b["model"].keys()
    differ = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
    assert not differ, f"{name}: {differ} differ after resuming at step 7"
    for opt in a["optimizers"]:
        for i, s in a["optimizers"][opt]["state"].items():
            assert all(torch.equal(v, b["optimizers"][opt]["state"][i][k]) for k, v in s.items() if torch.is_tensor(v))
