"""Binarized MNIST's .amat files, CIFAR-10 pickles that cannot run code, and binarization noise that
comes only from the iterator's own generator (what checkpoints hold)."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import run_dgm
from dgm_cli.data import files, pipeline
from dgm_cli.errors import UserError
from dgm_cli.settings.schema import DataConfig


def data_cfg(**kw):
    return OmegaConf.merge(OmegaConf.structured(DataConfig), kw)


def write_amat(root, sizes=None, seed=0):
    """Small files in Larochelle & Murray's format: one image per line, 784 space-separated 0/1 values."""
    folder = root / "binarized_mnist"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (sizes or {"train": 12, "valid": 4, "test": 5}).items():
        a = rng.integers(0, 2, (n, 784))
        (folder / f"binarized_mnist_{split}.amat").write_text("".join(" ".join(map(str, row)) + "\n" for row in a))
        arrays[split] = a
    return arrays


def test_binarized_mnist_reads_the_amat_files_as_they_are(tmp_path):
    arrays = write_amat(tmp_path)
    ds = pipeline.load(data_cfg(name="binarized_mnist", root=str(tmp_path), val_size=4, download=False))
    assert (
        ds.train[0].shape == (12, 1, 28, 28)
        and ds.val[0].shape == (4, 1, 28, 28)
        and ds.test[0].shape == (5, 1, 28, 28)
    )
    assert ds.train[1] is None and ds.num_classes == 0
    assert torch.equal(ds.test[0].flatten(1) // 255, torch.from_numpy(arrays["test"]).to(torch.uint8))
    # row-major 28 x 28: the second line of pixels starts at value 28
    assert int(ds.test[0][0, 0, 1, 0]) == 255 * int(arrays["test"][0, 28])
    # the binary representation keeps every pixel: nothing is drawn again
    assert torch.equal(pipeline.fixed(ds.test[0], "binary"), ds.test[0].float() / 255)
    merged = pipeline.load(data_cfg(name="binarized_mnist", root=str(tmp_path), val_size=0, download=False))
    assert len(merged.train[0]) == 16 and len(merged.val[0]) == 0


def test_binarized_mnist_refuses_another_validation_size_and_bad_files(tmp_path):
    write_amat(tmp_path)
    with pytest.raises(UserError, match="val_size=100"):
        pipeline.load(data_cfg(name="binarized_mnist", root=str(tmp_path), val_size=100, download=False))
    bad = tmp_path / "binarized_mnist" / "binarized_mnist_test.amat"
    bad.write_text("0 1 0.5\n")
    with pytest.raises(UserError, match="not a binarized MNIST"):
        pipeline.load(data_cfg(name="binarized_mnist", root=str(tmp_path), val_size=4, download=False))


def test_missing_binarized_mnist_offline_names_the_files(tmp_path):
    write_amat(tmp_path, {"train": 3})
    proc = run_dgm(
        "train", "dataset=binarized_mnist", f"data.root={tmp_path}", "data.download=false", cwd=tmp_path, check=False
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    for needle in ("binarized_mnist_valid.amat", "binarized_mnist_test.amat", "data.root", str(tmp_path)):
        assert needle in proc.stderr
    assert "binarized_mnist_train.amat" not in proc.stderr  # present, so not named


class RunsCode:
    """What a tampered pickle would hold: unpickling it calls os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_cifar_pickles_cannot_run_code(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    good = {
        "data": rng.integers(0, 256, (2, 3072), dtype=np.uint8),
        "labels": [1, 2],
        "filenames": [b"a", b"b"],
        "batch_label": "training batch",
    }
    for name in files.CIFAR_FILES:
        for protocol in (2, pickle.HIGHEST_PROTOCOL):  # the originals are protocol 2; read newer ones too
            (folder / name).write_bytes(pickle.dumps(good, protocol=protocol))
            assert files.read_array_pickle(folder / name)["labels"] == [1, 2]
    marker = tmp_path / "ran"
    (folder / "test_batch").write_bytes(pickle.dumps({"data": good["data"], "labels": RunsCode(marker)}, protocol=2))
    with pytest.raises(UserError, match=r"test_batch.*posix.system|test_batch.*os.system"):
        pipeline.load(data_cfg(name="cifar10", root=str(tmp_path), val_size=1, download=False))
    assert not marker.exists(), "opening the file ran its code"


def test_binarization_noise_comes_from_the_iterator_generator_only():
    """Whatever the global generators did, the same iterator state gives the same batch."""
    x = torch.full((16, 1, 3, 3), 128, dtype=torch.uint8)
    make = lambda: pipeline.BatchIterator(x, None, "binary", "dynamic", 8, torch.device("cpu"), seed=0)  # noqa: E731
    a, b = make(), make()
    torch.manual_seed(1)
    first = next(a)[0]
    torch.manual_seed(2)
    assert torch.equal(first, next(b)[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device (CUDA) next to the CPU generator")
@pytest.mark.parametrize("representation", ["binary", "dequantized"])
def test_noise_drawn_on_a_cpu_generator_for_another_device(representation):
    """MPS's case: the data on the device, the noise generator on the CPU. The noise must come from
    that generator (checkpoints hold it), not from the device's global generator."""
    x = torch.randint(0, 256, (16, 1, 3, 3), dtype=torch.uint8)
    batches = []
    for global_seed in (1, 2):
        it = pipeline.BatchIterator(x, None, representation, "dynamic", 8, torch.device("cuda"), seed=0)
        it.noise = torch.Generator().manual_seed(7)
        torch.cuda.manual_seed(global_seed)
        batches.append(next(it)[0].cpu())
    assert torch.equal(*batches)
