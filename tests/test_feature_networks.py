"""The feature networks of sample metrics beyond the labelled classifier: the label-free autoencoder
(unlabelled image sets), the quality every FID is reported with and its warning, and the standard FID
Inception network through torch-fidelity, which must give torch-fidelity's own FID."""

from __future__ import annotations

import pytest
import torch

from dgm_cli.data import pipeline
from dgm_cli.errors import UserError
from dgm_cli.evaluation import features as feats
from dgm_cli.evaluation import sample_quality as Q
from dgm_cli.evaluation import samples


def blobs(n: int, size: int = 8, seed: int = 0) -> torch.Tensor:
    """Unlabelled uint8 images (n, 1, size, size): a bright Gaussian blob at a random place and width."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.arange(size).float()
    cy, cx = torch.rand(n, 1, 1, generator=g) * size, torch.rand(n, 1, 1, generator=g) * size
    width = 1.5 + 2 * torch.rand(n, 1, 1, generator=g)
    img = torch.exp(-((grid[None, :, None] - cy) ** 2 + (grid[None, None, :] - cx) ** 2) / (2 * width**2))
    return (img[:, None] * 255).round().to(torch.uint8)


@pytest.fixture
def short_training(monkeypatch):
    monkeypatch.setattr(feats, "AUTOENCODER_MIN_STEPS", 60)  # a few seconds on one core for 8x8 images


def test_the_label_free_network_puts_data_near_itself_and_far_from_noise(tmp_path, short_training):
    train, test = blobs(256), blobs(400, seed=1)
    net = feats.get_feature_network("blobs", train, None, test, None, "cpu", epochs=1, cache=tmp_path)
    assert net.kind == "autoencoder" and net.head is None  # no labels: the autoencoder, chosen by itself
    r2 = net.quality["reconstructed_variance"]
    assert 0.7 < r2 <= 1 and f"{100 * r2:.1f}%" in net.description and net.warning is None
    half_a, half_b = net.features(test[:200]), net.features(test[200:])
    noise = net.features(
        torch.randint(0, 256, (200, 1, 8, 8), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    )
    assert Q.fid(half_a, half_a) == pytest.approx(0, abs=1e-6)
    same, far = Q.fid(half_a, half_b), Q.fid(half_a, noise)
    assert same < 0.05 * far, (same, far)  # two halves of the same data are close, noise is far
    with pytest.raises(UserError, match="Inception score reads a classifier's class probabilities"):
        net.logits_from_features(half_a)
    again = feats.get_feature_network("blobs", train, None, test, None, "cpu", epochs=1, cache=tmp_path)
    assert again.quality == net.quality and torch.equal(again.features(test[:5]), half_a[:5])  # cached


def test_a_weak_network_is_warned_about_beside_its_numbers():
    body = torch.nn.Flatten()
    weak = feats.FeatureNetwork(
        body, torch.nn.Identity(), "dgm x classifier (128-d features), 49.0% test accuracy", 0.49, "cpu"
    )
    assert "49.0%" in weak.warning and "measure little" in weak.warning
    strong = feats.FeatureNetwork(
        body, None, "dgm x autoencoder", None, "cpu", kind="autoencoder", quality={"reconstructed_variance": 0.9}
    )
    assert strong.warning is None
    x = torch.rand(30, 1, 4, 4)
    out = Q.evaluate_samples(x, x.flip(0), "test", None, weak, ["fid"])
    assert out["feature_network_quality"] == {"test_accuracy": 0.49} and "49.0%" in out["feature_network_warning"]


def test_unlabelled_images_get_fid_kid_pr_without_the_inception_score(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    monkeypatch.setattr(feats, "cache_dir", lambda: tmp_path)
    monkeypatch.setattr(feats, "AUTOENCODER_MIN_STEPS", 3)  # what is chosen, not how good it is
    x = blobs(300)
    ds = pipeline.Dataset(train=(x[:200], None), val=(x[:0], None), test=(x[200:], None), num_classes=0)
    cfg = OmegaConf.create({"metrics": None, "features": "auto", "split": "test", "num_samples": 100, "seed": 0})
    net = samples.feature_network("blobs", ds, ["fid", "kid", "pr", "is"], "cpu", cfg.features)
    assert samples.without_inception_score(["fid", "kid", "pr", "is"], net, cfg) == ["fid", "kid", "pr"]
    with pytest.raises(UserError, match="features=autoencoder"):  # a classifier needs labels, and says what works
        samples.feature_network("blobs", ds, ["fid"], "cpu", "classifier")


def test_without_the_inception_weights_one_paragraph_names_the_file_its_checksum_and_source(tmp_path, monkeypatch):
    monkeypatch.delenv(feats.FID_INCEPTION_ENV, raising=False)
    monkeypatch.setenv("DGM_CACHE", str(tmp_path))
    with pytest.raises(UserError) as err:
        feats.get_feature_network("mnist", blobs(4), None, blobs(4), None, "cpu", kind="inception")
    message = str(err.value)
    for needed in (feats.FID_INCEPTION_FILE, "6726825d", feats.FID_INCEPTION_URL, feats.FID_INCEPTION_ENV):
        assert needed in message
    assert "\n" not in message


@pytest.mark.slow
@pytest.mark.heavy
def test_inception_fid_equals_torch_fidelitys_on_the_same_images(tmp_path, monkeypatch):
    """Random weights in the weights file's format (a state dict of torchvision's Inception3 with 1008
    classes, as pytorch-fid's pt_inception file holds): dgm's FID through them equals torch-fidelity's own
    computation from the same file and images, which quantizes, resizes and extracts on its own."""
    torch_fidelity = pytest.importorskip("torch_fidelity")
    from torchvision.models import Inception3

    torch.manual_seed(0)
    net = Inception3(num_classes=1008, aux_logits=False, init_weights=False)
    for conv in (m for m in net.modules() if isinstance(m, torch.nn.Conv2d)):
        torch.nn.init.kaiming_normal_(conv.weight)  # activations of order one through all 94 layers
    weights = tmp_path / feats.FID_INCEPTION_FILE
    torch.save(net.state_dict(), weights)
    monkeypatch.setenv(feats.FID_INCEPTION_ENV, str(weights))
    g = torch.Generator().manual_seed(1)
    real = torch.rand(6, 3, 16, 16, generator=g)
    fake = (real + 0.3 * torch.rand(6, 3, 16, 16, generator=g)).clamp(0, 1)
    net = feats.get_feature_network("cifar10", None, None, None, None, "cpu", kind="inception")
    assert "NOT the published file" in net.description  # random weights are not the published file
    ours = Q.evaluate_samples(fake, real, "test", None, net, ["fid"])["fid"]

    class Images(torch.utils.data.Dataset):
        def __init__(self, x):
            self.x = feats.quantize(x)

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return self.x[i]

    theirs = torch_fidelity.calculate_metrics(
        input1=Images(fake),
        input2=Images(real),
        fid=True,
        cuda=False,
        verbose=False,
        batch_size=6,
        feature_extractor="inception-v3-compat",
        feature_extractor_weights_path=str(weights),
        save_cpu_ram=True,
    )["frechet_inception_distance"]
    assert 0 < ours == pytest.approx(theirs, rel=1e-3)


def test_numbers_from_two_feature_networks_never_share_a_report_table():
    from dgm_cli.commands.report import protocol_of

    protocol = {"dataset": "image_folder", "split": "test", "num_examples": 30, "representation": "8bit"}
    through = lambda net: {"protocol": protocol, "sample_quality": {"num_generated": 100, "feature_network": net}}  # noqa: E731
    classifier, autoencoder = "dgm pics classifier (128-d features), 91.0% test accuracy", "dgm pics autoencoder (...)"
    assert protocol_of(through(classifier)) != protocol_of(through(autoencoder))
    assert protocol_of(through(classifier)) == protocol_of(through(classifier))


def test_an_evaluation_through_another_network_is_a_record_of_its_own():
    from dgm_cli.commands.evaluate import record_name

    def report(kind):
        return {
            "train_step": 5,
            "protocol": {"split": "test", "num_examples": 30},
            "sample_quality": {"num_generated": 100, "fid": 1.0, "feature_network_kind": kind},
        }

    names = {record_name(report(kind)) for kind in ("classifier", "autoencoder", "inception")}
    assert len(names) == 3  # features=inception never replaces the classifier's record
