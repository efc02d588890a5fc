"""Sequence data: ragged sequences padded into one tensor, polyphonic music as piano rolls, and a
linear-Gaussian state-space toy whose exact log-likelihood the Kalman filter gives.

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

import torch
from torch import Tensor

from ..errors import UserError

#: the 88 keys of a piano, MIDI notes 21 (A0) .. 108 (C8)
LOWEST_KEY, KEYS = 21, 88
POLYPHONIC_SPLITS = ("train", "valid", "test")
#: sequence datasets of binary piano rolls (their models default to a Bernoulli emission)
PIANO_ROLLS = ("jsb_chorales", "piano_midi", "musedata", "nottingham", "bach_chorales")


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
                raise UserError(f"MIDI note {note} at step {t} is outside the piano's 88 keys "
                                f"({LOWEST_KEY}..{LOWEST_KEY + KEYS - 1}).")
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
        raise UserError(f"{path} should hold a dict with keys {', '.join(POLYPHONIC_SPLITS)} "
                        "(the format of the JSB Chorales / Piano-midi.de / MuseData / Nottingham pickles).")
    return {split: [piano_roll(seq) for seq in raw[split]] for split in POLYPHONIC_SPLITS}


#: dataset= name -> the file name of its pickle as Boulanger-Lewandowski et al. (2012) distribute it
POLYPHONIC_FILES = {"jsb_chorales": "JSB Chorales.pickle", "piano_midi": "Piano-midi.de.pickle",
                    "musedata": "MuseData.pickle", "nottingham": "Nottingham.pickle"}
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
            f"give the file with data.path=<file>. dataset=bach_chorales needs no file: music21 ships it.")
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
        rot = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]], dtype=torch.float64)
        eye = torch.eye(2, dtype=torch.float64)
        return cls(A=0.95 * rot, C=torch.tensor([[1.0, 0.5], [-0.3, 1.0]], dtype=torch.float64),
                   Q=0.1 * eye, R=0.05 * eye, m0=torch.zeros(2, dtype=torch.float64), P0=eye)

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
