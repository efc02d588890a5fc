"""Sample-quality metrics: FID, KID, precision/recall, IS, Parzen, and the cached feature network.

Properties that depend on the feature network use a small classifier trained for a few
hundred steps on real MNIST (under DGM_DATA_ROOT; skipped without it unless
DGM_REQUIRE_DATA=1); the others use Gaussian features whose answers are known.
"""

import json
import math

import pytest
import torch

from dgm_cli.errors import UserError
from dgm_cli.evaluation import features as feats
from dgm_cli.evaluation.sample_quality import (
    METRICS,
    PARZEN_WARNING,
    evaluate_samples,
    fid,
    fid_from_stats,
    inception_score,
    kid,
    parzen_log_likelihood,
    precision_recall,
    select_parzen_sigma,
)


# --- real MNIST (the `data_root` fixture of conftest.py) and a quickly trained feature network ---
@pytest.fixture(scope="module")
def mnist(data_root):
    from dgm_cli.data import files

    (train_x, train_y), (test_x, test_y) = files.load_idx(str(data_root), "MNIST", download=False)
    return {"train": (train_x, train_y), "test": (test_x, test_y)}


@pytest.fixture(scope="module")
def net(mnist):
    """Trained on 6,000 training images for 3 epochs (141 steps): about 93% test accuracy. Cached in
    the session's DGM_CACHE, so the second xdist worker that needs it loads it."""
    (tx, ty), (vx, vy) = mnist["train"], mnist["test"]
    return feats.get_feature_network("mnist", tx[:6000], ty[:6000], vx[:2000], vy[:2000], "cpu", epochs=3)


def _test_images(mnist, start, n):
    return mnist["test"][0][start : start + n].float() / 255.0


# --- FID -----------------------------------------------------------------------------
@pytest.mark.real_data
def test_fid_of_split_against_itself_is_zero_and_grows_with_noise(mnist, net):
    assert net.test_accuracy > 0.85, net.description
    ref = _test_images(mnist, 0, 1000)
    f_ref = net.features(ref)
    assert f_ref.shape == (1000, feats.FEATURE_DIM)
    assert fid(f_ref, f_ref) < 1e-6 * max(1.0, f_ref.var(0).sum().item())

    other = _test_images(mnist, 1000, 1000)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(other.shape, generator=g)
    scores = [fid(f_ref, net.features((other + s * noise).clamp(0, 1))) for s in (0.0, 0.1, 0.2, 0.4, 0.8)]
    assert all(a < b for a, b in zip(scores, scores[1:])), scores
    assert scores[-1] > 10 * scores[0], scores


def test_fid_matches_closed_form_for_gaussians():
    torch.manual_seed(0)
    torch.set_default_dtype(torch.float64)  # restored below; the closed form is checked to 1e-9
    try:
        _check_fid_closed_forms()
    finally:
        torch.set_default_dtype(torch.float32)


def _check_fid_closed_forms():
    # 2-D, non-commuting covariances: tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)) for a 2x2 M with
    # non-negative eigenvalues, and det(S1 S2) = det S1 det S2.
    mu1, mu2 = torch.tensor([0.0, 1.0]), torch.tensor([2.0, -1.0])
    s1 = torch.tensor([[2.0, 0.6], [0.6, 1.0]])
    s2 = torch.tensor([[0.5, -0.3], [-0.3, 1.5]])
    tr_sqrt = math.sqrt((s1 @ s2).trace() + 2 * math.sqrt(s1.det() * s2.det()))
    exact = ((mu1 - mu2) ** 2).sum() + s1.trace() + s2.trace() - 2 * tr_sqrt
    assert fid_from_stats(mu1, s1, mu2, s2) == pytest.approx(exact.item(), rel=1e-9)
    assert fid_from_stats(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)

    n = 200_000
    x1 = torch.distributions.MultivariateNormal(mu1, s1).sample((n,))
    x2 = torch.distributions.MultivariateNormal(mu2, s2).sample((n,))
    assert fid(x1, x2) == pytest.approx(exact.item(), rel=0.02)

    # 16-D, diagonal covariances: FID = |dmu|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2
    a, b = torch.rand(16) + 0.5, torch.rand(16) + 0.5
    dmu = torch.randn(16)
    exact = (dmu**2).sum() + ((a.sqrt() - b.sqrt()) ** 2).sum()
    assert fid_from_stats(torch.zeros(16), torch.diag(a), dmu, torch.diag(b)) == pytest.approx(exact.item(), rel=1e-9)
    y1 = torch.randn(n, 16) * a.sqrt()
    y2 = torch.randn(n, 16) * b.sqrt() + dmu
    assert fid(y1, y2) == pytest.approx(exact.item(), rel=0.03)


# --- KID -----------------------------------------------------------------------------
def test_kid_is_unbiased_and_detects_a_shift():
    g = torch.Generator().manual_seed(0)
    d, n, reps = 8, 50, 200
    # Independent small pairs from the same law: the unbiased estimates average to 0. The biased
    # (V-statistic) estimate, which keeps k(x_i, x_i), would be positive by ~2 E[k(x,x) - k(x,y)] / n.
    est = torch.tensor(
        [
            kid(torch.randn(n, d, generator=g), torch.randn(n, d, generator=g), num_subsets=1, subset_size=n)[0]
            for _ in range(reps)
        ]
    )
    stderr = est.std() / math.sqrt(reps)
    assert abs(est.mean()) < 3 * stderr, (est.mean(), stderr)
    x = torch.randn(2000, d, generator=g)
    k_self = ((x * x).sum(1) / d + 1) ** 3
    bias_of_v_statistic = 2 * (k_self.mean() - 1) / n  # E k(x, y) = E (x.y/d + 1)^3 = 1 for independent N(0, I)
    assert bias_of_v_statistic > 10 * stderr

    f1, f2 = torch.randn(1000, d, generator=g), torch.randn(1000, d, generator=g)
    mean, std = kid(f1, f2, num_subsets=50, subset_size=500, generator=g)
    assert abs(mean) < std
    shifted_mean, shifted_std = kid(f1, f2 + 0.5, num_subsets=50, subset_size=500, generator=g)
    assert shifted_mean > 5 * shifted_std > 0


@pytest.mark.real_data
def test_kid_on_mnist_halves(mnist, net):
    f = net.features(_test_images(mnist, 0, 2000))
    mean, std = kid(f[:1000], f[1000:], num_subsets=20, subset_size=500)
    assert abs(mean) < std
    noisy = net.features((_test_images(mnist, 1000, 1000) + 0.3 * torch.randn(1000, 1, 28, 28)).clamp(0, 1))
    shifted_mean, shifted_std = kid(f[:1000], noisy, num_subsets=20, subset_size=500)
    assert shifted_mean > 5 * shifted_std


# --- precision / recall ----------------------------------------------------------------------
def _mixture(n, modes, centers, g):
    k = modes[torch.randint(len(modes), (n,), generator=g)]
    return centers[k] + 0.3 * torch.randn(n, centers.shape[1], generator=g)


def test_precision_recall_on_mode_dropping_gaussians():
    g = torch.Generator().manual_seed(0)
    angles = torch.arange(10) * 2 * math.pi / 10
    centers = 10 * torch.stack([angles.cos(), angles.sin()], 1)  # ten well-separated 2-D modes
    every = torch.arange(10)
    real = _mixture(1000, every, centers, g)
    p, r = precision_recall(real, _mixture(1000, every, centers, g), k=3)
    assert p > 0.9 and r > 0.9, (p, r)
    p, r = precision_recall(real, _mixture(1000, every[:5], centers, g), k=3)
    assert p > 0.9 and r < 0.6, (p, r)  # half the modes: every fake is plausible, half the data is missed


@pytest.mark.real_data
def test_precision_recall_on_mnist_digits(mnist, net):
    x, y = mnist["test"][0][:4000].float() / 255, mnist["test"][1][:4000]
    f = net.features(x)
    real, fake = f[:2000], f[2000:]
    p, r = precision_recall(real, fake)
    assert p > 0.8 and r > 0.8, (p, r)
    low = fake[y[2000:] < 5]  # a "model" that only draws digits 0-4
    p_low, r_low = precision_recall(real, low)
    assert r_low < r - 0.15 and p_low > 0.8, (p_low, r_low, r)


# --- Inception score -------------------------------------------------------------------
def test_inception_score_extremes():
    k = 10
    confident_uniform = 50.0 * torch.eye(k).repeat(100, 1)  # every class equally often, each sure
    mean, std = inception_score(confident_uniform, splits=10)
    assert mean == pytest.approx(k, rel=1e-6) and std < 1e-6
    one_class = 50.0 * torch.eye(k)[[3] * 1000]
    assert inception_score(one_class)[0] == pytest.approx(1.0, abs=1e-9)
    unsure = torch.zeros(1000, k)  # uniform p(y|x): KL is 0
    assert inception_score(unsure)[0] == pytest.approx(1.0, abs=1e-9)
    between = inception_score(torch.randn(1000, k) * 3)[0]
    assert 1.0 < between < k


# --- Parzen -----------------------------------------------------------------------------
def test_parzen_matches_exact_gaussian_density():
    d, sigma = 5, 0.3
    center = torch.rand(1, d, dtype=torch.float64)
    test = torch.rand(7, d, dtype=torch.float64)
    exact = -((test - center) ** 2).sum(1) / (2 * sigma**2) - d / 2 * math.log(2 * math.pi * sigma**2)
    mean, stderr = parzen_log_likelihood(center, test, sigma)
    assert mean == pytest.approx(exact.mean().item(), rel=1e-9)
    assert stderr == pytest.approx(exact.std().item() / math.sqrt(7), rel=1e-9)

    # two centers: log(0.5 N(x; c1) + 0.5 N(x; c2)), far apart so that logsumexp must be stable
    centers = torch.stack([torch.zeros(d), 100 * torch.ones(d)]).double()
    x = torch.full((1, d), 0.1, dtype=torch.float64)
    two = math.log(0.5) + (-(0.1**2) * d / (2 * sigma**2) - d / 2 * math.log(2 * math.pi * sigma**2))
    assert parzen_log_likelihood(centers, x, sigma)[0] == pytest.approx(two, rel=1e-9)
    assert "Theis" in PARZEN_WARNING


def test_select_parzen_sigma_prefers_the_data_scale():
    g = torch.Generator().manual_seed(0)
    samples, val = torch.randn(2000, 1, generator=g), torch.randn(200, 1, generator=g)
    sigmas = [0.01, 0.3, 10.0]
    best = select_parzen_sigma(samples, val, sigmas)
    lls = [parzen_log_likelihood(samples, val, s)[0] for s in sigmas]
    assert best == sigmas[max(range(3), key=lls.__getitem__)] == 0.3


# --- evaluate_samples ------------------------------------------------------------------------
def test_unknown_metric_is_a_user_error():
    x = torch.rand(4, 1, 8, 8)
    with pytest.raises(UserError) as err:
        evaluate_samples(x, x, "test", None, None, ["fid", "bogus"], seed=0)
    assert "bogus" in str(err.value) and all(m in str(err.value) for m in METRICS)


def test_parzen_alone_needs_no_network():
    g = torch.Generator().manual_seed(0)
    gen, ref = torch.rand(50, 1, 6, 6, generator=g), (torch.rand(40, 1, 6, 6, generator=g) * 255).to(torch.uint8)
    out = evaluate_samples(gen, ref, "test", None, None, ["parzen"], seed=0)
    assert out["parzen_num_test"] == 20 and out["parzen_warning"] == PARZEN_WARNING
    json.dumps(out)


@pytest.mark.real_data
def test_evaluate_samples_reports_every_metric(mnist, net):
    noise = torch.randn(300, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    gen = (_test_images(mnist, 0, 300) + 0.5 * noise).clamp(0, 1)  # a poor "model": noisy digits
    ref, train = mnist["test"][0][500:1100], mnist["train"][0][:1000]
    out = evaluate_samples(gen, ref, "test", train, net, ["fid", "kid", "pr", "is"], seed=0)
    json.dumps(out)
    assert out["num_generated"] == 300 and out["num_reference"] == 600 and out["reference_split"] == "test"
    assert out["feature_network"] == net.description
    assert out["fid_floor_num_train"] == 300  # the floor is measured at the generated sample size
    assert 0 <= out["fid_floor"] < out["fid"] / 5
    assert out["kid_mean"] > 3 * out["kid_std"]
    for key in ("precision", "recall", "inception_score_std"):
        assert math.isfinite(out[key]), key
    assert 1 < out["inception_score_mean"] < out["inception_score_reference_mean"] <= 10
    again = evaluate_samples(gen, ref, "test", train, net, ["fid", "kid", "pr", "is"], seed=0)
    assert again == out  # seeded


# --- the feature network and its cache ----------------------------------------------------
def _tiny_data(seed=0, n=64, classes=3):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(classes, (n,), generator=g)
    x = (torch.rand(n, 1, 8, 8, generator=g) * 80).to(torch.uint8)
    x[torch.arange(n), 0, y * 2, :] = 255  # class = which row is bright: learnable
    return x, y


@pytest.fixture
def training_counter(monkeypatch):
    calls = []
    real = feats.train_classifier

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(feats, "train_classifier", counting)
    return calls


def test_feature_network_is_cached_and_reloaded(tmp_path, training_counter):
    x, y = _tiny_data()
    first = feats.get_feature_network("tiny", x, y, x, y, "cpu", epochs=1, cache=tmp_path)
    files = list(tmp_path.glob("tiny-*.pt"))
    assert len(training_counter) == 1 and len(files) == 1
    assert not list(tmp_path.glob("*.tmp"))  # the atomic write left no temporary file
    blob = torch.load(files[0], weights_only=True)
    assert blob["test_accuracy"] == first.test_accuracy and f"{100 * first.test_accuracy:.1f}%" in first.description

    second = feats.get_feature_network("tiny", x, y, x, y, "cpu", epochs=1, cache=tmp_path)
    assert len(training_counter) == 1  # loaded, not retrained
    probe = torch.rand(5, 1, 8, 8)
    assert torch.equal(first.features(probe), second.features(probe))
    assert first.logits(probe).shape == (5, 3)

    feats.get_feature_network("tiny", x, y, x, y, "cpu", epochs=2, cache=tmp_path)
    assert len(training_counter) == 2 and len(list(tmp_path.glob("tiny-*.pt"))) == 2  # another recipe, another file
    x2, y2 = _tiny_data(seed=1)
    feats.get_feature_network("tiny", x2, y2, x2, y2, "cpu", epochs=1, cache=tmp_path)
    assert len(training_counter) == 3  # other data under the same name does not reuse the network


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other_recipe"])
def test_corrupted_cache_is_retrained(tmp_path, training_counter, damage):
    x, y = _tiny_data()
    feats.get_feature_network("tiny", x, y, x, y, "cpu", epochs=1, cache=tmp_path)
    (path,) = tmp_path.glob("tiny-*.pt")
    if damage == "garbage":
        path.write_bytes(b"not a checkpoint at all")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    else:
        blob = torch.load(path, weights_only=True)
        blob["recipe"]["epochs"] = 99
        torch.save(blob, path)
    net = feats.get_feature_network("tiny", x, y, x, y, "cpu", epochs=1, cache=tmp_path)
    assert len(training_counter) == 2
    assert net.features(x.float() / 255).shape == (64, feats.FEATURE_DIM)
    assert torch.load(path, weights_only=True)["recipe"]["epochs"] == 1  # rewritten, loadable again


def test_training_is_reproducible_and_leaves_the_callers_rng_alone(tmp_path):
    x, y = _tiny_data()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = feats.get_feature_network("tiny", x, y, x, y, "cpu", epochs=1, cache=tmp_path / "a")
    assert torch.equal(torch.rand(3), expected)
    b = feats.get_feature_network("tiny", x, y, x, y, "cpu", epochs=1, cache=tmp_path / "b")
    probe = x[:4]
    assert torch.equal(a.features(probe), b.features(probe))


def test_a_network_another_process_is_training_is_waited_for_not_trained_again(tmp_path, monkeypatch):
    """Parallel jobs (a joblib sweep evaluating at once) share the cache: while one holds the
    network's lock, another waits, then loads what the first cached instead of training."""
    import shutil
    import threading
    import time

    from filelock import FileLock

    x, y = _tiny_data()
    feats.get_feature_network("tiny", x, y, x, y, "cpu", epochs=1, cache=tmp_path / "first")
    (cached,) = (tmp_path / "first").glob("*.pt")
    path = tmp_path / "second" / cached.name
    path.parent.mkdir()
    monkeypatch.setattr(feats, "train_classifier", lambda *a, **k: pytest.fail("trained although cached"))
    holder = FileLock(f"{path}.lock")
    holder.acquire()
    got = []
    waiter = threading.Thread(
        target=lambda: got.append(feats.get_feature_network("tiny", x, y, x, y, "cpu", epochs=1, cache=path.parent))
    )
    waiter.start()
    time.sleep(0.3)  # the other process is still training: nothing cached yet
    assert not got
    shutil.copy(cached, path)  # ... it caches the network and lets go
    holder.release()
    waiter.join(60)
    assert len(got) == 1 and got[0].test_accuracy is not None


def test_default_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("DGM_CACHE", str(tmp_path))
    assert feats.cache_dir() == tmp_path / "feature_nets"


def test_a_classifier_on_unlabelled_data_is_a_user_error(tmp_path):
    x, _ = _tiny_data()  # features=auto takes the label-free autoencoder there (test_feature_networks.py)
    with pytest.raises(UserError, match="labels"):
        feats.get_feature_network("image_folder", x, None, x, None, "cpu", epochs=1, cache=tmp_path, kind="classifier")


def test_cifar10_uses_local_inception_weights_only(tmp_path, monkeypatch):
    from torchvision.models import inception_v3

    x = (torch.rand(2, 3, 32, 32) * 255).to(torch.uint8)
    y = torch.tensor([0, 1])
    monkeypatch.delenv(feats.INCEPTION_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))  # an empty hub: never downloads
    own = feats.get_feature_network("cifar10", x, y, x, y, "cpu", epochs=1, cache=tmp_path)
    assert own.description.startswith("dgm CIFAR-10 classifier")

    weights = tmp_path / "inception.pth"
    torch.save(inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict(), weights)
    monkeypatch.setenv(feats.INCEPTION_ENV, str(weights))
    inc = feats.get_feature_network("cifar10", x, y, x, y, "cpu", epochs=1, cache=tmp_path)
    assert "Inception-v3" in inc.description and inc.test_accuracy is None
    f = inc.features(x)
    assert f.shape == (2, 2048) and inc.logits_from_features(f).shape == (2, 1000)

    monkeypatch.setenv(feats.INCEPTION_ENV, str(tmp_path / "missing.pth"))
    with pytest.raises(UserError, match=feats.INCEPTION_ENV):
        feats.get_feature_network("cifar10", x, y, x, y, "cpu", epochs=1, cache=tmp_path)
