"""Image grids and plots never carry a NaN or inf into a PNG or TensorBoard: a sample that holds one
is drawn as a red cell (images) or left out (points), and a message says how many there were."""

from __future__ import annotations

import pytest
import torch

from dgm_cli import images
from dgm_cli.errors import UserError


def _samples_with_nan(n: int = 6, bad=(1, 4), channels: int = 1) -> torch.Tensor:
    x = torch.rand(n, channels, 5, 5)
    for i in bad:
        x[i, 0, 2, 3] = float("nan") if i % 2 else float("inf")
    return x


@pytest.mark.parametrize("channels", [1, 3])
def test_grid_draws_non_finite_samples_as_red_cells(channels):
    x = _samples_with_nan(channels=channels)
    g = images.grid(x, nrow=6)
    assert torch.isfinite(g).all()
    cells = [g[:, 2:7, 2 + 7 * i : 7 + 7 * i] for i in range(6)]  # padding 2, cells 5x5
    red = torch.tensor(images.MARK).view(3, 1, 1)
    assert [bool((c == red).all()) for c in cells] == [False, True, False, False, True, False]
    torch.testing.assert_close(cells[0], x[0].expand(3, -1, -1))  # finite samples are drawn as they are


def test_check_finite_counts_and_says_what_to_do():
    assert images.check_finite(torch.rand(4, 1, 5, 5), "step 10") is None
    msg = images.check_finite(_samples_with_nan(), "step 10")
    assert msg.startswith("step 10: 2 of 6 samples") and "red cells" in msg and "temperature" in msg
    points = torch.randn(10, 2)
    points[3, 1] = float("nan")
    assert "1 of 10" in images.check_finite(points, "dgm sample")


def test_histogram_leaves_non_finite_points_out():
    points = torch.zeros(5, 2)
    points[0, 0] = float("inf")
    points[1, 1] = float("nan")
    h = images.histogram(points, bins=4)
    assert torch.isfinite(h).all() and h.max() == 1.0


def test_dgm_sample_warns_about_some_and_refuses_all_non_finite(capsys):
    from dgm_cli.commands.sample import warn_non_finite

    x = _samples_with_nan()
    assert warn_non_finite(x) is x
    assert "dgm sample: 2 of 6 samples hold NaN or inf" in capsys.readouterr().err
    with pytest.raises(UserError, match="6 of 6 samples .* Nothing was written"):
        warn_non_finite(torch.full((6, 1, 5, 5), float("nan")))


@pytest.mark.parametrize("n, channels, nrow", [(64, 1, 8), (10, 3, 4), (7, 1, 3), (1, 1, 1)])
def test_tile_lays_out_grids_as_torchvision_does(n, channels, nrow):
    """dgm draws its own grids (importing torchvision costs every command seconds); the layout users
    know from torchvision's make_grid, padding, grayscale-to-RGB and a lone image included, stays."""
    from torchvision.utils import make_grid

    x = torch.rand(n, channels, 5, 6)
    assert torch.equal(images.tile(x, nrow, 2, 0.5), make_grid(x, nrow=nrow, padding=2, pad_value=0.5))


def test_save_image_writes_the_8_bit_levels_of_the_image(tmp_path):
    from PIL import Image

    image = torch.rand(3, 4, 5)
    images.save_image(image, tmp_path / "a" / "grid.png")
    with Image.open(tmp_path / "a" / "grid.png") as png:
        read = torch.from_numpy(__import__("numpy").array(png.convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(read, (image * 255 + 0.5).floor().to(torch.uint8))


def test_the_suffix_of_out_decides_the_format(tmp_path):
    """`dgm sample out=x.jpg` writes a JPEG (it once wrote PNG bytes under a .jpg name)."""
    from PIL import Image

    image = torch.rand(3, 8, 8)
    for name, fmt in (("x.png", "PNG"), ("x.jpg", "JPEG"), ("x.JPEG", "JPEG")):
        images.save_image(image, tmp_path / name)
        with Image.open(tmp_path / name) as written:
            assert written.format == fmt, name


def test_a_reconstruction_grid_alternates_rows_of_inputs_and_their_reconstructions():
    from dgm_cli.models.base import alternating_rows

    x = torch.arange(20.0).view(20, 1, 1, 1)
    grid = alternating_rows(x, lambda v: -v)  # 16 of the 20 fill two rows of 8
    assert grid.shape == (4, 8, 1, 1, 1)
    assert torch.equal(grid[0].flatten(), torch.arange(8.0)) and torch.equal(grid[1], -grid[0])
    assert torch.equal(grid[2].flatten(), torch.arange(8.0, 16.0)) and torch.equal(grid[3], -grid[2])
    assert alternating_rows(x[:3], lambda v: v + 1).shape == (2, 3, 1, 1, 1)  # fewer than 8: one row
