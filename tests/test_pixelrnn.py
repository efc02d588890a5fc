"""PixelRNN specifics (van den Oord et al. 2016a). The family's shared properties -- no conditional
sees itself or a later pixel, probabilities over all 3x3 binary images sum to one, sampling matches
the likelihood, completion -- run for row_lstm and diagonal_bilstm in test_autoregressive.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from dgm_cli.models.autoregressive.pixelrnn import DiagonalBiLSTM, PixelRNNConfig, skew, unskew
from test_autoregressive import dependencies, make

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_skew_shifts_row_i_by_i_and_unskew_inverts_it():
    x = torch.arange(2 * 3 * 4, dtype=torch.float32).view(1, 2, 3, 4)
    s = skew(x)
    assert s.shape == (1, 2, 3, 6)
    for i in range(3):
        assert torch.equal(s[:, :, i, i : i + 4], x[:, :, i]) and (s[:, :, i, :i] == 0).all()
    assert torch.equal(unskew(s, 4), x)


@pytest.mark.parametrize("kernel", [3, 5])
def test_diagonal_bilstm_sees_the_whole_context_but_the_last_pixel_of_the_row_above(kernel):
    """Every conditional depends on every earlier pixel, with one exception that the architecture
    implies: the last pixel of row i-1 reaches row i only through the k x k mask-A input layer, so the
    first W - 1 - k//2 pixels of row i (which that window does not cover) do not see it."""
    h, w = 4, 6
    model = make(
        "diagonal_bilstm", (1, h, w), num_layers=2, hidden_channels=12, head_channels=12, input_kernel_size=kernel
    )
    dep = dependencies(model, torch.rand(8, 1, h, w))
    expected = torch.tril(torch.ones_like(dep), diagonal=-1)
    for i in range(1, h):
        for j in range(w - 1 - kernel // 2):
            expected[i * w + j, (i - 1) * w + w - 1] = False
    assert torch.equal(dep, expected)


def test_mirrored_direction_is_shifted_down_one_row():
    """One Diagonal BiLSTM layer: output (i, j) sees pixels up and to the right (only the mirrored
    direction reaches them) but none of its own row's later pixels, nor any later row."""
    torch.manual_seed(0)
    layer = DiagonalBiLSTM(2, 2, 1)
    x = torch.randn(1, 2, 4, 5, requires_grad=True)
    i, j = 2, 1
    (g,) = torch.autograd.grad(layer(x)[0, :, i, j].sum(), x)
    seen = g[0].abs().sum(0) > 0  # (H, W)
    assert not seen[i, j + 1 :].any() and not seen[i + 1 :].any()
    assert seen[i - 1, 4] and seen[0, 4]  # up-right: the mirrored direction, shifted
    assert seen[i, : j + 1].all()  # left and itself (1x1 input-to-state, mask B)


def test_row_lstm_has_a_triangular_receptive_field():
    """The same check shows the Row LSTM's limit (Sec. 3.1): pixel (4, 0) never sees (0, 6)."""
    model = make("row_lstm", (1, 5, 7), num_layers=1)
    dep = dependencies(model, torch.rand(2, 1, 5, 7))
    assert dep[4 * 7 + 0, 3 * 7 + 1] and not dep[4 * 7 + 0, 0 * 7 + 6]


@pytest.mark.parametrize("name", ["row_lstm", "diagonal_bilstm"])
def test_model_yaml_matches_the_dataclass(name):
    cfg = yaml.safe_load((CONFIGS / "model" / f"{name}.yaml").read_text())
    assert cfg.pop("name") == name and cfg.pop("representation") == "binary"
    cfg.pop("defaults")
    assert PixelRNNConfig(**cfg) == PixelRNNConfig()
    preset = yaml.safe_load((CONFIGS / "experiment" / "diagonal_bilstm_mnist.yaml").read_text())
    assert set(preset["model"]) <= set(PixelRNNConfig.__dataclass_fields__)
