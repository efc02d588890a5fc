"""Data: file formats (written by the tests), representations, and batches that resume exactly."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from dgm_cli.data import pipeline
from dgm_cli.errors import UserError
from dgm_cli.settings.schema import DataConfig


def data_cfg(**kw):
    return OmegaConf.merge(OmegaConf.structured(DataConfig), kw)


def write_cifar(root, n_per_batch=4):
    """Files in CIFAR-10's python format (cifar-10-batches-py/data_batch_{1..5}, test_batch)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {
            "data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
            "labels": list(rng.integers(0, 10, n_per_batch)),
        }
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)
    return folder


def test_cifar10_reader_on_files_in_its_format(tmp_path):
    folder = write_cifar(tmp_path)
    ds = pipeline.load(data_cfg(name="cifar10", root=str(tmp_path), val_size=2, download=False))
    assert ds.train[0].shape == (18, 3, 32, 32) and ds.val[0].shape == (2, 3, 32, 32)
    assert ds.test[0].shape == (4, 3, 32, 32) and ds.test[0].dtype == torch.uint8
    with open(folder / "test_batch", "rb") as f:
        raw = pickle.load(f)
    # channel-major rows: the first 1024 bytes are the red plane
    assert torch.equal(ds.test[0][0, 0].flatten(), torch.from_numpy(raw["data"][0, :1024]))
    assert ds.test[1].tolist() == [int(v) for v in raw["labels"]]


def test_image_folder_with_classes_grayscale_and_resize(tmp_path):
    for c in ("cats", "dogs"):
        (tmp_path / c).mkdir()
        for i in range(10):
            Image.fromarray(np.full((40, 30, 3), 10 * i, dtype=np.uint8)).save(tmp_path / c / f"{i}.png")
    ds = pipeline.load(data_cfg(name="image_folder", path=str(tmp_path), image_size=16, channels=1, val_size=2))
    total = len(ds.train[0]) + len(ds.val[0]) + len(ds.test[0])
    assert total == 20 and ds.train[0].shape[1:] == (1, 16, 16) and ds.num_classes == 2


def test_npz_images_and_labels(tmp_path):
    path = tmp_path / "faces.npz"
    np.savez(path, x=np.random.rand(30, 8, 8, 3).astype(np.float32), y=np.arange(30) % 3)
    ds = pipeline.load(data_cfg(name="npz", path=str(path), val_size=3))
    assert ds.train[0].shape[1:] == (3, 8, 8) and ds.train[0].dtype == torch.uint8
    assert len(ds.test[0]) == 3 and ds.num_classes == 3


def test_bad_paths_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="data.path"):
        pipeline.load(data_cfg(name="image_folder", path=str(tmp_path / "none")))
    with pytest.raises(UserError, match="cifar-10-batches-py"):
        pipeline.load(data_cfg(name="cifar10", root=str(tmp_path), download=False))


@pytest.mark.parametrize("name", ["moons", "eight_gaussians", "twenty_five_gaussians", "checkerboard", "pinwheel"])
def test_toys_are_fixed_and_in_the_plot_square(name):
    a = pipeline.load(data_cfg(name=name, train_size=3000, test_size=500, val_size=100))
    b = pipeline.load(data_cfg(name=name, train_size=3000, test_size=500, val_size=100))
    assert torch.equal(a.test[0], b.test[0]) and a.train[0].shape == (2900, 2)
    assert (a.train[0].abs() < 4.5).float().mean() > 0.99


def test_dynamic_binarization_is_fresh_per_batch_and_evaluation_is_fixed():
    x = torch.full((64, 1, 4, 4), 128, dtype=torch.uint8)
    it = pipeline.BatchIterator(x, None, "binary", "dynamic", 64, torch.device("cpu"), seed=0)
    first, second = next(it)[0], next(it)[0]  # same images, two epochs
    assert set(first.unique().tolist()) <= {0.0, 1.0} and not torch.equal(first, second)
    assert torch.equal(pipeline.fixed(x, "binary"), pipeline.fixed(x, "binary"))
    static = pipeline.BatchIterator(x, None, "binary", "static", 64, torch.device("cpu"), seed=0)
    a, b = next(static)[0], next(static)[0]
    assert torch.equal(a.sort(0).values, b.sort(0).values)  # same binarized set, reshuffled


def test_dequantization_stays_in_each_value_bin():
    x = torch.randint(0, 256, (100, 1, 3, 3), dtype=torch.uint8)
    y = pipeline.transform(x, "dequantized", torch.Generator().manual_seed(0))
    assert torch.equal(torch.floor(y * 256).to(torch.uint8), x)


def test_each_representation_is_its_formula_and_the_one_table_is_what_validation_and_help_read(dgm):
    """data/representations.py's table gives, for a fixed uint8 batch and generator, the numbers of each
    representation's definition (the if-chain it replaced computed exactly these); validation refuses a
    name outside it and `--help` lists its names."""
    import dataclasses

    from dgm_cli.data.representations import REPRESENTATIONS

    x = torch.randint(0, 256, (8, 1, 5, 5), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    xf = x.float()
    expected = {
        "binary": torch.bernoulli(xf / 255.0, generator=g()),
        "8bit": xf / 255.0,
        "dequantized": (xf + torch.rand(x.shape, generator=g())) / 256.0,
        "continuous": xf,
    }
    assert list(REPRESENTATIONS) == list(expected)
    for name, want in expected.items():
        assert torch.equal(pipeline.transform(x, name, g()), want), name
    assert torch.equal(pipeline.transform(xf, "binary", g()), xf)  # points and sequences are used as given
    (rep,) = [f for f in dataclasses.fields(DataConfig) if f.name == "representation"]
    assert rep.metadata["choices"] == tuple(REPRESENTATIONS)
    bad = dgm("train", "dataset=moons", "data.representation=rgb", check=False)
    assert bad.returncode == 2 and "binary, 8bit, dequantized, continuous" in bad.stderr
    assert "null: the model's own; binary | 8bit | dequantized | continuous" in dgm("train", "--help").stdout


def test_static_binarization_batches_are_the_fixed_binarization():
    x = torch.randint(0, 256, (16, 1, 3, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    it = pipeline.BatchIterator(x, None, "binary", "static", 4, torch.device("cpu"), seed=0)
    binarized = pipeline.fixed(x, "binary")
    for _ in range(4):  # one epoch: every batch is rows of the once-binarized set, in the epoch's order
        idx = it._permutation()[it.position * 4 : (it.position + 1) * 4]
        assert torch.equal(next(it)[0], binarized[idx])


def test_batches_resume_exactly():
    x = torch.randint(0, 256, (50, 1, 2, 2), dtype=torch.uint8)
    make = lambda: pipeline.BatchIterator(x, None, "binary", "dynamic", 8, torch.device("cpu"), seed=1)  # noqa: E731
    straight = make()
    expected = [next(straight)[0] for _ in range(15)]
    first = make()
    for _ in range(9):
        next(first)
    resumed = make()
    resumed.load_state_dict(first.state_dict())
    assert all(torch.equal(next(resumed)[0], e) for e in expected[9:])


def test_real_mnist_shapes(data_root):
    ds = pipeline.load(data_cfg(name="mnist", root=str(data_root), val_size=5000))
    assert ds.train[0].shape == (55000, 1, 28, 28) and ds.test[0].shape == (10000, 1, 28, 28)
    assert ds.num_classes == 10


def test_the_training_set_goes_on_a_gpu_only_where_it_leaves_room_for_the_model():
    """At most half the GPU's free memory holds the training set; a larger one stays in pinned host memory
    and the run's log says which (the GPU is stood in for by its device name and free bytes)."""
    import torch

    from dgm_cli.data.pipeline import data_placement

    gpu, mib = torch.device("cuda", 0), 2**20
    assert data_placement(300 * mib, gpu, True, 1000 * mib) == (True, "training data: 300 MiB on cuda:0")
    on, note = data_placement(700 * mib, gpu, True, 1000 * mib)
    assert not on and "700 MiB kept in pinned host memory" in note and "50% of the 1.0 GiB free" in note
    on, note = data_placement(3 * mib, gpu, False, None)
    assert not on and "data.on_device=false" in note
    assert data_placement(5 * 2**30, torch.device("cpu"), True, None) == (True, "training data: 5.0 GiB in memory")
