"""A user's own sequence data: a folder of MIDI files (dataset=midi_folder) and an .npz of sequences
(dataset=sequences), read, checked, split by piece and cached, through train, eval and sample."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import run_folders
from dgm_cli.data import music, pipeline
from dgm_cli.data import sequences as S
from dgm_cli.errors import UserError
from dgm_cli.models.base import DataSpec

SMALL_DMM = [
    "model=dmm",
    "trainer.batch_size=2",
    "trainer.progress=false",
    "model.z_dim=4",
    "model.rnn_hidden=16",
    "model.transition_hidden=8",
    "model.emission_hidden=8",
]


def write_songs(folder, count=5, seed=0):
    """``count`` MIDI files written through music21 (music.write_midi), each a different length, and their rolls."""
    folder.mkdir(parents=True, exist_ok=True)
    g, rolls = torch.Generator().manual_seed(seed), []
    for i in range(count):
        roll = torch.bernoulli(torch.full((10 + 2 * i, 88), 0.05), generator=g)
        roll[:, 39 + i] = 1  # a held note, so every piece sounds to its end
        music.write_midi(roll, folder / f"piece{i}.mid")
        rolls.append(roll)
    return rolls


def test_a_midi_folder_is_split_by_piece_cached_and_read_in_its_steps(tmp_path, monkeypatch):
    rolls = write_songs(tmp_path / "songs")
    splits = music.load_midi_folder(str(tmp_path / "songs"), 1, cache=tmp_path / "cache")
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [3, 1, 1]
    assert sorted(len(r) for s in splits.values() for r in s) == [len(r) for r in rolls]  # every piece once
    assert any(torch.equal(r, rolls[0]) for s in splits.values() for r in s)  # the reader gives the written roll
    assert len(list((tmp_path / "cache").glob("midi_folder-songs-*.npz"))) == 1
    monkeypatch.setattr(music, "read_midi", lambda *a, **k: pytest.fail("read the files again"))
    again = music.load_midi_folder(str(tmp_path / "songs"), 1, cache=tmp_path / "cache")  # from the cache
    assert all(torch.equal(a, b) for s in splits for a, b in zip(splits[s], again[s]))
    monkeypatch.undo()
    eighths = music.load_midi_folder(str(tmp_path / "songs"), 2, cache=tmp_path / "cache")  # another key
    assert sorted(len(r) for s in eighths.values() for r in s) == [2 * len(r) for r in rolls]


def test_unreadable_midi_files_are_all_named(tmp_path):
    write_songs(tmp_path / "songs", count=3)
    (tmp_path / "songs" / "broken.mid").write_bytes(b"not midi at all")
    (tmp_path / "songs" / "also.midi").write_text("text")
    with pytest.raises(UserError, match="2 of the 5 MIDI files") as err:
        music.load_midi_folder(str(tmp_path / "songs"), 1, cache=tmp_path / "cache")
    assert "broken.mid" in str(err.value) and "also.midi" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds 0 .mid/.midi file.* needs at least 3"):
        music.load_midi_folder(str(tmp_path / "empty"), 1, cache=tmp_path / "cache")


def sequence_arrays(binary: bool, count=6, width=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    seqs = [torch.rand(4 + i, width, generator=g) for i in range(count)]
    return [s.round() if binary else s for s in seqs]


def test_both_npz_layouts_of_sequences_read_the_same(tmp_path):
    seqs = sequence_arrays(binary=False)
    np.savez(tmp_path / "flat.npz", values=torch.cat(seqs).numpy(), lengths=np.array([len(s) for s in seqs]))
    np.savez(tmp_path / "each.npz", **{f"walk{i}": s.numpy() for i, s in enumerate(seqs)})
    for file in ("flat.npz", "each.npz"):
        got = S.read_sequences(tmp_path / file)
        assert len(got) == len(seqs) and all(torch.equal(a, b) for a, b in zip(got, seqs))
    np.savez(tmp_path / "one_d.npz", a=np.arange(3.0), b=np.arange(5.0), c=np.arange(2.0))  # (T,): D = 1
    assert [tuple(s.shape) for s in S.read_sequences(tmp_path / "one_d.npz")] == [(3, 1), (5, 1), (2, 1)]


@pytest.mark.parametrize(
    "arrays, says",
    [
        ({"a": np.array(["x", "y"]), "b": np.zeros(2), "c": np.zeros(2)}, "'a' holds <U1 values"),
        ({"a": np.array([0.0, np.nan]), "b": np.zeros(2), "c": np.zeros(2)}, "'a' holds 1 NaN or infinite"),
        (
            {"a": np.zeros((2, 3)), "b": np.zeros((2, 2)), "c": np.zeros((2, 3))},
            "3 and 2 values per step|2 and 3 values",
        ),
        ({"values": np.zeros((5, 2)), "lengths": np.array([2, 2])}, "summing to the 5 steps"),
        ({"a": np.zeros(2), "b": np.zeros(2)}, "needs at least 3"),
        ({"a": np.zeros((2, 2, 2)), "b": np.zeros(2), "c": np.zeros(2)}, r"shape \(2, 2, 2\)"),
    ],
)
def test_bad_sequence_files_are_refused_saying_what_is_wrong(tmp_path, arrays, says):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(UserError, match=says) as err:
        S.read_sequences(tmp_path / "bad.npz")
    assert "bad.npz" in str(err.value)


def test_a_sequence_file_is_refused_in_one_paragraph_with_no_run_folder(dgm, tmp_path):
    np.savez(tmp_path / "strings.npz", a=np.array(["do", "re"]), b=np.zeros(2), c=np.zeros(2))
    proc = dgm("train", "dataset=sequences", f"data.path={tmp_path / 'strings.npz'}", *SMALL_DMM, check=False)
    assert proc.returncode == 2 and "strings.npz" in proc.stderr and "Traceback" not in proc.stderr
    assert not run_folders(tmp_path)


def data_cfg(**keys):
    from omegaconf import OmegaConf

    from dgm_cli.settings.schema import DataConfig

    return OmegaConf.merge(OmegaConf.structured(DataConfig), {"root": ".", **keys})


def test_binary_sequences_are_binary_and_88_binary_keys_are_piano_rolls(tmp_path):
    model_cfg = {"representation": "binary"}
    for binary, width, rep, piano in (
        (True, 88, "binary", True),
        (True, 3, "binary", False),
        (False, 88, "continuous", False),
    ):
        np.savez(tmp_path / "s.npz", **{f"s{i}": s.numpy() for i, s in enumerate(sequence_arrays(binary, width=width))})
        ds = pipeline.load(data_cfg(name="sequences", path=str(tmp_path / "s.npz")))
        assert [len(ds.train[0]), len(ds.val[0]), len(ds.test[0])] == [4, 1, 1]  # 6 sequences, split by sequence
        assert pipeline.resolve_representation(data_cfg(name="sequences"), model_cfg, ds) == rep
        assert S.is_piano_roll(pipeline.spec(ds, rep, "sequences")) == piano
    ds = pipeline.load(data_cfg(name="sequences", path=str(tmp_path / "s.npz")))
    with pytest.raises(UserError, match="allowed: continuous"):  # real values cannot be modelled as binary
        pipeline.spec(ds, "binary", "sequences")
    assert S.is_piano_roll(DataSpec((10, 88), "binary", 0, "midi_folder"))


@pytest.mark.slow
def test_a_midi_folder_trains_evaluates_and_samples_back_to_midi(dgm, tmp_path, monkeypatch):
    monkeypatch.setenv("DGM_CACHE", str(tmp_path / "cache"))
    write_songs(tmp_path / "songs")
    dgm("train", "dataset=midi_folder", f"data.path={tmp_path / 'songs'}", "trainer.max_steps=3", *SMALL_DMM)
    (run,) = run_folders(tmp_path)
    assert run.name.endswith("_dmm_midi_folder-songs")  # the user's folder names the run
    dgm("eval", f"checkpoint={run}", "estimator.k=4")
    report = json.loads((run / "checkpoints" / "eval.json").read_text())
    assert report["protocol"]["representation"] == "binary"  # piano rolls are never called continuous
    assert report["protocol"]["data"]["path"] == str((tmp_path / "songs").resolve())  # report tables name the folder
    assert report["likelihood"]["bound_terms"]["nll_nats_per_step"] > 0
    dgm("sample", f"checkpoint={run}", "num_samples=2", "length=12", f"out={tmp_path / 'x.mid'}")
    back = music.read_midi(tmp_path / "x.mid")
    assert back.shape[1] == 88 and 12 < len(back) <= 2 * 12 + 2  # two samples of 12 steps and a rest between
