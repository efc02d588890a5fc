"""Sequence data: ragged sequences padded into one tensor, polyphonic music as piano rolls, a user's own
sequences from an .npz file (``dataset=sequences``), and a linear-Gaussian state-space toy whose exact
log-likelihood the Kalman filter gives.

A batch of sequences is one float tensor (N, T_max, D); the steps past a sequence's end are NaN, so the
mask travels with the data through every batch and no padding is ever counted in a likelihood
(``mask_of``)."""

from __future__ import annotations

import io
import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import UserError, describe_file

#: the 88 keys of a piano, MIDI notes 21 (A0) .. 108 (C8)
LOWEST_KEY, KEYS = 21, 88
POLYPHONIC_SPLITS = ("train", "valid", "test")
#: sequence datasets of binary piano rolls (their models default to a Bernoulli emission); midi_folder: a
#: user's folder of MIDI files (data/music.py)
PIANO_ROLLS = ("jsb_chorales", "piano_midi", "musedata", "nottingham", "bach_chorales", "midi_folder")
#: dataset=sequences data.path=<file.npz>: a user's own sequences (``read_sequences``)
OWN_SEQUENCES = "sequences"
#: shares of the sequences (pieces) in (train, valid, test) where a dataset has no split of its own, as JSB
#: Chorales' 229 / 76 / 77; the permutation's seed
SPLIT_SHARES, SPLIT_SEED = (0.6, 0.2, 0.2), 371


def pad(sequences: Sequence[Tensor]) -> Tensor:
    """(T_i, D) tensors -> (N, max T_i, D), NaN after each sequence's end."""
    if not sequences:
        raise ValueError("no sequences to pad")
    out = torch.full((len(sequences), max(len(s) for s in sequences), sequences[0].shape[-1]), float("nan"))
    for i, s in enumerate(sequences):
        out[i, : len(s)] = s
    return out


def mask_of(x: Tensor) -> Tensor:
    """(N, T) booleans: True where a step is data, False where it is padding."""
    return ~torch.isnan(x[..., 0])


def lengths_of(x: Tensor) -> Tensor:
    return mask_of(x).sum(1)


def binary_values(x: Tensor) -> bool:
    """Whether every value of padded sequences ``x`` (NaN past each end) is 0 or 1: a piano roll, or any
    sequence of binary vectors, which a model sees in the ``binary`` representation."""
    real = x[~torch.isnan(x)]
    return bool(((real == 0) | (real == 1)).all())


def is_piano_roll(data) -> bool:
    """Whether samples of ``data`` (a DataSpec, or a dataset's name) are 88-key piano rolls (MIDI 21..108),
    which `dgm sample out=x.mid` writes and grids draw as time x keys: the music datasets, and one's own
    sequences (dataset=sequences) of 88 binary values per step."""
    if isinstance(data, str):
        return data in PIANO_ROLLS
    return data.dataset in PIANO_ROLLS or (
        data.dataset == OWN_SEQUENCES and data.representation == "binary" and tuple(data.shape[-1:]) == (KEYS,)
    )


def split_by_sequence(count: int, seed: int = SPLIT_SEED) -> dict[str, list[int]]:
    """Sequence (piece) indices of train / valid / test: a permutation with a fixed seed, cut by
    ``SPLIT_SHARES`` (at least one each where there are three or more)."""
    perm = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    n_valid, n_test = (max(1, round(count * share)) if count >= 3 else 0 for share in SPLIT_SHARES[1:])
    n_train = count - n_valid - n_test
    return {
        "train": sorted(perm[:n_train]),
        "valid": sorted(perm[n_train : n_train + n_valid]),
        "test": sorted(perm[n_train + n_valid :]),
    }


# --- a user's own sequences: dataset=sequences data.path=<file.npz> ---------------------------------
SEQUENCE_FORMAT = (
    "an .npz of numbers in one of two layouts: 'values' (all sequences one after another, shape (sum of "
    "lengths, D) or (sum of lengths,) for D = 1) with 'lengths' (N positive integers), or one array per "
    "sequence, shape (T_i, D) or (T_i,), under any names (read in the file's order); every sequence has the "
    "same D, at least one step, and finite values (see docs/own_data.md)"
)
#: the fewest sequences a file may hold: one each for train, valid and test
MIN_SEQUENCES = 3


def _as_steps(name: str, array, path: Path) -> Tensor:
    """One array of ``path`` as (T, D) float32, refused unless it holds finite numbers of rank 1 or 2."""
    if array.dtype.kind not in "biuf":
        raise UserError(
            f"{path}: array '{name}' holds {array.dtype} values; sequences must be numbers "
            f"(bool, integers or floats). Expected {SEQUENCE_FORMAT}."
        )
    if array.ndim not in (1, 2) or len(array) == 0:
        raise UserError(
            f"{path}: array '{name}' has shape {tuple(array.shape)}; a sequence is (T, D) or (T,) "
            f"with T >= 1. Expected {SEQUENCE_FORMAT}."
        )
    bad = int((~np.isfinite(array.astype(np.float64))).sum())
    if bad:
        raise UserError(
            f"{path}: array '{name}' holds {bad:,} NaN or infinite values; every value must be finite "
            "(dgm pads ragged sequences itself: give each sequence's true length instead of padding). "
            f"Expected {SEQUENCE_FORMAT}."
        )
    return torch.from_numpy(array.astype(np.float32)).reshape(len(array), -1)


def read_sequences(path: str | Path) -> list[Tensor]:
    """``dataset=sequences``: a user's sequences from an .npz (``SEQUENCE_FORMAT``), opened with
    allow_pickle=False (an array of Python objects is refused: unpickling could run code)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"dataset=sequences reads data.path={path}, which is not a file; give {SEQUENCE_FORMAT}.")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {name: f[name] for name in f.files}
    except (OSError, ValueError, EOFError) as exc:
        raise UserError(
            f"{path} is not an .npz of numbers dgm can read ({describe_file(path)}; {exc}). Expected {SEQUENCE_FORMAT}."
        ) from None
    if {"values", "lengths"} <= set(arrays):
        values, lengths = _as_steps("values", arrays["values"], path), arrays["lengths"]
        if (
            lengths.ndim != 1
            or lengths.dtype.kind not in "iu"
            or (lengths <= 0).any()
            or int(lengths.sum()) != len(values)
        ):
            raise UserError(
                f"{path}: 'lengths' must be N positive integers summing to the {len(values):,} steps of "
                f"'values'; it is {lengths.dtype} of shape {tuple(lengths.shape)}"
                + (f", summing to {int(lengths.sum()):,}" if lengths.dtype.kind in "iu" else "")
                + "."
            )
        seqs = list(values.split(lengths.tolist()))
    else:
        seqs = [_as_steps(name, a, path) for name, a in arrays.items()]
    widths = sorted({s.shape[1] for s in seqs})
    if len(widths) > 1:
        raise UserError(
            f"{path}: the sequences have {' and '.join(map(str, widths))} values per step; every "
            "sequence must have the same D."
        )
    if len(seqs) < MIN_SEQUENCES:
        raise UserError(
            f"{path} holds {len(seqs)} sequence(s); dgm splits by sequence into train, valid and test "
            f"and needs at least {MIN_SEQUENCES}. Expected {SEQUENCE_FORMAT}."
        )
    return seqs


def source_of(name: str, path: Optional[str]) -> dict:
    """What a sequence dataset read from a user's folder or file records of it (data/identity.py): the
    resolved path, and a file's size; {} for the others."""
    if name not in ("midi_folder", OWN_SEQUENCES) or not path:
        return {}
    resolved = Path(path).expanduser().resolve()
    return {"path": str(resolved), **({"bytes": resolved.stat().st_size} if resolved.is_file() else {})}


def load_own_sequences(path: Optional[str]) -> dict[str, list[Tensor]]:
    """``dataset=sequences data.path=<file.npz>``: {"train"|"valid"|"test": sequences}, split by sequence
    with a fixed seed."""
    if not path:
        raise UserError(f"dataset=sequences needs data.path=<file.npz>: {SEQUENCE_FORMAT}.")
    seqs = read_sequences(path)
    return {split: [seqs[i] for i in idx] for split, idx in split_by_sequence(len(seqs)).items()}


# --- polyphonic music -----------------------------------------------------------------------------


class _DataOnlyUnpickler(pickle.Unpickler):
    """Lists, tuples, dicts, numbers and strings only: any class or function reference is refused,
    so opening a file never runs code (the standard polyphonic pickles hold nothing else)."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refusing {module}.{name}: a data file may hold only lists and numbers")


def piano_roll(steps: Sequence[Sequence[int]]) -> Tensor:
    """A list of time steps, each the MIDI notes sounding then, -> (T, 88) binary piano roll."""
    roll = torch.zeros(len(steps), KEYS)
    for t, notes in enumerate(steps):
        for note in notes:
            if not LOWEST_KEY <= int(note) < LOWEST_KEY + KEYS:
                raise UserError(
                    f"MIDI note {note} at step {t} is outside the piano's 88 keys "
                    f"({LOWEST_KEY}..{LOWEST_KEY + KEYS - 1})."
                )
            roll[t, int(note) - LOWEST_KEY] = 1.0
    return roll


def read_polyphonic(path: str | Path) -> dict[str, list[Tensor]]:
    """The Boulanger-Lewandowski et al. (2012) pickles (JSB Chorales, Piano-midi.de, MuseData,
    Nottingham): {"train"|"valid"|"test": [sequence of time steps of MIDI notes]} -> piano rolls."""
    path = Path(path)
    try:
        raw = _DataOnlyUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}.") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise UserError(f"{path} is not a polyphonic-music pickle of lists of MIDI notes ({exc}).") from None
    if not isinstance(raw, dict) or not set(POLYPHONIC_SPLITS) <= set(raw):
        raise UserError(
            f"{path} should hold a dict with keys {', '.join(POLYPHONIC_SPLITS)} "
            "(the format of the JSB Chorales / Piano-midi.de / MuseData / Nottingham pickles)."
        )
    return {split: [piano_roll(seq) for seq in raw[split]] for split in POLYPHONIC_SPLITS}


#: dataset= name -> the file name of its pickle as Boulanger-Lewandowski et al. (2012) distribute it
POLYPHONIC_FILES = {
    "jsb_chorales": "JSB Chorales.pickle",
    "piano_midi": "Piano-midi.de.pickle",
    "musedata": "MuseData.pickle",
    "nottingham": "Nottingham.pickle",
}
POLYPHONIC_SOURCE = "http://www-etud.iro.umontreal.ca/~boulanni/icml2012"


def load_polyphonic(name: str, root: str, path: Optional[str]) -> dict[str, list[Tensor]]:
    """``dataset=jsb_chorales|piano_midi|musedata|nottingham``: the file data.path names, else
    ``<data.root>/<its usual file name>``."""
    file = Path(path).expanduser() if path else Path(root) / POLYPHONIC_FILES[name]
    if not file.is_file():
        expected = ", ".join(f"{n}: '{f}'" for n, f in POLYPHONIC_FILES.items())
        raise UserError(
            f"dataset={name} reads the polyphonic-music pickle {file}, which does not exist. dgm does not "
            f"download these files: get them from Boulanger-Lewandowski et al. 2012 ({POLYPHONIC_SOURCE}) and put "
            f"them in data.root (the environment variable DGM_DATA_ROOT) under their usual names ({expected}), or "
            f"give the file with data.path=<file>. dataset=bach_chorales needs no file: music21 ships it."
        )
    return read_polyphonic(file)


# --- the linear-Gaussian state-space toy ------------------------------------------------------------


@dataclass
class LinearGaussianSSM:
    """z_1 ~ N(m0, P0), z_t = A z_{t-1} + N(0, Q), x_t = C z_t + N(0, R)."""

    A: Tensor
    C: Tensor
    Q: Tensor
    R: Tensor
    m0: Tensor
    P0: Tensor

    @classmethod
    def toy(cls) -> "LinearGaussianSSM":
        """A slowly rotating, damped 2-D latent seen through a mixing matrix with noise."""
        angle = 0.3
        rot = torch.tensor(
            [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]], dtype=torch.float64
        )
        eye = torch.eye(2, dtype=torch.float64)
        return cls(
            A=0.95 * rot,
            C=torch.tensor([[1.0, 0.5], [-0.3, 1.0]], dtype=torch.float64),
            Q=0.1 * eye,
            R=0.05 * eye,
            m0=torch.zeros(2, dtype=torch.float64),
            P0=eye,
        )

    def sample(self, n: int, length: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """(n, length, D) observations."""

        def noise(cov: Tensor) -> Tensor:
            return torch.randn(n, len(cov), generator=generator, dtype=torch.float64) @ torch.linalg.cholesky(cov).T

        z = self.m0 + noise(self.P0)
        xs = []
        for t in range(length):
            if t:
                z = z @ self.A.T + noise(self.Q)
            xs.append(z @ self.C.T + noise(self.R))
        return torch.stack(xs, 1).float()

    def log_likelihood(self, x: Tensor) -> Tensor:
        """Exact log p(x_{1:T}) per sequence by the Kalman filter's prediction-error decomposition
        (log p = sum_t log N(x_t; C m_t|t-1, C P_t|t-1 C' + R)); NaN padding ends a sequence."""
        mask = mask_of(x)
        x = torch.nan_to_num(x).double()
        n, d = x.shape[0], x.shape[-1]
        m, P = self.m0.expand(n, -1), self.P0.expand(n, -1, -1)
        total = torch.zeros(n, dtype=torch.float64)
        for t in range(x.shape[1]):
            if t:
                m, P = m @ self.A.T, self.A @ P @ self.A.T + self.Q
            S = self.C @ P @ self.C.T + self.R
            err = x[:, t] - m @ self.C.T
            logp = torch.distributions.MultivariateNormal(torch.zeros(d, dtype=torch.float64), S).log_prob(err)
            total = total + torch.where(mask[:, t], logp, torch.zeros_like(logp))
            gain = P @ self.C.T @ torch.linalg.inv(S)
            m = m + (gain @ err.unsqueeze(-1)).squeeze(-1)
            P = P - gain @ self.C @ P
        return total


#: length of the linear-Gaussian toy's sequences
TOY_LENGTH = 20


def draw_linear_gaussian(n: int, generator: torch.Generator) -> Tensor:
    """``dataset=linear_gaussian``: n sequences of LinearGaussianSSM.toy(), 20 steps of 2-D observations."""
    return LinearGaussianSSM.toy().sample(n, TOY_LENGTH, generator)


#: sequence datasets drawn from a known model: name -> draw(n, generator)
TOY_SEQUENCES = {"linear_gaussian": draw_linear_gaussian}
#: every dataset of sequences (N, T, D): none of them is binarized or dequantized
SEQUENCE_DATASETS = PIANO_ROLLS + (OWN_SEQUENCES,) + tuple(TOY_SEQUENCES)
