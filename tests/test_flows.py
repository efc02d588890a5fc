"""Normalizing flows: every layer and model is invertible, every log-determinant is
the log|det| of the autograd Jacobian, and the densities are normalised."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from torch.autograd.functional import jacobian

from conftest import phase_steps
from dgm_cli.errors import UserError
from dgm_cli.models.base import DataSpec
from dgm_cli.models.flow import layers as L
from dgm_cli.models.flow.base import bits_per_dim
from dgm_cli.models.flow.glow import Glow, coupling_cnn
from dgm_cli.models.flow.maf import MAF
from dgm_cli.models.flow.realnvp import RealNVP, ResNet
from dgm_cli.models.nn.distributions import standard_normal_log_prob
from dgm_cli.models.registry import build_model

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
NLL = {"name": "nll"}


def perturb(module: nn.Module, std: float = 0.3, seed: int = 0) -> nn.Module:
    """Move every parameter away from its (often identity) initialisation."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(std * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def log_abs_det_jacobian(f, x: torch.Tensor) -> torch.Tensor:
    """log|det df/dx| for one example x (1, ...), from the full autograd Jacobian."""
    shape = x.shape
    jac = jacobian(lambda v: f(v.view(shape)).reshape(-1), x.reshape(-1))
    return torch.linalg.slogdet(jac)[1]


# --- layers --------------------------------------------------------------------------------


def _batch_norm(c):
    bn = L.BatchNorm(c)
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2.0)
    return bn


def _actnorm(c):
    layer = L.ActNorm(c)
    layer.initialized.fill_(True)  # checked on its own below; here only the map
    return layer


def _made(d, order):
    return L.MaskedAffineAutoregressive(d, [16, 16], order, generator=torch.Generator().manual_seed(0))


LAYERS = {
    # name: (factory, one example's shape, input range)
    "logit": (lambda: L.LogitTransform(0.05), (1, 4, 4), "unit"),
    "shift": (lambda: L.Shift(-0.5), (1, 4, 4), "unit"),
    "squeeze": (lambda: L.Squeeze(), (2, 4, 4), "real"),
    "unsqueeze": (lambda: L.Unsqueeze(), (8, 2, 2), "real"),
    "flatten": (lambda: L.Flatten((1, 4, 4)), (1, 4, 4), "real"),
    "actnorm_image": (lambda: _actnorm(3), (3, 2, 2), "real"),
    "actnorm_vector": (lambda: _actnorm(2), (2,), "real"),
    "batchnorm_image": (lambda: _batch_norm(3), (3, 2, 2), "real"),
    "batchnorm_vector": (lambda: _batch_norm(2), (2,), "real"),
    "invconv_image": (lambda: L.InvertibleConv1x1(4), (4, 2, 2), "real"),
    "invconv_vector": (lambda: L.InvertibleConv1x1(2), (2,), "real"),
    "coupling_checkerboard": (
        lambda: L.AffineCoupling(ResNet(1, 8, 2, 1), 1, mask="checkerboard", parity=1, scale="tanh"),
        (1, 4, 4),
        "real",
    ),
    "coupling_checkerboard_odd": (
        lambda: L.AffineCoupling(ResNet(2, 8, 4, 1), 2, mask="checkerboard", parity=0, scale="sigmoid"),
        (2, 3, 3),
        "real",
    ),
    "coupling_channel": (
        lambda: L.AffineCoupling(coupling_cnn(2, 8, 4), 4, mask="channel", parity=0, scale="sigmoid"),
        (4, 2, 2),
        "real",
    ),
    "coupling_channel_odd": (
        lambda: L.AffineCoupling(coupling_cnn(2, 8, 2), 3, mask="channel", parity=1, scale="tanh"),
        (3, 2, 2),
        "real",
    ),
    "coupling_vector": (
        lambda: L.AffineCoupling(L.coupling_mlp(1, 2, 8), 2, mask="channel", parity=1, scale="tanh"),
        (2,),
        "real",
    ),
    "split": (
        lambda: L.Split(L.AffineCoupling(coupling_cnn(1, 8, 2), 2, mask="channel", parity=1, scale="tanh")),
        (4, 2, 2),
        "real",
    ),
    "split_prior": (lambda: L.Split(L.InvertibleConv1x1(2), nn.Conv2d(2, 4, 3, padding=1)), (4, 2, 2), "real"),
    "made": (lambda: _made(5, torch.arange(1, 6)), (5,), "real"),
    "made_reversed": (lambda: _made(5, torch.arange(5, 0, -1)), (5,), "real"),
    "sequential": (
        lambda: L.FlowSequential([L.Squeeze(), _actnorm(4), L.InvertibleConv1x1(4), L.Unsqueeze()]),
        (1, 4, 4),
        "real",
    ),
}


def _layer_and_input(name: str, batch: int = 3):
    factory, shape, kind = LAYERS[name]
    torch.manual_seed(0)
    layer = perturb(factory()).double().eval()
    x = torch.rand(batch, *shape, dtype=torch.float64)
    if kind == "real":
        x = 2 * x - 1
    return layer, x


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_is_invertible(name):
    layer, x = _layer_and_input(name)
    z, log_det = layer(x)
    x_back, log_det_inverse = layer.inverse(z)
    assert log_det.shape == (x.shape[0],)
    torch.testing.assert_close(x_back, x, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(log_det_inverse, -log_det, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_log_det_is_log_abs_det_of_jacobian(name):
    layer, x = _layer_and_input(name, batch=2)
    _, log_det = layer(x)
    for i in range(x.shape[0]):
        expected = log_abs_det_jacobian(lambda v: layer(v)[0], x[i : i + 1])
        torch.testing.assert_close(log_det[i], expected, atol=1e-8, rtol=1e-8)
    z, _ = layer(x)
    _, inv_log_det = layer.inverse(z)
    expected = log_abs_det_jacobian(lambda v: layer.inverse(v)[0], z[:1])
    torch.testing.assert_close(inv_log_det[0], expected, atol=1e-8, rtol=1e-8)


class _Recording(nn.Module):
    """A coupling network that records its input and returns a fixed function of it with ``out`` channels."""

    def __init__(self, out: int):
        super().__init__()
        self.out, self.seen = out, []

    def forward(self, h):
        self.seen.append(h.detach().clone())
        total = h.flatten(1).sum(1).view(-1, *[1] * (h.dim() - 1))  # every position depends on all inputs
        return torch.sin(h.sum(dim=1, keepdim=True) + total).expand(h.shape[0], self.out, *h.shape[2:]) * 0.1


@pytest.mark.parametrize(
    "mask,channels,parity,shape",
    [
        ("channel", 4, 0, (4, 2, 2)),
        ("channel", 4, 1, (4, 2, 2)),
        ("channel", 3, 0, (3, 2, 2)),
        ("channel", 3, 1, (3, 2, 2)),
        ("channel", 5, 1, (5,)),
        ("checkerboard", 2, 0, (2, 4, 6)),
        ("checkerboard", 1, 1, (1, 3, 4)),
    ],
)
def test_coupling_network_sees_the_conditioning_half_and_computes_the_other(mask, channels, parity, shape):
    """A channel-wise coupling's network reads the conditioning half's channels only and writes the
    transformed half's raw scale and shift; a checkerboard coupling's reads the masked image. The
    conditioning half passes through unchanged."""
    conditioning, transformed = L.coupling_halves(channels, mask=mask, parity=parity)
    net = _Recording(2 * transformed)
    layer = L.AffineCoupling(net, channels, mask=mask, parity=parity, scale="tanh")
    x = torch.randn(3, *shape, dtype=torch.float64)
    y, _ = layer(x)
    (seen,) = net.seen
    if mask == "channel":
        kept = slice(0, channels // 2) if parity == 0 else slice(channels // 2, channels)
        assert conditioning + transformed == channels and conditioning == kept.stop - kept.start
        torch.testing.assert_close(seen, x[:, kept])
        torch.testing.assert_close(y[:, kept], x[:, kept])
        changed = torch.ones(channels, dtype=torch.bool)
        changed[kept] = False
        assert not torch.allclose(y[:, changed], x[:, changed])
    else:
        mask_b = L.checkerboard_mask(x, parity=parity)
        assert conditioning == transformed == channels
        torch.testing.assert_close(seen, x * mask_b)  # eq. 9: the network sees b*x
        kept = mask_b.bool().expand_as(x)
        torch.testing.assert_close(y[kept], x[kept])
        assert not torch.allclose(y[~kept], x[~kept])
    assert layer.tanh_scale.shape == (transformed,)


def test_logit_transform_jacobian_by_finite_differences():
    alpha = 0.05
    layer = L.LogitTransform(alpha)
    x = torch.tensor([[0.0, 1e-3, 0.3, 0.5, 0.9, 0.999]], dtype=torch.float64)
    y, log_det = layer(x)
    torch.testing.assert_close(y, torch.logit(alpha + (1 - 2 * alpha) * x))
    h = 1e-6  # the map is elementwise: the Jacobian is diagonal
    slope = (layer(x + h)[0] - layer(x - h)[0]) / (2 * h)
    torch.testing.assert_close(log_det, torch.log(slope).sum(dim=1), atol=1e-6, rtol=1e-6)


def test_made_layer_is_autoregressive_in_its_order():
    d = 5
    order = torch.tensor([3, 1, 5, 2, 4])
    layer = perturb(_made(d, order)).double()
    x = torch.randn(1, d, dtype=torch.float64)
    jac = jacobian(lambda v: layer(v.view(1, d))[0].reshape(-1), x.reshape(-1))
    depends = jac.abs() > 0
    for i in range(d):
        for j in range(d):
            if i != j:
                assert not depends[i, j] or order[j] < order[i], (i, j)
    assert depends.diagonal().all()


def test_actnorm_data_dependent_init_and_resume():
    torch.manual_seed(0)
    x = 3.0 + 2.0 * torch.randn(64, 3, 4, 4)
    layer = L.ActNorm(3).train()
    assert not bool(layer.initialized)
    z, _ = layer(x)
    assert bool(layer.initialized)
    torch.testing.assert_close(z.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-4, rtol=0)
    # a checkpoint restores the initialised state: a resumed layer must not initialise again
    restored = L.ActNorm(3).train()
    restored.load_state_dict(layer.state_dict())
    restored(torch.randn(64, 3, 4, 4))
    torch.testing.assert_close(restored.bias, layer.bias)
    torch.testing.assert_close(restored.log_scale, layer.log_scale)


def test_batch_norm_train_mode_uses_batch_statistics():
    torch.manual_seed(0)
    layer = L.BatchNorm(2).train()
    x = 5.0 + 3.0 * torch.randn(256, 2)
    z, log_det = layer(x)
    torch.testing.assert_close(z.mean(0), torch.zeros(2), atol=1e-5, rtol=0)
    var = x.var(0, unbiased=False)
    torch.testing.assert_close(log_det, (-0.5 * torch.log(var + layer.eps)).sum().expand(256))
    assert (layer.running_mean > 0).all()  # running averages moved towards the batch


# --- models ----------------------------------------------------------------------------------

IMAGE = DataSpec(shape=(1, 4, 4), representation="dequantized", dataset="mnist")
TOY = DataSpec(shape=(2,), representation="continuous", dataset="moons")

TINY = {
    "realnvp": lambda: RealNVP.Config(
        num_scales=2, hidden_channels=8, num_blocks=1, batch_norm=True, num_couplings=4, hidden_features=16
    ),
    "glow": lambda: Glow.Config(num_levels=2, depth=2, hidden_channels=8, hidden_features=16),
    "maf": lambda: MAF.Config(num_layers=3, hidden=[24], batch_norm=True),
}
CLASSES = {"realnvp": RealNVP, "glow": Glow, "maf": MAF}


def make_model(name: str, data: DataSpec, **overrides):
    torch.manual_seed(0)
    config = TINY[name]()
    for k, v in overrides.items():
        setattr(config, k, v)
    return CLASSES[name](config, data, NLL)


def train_steps(model, data: torch.Tensor, steps: int, lr: float = 1e-2, batch: int = 128):
    """A few optimiser steps, driven the way the engine drives a model's phases."""
    opt = model.configure_optimizers(lambda params, **kw: torch.optim.Adam(params, lr=lr, **kw))["model"]
    model.train()
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = data[torch.randint(len(data), (batch,), generator=g)]
        for name, loss, metrics in phase_steps(model, x):
            assert torch.isfinite(loss) and set(metrics) >= {"loss", "nll_continuous"}
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def dequantized_batch(n: int, shape=(1, 4, 4)) -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    k = torch.randint(0, 256, (n, *shape), generator=g).double()
    return (k + torch.rand(k.shape, generator=g, dtype=torch.float64)) / 256


def moons(n: int) -> torch.Tensor:
    from dgm_cli.data.toy import two_moons

    return two_moons(n, torch.Generator().manual_seed(0))


def ready_model(name: str, data: DataSpec):
    """A double-precision model whose actnorm/batch-norm state is initialised and whose
    parameters are far from the identity, in eval mode."""
    model = make_model(name, data).double()
    batch = dequantized_batch(32) if data.is_image else moons(32).double()
    train_steps(model, batch, steps=1, lr=1e-3, batch=32)
    return perturb(model, std=0.05).eval()


@pytest.mark.parametrize("data", [IMAGE, TOY], ids=["image", "toy"])
@pytest.mark.parametrize("name", ["realnvp", "glow", "maf"])
def test_model_is_invertible_and_log_likelihood_is_change_of_variables(name, data):
    model = ready_model(name, data)
    x = dequantized_batch(2) if data.is_image else torch.randn(2, 2, dtype=torch.float64)
    z, _ = model.flow(x)
    x_back, _ = model.flow.inverse(z)
    torch.testing.assert_close(x_back, x, atol=1e-9, rtol=1e-9)
    log_px = model.log_likelihood(x)
    assert log_px.shape == (2,)
    for i in range(2):
        xi = x[i : i + 1]
        expected = standard_normal_log_prob(model.flow(xi)[0]) + log_abs_det_jacobian(lambda v: model.flow(v)[0], xi)
        torch.testing.assert_close(log_px[i], expected[0], atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("name", ["realnvp", "glow", "maf"])
def test_toy_density_integrates_to_one(name):
    model = make_model(name, TOY)
    train_steps(model, moons(2048), steps=30, lr=5e-3)
    n, lo, hi = 400, -6.0, 6.0
    step = (hi - lo) / n
    centers = lo + step * (torch.arange(n) + 0.5)
    grid = torch.cartesian_prod(centers, centers)
    log_p = model.log_likelihood(grid)
    mass = log_p.exp().sum().item() * step * step
    assert abs(mass - 1.0) < 1e-2, mass
    # and training did move it away from N(0, I), so the check is not about an identity map
    assert (log_p - standard_normal_log_prob(grid)).abs().max() > 0.5


@pytest.mark.parametrize("name", ["realnvp", "maf"])
def test_logit_density_integrates_to_one_over_its_support(name):
    """On a 2-pixel image, the density of x (logit Jacobian included) integrates to 1 over
    the image of R^2 under the inverse logit map, (-a, 1 + a)/(1 - 2 alpha) per pixel."""
    data = DataSpec(shape=(1, 1, 2), representation="dequantized", dataset="mnist")
    model = make_model(name, data, num_scales=1) if name == "realnvp" else make_model(name, data)
    model = perturb(model.double(), std=0.1).eval()
    alpha = model.config.alpha
    lo, hi = -alpha / (1 - 2 * alpha), (1 - alpha) / (1 - 2 * alpha)
    n = 400
    step = (hi - lo) / n
    centers = lo + step * (torch.arange(n, dtype=torch.float64) + 0.5)
    grid = torch.cartesian_prod(centers, centers).view(-1, 1, 1, 2)
    log_p = model.log_likelihood(grid)
    mass = log_p.exp().sum().item() * step * step
    assert abs(mass - 1.0) < 1e-2, mass
    # the layers after the logit transform are far from the identity, so this is not only N(logit(x))
    y, log_det = L.LogitTransform(alpha)(grid)
    assert (log_p - standard_normal_log_prob(y) - log_det).abs().median() > 0.3


@pytest.mark.parametrize("name", ["realnvp", "glow", "maf"])
def test_bits_per_dim_is_the_evaluators_formula(name):
    model = make_model(name, IMAGE)
    x = dequantized_batch(16).float()
    train_steps(model, x, steps=2, lr=1e-3, batch=16)
    metrics = model.validation_step(x, None)
    d = IMAGE.dim
    evaluator = ((-model.log_likelihood(x)).mean() / d + math.log(256)) / math.log(2)
    torch.testing.assert_close(metrics["bits_per_dim"], evaluator)
    torch.testing.assert_close(metrics["loss"], bits_per_dim(metrics["nll_continuous"], d))
    # the density's -log p(x) on [0,1)^D is named apart from dgm eval's discrete nll_nats (+ D ln 256)
    assert not {"nll", "nll_nats"} & set(metrics)
    assert "dequantization" in model.estimator()


@pytest.mark.parametrize("data", [IMAGE, TOY], ids=["image", "toy"])
@pytest.mark.parametrize("name", ["realnvp", "glow", "maf"])
def test_sample_shapes_temperature_and_label(name, data):
    model = make_model(name, data).eval()
    x = model.sample(5)
    assert x.shape == (5, *data.shape) and torch.isfinite(x).all()
    if data.is_image:
        assert x.min() >= 0 and x.max() <= 1
    # temperature 0 is the mode of the base distribution: every sample is the same point
    cold = model.sample(3, temperature=0.0)
    torch.testing.assert_close(cold, cold[:1].expand_as(cold))
    with pytest.raises(UserError):
        model.sample(2, label=1)


def test_wrong_representation_and_too_many_levels_are_refused():
    with pytest.raises(UserError, match="cannot model data.representation='binary'"):
        build_model({"name": "realnvp"}, NLL, DataSpec(shape=(1, 4, 4), representation="binary"))
    with pytest.raises(UserError, match=r"model.num_levels=3 needs H and W divisible by 8; the data is 4x4"):
        build_model(
            {"name": "glow", "num_levels": 3}, {"name": "nll"}, DataSpec(shape=(1, 4, 4), representation="dequantized")
        )


@pytest.mark.parametrize("name", ["glow", "realnvp"])
def test_model_coupling_networks_map_one_half_to_the_others_parameters(name):
    """At the default configs every image coupling's first convolution reads the conditioning half's
    channels and its last writes twice the transformed half's (a checkerboard coupling: C and 2C); the
    weights are channels-last."""
    cls = {"glow": Glow, "realnvp": RealNVP}[name]
    model = cls(cls.Config(), DataSpec((1, 28, 28), "dequantized", dataset="mnist"), NLL)
    couplings = [m for m in model.modules() if isinstance(m, L.AffineCoupling)]
    assert len(couplings) == {"glow": 8, "realnvp": 10}[name]
    for layer in couplings:
        convs = [m for m in layer.net.modules() if isinstance(m, nn.Conv2d)]
        assert convs[0].in_channels == layer.conditioning and convs[-1].out_channels == 2 * layer.transformed
        assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
        if layer.mask_type == "channel":
            assert layer.conditioning + layer.transformed == convs[-1].out_channels
    # the toys' MLPs too
    toy = cls(cls.Config(), TOY, NLL)
    for layer in (m for m in toy.modules() if isinstance(m, L.AffineCoupling)):
        linears = [m for m in layer.net.modules() if isinstance(m, nn.Linear)]
        assert (linears[0].in_features, linears[-1].out_features) == (1, 2)


@pytest.mark.parametrize("name", ["glow", "realnvp"])
def test_checkpoint_of_the_old_coupling_layout_is_refused_in_one_paragraph(name):
    """A state dict saved before the channel-wise couplings' networks took only their conditioning half
    (its couplings' version 1) is refused with a UserError that says why, never loaded into wrong places;
    today's round-trips through torch.save and a weights-only load."""
    import io

    model = make_model(name, IMAGE)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)["model"]
    fresh = make_model(name, IMAGE)
    fresh.load_state_dict(saved)
    old = model.state_dict()
    for prefix, module in model.named_modules():
        if isinstance(module, L.AffineCoupling):
            old._metadata[prefix]["version"] = 1
    with pytest.raises(UserError, match="earlier dgm") as err:
        make_model(name, IMAGE).load_state_dict(old)
    assert "\n" not in str(err.value) and "Retrain" in str(err.value)


# --- configs -----------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["realnvp_mnist", "glow_mnist", "maf_mnist", "realnvp_moons"])
def test_experiment_presets_name_known_fields(preset):
    text = (CONFIGS / "experiment" / f"{preset}.yaml").read_text()
    assert text.startswith("# @package _global_")
    cfg = yaml.safe_load(text)
    model = next(d["override /model"] for d in cfg["defaults"] if "override /model" in d)
    fields = set(CLASSES[model].Config.__dataclass_fields__)
    assert set(cfg.get("model", {})) <= fields


# --- numerical stability when sampling ---------------------------------------------------------


class _Constant(nn.Module):
    """A stand-in coupling/prior network that outputs ``first`` on the first half of its channels (a
    coupling's raw log-scale, a prior's mean) and ``second`` on the second half: the kind of output
    a trained network gives on inputs far from its training data."""

    def __init__(self, channels: int, first: float, second: float):
        super().__init__()
        self.channels, self.first, self.second = channels, first, second

    def forward(self, h):
        shape = (h.shape[0], self.channels, *h.shape[2:])
        return torch.cat([h.new_full(shape, self.first), h.new_full(shape, self.second)], dim=1)


def _grows_at_most(layer, z, bound=L.MAX_LOG_SCALE):
    x, log_det = layer.inverse(z)
    assert torch.isfinite(x).all() and torch.isfinite(log_det).all()
    assert x.abs().max() <= z.abs().max() * math.exp(bound) * (1 + 1e-6)


@pytest.mark.parametrize("scale", ["sigmoid", "tanh"])
def test_coupling_inverse_grows_its_input_by_at_most_e_to_the_bound(scale):
    """The inverse (z - t) exp(-s) cannot overflow whatever the network says: s is soft-clamped.
    (Before the clamp, log sigmoid(-1e4 + 2) = -1e4 and the inverse was inf.)"""
    z = torch.randn(3, 4, 2, 2)
    for raw in (-1e4, 1e4):
        layer = L.AffineCoupling(_Constant(2, raw, 0.0), 4, mask="channel", parity=0, scale=scale)
        if scale == "tanh":
            layer.tanh_scale.data.fill_(abs(raw))  # the learned scale, grown large
        _grows_at_most(layer, z)
        x, _ = layer.inverse(z)
        torch.testing.assert_close(layer(x)[0], z)  # still an exact bijection


def test_split_prior_and_made_scales_are_bounded_too():
    z = torch.randn(3, 4, 2, 2)
    _grows_at_most(L.Split(L.Shift(0.0), _Constant(2, 0.0, 1e4)), z)
    made = _made(5, torch.arange(1, 6))
    with torch.no_grad():
        made.made.net[-1].bias[5:] = 1e4  # alpha, far beyond anything seen in training
    x, _ = made.inverse(torch.randn(3, 5))
    assert torch.isfinite(x).all() and x.abs().max() < 1e3


@pytest.mark.slow
@pytest.mark.heavy
def test_glow_trained_on_mnist_samples_finite_at_temperature_one(data_root):
    """A few hundred steps of a small Glow on MNIST, then 256 samples at temperature 1: every value is
    finite. (Without the bounded log-scales, 17 of these 256 held NaN.)"""
    from dgm_cli.data import files, pipeline

    (x, _), _ = files.load_idx(str(data_root), "MNIST", download=False)
    torch.manual_seed(0)
    model = Glow(Glow.Config(hidden_channels=16, depth=2), DataSpec((1, 28, 28), "dequantized", dataset="mnist"), NLL)
    train_steps(model, pipeline.fixed(x[:20000], "dequantized"), steps=300, lr=1e-3, batch=64)
    torch.manual_seed(0)
    samples = model.eval().sample(256, temperature=1.0)
    assert torch.isfinite(samples).all(), f"{int((~torch.isfinite(samples)).flatten(1).any(1).sum())} of 256"
