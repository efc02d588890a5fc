"""Each reported likelihood says what kind of number it is; estimator settings belong to the model;
a class-conditional model's NLL is -log p(x), its conditional one beside it."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from dgm_cli.errors import UserError
from dgm_cli.evaluation import estimators
from dgm_cli.evaluation.likelihood import evaluate_likelihood, label_prior
from dgm_cli.models.autoregressive.gated_pixelcnn import GatedPixelCNN
from dgm_cli.models.base import DataSpec
from dgm_cli.models.registry import build_model


def model(name, rep="binary", shape=(1, 4, 4), classes=10, **keys):
    return build_model(
        {"name": name, **keys},
        {"name": {"vae": "elbo", "dcgan": "nonsaturating"}.get(name, "nll")},
        DataSpec(shape, rep, classes, "mnist"),
    )


@pytest.mark.parametrize(
    "name, rep, kind",
    [
        ("made", "binary", estimators.EXACT),
        ("pixelcnn", "8bit", estimators.EXACT),
        ("vae", "binary", estimators.LOWER_BOUND),
        ("vae", "dequantized", estimators.LOWER_BOUND),
        ("realnvp", "dequantized", estimators.UPPER_BOUND),
    ],
)
def test_every_likelihood_has_its_kind(name, rep, kind):
    assert estimators.likelihood_kind(model(name, rep)) == kind


def test_estimator_settings_are_the_models_own():
    vae = model("vae")
    assert estimators.estimator_settings(vae, {}) == {"k": 5000}
    assert estimators.estimator_settings(vae, {"k": 7}) == {"k": 7}
    with pytest.raises(UserError, match=r"estimator\.ais_steps.*estimator\.k"):
        estimators.estimator_settings(vae, {"ais_steps": 10})
    with pytest.raises(UserError, match="estimator.k=0"):
        estimators.estimator_settings(vae, {"k": 0})
    with pytest.raises(UserError, match="exact"):
        estimators.estimator_settings(model("made"), {"k": 5})
    assert estimators.estimator_settings(model("made"), {}) == {}


class AISLike:
    """An estimator that prepares once (AIS: log Z) and whose error is shared by every example."""

    likelihood = "ais"
    data = DataSpec((3,), "continuous")

    def __init__(self):
        self.prepared = 0

    def prepare_eval(self, x, y, steps=10):
        self.prepared += 1
        self.log_z = 2.0
        return {"log_z": self.log_z, "shared_error_nats": 0.3}

    def log_likelihood(self, x, y=None, steps=10):
        return -x.sum(1) - self.log_z

    def estimator(self, steps=10):
        return f"AIS, {steps} steps"

    def extra_eval(self, x, y=None):
        return {}


def test_a_shared_error_is_not_divided_by_the_square_root_of_n():
    m = AISLike()
    x = torch.rand(400, 3, dtype=torch.float64)
    report = evaluate_likelihood(m, x, None, 50, "cpu", steps=20)
    assert m.prepared == 1, "prepare_eval runs once, before the per-example pass, not per batch"
    assert report["kind"] == estimators.ESTIMATE and report["estimator_settings"] == {"steps": 20}
    assert report["nll_nats"] == pytest.approx(float(x.sum(1).mean()) + 2.0)
    spread = float(x.sum(1).std() / math.sqrt(400))
    assert report["nll_nats_stderr"] == pytest.approx(spread)
    assert report["shared_error_nats"] == 0.3
    assert report["nll_nats_error"] == pytest.approx(math.hypot(spread, 0.3))
    assert report["prepared"] == {"log_z": 2.0}


@pytest.fixture
def tiny_conditional():
    torch.manual_seed(0)
    spec = DataSpec((1, 2, 2), "binary", 3, "tiny")
    m = GatedPixelCNN(
        GatedPixelCNN.Config(
            channels=4, num_layers=2, kernel_size=3, input_kernel_size=3, head_channels=4, conditional=True
        ),
        spec,
        {"name": "nll"},
    )
    for p in m.parameters():  # far from uniform, so that the classes disagree
        torch.nn.init.normal_(p, std=1.5)
    return m.eval()


def test_conditional_model_reports_the_marginal_nll(tiny_conditional):
    """-log p(x) = -log sum_y p(y) p(x|y), p(y) from the training labels, checked by brute force
    over all 16 binary 2x2 images; -log p(x|y) is reported beside it, named as such."""
    m = tiny_conditional
    train_labels = torch.tensor([0, 0, 0, 1, 2, 2])  # p(y) = 1/2, 1/6, 1/3
    prior = label_prior(train_labels, 3)
    images = torch.tensor(list(itertools.product((0.0, 1.0), repeat=4))).view(16, 1, 2, 2)
    labels = torch.arange(16) % 3
    per_image = [
        evaluate_likelihood(m, images[i : i + 1], labels[i : i + 1], 1, "cpu", log_prior=prior) for i in range(16)
    ]
    with torch.no_grad():  # log sum_y p(y) p(x|y), summed in log space: p(x|y) of an unlikely image underflows
        brute = torch.logsumexp(
            torch.stack(
                [
                    math.log(p) + m.log_prob(images, torch.full((16,), c)).double()
                    for c, p in enumerate([1 / 2, 1 / 6, 1 / 3])
                ]
            ),
            0,
        )
        given_label = m.log_prob(images, labels)
    nll = torch.tensor([r["nll_nats"] for r in per_image], dtype=torch.float64)
    assert torch.allclose(nll, -brute, atol=1e-5)
    assert float(torch.exp(-nll).sum()) == pytest.approx(1.0, abs=1e-5), "p(x) sums to 1 over all images"
    cond = torch.tensor([r["conditional"]["nll_nats"] for r in per_image], dtype=torch.float64)
    assert torch.allclose(cond, -given_label.double(), atol=1e-5)
    assert not torch.allclose(cond, nll, atol=1e-2)
    assert per_image[0]["conditional"]["kind"] == estimators.CONDITIONAL and per_image[0]["kind"] == estimators.EXACT

    whole = evaluate_likelihood(m, images, labels, 5, "cpu", log_prior=prior)
    assert whole["nll_nats"] == pytest.approx(float(nll.mean()), abs=1e-5)
    assert whole["label_prior"] == "training label frequencies"


def test_a_conditional_model_without_its_prior_is_a_bug_not_a_number(tiny_conditional):
    with pytest.raises(ValueError, match="prior"):
        evaluate_likelihood(tiny_conditional, torch.zeros(2, 1, 2, 2), torch.zeros(2, dtype=torch.long), 2, "cpu")


def test_eval_json_keeps_the_other_section_of_the_same_protocol_only(tmp_path):
    """A likelihood, then sample metrics: one file holds both; under another protocol it is replaced."""
    from dgm_cli.commands.evaluate import merge_previous, write_json

    base = {
        "schema": "dgm-eval-v2",
        "checkpoint": "c.pt",
        "train_step": 10,
        "protocol": {"split": "test", "num_examples": 100},
    }
    path = tmp_path / "eval.json"
    write_json({**base, "likelihood": {"nll_nats": 90.0}}, path)
    merged = merge_previous({**base, "sample_quality": {"fid": 3.0}}, path)
    assert merged["likelihood"] == {"nll_nats": 90.0} and merged["sample_quality"] == {"fid": 3.0}
    other = {**base, "protocol": {"split": "test", "num_examples": 50}, "sample_quality": {"fid": 4.0}}
    assert "likelihood" not in merge_previous(other, path)
    assert "likelihood" not in merge_previous({**base, "train_step": 11, "sample_quality": {}}, path)


def test_the_printed_headline_names_each_number_once_and_what_it_is():
    """dgm eval's first lines: an exact likelihood says "exact" once, and a Parzen-only evaluation
    starts with its number, not with an empty label."""
    from dgm_cli.commands.evaluate import headline

    protocol = {
        "dataset": "mnist",
        "split": "test",
        "num_examples": 50,
        "representation": "binary",
        "binarization": None,
    }
    exact = {
        "protocol": protocol,
        "likelihood": {
            "nll_nats": 90.0,
            "nll_nats_stderr": 0.5,
            "bits_per_dim": 0.1656,
            "kind": "exact",
            "estimator": "exact (one MADE mask set)",
        },
    }
    line = headline(exact)
    assert "[exact (one MADE mask set)]" in line and "exact: exact" not in line and "None" not in line
    bound = {
        "protocol": protocol,
        "likelihood": {**exact["likelihood"], "kind": "stochastic lower bound on log p", "estimator": "IWAE, k=5000"},
    }
    assert "[stochastic lower bound on log p: IWAE, k=5000]" in headline(bound)
    from dgm_cli.commands.evaluate import table

    assert "binarization" not in table(exact)  # None: it does not apply, so it is not printed
    parzen = {
        "protocol": protocol,
        "sample_quality": {"parzen_log_likelihood": -120.5, "parzen_sigma": 0.2, "samples": "the model's samples"},
    }
    assert headline(parzen).startswith("parzen_log_likelihood -120.5 [")


def test_a_long_evaluation_logs_how_far_it_is_and_the_time_left(tiny_conditional, monkeypatch, caplog):
    """Off a terminal, scoring that passes PROGRESS_AFTER logs what it scores, then a line every
    LOG_EVERY seconds (examples done of how many, time left), then when it is done."""
    import logging

    from dgm_cli import progress
    from dgm_cli.evaluation.likelihood import evaluate_likelihood, label_prior

    monkeypatch.setattr(progress, "PROGRESS_AFTER", 0.0)
    monkeypatch.setattr(progress, "LOG_EVERY", 0.0)
    images = torch.tensor(list(itertools.product((0.0, 1.0), repeat=4))).view(16, 1, 2, 2)
    with caplog.at_level(logging.INFO, logger="dgm.eval"):
        evaluate_likelihood(
            tiny_conditional, images, torch.arange(16) % 3, 4, "cpu", log_prior=label_prior(torch.tensor([0, 1, 2]), 3)
        )
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("scoring 16 examples: exact")
    steps = [m for m in lines if "examples after" in m and "left" in m]
    assert [m.split(": ")[-1].split(" examples")[0] for m in steps] == ["4/16", "8/16", "12/16", "16/16"]
    assert "done in" in lines[-1]
