"""Polyphonic music: a music21 score as an 88-key piano roll, the chorales' cache (plain arrays, opened
without running code) and split by piece, the polyphonic pickles through the training pipeline."""

from __future__ import annotations

import json
import pickle

import music21 as m21
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_train, run_folders
from dgm_cli import images
from dgm_cli.app import model_from_checkpoint
from dgm_cli.commands import train
from dgm_cli.data import music, pipeline
from dgm_cli.data import sequences as S
from dgm_cli.engine import checkpoint
from dgm_cli.errors import UserError
from dgm_cli.evaluation.likelihood import evaluate_likelihood
from dgm_cli.models.base import DataSpec
from dgm_cli.models.sequence.dmm import DMM


def tiny_score():
    """C4 for a quarter, then E4+G4 for a half, a sixteenth A0 between step starts, a rest, C8 for 1.5."""
    part = m21.stream.Part()
    part.insert(0, m21.note.Note("C4", quarterLength=1))
    part.insert(1, m21.chord.Chord(["E4", "G4"], quarterLength=2))
    part.insert(1.5, m21.note.Note("A0", quarterLength=0.25))
    part.insert(4, m21.note.Note("C8", quarterLength=1.5))
    return part


def test_a_score_becomes_a_piano_roll_in_quarter_note_steps():
    roll = music.stream_to_roll(tiny_score())
    expected = torch.zeros(6, 88)  # ends at 5.5 quarters: 6 steps
    expected[0, 60 - 21] = 1
    expected[1:3, [64 - 21, 67 - 21]] = 1  # the chord sounds at the starts of steps 1 and 2
    expected[4:6, 108 - 21] = 1  # A0 sounds at no step's start; step 3 is the rest
    assert torch.equal(roll, expected)
    eighths = music.stream_to_roll(tiny_score(), step=0.5)
    assert eighths.shape == (11, 88) and eighths[3, 0] == 1 and eighths[:, 0].sum() == 1


def test_a_score_outside_the_keyboard_is_refused():
    part = m21.stream.Part()
    part.insert(0, m21.note.Note(midi=12))
    with pytest.raises(UserError, match="outside the piano's 88 keys"):
        music.stream_to_roll(part)


def test_the_cache_holds_plain_arrays_and_is_read_back(tmp_path, monkeypatch):
    rolls = [music.stream_to_roll(tiny_score()), torch.eye(88)[:3]]
    music.save_rolls(tmp_path / music.CACHE_NAME, ["a", "b"], rolls)
    with np.load(tmp_path / music.CACHE_NAME, allow_pickle=False) as f:  # no object arrays in it
        assert f["rolls"].dtype == np.uint8 and f["lengths"].tolist() == [6, 3]

    def parse():
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(music, "parse_chorales", parse)
    names, again = music.bach_chorales(tmp_path)
    assert names == ["a", "b"] and all(torch.equal(r, s) for r, s in zip(rolls, again))


def test_a_cache_that_would_need_unpickling_is_never_opened_as_such(tmp_path, monkeypatch):
    path = tmp_path / music.CACHE_NAME
    np.savez(path, names=np.array([print], dtype=object), lengths=np.array([1]), rolls=np.zeros((1, 88)))
    assert music.load_rolls(path) is None  # allow_pickle=False refuses the object array
    path.write_bytes(b"not a zip file")
    assert music.load_rolls(path) is None
    monkeypatch.setattr(music, "parse_chorales", lambda: (["x"], [torch.ones(2, 88)]))
    names, rolls = music.bach_chorales(tmp_path)  # parsed again, and the cache rewritten
    assert names == ["x"] and music.load_rolls(path)[0] == ["x"]


def test_chorales_split_by_piece_with_a_fixed_seed():
    splits = music.split_pieces(350)
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [210, 70, 70]
    assert sorted(sum(splits.values(), [])) == list(range(350))
    assert splits == music.split_pieces(350) and splits != music.split_pieces(350, seed=1)


def test_the_corpus_file_of_a_chorale_is_the_exact_name_in_musicxml(tmp_path):
    found = [tmp_path / "bwv245.3.krn", tmp_path / "bwv245.37.mxl", tmp_path / "bwv245.3.mxl"]
    assert music.chorale_file("bach/bwv245.3", found) == tmp_path / "bwv245.3.mxl"
    assert music.chorale_file("bach/bwv1.6", tmp_path / "bwv1.6.mxl") == tmp_path / "bwv1.6.mxl"


def write_pickle(path, splits=(3, 2, 2)):
    """A small file in the Boulanger-Lewandowski format: sequences of tuples of MIDI notes."""
    rng = np.random.default_rng(0)

    def song(n):
        return [
            tuple(int(k) for k in rng.choice(range(40, 80), size=rng.integers(0, 4), replace=False)) for _ in range(n)
        ]

    data = {
        name: [song(int(rng.integers(3, 9))) for _ in range(count)] for name, count in zip(S.POLYPHONIC_SPLITS, splits)
    }
    path.write_bytes(pickle.dumps(data, protocol=2))
    return data


def test_polyphonic_files_load_as_padded_rolls_with_their_own_splits(tmp_path):
    raw = write_pickle(tmp_path / "JSB Chorales.pickle")
    cfg = OmegaConf.create({"name": "jsb_chorales", "root": str(tmp_path), "path": None, "val_size": None})
    ds = pipeline.load(cfg)
    lengths = [len(s) for s in raw["train"]]
    assert ds.train[0].shape == (3, max(lengths), 88) and S.lengths_of(ds.train[0]).tolist() == lengths
    assert len(ds.val[0]) == 2 and len(ds.test[0]) == 2 and not ds.is_image
    first = ds.train[0][0, : lengths[0]]
    assert torch.equal(first, S.piano_roll(raw["train"][0]))
    spec = pipeline.spec(
        ds,
        pipeline.resolve_representation(
            OmegaConf.create({"representation": None}), OmegaConf.create({"representation": "binary"}), ds
        ),
        "jsb_chorales",
    )
    model = DMM(DMM.Config(z_dim=2, transition_hidden=8, emission_hidden=8, rnn_hidden=8), spec, {"name": "elbo"})
    assert model.emission_kind == "bernoulli" and model.x_dim == 88
    merged = pipeline.load(OmegaConf.merge(cfg, {"val_size": 0, "path": str(tmp_path / "JSB Chorales.pickle")}))
    assert len(merged.train[0]) == 5 and len(merged.val[0]) == 0
    with pytest.raises(UserError, match="fixed split by piece"):
        pipeline.load(OmegaConf.merge(cfg, {"val_size": 1}))


def test_a_missing_polyphonic_file_names_what_is_expected(tmp_path):
    cfg = OmegaConf.create({"name": "nottingham", "root": str(tmp_path), "path": None, "val_size": None})
    with pytest.raises(UserError) as err:
        pipeline.load(cfg)
    message = str(err.value)
    assert "Nottingham.pickle" in message and "JSB Chorales.pickle" in message and "data.path" in message
    assert "\n" not in message


def test_a_ragged_batch_computes_no_step_past_its_longest_sequence():
    model = DMM(
        DMM.Config(z_dim=2, transition_hidden=8, emission_hidden=8, rnn_hidden=8),
        DataSpec((12, 88), "continuous", 0, "jsb_chorales"),
        {"name": "elbo"},
    )
    rolls = [torch.bernoulli(torch.full((n, 88), 0.1)) for n in (3, 5)]
    calls = []
    model.emission.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        padded = torch.cat([S.pad(rolls), torch.full((2, 7, 88), float("nan"))], 1)  # padded to 12 steps
        model.log_weights(padded, 1)
    assert len(calls) == 5


@pytest.mark.slow
@pytest.mark.heavy
def test_the_real_chorales_parse_into_rolls(tmp_path):
    """Parses music21's whole corpus of chorales (minutes on one core) into a fresh cache."""
    names, rolls = music.bach_chorales(tmp_path)
    assert len(names) == 350 and len(set(names)) == 350
    assert all(r.shape[1] == 88 and 8 <= len(r) <= 400 for r in rolls)
    voices = torch.cat(rolls).sum(1)
    assert voices.max() <= 8 and 3.5 < float(voices.mean()) <= 4.5  # four voices, some with instrumental parts
    assert music.load_rolls(tmp_path / music.CACHE_NAME)[0] == names


# --- pictures and MIDI -----------------------------------------------------------------------------


def test_piano_rolls_are_drawn_time_by_keys_with_the_highest_key_on_top():
    rolls = torch.zeros(3, 5, 88)
    rolls[0, 2, 87] = 1  # C8 at step 2
    rolls[1, 4, 0] = 1  # A0 at step 4
    pictures = images.piano_rolls(rolls)
    assert pictures.shape == (3, 1, 88, 5)
    assert pictures[0, 0, 0, 2] == 1 and pictures[1, 0, 87, 4] == 1 and pictures.sum() == 2
    grid = images.of_samples(rolls, S.is_piano_roll("bach_chorales"))  # wide pictures: two to a row
    assert grid.shape == (3, 2 * (88 + 2) + 2, 2 * (5 + 2) + 2)


def test_sequence_paths_are_drawn_through_their_steps_and_stop_at_padding():
    path = S.pad([torch.tensor([[-2.0, 0.0], [2.0, 0.0]]), torch.tensor([[0.0, 3.0]])])
    picture = images.of_samples(path, S.is_piano_roll("linear_gaussian"))[0]
    row = picture[100]  # y = 0 (just above): the first sequence's segment from x = -2 to x = 2
    lit = row.nonzero().flatten()
    assert 45 <= lit.min() <= 55 and 145 <= lit.max() <= 155 and picture[:, :40].sum() == 0


def test_dgm_sample_draws_music_as_piano_rolls_and_other_sequences_as_paths():
    from types import SimpleNamespace

    from dgm_cli.commands import sample

    cfg = OmegaConf.create({"mode": "sample", "num_samples": 4, "temperature": 1.0, "label": None, "nrow": None})
    config = DMM.Config(z_dim=2, transition_hidden=8, emission_hidden=8, rnn_hidden=8)
    music_model = DMM(config, DataSpec((6, 88), "continuous", 0, "bach_chorales"), {"name": "elbo"})
    assert sample.draw(music_model, cfg, None, "cpu").shape == (3, 2 * 90 + 2, 2 * 8 + 2)
    toy = DMM(config, DataSpec((5, 2), "continuous", 0, "linear_gaussian"), {"name": "elbo"})
    data = SimpleNamespace(test=(S.LinearGaussianSSM.toy().sample(4, 5), None))
    picture = sample.draw(toy, cfg, data, "cpu")
    assert picture.shape == (3, 200 + 8, 2 * 200 + 12)  # the data's paths | the samples'


def test_length_sets_how_long_a_sequence_models_samples_run_and_is_refused_for_images():
    from dgm_cli.commands import sample

    config = DMM.Config(z_dim=2, transition_hidden=8, emission_hidden=8, rnn_hidden=8)
    music_model = DMM(config, DataSpec((6, 88), "continuous", 0, "bach_chorales"), {"name": "elbo"})
    cfg = OmegaConf.create(
        {"mode": "sample", "num_samples": 4, "temperature": 1.0, "label": None, "nrow": None, "length": 20}
    )
    sample.set_length(music_model, cfg)
    assert music_model.sample(3).shape == (3, 20, 88)
    assert sample.draw(music_model, cfg, None, "cpu").shape == (3, 2 * 90 + 2, 2 * 22 + 2)  # 20 steps, not 6
    image_model = DMM(config, DataSpec((1, 4, 4), "binary", 0, "mnist"), {"name": "elbo"})  # rows as steps
    with pytest.raises(UserError, match="length=20 .* fixed shape"):
        sample.set_length(image_model, cfg)
    with pytest.raises(UserError, match="mode=reconstruct"):
        sample.set_length(music_model, OmegaConf.merge(cfg, {"mode": "reconstruct"}))


def test_a_roll_written_as_midi_reads_back_as_the_same_roll(tmp_path):
    roll = torch.bernoulli(torch.full((24, 88), 0.08), generator=torch.Generator().manual_seed(0))
    roll[-1, 40] = 1  # sounding at the end, so the file's length is the roll's
    roll[:, 60] = 1  # a note held through the whole roll
    music.write_midi(roll, tmp_path / "x.mid")
    back = music.read_midi(tmp_path / "x.mid")
    assert torch.equal(back, roll)


def test_dgm_sample_writes_a_models_samples_as_midi_and_refuses_it_for_images(tmp_path, monkeypatch):
    from dgm_cli.commands import sample

    model = DMM(
        DMM.Config(z_dim=2, transition_hidden=8, emission_hidden=8, rnn_hidden=8),
        DataSpec((6, 88), "continuous", 0, "bach_chorales"),
        {"name": "elbo"},
    )
    drawn = []
    original = model.sample
    monkeypatch.setattr(model, "sample", lambda *a, **k: drawn.append(original(*a, **k)) or drawn[-1])
    cfg = OmegaConf.create({"num_samples": 3, "temperature": 1.0, "label": None, "mode": "sample", "out": "x.mid"})
    torch.manual_seed(0)
    sample.write_midi(model, cfg, tmp_path / "x.mid")
    rest = torch.zeros(sample.MIDI_REST_STEPS, 88)
    expected = torch.cat([torch.cat([s, rest]) for s in drawn[0]])
    back = music.read_midi(tmp_path / "x.mid")
    assert torch.equal(back, expected[: len(back)]) and expected[len(back) :].sum() == 0  # the last rest has no event
    image_model = DMM(model.config, DataSpec((1, 4, 4), "binary", 0, "mnist"), {"name": "elbo"})
    with pytest.raises(UserError, match="MIDI file holds samples of music"):
        sample.write_midi(image_model, cfg, tmp_path / "y.mid")


@pytest.mark.parametrize("name", ["dmm", "vrnn", "storn", "srnn"])
def test_every_sequence_model_trains_on_music_and_reports_nats_per_step(tmp_path, name):
    write_pickle(tmp_path / "JSB Chorales.pickle", (24, 6, 6))
    cfg = compose_train(
        f"model={name}",
        "dataset=jsb_chorales",
        f"data.root={tmp_path}",
        "trainer.max_steps=2",
        "trainer.batch_size=8",
        "trainer.sample_every=1",
        "trainer.num_samples=2",
        "trainer.progress=false",
        "model.z_dim=4",
        "model.rnn_hidden=16",
    )
    train.run(cfg, tmp_path)
    model, _, dataset = model_from_checkpoint(checkpoint.load(str(tmp_path)), torch.device("cpu"))
    assert model.emission_kind == "bernoulli" and list((tmp_path / "tensorboard").iterdir())
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rates = {t for t in EventAccumulator(str(tmp_path / "tensorboard")).Reload().Tags()["scalars"] if "per_sec" in t}
    assert rates == {"train/sequences_per_sec"}, rates  # sequences a second, not images
    report = evaluate_likelihood(model, dataset.test[0], None, 3, "cpu", k=4)
    terms = report["bound_terms"]
    steps = float(S.lengths_of(dataset.test[0]).float().mean())
    assert terms["steps_per_sequence"] == pytest.approx(steps)
    assert terms["nll_nats_per_step"] == pytest.approx(report["nll_nats"] / steps)
    assert 0 < terms["nll_nats_per_step"] < 88 * 1.5  # untrained: about ln 2 per key and step


@pytest.mark.slow
def test_music_trains_samples_as_midi_and_evaluates_end_to_end(dgm, tmp_path):
    write_pickle(tmp_path / "JSB Chorales.pickle", (24, 6, 6))
    dgm(
        "train",
        "model=dmm",
        "dataset=jsb_chorales",
        f"data.root={tmp_path}",
        "trainer.max_steps=4",
        "trainer.batch_size=8",
        "trainer.progress=false",
        "model.z_dim=4",
        "model.rnn_hidden=16",
    )
    run = run_folders(tmp_path)[0]
    dgm("sample", f"checkpoint={run}", "num_samples=2", f"out={tmp_path / 'music.mid'}")
    assert music.read_midi(tmp_path / "music.mid").shape[1] == 88
    dgm("sample", f"checkpoint={run}", "num_samples=2", "length=30", f"out={tmp_path / 'long.mid'}")
    assert music.read_midi(tmp_path / "long.mid").shape[0] > 2 * 9 + 2  # past anything the training length gives
    dgm("sample", f"checkpoint={run}", "num_samples=4", f"out={tmp_path / 'rolls.png'}")
    assert (tmp_path / "rolls.png").stat().st_size > 0
    dgm("eval", f"checkpoint={run}", "estimator.k=4")
    terms = json.loads((run / "checkpoints" / "eval.json").read_text())["likelihood"]["bound_terms"]
    assert terms["nll_nats_per_step"] > 0 and terms["steps_per_sequence"] < 9


def test_missing_music_files_exit_2_naming_them(dgm, tmp_path):
    proc = dgm("train", "model=dmm", "dataset=musedata", f"data.root={tmp_path}", check=False)
    assert proc.returncode == 2 and "MuseData.pickle" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "outputs").exists() or not run_folders(tmp_path)
