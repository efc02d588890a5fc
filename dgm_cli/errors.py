"""The one exception type for mistakes a user can fix (bad config, missing data,
a file that is not a checkpoint). The CLI prints its message as one paragraph and
exits with status 2, without a traceback; every other exception is a bug."""


class UserError(Exception):
    """A problem with what the user asked for; its message says what and what is allowed."""


#: the first bytes of formats a user may hand dgm by mistake: (magic, name, note)
_MAGIC = (
    (b"PK\x03\x04", "a zip archive", " (the container of torch .pt files and of .npz)"),
    (b"\x93NUMPY", "a NumPy .npy array", ""),
    (b"\x89PNG", "a PNG image", ""),
    (b"\xff\xd8\xff", "a JPEG image", ""),
    (b"GIF8", "a GIF image", ""),
    (b"\x89HDF", "an HDF5 file", ""),
    (b"%PDF", "a PDF document", ""),
    (b"\x80", "a Python pickle", " (a torch file from before torch 1.6, or another pickled object)"),
)


def describe_file(path) -> str:
    """What a file that could not be read seems to be, from its size and first bytes (never by
    running or unpickling it), for a message such as "it seems to be a text file of 12 bytes"."""
    from pathlib import Path

    try:
        size = Path(path).stat().st_size
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError as exc:
        return f"a file that cannot be opened ({exc.strerror})"
    if size == 0:
        return "an empty file"
    for magic, name, note in _MAGIC:
        if head.startswith(magic):
            return f"{name} of {size:,} bytes{note}"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:  # a character cut at the end of the 256 bytes is still text
        text = head[: exc.start].decode("utf-8") if exc.start >= len(head) - 3 else "\0"
    if any(not (c.isprintable() or c.isspace()) for c in text):
        return f"a binary file of {size:,} bytes in no format dgm knows"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"a text file of {size:,} bytes" + (f" that begins {first[:40]!r}" if first else "")
