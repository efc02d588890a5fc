"""MNIST and Fashion-MNIST are read by dgm's own IDX reader (not torchvision's, whose import costs every
command seconds): it must give exactly torchvision's tensors, and refuse a damaged file in a sentence."""

from __future__ import annotations

import pytest
import torch

from dgm_cli.data import files
from dgm_cli.errors import UserError


def write_idx(path, array: torch.Tensor) -> None:
    header = bytes([0, 0, 8, array.dim()]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    path.write_bytes(header + array.to(torch.uint8).contiguous().numpy().tobytes())


def test_reads_what_an_idx_file_holds(tmp_path):
    x = torch.randint(0, 256, (3, 4, 5), dtype=torch.uint8)
    write_idx(tmp_path / "f", x)
    assert torch.equal(files.read_idx(tmp_path / "f"), x)


@pytest.mark.parametrize("damage", ["truncated", "not idx"])
def test_a_damaged_idx_file_is_refused_in_a_sentence(tmp_path, damage):
    write_idx(tmp_path / "f", torch.zeros(2, 3, 3))
    data = (tmp_path / "f").read_bytes()
    (tmp_path / "f").write_bytes(data[:-1] if damage == "truncated" else b"\x89PNG" + data[4:])
    with pytest.raises(UserError, match="truncated" if damage == "truncated" else "not an IDX file"):
        files.read_idx(tmp_path / "f")


@pytest.mark.parametrize("name", ["MNIST", "FashionMNIST"])
def test_mnist_reads_exactly_as_torchvision_reads_it(data_root, name):
    import torchvision

    if not (data_root / name / "raw").exists():
        pytest.skip(f"no {name} under {data_root}")
    (x_train, y_train), (x_test, y_test) = files.load_idx(str(data_root), name, download=False)
    for train, x, y in ((True, x_train, y_train), (False, x_test, y_test)):
        reference = getattr(torchvision.datasets, name)(str(data_root), train=train, download=False)
        assert x.shape == (len(reference.data), 1, 28, 28) and x.dtype == torch.uint8
        assert torch.equal(x[:, 0], reference.data) and torch.equal(y, reference.targets.long())
