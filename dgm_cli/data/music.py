"""Polyphonic music as 88-key piano rolls through music21: a score <-> a binary roll, MIDI files,
``dataset=bach_chorales``, the Bach chorales (Riemenschneider numbering, each harmonization once: 350)
that music21 ships in its corpus (no download), and ``dataset=midi_folder``, a user's folder of MIDI files.

A roll has one row per time step of ``STEP`` quarter notes (quarter-note steps, as in Boulanger-Lewandowski
et al. 2012's JSB Chorales), one column per piano key (MIDI 21..108); a key is on at step t when a note of
that pitch sounds at the step's start, t * STEP. A binary roll has no onsets, so a key held over several
steps is one note when written as MIDI. Parsing the corpus takes minutes, so its rolls are cached as an
.npz of plain arrays under ``$DGM_CACHE/music`` (read with allow_pickle=False: opening it runs no code).
"""

from __future__ import annotations

import hashlib
import logging
import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from ..atomic import write_atomically
from ..errors import UserError
from . import files
from .sequences import KEYS, LOWEST_KEY, SPLIT_SEED, piano_roll, split_by_sequence

log = logging.getLogger("dgm.data")

#: quarter notes per time step of a roll
STEP = 1.0
#: the cache file's name carries what would change its contents
CACHE_NAME = "bach_chorales_riemenschneider_quarter_v1.npz"


def _music21():
    try:
        import music21
    except ImportError:
        raise UserError(
            "dataset=bach_chorales and MIDI files need the music21 package: pip install music21 "
            "(a dependency of dgm; reinstall with pip install -e .)."
        ) from None
    return music21


def stream_to_roll(score, step: float = STEP) -> Tensor:
    """A music21 score (or part, or stream of notes and chords) -> (T, 88) binary piano roll, T =
    ceil(end / step); a note of offset o and length d sounds at the steps t with o <= t * step < o + d."""
    flat = score.flatten()
    length = math.ceil(float(flat.highestTime) / step - 1e-9)
    steps: list[list[int]] = [[] for _ in range(length)]
    for n in flat.notes:  # notes and chords; rests and grace notes (length 0) sound at no step
        start, end = float(n.offset) / step, float(n.offset + n.quarterLength) / step
        for t in range(math.ceil(start - 1e-9), min(length, math.ceil(end - 1e-9))):
            steps[t].extend(p.midi for p in n.pitches)
    return piano_roll(steps)


def roll_to_stream(roll: Tensor, step: float = STEP):
    """(T, 88) binary roll -> a music21 part: each run of steps where a key is on is one note."""
    m21 = _music21()
    part = m21.stream.Part()
    on = np.asarray(roll.detach().cpu() > 0.5)
    padded = np.pad(on, ((1, 1), (0, 0)))
    for key in range(KEYS):
        edges = np.flatnonzero(np.diff(padded[:, key].astype(np.int8)))  # starts and ends of runs, paired
        for start, end in zip(edges[::2], edges[1::2]):
            note = m21.note.Note(midi=LOWEST_KEY + key, quarterLength=float(end - start) * step)
            part.insert(float(start) * step, note)
    return part


def write_midi(roll: Tensor, path: Path, step: float = STEP) -> None:
    """A roll as a standard MIDI file (120 quarter notes a minute), written atomically."""
    m21 = _music21()
    data = m21.midi.translate.streamToMidiFile(roll_to_stream(roll, step)).writestr()
    write_atomically(Path(path), lambda f: f.write(data))


def read_midi(path: Path, step: float = STEP) -> Tensor:
    """A MIDI file -> (T, 88) roll, from its note-on and note-off events as they are (music21's score import
    would quantize and re-voice them): a note sounds at the steps whose start falls in [on, off)."""
    m21 = _music21()
    midi = m21.midi.MidiFile()
    try:
        midi.open(str(path))
        midi.read()
    except (OSError, m21.midi.MidiException) as exc:
        raise UserError(f"{path} is not a MIDI file dgm can read ({exc}).") from None
    finally:
        midi.close()
    ticks = midi.ticksPerQuarterNote * step
    notes, end = [], 0.0
    for track in midi.tracks:
        time, sounding = 0, {}
        for event in track.events:
            if event.isDeltaTime():
                time += event.time
            elif event.isNoteOn() and event.velocity > 0:
                sounding[event.pitch] = time
            elif (event.isNoteOff() or event.isNoteOn()) and event.pitch in sounding:
                notes.append((event.pitch, sounding.pop(event.pitch) / ticks, time / ticks))
                end = max(end, time / ticks)
    steps: list[list[int]] = [[] for _ in range(math.ceil(end - 1e-9))]
    for pitch, on, off in notes:
        for t in range(math.ceil(on - 1e-9), math.ceil(off - 1e-9)):
            steps[t].append(pitch)
    return piano_roll(steps)


# --- dataset=bach_chorales ------------------------------------------------------------------------------


def chorale_file(name: str, found) -> Path:
    """The corpus file of chorale ``name`` ("bach/bwv245.3") among what music21's lookup found (which
    matches prefixes: bwv245.37 too, and a Humdrum copy beside the MusicXML one)."""
    candidates = [Path(p) for p in (found if isinstance(found, list) else [found])]
    exact = [p for p in candidates if p.stem == name.rsplit("/", 1)[-1]] or candidates
    return sorted(exact, key=lambda p: p.suffix != ".mxl")[0]


def parse_chorales() -> tuple[list[str], list[Tensor]]:
    """(names, rolls) of music21's Bach chorales in Riemenschneider order, each harmonization once (350 of
    the 371 numbers; the rest repeat one); minutes of parsing."""
    m21 = _music21()
    names, rolls = [], []
    for name in m21.corpus.chorales.Iterator(returnType="filename"):
        if name in names:
            continue
        path = chorale_file(name, m21.corpus.getWork(name))
        # forceSource, storePickle=False: music21's own pickle cache is neither read nor written
        score = m21.converter.parseFile(path, forceSource=True, storePickle=False)
        names.append(name)
        rolls.append(stream_to_roll(score))
    return names, rolls


def save_rolls(path: Path, names: list[str], rolls: list[Tensor]) -> None:
    arrays = {
        "names": np.array(names, dtype=str),
        "lengths": np.array([len(r) for r in rolls], dtype=np.int64),
        "rolls": torch.cat(rolls).to(torch.uint8).numpy(),
    }
    write_atomically(path, lambda f: np.savez_compressed(f, **arrays))


def load_rolls(path: Path) -> Optional[tuple[list[str], list[Tensor]]]:
    """The cached (names, rolls), or None when the file is missing or not such a cache."""
    try:
        with np.load(path, allow_pickle=False) as f:
            names, lengths, flat = [str(n) for n in f["names"]], f["lengths"], f["rolls"]
    except (OSError, ValueError, KeyError):
        return None
    if flat.ndim != 2 or flat.shape[1] != KEYS or int(lengths.sum()) != len(flat) or len(names) != len(lengths):
        return None
    rolls = list(torch.from_numpy(flat.astype(np.float32)).split(lengths.tolist()))
    return names, rolls


def bach_chorales(cache: Optional[Path] = None) -> tuple[list[str], list[Tensor]]:
    """The chorales' (names, rolls): from the cache, or parsed once (minutes) and cached."""
    path = (cache or files.cache_root() / "music") / CACHE_NAME
    cached = load_rolls(path)
    if cached is not None:
        return cached
    log.info("parsing music21's Bach chorales into piano rolls (once; cached in %s)", path)
    names, rolls = parse_chorales()
    try:
        save_rolls(path, names, rolls)
    except OSError as exc:
        log.warning("could not cache the chorales' piano rolls in %s: %s", path, exc.strerror or exc)
    return names, rolls


def split_pieces(count: int, seed: int = SPLIT_SEED) -> dict[str, list[int]]:
    """Piece indices of train / valid / test: a permutation with a fixed seed, cut by ``SPLIT_SHARES``."""
    return split_by_sequence(count, seed)


def load_bach_chorales(cache: Optional[Path] = None) -> dict[str, list[Tensor]]:
    """{"train"|"valid"|"test": rolls}, split by piece."""
    _, rolls = bach_chorales(cache)
    return {split: [rolls[i] for i in idx] for split, idx in split_pieces(len(rolls)).items()}


# --- dataset=midi_folder data.path=<folder> --------------------------------------------------------------
MIDI_SUFFIXES = (".mid", ".midi")
#: bump when reading a folder changes what its cache holds
MIDI_FOLDER_VERSION = 1


def midi_files(folder: Path) -> list[Path]:
    """The .mid/.midi files under ``folder`` (sub-folders too), in name order."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in MIDI_SUFFIXES and p.is_file())


def midi_folder_key(folder: Path, found: list[Path], steps_per_quarter: int) -> str:
    """What the folder's rolls depend on: each file's place in it and its bytes, the step and the reader's
    version. A file added, removed or changed gives another key, so another cache file."""
    h = hashlib.sha256(f"v{MIDI_FOLDER_VERSION} steps_per_quarter={steps_per_quarter}".encode())
    for path in found:
        h.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def parse_midi_folder(folder: Path, found: list[Path], steps_per_quarter: int) -> list[Tensor]:
    """Each file's roll; every file that cannot be read, or holds no note on the piano's keys, is named in one
    refusal."""
    rolls, bad = [], []
    for path in found:
        try:
            roll = read_midi(path, step=1.0 / steps_per_quarter)
        except UserError as exc:
            bad.append(f"{path.relative_to(folder)} ({str(exc).replace(str(path), 'it')})")
            continue
        if len(roll) == 0:
            bad.append(f"{path.relative_to(folder)} (it holds no notes)")
        rolls.append(roll)
    if bad:
        raise UserError(
            f"dataset=midi_folder: {len(bad)} of the {len(found)} MIDI files in {folder} cannot be used "
            f"as piano rolls: {'; '.join(bad)}. Remove or fix them (dgm reads every .mid/.midi file "
            "under data.path)."
        )
    return rolls


def load_midi_folder(
    path: Optional[str], steps_per_quarter: int = 1, cache: Optional[Path] = None
) -> dict[str, list[Tensor]]:
    """``dataset=midi_folder``: {"train"|"valid"|"test": rolls} of the MIDI files under ``path``, each file a
    piece, in steps of 1 / ``steps_per_quarter`` quarter notes, split by piece with a fixed seed; read once
    and cached in ``$DGM_CACHE/music`` under a key of the files' contents."""
    if not path:
        raise UserError("dataset=midi_folder needs data.path=<folder of .mid/.midi files>.")
    folder = Path(path).expanduser().resolve()
    if not folder.is_dir():
        raise UserError(f"dataset=midi_folder reads the MIDI files under data.path={path}, which is not a folder.")
    found = midi_files(folder)
    if len(found) < 3:
        raise UserError(
            f"dataset=midi_folder: {folder} holds {len(found)} .mid/.midi file(s); dgm splits the pieces "
            "into train, valid and test and needs at least 3."
        )
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in folder.name) or "folder"
    file = (
        cache or files.cache_root() / "music"
    ) / f"midi_folder-{slug}-{midi_folder_key(folder, found, steps_per_quarter)}.npz"
    cached = load_rolls(file)
    if cached is None:
        log.info("reading %d MIDI files under %s into piano rolls (once; cached in %s)", len(found), folder, file)
        rolls = parse_midi_folder(folder, found, steps_per_quarter)
        try:
            save_rolls(file, [str(p.relative_to(folder)) for p in found], rolls)
        except OSError as exc:
            log.warning("could not cache the piano rolls in %s: %s", file, exc.strerror or exc)
    else:
        rolls = cached[1]
    return {split: [rolls[i] for i in idx] for split, idx in split_by_sequence(len(rolls)).items()}
