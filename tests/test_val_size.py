"""data.val_size=null (the default): a tenth of the training examples, at most 5,000, so that a small
data set of one's own trains by default and the built-in ones hold out what they always did."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import compose_train
from dgm_cli.data import pipeline


def test_default_val_size_is_a_tenth_capped_at_5000():
    assert [pipeline.default_val_size(n) for n in (60000, 50000, 45000, 180, 12, 2, 1, 0)] == [
        5000,
        5000,
        4500,
        18,
        1,
        1,
        0,
        0,
    ]


@pytest.mark.parametrize("dataset", ["npz", "image_folder", "moons"])
def test_datasets_leave_val_size_to_the_default(dataset):
    assert compose_train(f"dataset={dataset}").data.val_size is None


def test_two_hundred_images_of_ones_own_load_with_the_defaults(tmp_path):
    """Was refused: 'data.val_size=500 is not below the 180 training examples'."""
    path = tmp_path / "mine.npz"
    np.savez(path, x=np.random.default_rng(0).integers(0, 256, (200, 8, 8), dtype=np.uint8))
    ds = pipeline.load(compose_train("dataset=npz", f"data.path={path}").data)
    assert (len(ds.train[0]), len(ds.val[0]), len(ds.test[0])) == (162, 18, 20)


def test_toys_hold_out_a_tenth_of_whatever_is_drawn():
    ds = pipeline.load(compose_train("dataset=moons", "data.train_size=2000").data)
    assert (len(ds.train[0]), len(ds.val[0])) == (1800, 200)


def test_mnist_still_holds_out_5000(data_root):
    ds = pipeline.load(compose_train("dataset=mnist").data)
    assert (len(ds.train[0]), len(ds.val[0])) == (55000, 5000)
