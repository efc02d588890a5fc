"""CycleGAN (Zhu et al. 2017): the image pool, the generators' shapes, the cycle and identity losses,
unpaired two-domain data, and a translation and back through the CLI on two image sets the test writes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import run_dgm, run_folders
from dgm_cli.data import pipeline
from dgm_cli.errors import UserError
from dgm_cli.models.base import DataSpec
from dgm_cli.models.gan.cyclegan import CycleGAN, CycleGANConfig, ImagePool, ResnetGenerator
from dgm_cli.models.registry import build_model
from dgm_cli.settings.schema import DataConfig


def tiny(shape=(1, 28, 28), **kw) -> CycleGAN:
    config = CycleGANConfig(**{"width": 4, "residual_blocks": 1, **kw})
    return CycleGAN(config, DataSpec(shape, "8bit", 0, "mnist", "fashion_mnist"), {"name": "lsgan"})


def test_the_full_pool_returns_a_stored_image_with_probability_one_half():
    torch.manual_seed(0)
    pool = ImagePool(50, (1, 2, 2))
    pool.query(-torch.ones(50, 1, 2, 2))  # filled: every stored image is negative
    assert int(pool.count) == 50
    queries, n = 40, 50
    stored = 0
    for _ in range(queries):
        new = torch.rand(n, 1, 2, 2) + 1  # fresh images are > 0 until they are stored and returned later
        out = pool.query(new)
        is_new = (out == new).flatten(1).all(1)
        stored += int((~is_new).sum())
    share = stored / (queries * n)
    # 2,000 fair coins: standard error 0.011; 0.45..0.55 is over 4 of them, and 0 or 1 fails at once
    assert abs(share - 0.5) < 0.05, share


def test_the_pool_returns_new_images_until_full_and_what_it_returns_was_generated():
    torch.manual_seed(1)
    pool = ImagePool(5, (1, 1, 1))
    first = torch.arange(4.0).view(4, 1, 1, 1)
    assert torch.equal(pool.query(first), first) and int(pool.count) == 4
    seen = set(range(4))
    for step in range(20):
        batch = torch.arange(4.0).view(4, 1, 1, 1) + 10 * (step + 1)
        seen |= set(batch.flatten().tolist())
        assert set(pool.query(batch).flatten().tolist()) <= seen  # a stored image, or the new one
    assert int(pool.count) == 5
    assert torch.equal(ImagePool(0, (1, 1, 1)).query(batch), batch)  # pool_size=0: no pool


@pytest.mark.parametrize("size", [28, 32])
def test_generators_and_critics_keep_the_image_size(size):
    model = tiny((3, size, size))
    x = torch.rand(2, 3, size, size) * 2 - 1
    for g in (model.g, model.f):
        out = g(x)
        assert out.shape == x.shape and out.abs().max() <= 1
    scores = model.critic_b(x)
    assert scores.dim() == 4 and scores.shape[:2] == (2, 1) and scores.shape[-1] > 1  # a map of patch scores
    assert isinstance(model.g, ResnetGenerator)


def test_image_size_not_a_multiple_of_four_is_refused():
    with pytest.raises(UserError, match="multiples of 4"):
        build_model({"name": "cyclegan"}, {"name": "lsgan"}, DataSpec((1, 30, 30), "8bit", 0, "mnist", "fashion_mnist"))


def test_generator_loss_is_adversarial_plus_lambda_cycle_plus_half_lambda_identity():
    torch.manual_seed(2)
    model = tiny()
    a, b = torch.rand(3, 1, 28, 28), torch.rand(3, 1, 28, 28)
    loss, m = model(a, b, "generator")
    sa, sb = a * 2 - 1, b * 2 - 1  # the networks' space
    with torch.no_grad():
        g_a, f_b = model.g(sa), model.f(sb)
        cycle = (model.f(g_a) - sa).abs().mean() + (model.g(f_b) - sb).abs().mean()
        identity = (model.g(sb) - sb).abs().mean() + (model.f(sa) - sa).abs().mean()
        adversarial = ((model.critic_b(g_a) - 1) ** 2).mean() + ((model.critic_a(f_b) - 1) ** 2).mean()
    assert torch.allclose(m["loss_cycle"], cycle) and torch.allclose(m["loss_identity"], identity)
    assert torch.allclose(m["loss_adversarial"], adversarial)
    assert torch.allclose(loss, adversarial + 10 * cycle + 0.5 * 10 * identity)
    loss.backward()
    assert all(p.grad is None for p in model.critic_a.parameters())  # the critics are frozen here
    assert model.g.net[1].weight.grad is not None


def test_critic_loss_is_the_halved_least_squares_loss_and_leaves_the_generators_alone():
    torch.manual_seed(3)
    model = tiny(pool_size=0)
    a, b = torch.rand(3, 1, 28, 28), torch.rand(3, 1, 28, 28)
    torch.manual_seed(4)
    loss, _ = model(a, b, "critic")
    sa, sb = a * 2 - 1, b * 2 - 1
    with torch.no_grad():
        d_b = 0.5 * (((model.critic_b(sb) - 1) ** 2).mean() + (model.critic_b(model.g(sa)) ** 2).mean())
        d_a = 0.5 * (((model.critic_a(sa) - 1) ** 2).mean() + (model.critic_a(model.f(sb)) ** 2).mean())
    assert torch.allclose(loss, d_a + d_b)
    loss.backward()
    assert all(p.grad is None for p in model.g.parameters())


def test_a_perfect_translation_pair_has_no_cycle_or_identity_error():
    model = tiny()
    for g in (model.g, model.f):  # both generators the identity on [-1, 1]
        g.forward = lambda x: x
    a, b = torch.rand(2, 1, 28, 28), torch.rand(2, 1, 28, 28)
    _, m = model(a, b, "generator")
    assert float(m["loss_cycle"]) == 0 and float(m["loss_identity"]) == 0


def test_the_pools_are_checkpointed():
    model = tiny(pool_size=7)
    keys = model.state_dict().keys()
    assert {"pool_a.images", "pool_a.count", "pool_b.images", "pool_b.count"} <= set(keys)
    assert model.state_dict()["pool_b.images"].shape == (7, 1, 28, 28)


def write_images(path, size=16, channels=1, kind="square", n=64, seed=0, labels=False):
    """n images as an npz: a bright square (domain A) or a bright horizontal bar (domain B) on noise;
    ``labels``: the bar's (square's) upper or lower half as a class."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 40, (n, size, size, channels)).astype(np.uint8)
    for img, (i, j) in zip(x, rng.integers(0, size - 6, (n, 2))):
        if kind == "square":
            img[i : i + 6, j : j + 6] = 230
        else:
            img[i : i + 2, :] = 230
    x = x if channels > 1 else x[..., 0]
    y = (np.argmax(x.reshape(n, size, -1).max(-1) > 200, axis=1) >= size // 2 - 3).astype(np.int64)
    np.savez(path, **({"x": x, "y": y} if labels else {"x": x}))
    return str(path)


def test_unpaired_batches_draw_domain_b_on_its_own_and_resume_where_they_were(tmp_path):
    cfg = OmegaConf.merge(
        OmegaConf.structured(DataConfig),
        {
            "name": "npz",
            "path": write_images(tmp_path / "a.npz"),
            "val_size": 4,
            "domain_b": write_images(tmp_path / "b.npz", kind="bar", n=40),
        },
    )
    ds = pipeline.load(cfg)
    assert ds.domain_names[1].endswith("b.npz") and ds.train[1].dim() == 4 and ds.num_classes == 0
    make = lambda: pipeline.BatchIterator(*ds.train, "8bit", "dynamic", 8, torch.device("cpu"), seed=0)  # noqa: E731
    it = make()
    # which B image goes with which A image changes between A's epochs: the pairing is not fixed
    first = [next(it) for _ in range(it.steps_per_epoch)]
    second = [next(it) for _ in range(it.steps_per_epoch)]
    assert not all(torch.equal(p[1], q[1]) for p, q in zip(first, second))
    for x, y in first:
        assert x.shape == y.shape == (8, 1, 16, 16) and y.dtype == torch.float32 and y.max() <= 1
    state = it.state_dict()
    again = make()
    again.load_state_dict(state)
    for _ in range(7):
        (x1, y1), (x2, y2) = next(it), next(again)
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


@pytest.mark.parametrize("b_size, b_channels", [(12, 1), (16, 3)])
def test_domains_of_different_size_or_channels_are_refused_naming_both(tmp_path, b_size, b_channels):
    cfg = OmegaConf.merge(
        OmegaConf.structured(DataConfig),
        {
            "name": "npz",
            "path": write_images(tmp_path / "a.npz"),
            "domain_b": write_images(tmp_path / "b.npz", size=b_size, channels=b_channels),
        },
    )
    with pytest.raises(UserError) as exc:
        pipeline.load(cfg)
    message = str(exc.value)
    assert "dataset=npz has 1x16x16" in message and f"b.npz has {b_channels}x{b_size}x{b_size}" in message


def test_domain_b_only_with_a_translation_model_and_always_with_one():
    from dgm_cli.settings.validate import check_domains

    with pytest.raises(UserError, match="only translation models"):
        check_domains(OmegaConf.create({"model": {"name": "dcgan"}, "data": {"domain_b": "fashion_mnist"}}))
    with pytest.raises(UserError, match="data.domain_b="):
        check_domains(OmegaConf.create({"model": {"name": "cyclegan"}, "data": {"domain_b": None}}))


def test_eval_scores_translations_of_domain_a_against_domain_b_on_its_feature_network(tmp_path, monkeypatch):
    from dgm_cli.evaluation.samples import sample_quality_report

    monkeypatch.setenv("DGM_CACHE", str(tmp_path / "cache"))
    cfg = OmegaConf.merge(
        OmegaConf.structured(DataConfig),
        {
            "name": "npz",
            "path": write_images(tmp_path / "a.npz", labels=True),
            "val_size": 4,
            "domain_b": write_images(tmp_path / "b.npz", kind="bar", n=80, labels=True),
        },
    )
    ds = pipeline.load(cfg)
    model = tiny((1, 16, 16)).eval()
    eval_cfg = OmegaConf.create({"split": "test", "num_samples": 6, "seed": 0})
    out = sample_quality_report(model, ds, OmegaConf.create({"data": cfg}), eval_cfg, ["fid", "kid"], "cpu")
    assert math.isfinite(out["fid"]) and out["fid"] >= 0
    assert "G(a)" in out["samples"] and "b.npz" in out["reference"]
    assert (tmp_path / "cache" / "feature_nets").is_dir()  # domain B's classifier, trained on its labels


TRAIN = [
    "model=cyclegan",
    "dataset=npz",
    "model.width=4",
    "model.residual_blocks=1",
    "model.pool_size=6",
    "trainer.batch_size=4",
    "trainer.log_every=2",
    "trainer.sample_every=3",
    "data.val_size=8",
    "trainer.progress=false",
    "seed=3",
]


def two_domains(tmp_path) -> list[str]:
    return [
        f"data.path={write_images(tmp_path / 'squares.npz')}",
        f"data.domain_b={write_images(tmp_path / 'bars.npz', kind='bar', seed=1)}",
    ]


@pytest.mark.slow
def test_translate_and_back_through_the_cli(tmp_path):
    from PIL import Image

    run_dgm("train", *TRAIN, *two_domains(tmp_path), "trainer.max_steps=6", cwd=tmp_path)
    (run,) = run_folders(tmp_path)
    out = tmp_path / "translate.png"
    run_dgm("sample", f"checkpoint={run}", "mode=translate", "num_samples=5", f"out={out}", cwd=tmp_path)
    image = np.asarray(Image.open(out))
    # 6 rows (a, G(a), F(G(a)), b, F(b), G(F(b))) of 5 images of 16 px with 2 px padding
    assert image.shape[:2] == (6 * 18 + 2, 5 * 18 + 2)
    refused = run_dgm("sample", f"checkpoint={run}", check=False, cwd=tmp_path)
    assert refused.returncode == 2 and "translate" in refused.stderr
    # no labels on these images: FID needs a feature network; Parzen scores G(a) against domain B
    ev = run_dgm("eval", f"checkpoint={run}", "metrics=[parzen]", "num_samples=6", cwd=tmp_path)
    report = __import__("json").loads((run / "checkpoints" / "eval.json").read_text())
    quality = report["sample_quality"]
    assert "G(a)" in quality["samples"] and "bars.npz" in quality["reference"], ev.stdout
    assert report["protocol"]["domain_b"].endswith("bars.npz")
    assert all(math.isfinite(v) for v in quality.values() if isinstance(v, float))


@pytest.mark.slow
def test_resumed_run_equals_an_uninterrupted_one(tmp_path):
    data = two_domains(tmp_path)
    straight, split = tmp_path / "straight", tmp_path / "split"
    straight.mkdir(), split.mkdir()
    run_dgm("train", *TRAIN, *data, "trainer.max_steps=8", cwd=straight)
    run_dgm("train", *TRAIN, *data, "trainer.max_steps=4", cwd=split)
    (run,) = run_folders(split)
    run_dgm("train", f"resume={run}", "trainer.max_steps=8", cwd=split)
    a = torch.load(run_folders(straight)[0] / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert int(a["pool_a.count"]) == 6  # the pools filled and then swapped images
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, differ


def test_a_full_image_pool_is_queried_without_reading_the_device():
    from host_sync import no_host_reads

    pool = ImagePool(4, (1, 1, 1))
    for _ in range(2):
        pool.query(torch.rand(2, 1, 1, 1))  # fills it: its fill level is read until then
    with no_host_reads(allow=("tolist",)):  # its coins and slots are drawn on the CPU, to be read there
        pool.query(torch.rand(2, 1, 1, 1))
    assert int(pool.count) == 4
    pool.load_state_dict({**pool.state_dict(), "count": torch.tensor(1)})  # a loaded pool is read again
    pool.query(torch.rand(2, 1, 1, 1))
    assert int(pool.count) == 3
