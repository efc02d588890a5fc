"""A researcher's own images (issue 20): every number says which data it is about, data that changed
or moved is caught, other data is scored only on purpose, and the loaders refuse what they would
otherwise have to guess, each in one paragraph. Images are written here with Pillow, runs are tiny."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from conftest import copy_run, run_dgm, run_folders
from dgm_cli.data import pipeline
from dgm_cli.errors import UserError
from dgm_cli.settings.schema import DataConfig

VAE = [
    "model=vae",
    "model.hidden=[16]",
    "model.latent_dim=2",
    "trainer.max_steps=2",
    "trainer.batch_size=8",
    "trainer.progress=false",
    "trainer.sample_every=0",
    "data.image_size=8",
    "data.val_size=2",
]
EVAL = ["limit=3", "estimator.k=2"]


def write_images(folder, n=30, seed=0, sizes=((12, 12),), grey=0):
    """``n`` random RGB PNGs cycling through ``sizes``, then ``grey`` greyscale ones."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    for i in range(grey):
        Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)).save(folder / f"grey{i}.png")
    return folder


def refused(result, *needles):
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    for needle in needles:
        assert needle in result.stderr, f"{needle!r} not in {result.stderr}"
    return result.stderr


def protocol(run):
    return json.loads((run / "checkpoints" / "eval.json").read_text())["protocol"]


@pytest.fixture(scope="module")
def photos_run(tmp_path_factory):
    """A VAE with its default config trained 2 steps on a folder of 30 RGB photos of two sizes and one
    greyscale one, named by a relative path: (the folder, the run). Read-only: copy the run to change it."""
    base = tmp_path_factory.mktemp("photos")
    write_images(base / "photos", sizes=((12, 12), (16, 10)), grey=1)
    run_dgm("train", "dataset=image_folder", "data.path=photos", *VAE, cwd=base)
    (run,) = run_folders(base)
    return base / "photos", run


def test_colour_photos_are_not_binarized_and_the_log_says_what_was_done_to_them(photos_run):
    folder, run = photos_run
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["representation"] == "8bit"  # the VAE's default is binary
    assert state["config"]["data"]["representation"] is None  # the config stays as given: nothing written into it
    assert state["config"]["data"]["path"] == str(folder)  # the relative path, stored resolved
    data = state["data"]
    assert data["path"] == str(folder) and data["shape"] == [3, 8, 8] and data["representation"] == "8bit"
    assert data["sizes"] == {"train": 26, "val": 2, "test": 3} and data["source"]["files"] == 31
    assert set(data["fingerprints"]) == {"train", "val", "test"}
    log = (run / "train.log").read_text()
    assert (
        f"data: 31 images 12x12 (16), 16x10 (15) RGB (30), greyscale (1) from {folder}, resized to 8x8, converted "
        f"to RGB; 26 / 2 / 3 train/val/test; representation 8bit, not the model's default binary"
    ) in log, log


def test_a_changed_folder_is_refused_saying_what_changed_then_scored_on_purpose_apart(photos_run, tmp_path, dgm):
    folder, run = photos_run
    run = copy_run(run, tmp_path)
    changed = tmp_path / "changed"
    shutil.copytree(folder, changed)
    Image.new("RGB", (12, 12)).save(changed / "new.png")
    err = refused(
        dgm("eval", f"checkpoint={run}", f"data.path={changed}", *EVAL, check=False),
        "1 image file(s) were added (31 at training time, 32 now)",
        "dataset=image_folder",
    )
    assert not (run / "checkpoints" / "eval.json").exists()
    dgm("eval", f"checkpoint={run}", "dataset=image_folder", f"data.path={changed}", *EVAL)  # on purpose, as it says
    other = protocol(run)
    assert other["data"]["own"] is False and other["data"]["path"] == str(changed), err
    dgm("eval", f"checkpoint={run}", *EVAL)  # the run's own test split: eval.json is that one
    own = protocol(run)
    assert own["data"]["own"] is True and own["data"]["path"] == str(folder)
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert own["data"]["fingerprint"] == state["data"]["fingerprints"]["test"] != other["data"]["fingerprint"]
    report = dgm("report", str(run), f"out={tmp_path / 'report'}").stdout
    assert report.count("\nP1: ") == report.count("\nP2: ") == 1, report
    assert "OTHER DATA scored on purpose" in report.split("\nP2: ")[1].splitlines()[0]


def test_runs_on_two_folders_get_two_tables_and_a_moved_folder_is_re_pointed(photos_run, tmp_path, dgm):
    folder, run_a = photos_run
    run_a = copy_run(run_a, tmp_path / "a")
    write_images(tmp_path / "other", seed=1)
    dgm("train", "dataset=image_folder", "data.path=other", *VAE)
    (run_b,) = run_folders(tmp_path)
    dgm("eval", f"checkpoint={run_a}", *EVAL)
    dgm("eval", f"checkpoint={run_b}", *EVAL)
    report = dgm("report", str(run_a), str(run_b), f"out={tmp_path / 'report'}").stdout
    headings = [line for line in report.splitlines() if line.startswith("P1: ") or line.startswith("P2: ")]
    assert len(headings) == 2 and {str(folder), str(tmp_path / "other")} <= {
        h.split(" from ")[1].split(",")[0] for h in headings
    }, report
    (tmp_path / "other").rename(tmp_path / "moved")
    refused(
        dgm("eval", f"checkpoint={run_b}", *EVAL, check=False),
        f"data.path={tmp_path / 'other'}",
        "is not there any more",
        "data.path=<new place>",
    )
    refused(dgm("sample", f"checkpoint={run_b}", "num_samples=4", check=False), "is not there any more")
    dgm("eval", f"checkpoint={run_b}", "data.path=moved", *EVAL)  # the same images: accepted
    dgm("sample", f"checkpoint={run_b}", "data.path=moved", "mode=reconstruct", "num_samples=2", "out=r.png")
    assert (tmp_path / "r.png").exists()
    assert protocol(run_b)["data"]["path"] == str(tmp_path / "moved")
    assert protocol(run_b)["data"]["own"] is True


def test_a_resumed_run_refuses_data_that_changed(photos_run, tmp_path, dgm):
    folder, run = photos_run
    moved = tmp_path / "photos"
    shutil.copytree(folder, moved)
    (moved / "000.png").unlink()
    run = copy_run(run, tmp_path / "runs")
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    state["config"]["data"]["path"] = str(moved)  # the run's folder, one image gone since it started
    torch.save(state, run / "checkpoints" / "last.pt")
    refused(
        dgm("train", f"resume={run}", "trainer.max_steps=3", check=False),
        "the data changed since this run started",
        "1 image file(s) were removed",
    )


def test_every_unreadable_image_in_a_folder_is_named(dgm, tmp_path):
    folder = write_images(tmp_path / "images", n=4)
    (folder / "notes.png").write_text("not an image")
    (folder / "cut.png").write_bytes((folder / "000.png").read_bytes()[:60])  # a PNG cut short
    err = refused(
        dgm("train", "dataset=image_folder", f"data.path={folder}", "trainer.max_steps=1", check=False),
        "2 files are not images",
        str(folder / "notes.png"),
        str(folder / "cut.png"),
    )
    assert "text file" in err and not (tmp_path / "outputs").exists()


NPZ_REFUSALS = {
    "minus_one_to_one": (
        lambda: np.random.default_rng(0).uniform(-1, 1, (20, 8, 8, 3)).astype(np.float32),
        ["array 'x' holds floats from -0.9", "(x + 1) / 2", "floats in [0, 1]"],
    ),
    "strings": (lambda: np.array([["a", "b"]] * 20), ["array 'x' holds <U1 values, not numbers"]),
    "nan": (
        lambda: np.where(np.eye(8) > 0, np.nan, 0.5)[None].repeat(20, 0).astype(np.float32),
        ["array 'x' holds 160 NaN or infinite values"],
    ),
    "rank": (lambda: np.zeros((20, 64), np.uint8), ["array 'x' has shape (20, 64) (rank 2)", "N x H x W"]),
    "sixteen_bit": (lambda: np.full((20, 8, 8), 4000, np.uint16), ["uint16 integers from 4,000 to 4,000", "x // 256"]),
}


@pytest.mark.parametrize("case", sorted(NPZ_REFUSALS))
def test_npz_values_that_would_be_guessed_at_are_refused(case, tmp_path):
    make, needles = NPZ_REFUSALS[case]
    path = tmp_path / f"{case}.npz"
    np.savez(path, x=make())
    with pytest.raises(UserError) as err:
        pipeline.load(OmegaConf.merge(OmegaConf.structured(DataConfig), {"name": "npz", "path": str(path)}))
    for needle in (str(path), *needles):
        assert needle in str(err.value)


@pytest.mark.parametrize("case", ["minus_one_to_one", "strings"])
def test_a_refused_npz_exits_2_with_one_paragraph_and_no_run_folder(case, dgm, tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, x=NPZ_REFUSALS[case][0]())
    refused(dgm("train", "dataset=npz", f"data.path={path}", "trainer.max_steps=1", check=False), str(path), "'x'")
    assert not (tmp_path / "outputs").exists()


def test_npz_floats_in_the_unit_interval_are_read_as_their_8_bit_values(tmp_path):
    k = np.random.default_rng(0).integers(0, 256, (20, 3, 4, 4))
    path = tmp_path / "floats.npz"
    np.savez(path, x=(k / 255).astype(np.float32), y=np.arange(20) % 2)
    ds = pipeline.load(
        OmegaConf.merge(OmegaConf.structured(DataConfig), {"name": "npz", "path": str(path), "val_size": 0})
    )
    everything = torch.cat([ds.train[0], ds.test[0]]).flatten().sort().values
    assert torch.equal(everything, torch.from_numpy(k).to(torch.uint8).flatten().sort().values)


def test_pixelcnn_on_colour_images_names_every_size_that_must_divide_and_one_that_works():
    from dgm_cli.data.spec import DataSpec
    from dgm_cli.models.registry import build_model

    spec = DataSpec(shape=(3, 8, 8), representation="8bit")
    with pytest.raises(UserError) as err:
        build_model({"name": "pixelcnn", "hidden_channels": 16, "head_channels": 32}, {"name": "nll"}, spec)
    message = str(err.value)
    assert "model.hidden_channels=16 and model.head_channels=32" in message
    assert "model.hidden_channels=18 model.head_channels=33" in message
    build_model(
        {"name": "pixelcnn", "hidden_channels": 18, "head_channels": 33, "num_blocks": 1}, {"name": "nll"}, spec
    )


def test_a_model_is_scored_on_other_data_of_its_shape_only_and_on_purpose(toy_run, tmp_path, dgm):
    run = copy_run(toy_run, tmp_path)
    dgm("eval", f"checkpoint={run}", "dataset=eight_gaussians", "limit=20", "estimator.k=2")
    p = protocol(run)
    assert p["dataset"] == "eight_gaussians" and p["data"]["own"] is False
    assert json.loads((run / "checkpoints" / "eval.json").read_text())["trained_on"]["dataset"] == "moons"
    refused(
        dgm("eval", f"checkpoint={run}", "dataset=linear_gaussian", "limit=20", check=False),
        "dataset=linear_gaussian holds examples of shape 20x2",
        "trained on 2 (moons)",
    )


def test_a_generated_toy_split_that_differs_is_scored_with_a_warning_not_refused(toy_run, tmp_path, dgm):
    run = copy_run(toy_run, tmp_path)
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    state["data"]["fingerprints"]["test"] = "0" * 16  # as drawn by another machine's vector maths
    torch.save(state, run / "checkpoints" / "last.pt")
    result = dgm("eval", f"checkpoint={run}", "limit=20", "estimator.k=2")
    said = result.stdout + result.stderr
    assert "drawn by dgm's code" in said and "0000000000000000" in said, said
    assert protocol(run)["data"]["own"] is True
