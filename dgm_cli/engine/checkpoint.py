"""Checkpoints: written atomically, read with ``weights_only=True`` (opening one never runs code)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..atomic import write_atomically
from ..errors import UserError, describe_file

FORMAT = "dgm-checkpoint-v1"


def save(state: dict, path: Path) -> None:
    """Written atomically: a reader never sees a half-written checkpoint, and a crash mid-write
    leaves the previous one intact."""
    write_atomically(Path(path), lambda f: torch.save({"format": FORMAT, **state}, f))


def resolve(path_or_run: str) -> Path:
    """A checkpoint file, or a run folder (its checkpoints/last.pt)."""
    p = Path(path_or_run).expanduser()
    if p.is_dir():
        if not (p / "checkpoints" / "last.pt").is_file() and (p / "checkpoints" / "best.pt").is_file():
            raise UserError(
                f"no checkpoints/last.pt in {path_or_run!r}, but it has checkpoints/best.pt (the best "
                f"validation loss): give that file, {p / 'checkpoints' / 'best.pt'}."
            )
        p = p / "checkpoints" / "last.pt"
    if not p.is_file():
        raise UserError(
            f"no checkpoint at {path_or_run!r}: give a .pt file written by `dgm train` "
            f"or a run folder that has checkpoints/last.pt."
        )
    return p


def resolve_all(path: str) -> list[Path]:
    """The checkpoint ``path`` names (a file or a run folder), or, for a folder that holds runs (a
    sweep, a day of runs, outputs/), the last checkpoint of every run in it, in a stable order."""
    if not str(path).strip():
        raise UserError(
            "checkpoint= is empty: give a .pt file written by `dgm train`, its run folder, or a folder "
            "of runs (a sweep)."
        )
    folder = Path(path).expanduser()
    if folder.is_dir() and not (folder / "checkpoints").is_dir():
        found = sorted(folder.rglob("checkpoints/last.pt"))
        if found:
            return found
    return [resolve(path)]


def load(path_or_run: str, map_location="cpu") -> dict:
    path = resolve(path_or_run)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception:
        raise UserError(
            f"{path} is not a readable dgm checkpoint: it seems to be {describe_file(path)}. Give a "
            f".pt file written by `dgm train`, or its run folder; a truncated or corrupted checkpoint "
            f"cannot be read (checkpoints/best.pt may still be whole)."
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(
            f"{path} is a torch file but not a dgm checkpoint (no '{FORMAT}' marker); "
            f"give a checkpoint written by `dgm train`."
        )
    state["path"] = str(path)
    return state
