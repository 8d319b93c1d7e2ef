"""Array names to data file names that cannot escape the directory or collide (FORMAT.md 3)."""

from __future__ import annotations

import hashlib
import re

# What `data_file` can produce: checked before the undo journal writes to a file it names.
_DATA_FILE = re.compile(r"[a-z0-9_]{0,32}-[0-9a-f]{16}\.(0|[1-9][0-9]*)\.npkd")


def stem(name: str) -> str:
    """`prefix-hex16`: up to 32 lower-cased ASCII letters, digits or `_` of the name, then the
    first 16 hex digits of the SHA-256 of its UTF-8 bytes."""
    kept = (c for c in name if c.isascii() and (c.isalnum() or c == "_"))
    prefix = "".join(kept)[:32].lower()
    return prefix + "-" + hashlib.sha256(name.encode("utf-8")).hexdigest()[:16]


def data_file(name: str, file_id: int) -> str:
    return f"{stem(name)}.{file_id}.npkd"


def is_data_file_of(name: str, file: str) -> bool:
    """Whether `file` is `data_file(name, id)` for some id (in canonical decimal)."""
    return file.startswith(stem(name) + ".") and is_data_file(file)


def is_data_file(file: str) -> bool:
    """Whether `file` has the shape of a data file name (a plain name inside the directory)."""
    return _DATA_FILE.fullmatch(file) is not None
