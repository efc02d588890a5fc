"""Properties of the autoregressive family (NADE, MADE, PixelCNN, Gated PixelCNN) on tiny
images: the autoregressive property (by gradients), normalisation over every possible
image, completion, sampling that matches the likelihood, and NADE's vectorised pass."""

import itertools
import math

import pytest
import torch

from conftest import phase_steps
from dgm_cli.errors import UserError
from dgm_cli.models.base import DataSpec
from dgm_cli.models.registry import get_model_class

NLL = {"name": "nll"}
TINY = {
    "nade": dict(hidden_units=8),
    "made": dict(hidden_sizes=[24, 24], num_masks=3, order_agnostic=True),
    "pixelcnn": dict(hidden_channels=6, num_blocks=2, input_kernel_size=3, head_channels=6),
    "gated_pixelcnn": dict(channels=6, num_layers=3, input_kernel_size=3, head_channels=6),
    "row_lstm": dict(hidden_channels=6, num_layers=2, input_kernel_size=3, head_channels=6),
    "diagonal_bilstm": dict(hidden_channels=6, num_layers=2, input_kernel_size=3, head_channels=6),
}
MODELS = list(TINY)


def make(name, shape, representation="binary", num_classes=0, scramble=True, **overrides):
    """A tiny model; ``scramble`` draws large random weights so that the distribution is
    far from uniform (normalisation is then not trivially true)."""
    torch.manual_seed(0)
    cls = get_model_class(name)
    config = cls.Config(**{**TINY[name], **overrides})
    model = cls(config, DataSpec(shape=shape, representation=representation, num_classes=num_classes), NLL)
    if scramble:
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, 0.7)
    return model.eval()


def all_images(shape, levels):
    """Every image of ``shape`` with pixel values k/(levels-1), k < levels."""
    d = math.prod(shape)
    values = torch.tensor(list(itertools.product(range(levels), repeat=d)), dtype=torch.float32)
    return (values / (levels - 1)).view(-1, *shape)


def mask_sets(model):
    """Run a check under each of MADE's mask sets (once for the other models)."""
    if hasattr(model, "use_masks"):
        for m in range(model.num_masks):
            model.use_masks(m)
            yield m
    else:
        yield 0


def dependencies(model, x, y=None):
    """dep[i, j]: does output (conditional) i depend on input j? Sequence positions."""
    x = x.clone().requires_grad_(True)
    out = model.to_sequence(model.logits(x, y))  # (B, D) or (B, bins, D)
    d = model.data.dim
    dep = torch.zeros(d, d, dtype=torch.bool)
    for i in range(d):
        # A random projection of output i, so that no gradients can cancel out.
        (g,) = torch.autograd.grad((out[..., i] * torch.randn_like(out[..., i])).sum(), x, retain_graph=True)
        dep[i] = model.to_sequence(g).abs().sum(0) > 0
    return dep


def rank(model):
    """rank[s] = when sequence position s is generated."""
    return torch.argsort(model.generation_order())


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("shape,representation", [((1, 4, 4), "binary"), ((3, 2, 3), "binary"), ((2, 2, 2), "8bit")])
def test_autoregressive_property(name, shape, representation):
    """d logit_i / d x_j == 0 for every j at or after i in the model's order."""
    model = make(name, shape, representation)
    x = torch.rand(3, *shape)
    for _ in mask_sets(model):
        r = rank(model)
        dep = dependencies(model, x)
        not_before = r[None, :] >= r[:, None]  # [i, j]: j is i itself or comes after it
        assert not (dep & not_before).any()
        assert dep.any()  # the check is not vacuous


@pytest.mark.parametrize("shape", [(1, 5, 5), (3, 3, 3)])
def test_gated_pixelcnn_has_no_blind_spot(shape):
    """Every output depends on ALL earlier pixels (and earlier channels of its pixel)."""
    # Wide enough that the output layers' ReLUs are not all off for a channel group.
    model = make(
        "gated_pixelcnn", shape, num_layers=4, input_kernel_size=3, kernel_size=3, channels=18, head_channels=24
    )
    dep = dependencies(model, torch.rand(8, *shape))
    before = torch.tril(torch.ones_like(dep), diagonal=-1)  # raster/channel order
    assert torch.equal(dep, before)


def test_pixelcnn_has_a_blind_spot():
    """The same check catches PixelCNN's blind spot: output (1, 0) never sees pixel (0, 2)."""
    model = make("pixelcnn", (1, 5, 5), num_blocks=4, input_kernel_size=3, kernel_size=3)
    dep = dependencies(model, torch.rand(2, 1, 5, 5))
    assert dep[1 * 5 + 0, 0 * 5 + 1]  # the pixel up-right that it does see
    assert not dep[1 * 5 + 0, 0 * 5 + 2]  # the blind spot


def assert_normalised(model, images, y=None):
    logp = model.log_likelihood(images, y)
    assert logp.shape == (images.shape[0],)
    assert torch.logsumexp(logp.double(), 0).item() == pytest.approx(0.0, abs=1e-4)
    assert logp.std() > 0.1  # far from uniform: the sum is not trivially 1


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("shape", [(1, 3, 3), (3, 1, 2)])
def test_binary_probabilities_sum_to_one(name, shape):
    """On 3x3 binary images (and 3-channel 1x2 ones), sum over all 2^D images of p(x) = 1."""
    model = make(name, shape)
    assert_normalised(model, all_images(shape, 2))


def test_made_each_mask_set_and_the_mixture_sum_to_one():
    model = make("made", (1, 3, 3))
    images = all_images((1, 3, 3), 2)
    for _ in mask_sets(model):
        assert torch.logsumexp(model.log_prob(images).double(), 0).item() == pytest.approx(0.0, abs=1e-4)
    assert_normalised(model, images)  # log p = logsumexp_m log p_m - log M
    assert "mixture of 3" in model.estimator()


def test_conditional_gated_pixelcnn_sums_to_one_per_class():
    model = make("gated_pixelcnn", (1, 3, 3), num_classes=3, conditional=True)
    images = all_images((1, 3, 3), 2)
    per_class = []
    for k in range(3):
        y = torch.full((images.shape[0],), k)
        assert_normalised(model, images, y)
        per_class.append(model.log_likelihood(images, y))
    assert not torch.allclose(per_class[0], per_class[1])  # the label matters


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("shape", [(1, 1, 2), (2, 1, 1)])
def test_8bit_probabilities_sum_to_one(name, shape):
    """256-way categorical outputs: the 256^2 values of a 1x2 image (or a 2-channel pixel) sum to 1."""
    model = make(name, shape, "8bit")
    assert_normalised(model, all_images(shape, 256))


@pytest.mark.parametrize("name", MODELS)
def test_sampling_matches_the_likelihood(name):
    """Sample frequencies on a 3-pixel binary image match exp(log_likelihood)."""
    model = make(name, (1, 1, 3))
    torch.manual_seed(1)
    samples = model.sample(6000)
    images = all_images((1, 1, 3), 2)
    p = model.log_likelihood(images).exp()
    counts = (samples.view(-1, 1, 3) == images.view(1, -1, 3)).all(-1).float().mean(0)
    assert torch.allclose(counts, p, atol=0.03)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("representation", ["binary", "8bit"])
def test_samples_and_labels(name, representation):
    model = make(name, (1, 3, 3), representation, scramble=False)
    x = model.sample(4, temperature=0.7)
    assert x.shape == (4, 1, 3, 3)
    levels = 1 if representation == "binary" else 255
    assert torch.equal(x * levels, (x * levels).round()) and x.min() >= 0 and x.max() <= 1
    with pytest.raises(UserError):
        model.sample(2, label=1)  # unconditional models refuse a label
    with pytest.raises(UserError):
        model.sample(2, temperature=0.0)


def test_conditional_sampling_takes_a_label():
    model = make("gated_pixelcnn", (1, 3, 3), num_classes=3, conditional=True, scramble=False)
    assert model.sample(2, label=2).shape == (2, 1, 3, 3)
    assert model.sample(5).shape == (5, 1, 3, 3)  # no label: cycles through the classes
    with pytest.raises(UserError):
        model.sample(2, label=3)


@pytest.mark.parametrize("name", MODELS)
def test_completion_keeps_observed_pixels(name):
    model = make(name, (1, 4, 4))
    x = torch.bernoulli(torch.full((2, 1, 4, 4), 0.5))
    grid = model.sample_complete(x, num_completions=3)
    assert grid.shape == (2, 5, 1, 4, 4)
    top = slice(0, 2)
    assert torch.equal(grid[:, 1:4, :, top], x[:, None, :, top].expand(-1, 3, -1, -1, -1))  # kept
    assert torch.equal(grid[:, -1], x)  # the original
    assert torch.equal(grid[:, 0, :, top], x[:, :, top]) and (grid[:, 0, :, 2:] == 0.5).all()  # occluded
    assert ((grid[:, 1:4] == 0) | (grid[:, 1:4] == 1)).all()
    # Any observed mask, e.g. a checkerboard, is kept too.
    mask = torch.arange(16).view(4, 4) % 2 == 0
    grid = model.sample_complete(x, mask=mask, num_completions=2)
    assert torch.equal(grid[:, 1:3][..., mask], x[:, None].expand(-1, 2, -1, -1, -1)[..., mask])


def test_conditional_completion_needs_labels():
    model = make("gated_pixelcnn", (1, 4, 4), num_classes=3, conditional=True)
    x = torch.bernoulli(torch.full((2, 1, 4, 4), 0.5))
    assert model.sample_complete(x, torch.tensor([0, 2]), num_completions=2).shape == (2, 4, 1, 4, 4)
    with pytest.raises(UserError):
        model.sample_complete(x)


@pytest.mark.parametrize(
    "representation,activation,shape",
    [
        ("binary", "sigmoid", (1, 5, 7)),
        ("8bit", "sigmoid", (1, 3, 4)),
        ("binary", "relu", (3, 3, 3)),
        ("binary", "tanh", (1, 4, 5)),
        ("8bit", "tanh", (2, 2, 3)),
    ],
)
@pytest.mark.parametrize("rows,block", [(3, 5), (7, 16), (2, 1)])
def test_nade_sweeps_equal_the_recurrence(representation, activation, shape, rows, block, monkeypatch):
    """Log-likelihoods, the fused training gradient and the general backward (parameters and x)
    equal the per-pixel recurrence through autograd -- with batch chunks and blocks of dimensions
    that do not divide the batch (7) or D, so that every boundary case runs, and mostly-zero images
    (where the hidden layer is updated only in the rows whose input moved) beside dense ones."""
    from dgm_cli.models.autoregressive import nade

    model = make("nade", shape, representation, activation=activation).double()
    monkeypatch.setattr(nade, "CACHE_FLOATS", rows * model.config.hidden_units)  # chunks of `rows` examples
    monkeypatch.setattr(nade, "BLOCK", block)
    levels = 2 if representation == "binary" else 256
    x = torch.randint(levels, (7, *shape)).double() / (levels - 1)
    x[:4] *= torch.rand(4, *shape) < 0.2  # 4 mostly-zero images, 3 dense ones
    x.requires_grad_(True)
    params = list(model.parameters())
    expected = model.log_prob_by_recurrence(x)
    assert torch.allclose(model.log_likelihood(x), expected.detach(), rtol=1e-10, atol=1e-9)
    # any upstream gradient, and with respect to x (the reverse sweep behind model.logits)
    w = torch.randn(7, dtype=torch.double)
    want = torch.autograd.grad((expected * w).sum(), [x] + params)
    got = torch.autograd.grad((model.log_prob(x) * w).sum(), [x] + params)
    for g, e in zip(got, want):
        assert torch.allclose(g, e, rtol=1e-9, atol=1e-9)
    # the training loss: mean NLL, its gradient computed inside the forward sweep
    loss, metrics = model.training_loss(x.detach(), None, "model")
    expected_loss = -model.log_prob_by_recurrence(x.detach()).mean()
    assert loss.item() == pytest.approx(expected_loss.item(), rel=1e-10)
    assert metrics["nll"].item() == pytest.approx(expected_loss.item(), rel=1e-10)
    for g, e in zip(torch.autograd.grad(2.0 * loss, params), torch.autograd.grad(2.0 * expected_loss, params)):
        assert torch.allclose(g, e, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", MODELS)
def test_training_step_reports_nll_and_bits_per_dim(name):
    model = make(name, (1, 3, 3), scramble=False).train()
    x = torch.bernoulli(torch.full((4, 1, 3, 3), 0.5))
    steps = list(phase_steps(model, x))
    assert len(steps) == 1
    opt, loss, metrics = steps[0]
    assert opt == "model" and loss.requires_grad
    loss.backward()
    assert {"loss", "nll", "bits_per_dim"} <= set(metrics)
    assert metrics["bits_per_dim"].item() == pytest.approx(metrics["nll"].item() / (9 * math.log(2)), rel=1e-5)
    val = model.validation_step(x, None)
    assert torch.allclose(val["nll"], -model.log_likelihood(x).mean())


def test_made_masks_are_reproducible_and_resampled():
    a, b = make("made", (1, 3, 3), resample_every=2), make("made", (1, 3, 3), resample_every=2)
    for key in ("orders", "degrees_0", "degrees_1"):
        assert torch.equal(getattr(a, key), getattr(b, key))
    assert torch.equal(a.orders[0], torch.arange(1, 10))  # mask set 0 keeps the raster order
    assert not torch.equal(a.orders[1], a.orders[2])  # order-agnostic sets draw their own
    x = torch.bernoulli(torch.full((4, 1, 3, 3), 0.5))
    used = []
    for _ in range(7):
        list(phase_steps(a, x))
        used.append(int(a.mask_index))
    assert used == [0, 0, 1, 1, 2, 2, 0]  # (step // resample_every) mod num_masks
    a.log_likelihood(x)
    assert int(a.mask_index) == 0  # evaluation restores the training mask set
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.net[0].mask, b.net[0].mask) and int(b.step) == 7


@pytest.mark.parametrize("name", MODELS)
def test_every_parameter_gets_a_gradient_from_the_loss(name):
    """A parameter that feeds nothing (Gated PixelCNN's last residual connection did) is dead weight,
    and DistributedDataParallel fails on its second step over it."""
    conditional = {"conditional": True} if name == "gated_pixelcnn" else {}
    model = make(name, (1, 4, 4), num_classes=3, scramble=False, **conditional).train()
    x, y = torch.bernoulli(torch.full((4, 1, 4, 4), 0.5)), torch.tensor([0, 1, 2, 0])
    _, loss, _ = next(phase_steps(model, x, y))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"{name}: no gradient for {missing}"


def test_gated_pixelcnn_loads_a_checkpoint_whose_last_layer_had_a_residual_connection():
    model = make("gated_pixelcnn", (1, 4, 4), num_classes=3, conditional=True)
    state = model.state_dict()
    last = f"layers.{len(model.layers) - 1}."
    old = {
        **state,
        last + "residual.weight": torch.ones(6, 6, 1, 1),
        last + "residual.bias": torch.ones(6),
        last + "class_vertical.weight": torch.ones(3, 12),
    }
    fresh = make("gated_pixelcnn", (1, 4, 4), num_classes=3, conditional=True, scramble=False)
    fresh.load_state_dict(old)
    x, y = torch.bernoulli(torch.full((2, 1, 4, 4), 0.5)), torch.tensor([0, 2])
    assert torch.equal(fresh.log_likelihood(x, y), model.log_likelihood(x, y))
