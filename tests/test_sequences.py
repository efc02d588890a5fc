"""Sequence data and models: the Kalman filter against the joint Gaussian, bounds below the exact
log-likelihood that tighten with k and with training, masks that make ragged batches exact, and the
polyphonic-music reader on small written files."""

from __future__ import annotations

import math
import os
import pickle

import pytest
import torch
from omegaconf import OmegaConf

from dgm_cli.data import pipeline
from dgm_cli.data import sequences as S
from dgm_cli.errors import UserError
from dgm_cli.evaluation import likelihood
from dgm_cli.models.base import DataSpec
from dgm_cli.models.sequence.dmm import DMM
from dgm_cli.models.sequence.srnn import SRNN
from dgm_cli.models.sequence.storn import STORN
from dgm_cli.models.sequence.vrnn import VRNN

SSM = S.LinearGaussianSSM.toy()
TOY = DataSpec((10, 2), "continuous", 0, "linear_gaussian")


MODELS = [DMM, VRNN, STORN, SRNN]


def small(cls, data: DataSpec = TOY, objective: str = "elbo", seed: int = 0):
    """A 2-D latent and 16-unit networks."""
    torch.manual_seed(seed)
    widths = {f: 16 for f in cls.Config.__dataclass_fields__ if f.endswith("hidden")}
    return cls(cls.Config(z_dim=2, **widths), data, {"name": objective})


def joint_log_likelihood(x: torch.Tensor) -> torch.Tensor:
    """log p(x_1:T) of one sequence from the joint Gaussian of all its observations (brute force)."""
    T, d = x.shape
    covs = [SSM.P0]
    for _ in range(1, T):
        covs.append(SSM.A @ covs[-1] @ SSM.A.T + SSM.Q)
    big = torch.zeros(T * d, T * d, dtype=torch.float64)
    for t in range(T):
        for s in range(t + 1):
            cz = torch.linalg.matrix_power(SSM.A, t - s) @ covs[s]  # Cov(z_t, z_s)
            block = SSM.C @ cz @ SSM.C.T + (SSM.R if t == s else 0)
            big[t * d : (t + 1) * d, s * d : (s + 1) * d] = block
            big[s * d : (s + 1) * d, t * d : (t + 1) * d] = block.T
    return torch.distributions.MultivariateNormal(torch.zeros(T * d, dtype=torch.float64), big).log_prob(
        x.double().flatten()
    )


def test_kalman_filter_is_the_joint_gaussian_and_ignores_padding():
    x = SSM.sample(3, 5, torch.Generator().manual_seed(0))
    ragged = S.pad([x[0], x[1, :3], x[2, :1]])
    got = SSM.log_likelihood(ragged)
    expected = torch.stack([joint_log_likelihood(x[0]), joint_log_likelihood(x[1, :3]), joint_log_likelihood(x[2, :1])])
    assert torch.allclose(got, expected, atol=1e-8)


@pytest.mark.parametrize("cls", MODELS)
def test_masks_make_a_ragged_batch_equal_its_sequences_one_by_one(cls):
    model = small(cls)
    x = SSM.sample(3, 10, torch.Generator().manual_seed(1))
    lengths = [10, 6, 3]
    batch = S.pad([x[i, :n] for i, n in enumerate(lengths)])
    noise = torch.randn(3, 10, 2)
    together = torch.stack(model.log_weights(batch, 1, noise))[:, 0]
    for i, n in enumerate(lengths):
        alone = torch.stack(model.log_weights(x[i : i + 1, :n], 1, noise[i : i + 1, :n]))[:, 0, 0]
        assert torch.allclose(together[:, i], alone, atol=1e-5)


@pytest.mark.parametrize("cls", MODELS)
def test_bounds_stay_below_the_kalman_likelihood_and_tighten(cls):
    model = small(cls)
    train = SSM.sample(256, 10, torch.Generator().manual_seed(2))
    test = SSM.sample(50, 10, torch.Generator().manual_seed(3))
    exact = SSM.log_likelihood(test)

    def bound(k: int) -> torch.Tensor:
        with torch.no_grad():
            return model.iwae(test, k).double()

    def mean_se(t: torch.Tensor) -> tuple[float, float]:
        return float(t.mean()), float(t.std() / len(t) ** 0.5)

    torch.manual_seed(4)
    before, _ = mean_se(exact - bound(1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(50):
        loss, _ = model.training_loss(train[torch.randint(0, 256, (32,))], None, "model")
        opt.zero_grad()
        loss.backward()
        opt.step()
    elbo, iwae = bound(1), bound(100)
    for gap, se in (mean_se(exact - elbo), mean_se(exact - iwae)):
        assert gap > -3 * se  # a bound: never above the truth
    assert mean_se(exact - elbo)[0] < 0.7 * before  # tighter with training
    gain, se = mean_se(iwae - elbo)  # paired: the same test sequences
    assert gain > -2 * se  # and, in expectation, with k
    if cls is VRNN:  # whose posterior is good enough after 50 steps for the gain to show
        assert gain > 2 * se


def test_the_bound_over_trajectories_is_assembled_from_chunks_that_bound_its_memory(monkeypatch):
    """k trajectories per sequence are drawn in chunks of at most STEP_ROWS_PER_CHUNK (samples x sequences x
    steps), and the chunks' weights combine into log (1/k) sum_i w_i exactly as one draw of all k would."""
    import dgm_cli.models.sequence.base as sequence_base

    model = small(DMM)
    x = SSM.sample(3, 5, torch.Generator().manual_seed(0))
    weights = torch.randn(40, 3, generator=torch.Generator().manual_seed(1))
    taken = []

    def log_weights(x, m, noise=None):
        w = weights[sum(taken) : sum(taken) + m]
        taken.append(m)
        return w, torch.zeros_like(w), torch.zeros_like(w)

    monkeypatch.setattr(model, "log_weights", log_weights)
    monkeypatch.setattr(sequence_base, "STEP_ROWS_PER_CHUNK", 3 * 5 * 7)  # 7 trajectories of 3 x 5 steps
    bound = model.iwae(x, 40)
    assert taken == [7] * 5 + [5]
    assert torch.allclose(bound, torch.logsumexp(weights, 0) - math.log(40))


@pytest.mark.parametrize("cls", MODELS)
def test_samples_have_the_data_shape_and_objectives_run(cls):
    assert small(cls).sample(3).shape == (3, 10, 2)
    model = small(cls, objective="iwae")
    loss, metrics = model.training_loss(SSM.sample(4, 10), None, "model")
    assert torch.isfinite(loss) and set(metrics) == {"iwae_per_step"}


def test_images_are_sequences_of_rows():
    model = small(DMM, DataSpec((1, 4, 3), "binary"))
    assert model.emission_kind == "bernoulli" and (model.length, model.x_dim) == (4, 3)
    x = torch.arange(24.0).view(2, 1, 4, 3)
    rows = model.as_sequences(x)
    assert torch.equal(rows[0, 1], torch.tensor([3.0, 4.0, 5.0])) and torch.equal(model.as_data(rows), x)
    assert model.sample(2).shape == (2, 1, 4, 3)


# --- polyphonic music files ------------------------------------------------------------------------


def test_polyphonic_pickle_becomes_piano_rolls(tmp_path):
    song = [(60, 64, 67), (), (21,), (108, 60)]
    path = tmp_path / "tiny.pickle"
    path.write_bytes(pickle.dumps({"train": [song, song[:2]], "valid": [song[:1]], "test": [[(62,)]]}, protocol=2))
    data = S.read_polyphonic(path)
    roll = data["train"][0]
    assert roll.shape == (4, 88) and roll.sum() == 6
    assert roll[0, [60 - 21, 64 - 21, 67 - 21]].eq(1).all() and roll[1].sum() == 0 and roll[2, 0] == 1
    assert roll[3, 87] == 1 and roll[3, 39] == 1
    padded = S.pad(data["train"])
    assert padded.shape == (2, 4, 88) and S.lengths_of(padded).tolist() == [4, 2]


def test_polyphonic_reader_runs_no_code_and_rejects_bad_files(tmp_path):
    evil = tmp_path / "evil.pickle"
    evil.write_bytes(pickle.dumps({"train": os.getcwd, "valid": [], "test": []}))
    with pytest.raises(UserError, match="not a polyphonic-music pickle"):
        S.read_polyphonic(evil)
    wrong = tmp_path / "wrong.pickle"
    wrong.write_bytes(pickle.dumps([[(60,)]]))
    with pytest.raises(UserError, match="keys train, valid, test"):
        S.read_polyphonic(wrong)
    low = tmp_path / "low.pickle"
    low.write_bytes(pickle.dumps({"train": [[(12,)]], "valid": [], "test": []}))
    with pytest.raises(UserError, match="outside the piano's 88 keys"):
        S.read_polyphonic(low)


def test_linear_gaussian_dataset_loads_as_continuous_sequences():
    cfg = OmegaConf.create({"name": "linear_gaussian", "train_size": 50, "test_size": 20, "val_size": 10})
    ds = pipeline.load(cfg)
    assert ds.train[0].shape == (40, S.TOY_LENGTH, 2) and ds.val[0].shape == (10, S.TOY_LENGTH, 2)
    rep = pipeline.resolve_representation(
        OmegaConf.create({"representation": None}), OmegaConf.create({"representation": "binary"}), ds
    )
    spec = pipeline.spec(ds, rep, "linear_gaussian")
    assert (spec.shape, spec.representation) == ((S.TOY_LENGTH, 2), "continuous")
    assert small(DMM, spec).emission_kind == "gaussian"
    again = pipeline.load(cfg)  # drawn with fixed seeds
    assert torch.equal(ds.test[0], again.test[0])


def test_eval_reports_nats_per_sequence_and_per_step_without_padding():
    model = small(VRNN)
    x = SSM.sample(3, 10, torch.Generator().manual_seed(5))
    ragged = S.pad([x[0], x[1, :4], x[2, :6]])
    report = likelihood.evaluate_likelihood(model, ragged, None, 2, "cpu", k=8)
    parts = report["bound_terms"]
    assert parts["steps_per_sequence"] == pytest.approx(20 / 3)
    assert parts["nll_nats_per_step"] == pytest.approx(report["nll_nats"] * 3 / 20)
    assert parts["elbo_nats_per_step"] == pytest.approx(parts["elbo_nats_per_sequence"] * 3 / 20)
    # bits/dim divide by the real values (20 steps x 2), not the padded 3 x 10 x 2; the sequences differ
    # in length, so the ratio's standard error is not the NLL's over a constant
    assert report["bits_per_dim"] == pytest.approx(report["nll_nats"] * 3 / (20 * 2 * math.log(2)))
    nll = -model.log_likelihood(ragged, None, k=8).double()  # a fresh draw: only the error's scale is checked
    assert 0 < report["bits_per_dim_stderr"] < 10 * float(nll.std()) / (40 / 3 * math.log(2))


def test_bits_per_dim_of_equal_sizes_is_the_mean_over_d():
    nll = torch.tensor([10.0, 12.0, 17.0], dtype=torch.float64)
    ragged, fixed = likelihood.summary(nll, torch.tensor([8, 8, 8])), likelihood.summary(nll, 8)
    assert fixed["bits_per_dim"] == pytest.approx(13.0 / (8 * math.log(2)))
    assert fixed["bits_per_dim_stderr"] == pytest.approx(float(nll.std()) / math.sqrt(3) / (8 * math.log(2)))
    assert ragged == pytest.approx(fixed)
