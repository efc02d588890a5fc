"""Polyphonic music: a music21 score as an 88-key piano roll, the chorales' cache (plain arrays, opened
without running code) and split by piece."""
from __future__ import annotations

import music21 as m21
import numpy as np
import pytest
import torch

from dgm_cli.data import music
from dgm_cli.errors import UserError


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


@pytest.mark.slow
def test_the_real_chorales_parse_into_rolls(tmp_path):
    """Parses music21's whole corpus of chorales (minutes on one core) into a fresh cache."""
    names, rolls = music.bach_chorales(tmp_path)
    assert len(names) == 350 and len(set(names)) == 350
    assert all(r.shape[1] == 88 and 8 <= len(r) <= 400 for r in rolls)
    voices = torch.cat(rolls).sum(1)
    assert voices.max() <= 6 and float(voices.mean()) > 3  # four-part chorales, a few with more voices
    assert music.load_rolls(tmp_path / music.CACHE_NAME)[0] == names
