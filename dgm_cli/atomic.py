"""Writing a file so that a reader never sees half of it: a temporary file in the same folder,
flushed and fsynced, then renamed over the target. A write that fails half way (disk full, a kill)
leaves the previous file as it was and no temporary file behind. Used for checkpoints, eval.json,
reports and caches."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

#: the process's umask (read once: os.umask can only be read by setting it); a temporary file is made
#: 0600, and the file it becomes gets the mode any newly written file would have (0644 under umask 022)
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def write_atomically(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """``write(f)`` fills a binary file object; afterwards ``path`` holds all of it or is unchanged."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text_atomically(path: Path, text: str) -> None:
    write_atomically(path, lambda f: f.write(text.encode()))
