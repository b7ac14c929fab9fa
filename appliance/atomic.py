"""Atomic file writes: write a temp file beside the target, fsync, then rename it over the target.
And the matching read: a JSON object file, or None when it is missing or unreadable; and the
sha256 of a file. The project's one helper for each.

A crash never leaves half a file, and the result gets ordinary permissions (0666 less the umask)
rather than mkstemp's private 0600, so other accounts (inference runs as runner) can read it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

# Read once at import: os.umask can only be read by setting it, which races with threads.
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: Path, write: Callable[[IO[bytes]], object], mode: int | None = None) -> None:
    """Create or replace `path` with what `write` puts in the file object it is given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, (0o666 & ~_UMASK) if mode is None else mode)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_json(path: Path, data: Any, indent: int | None = 2, mode: int | None = None,
                      sort_keys: bool = False) -> None:
    """Create or replace `path` with `data` as JSON and a final newline."""
    text = json.dumps(data, indent=indent, sort_keys=sort_keys) + "\n"
    atomic_write(path, lambda fh: fh.write(text.encode("utf-8")), mode)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's content, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
