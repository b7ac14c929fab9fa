"""The upload index: sha256, size and mtime of each file as last uploaded to a given repo, so a
sync uploads only files whose content changed; plus the scan that finds candidate files.
"""

from __future__ import annotations

import fcntl
import fnmatch
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.atomic import atomic_write_json, sha256_file

INDEX_FILE = "upload_index.json"
LOCK_FILE = "sync.lock"
INDEX_VERSION = 1
# Writers put partial files under these names and rename them when done (checkpoint.py does).
TEMP_SUFFIXES = (".tmp", ".part", ".partial", ".incomplete", ".swp")


def is_candidate(rel: str, patterns: Sequence[str]) -> bool:
    """Whether a path relative to the source dir is synced: no hidden or temporary part, and a
    pattern matches its file name (or, for a pattern with '/', the whole relative path)."""
    parts = rel.split("/")
    name = parts[-1]
    if any(p.startswith(".") for p in parts) or name.endswith(TEMP_SUFFIXES):
        return False
    return any(fnmatch.fnmatchcase(rel if "/" in p else name, p) for p in patterns)


def scan(source: Path, patterns: Sequence[str]) -> dict[str, os.stat_result]:
    """Regular files under `source` that match (symlinks are not followed), by relative path."""
    found: dict[str, os.stat_result] = {}
    for root, dirs, files in os.walk(source):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        base = Path(root)
        for name in sorted(files):
            path = base / name
            rel = path.relative_to(source).as_posix()
            if not is_candidate(rel, patterns):
                continue
            try:
                st = path.lstat()
            except FileNotFoundError:
                continue
            if path.is_symlink() or not path.is_file():
                continue
            found[rel] = st
    return found


@dataclass
class Entry:
    sha256: str
    size: int
    mtime_ns: int


class UploadIndex:
    """What was uploaded from one source dir to one repo; saved atomically as JSON."""

    def __init__(self, state_dir: Path, target: str) -> None:
        self.path = state_dir / INDEX_FILE
        self.target = target
        self.files: dict[str, Entry] = {}
        self.load()

    def load(self) -> None:
        self.files = {}
        try:
            data: dict[str, Any] = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError):
            # A damaged index only costs a re-upload, which the Hub's own dedup makes cheap.
            return
        if data.get("version") != INDEX_VERSION:
            return
        for rel, e in data.get("targets", {}).get(self.target, {}).items():
            self.files[rel] = Entry(e["sha256"], e["size"], e["mtime_ns"])

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if data.get("version") != INDEX_VERSION:
                raise ValueError
        except (OSError, ValueError):
            data = {"version": INDEX_VERSION, "targets": {}}
        data["targets"][self.target] = {rel: vars(e) for rel, e in sorted(self.files.items())}
        atomic_write_json(self.path, data, indent=1)

    def unchanged_by_stat(self, rel: str, st: os.stat_result) -> bool:
        e = self.files.get(rel)
        return e is not None and e.size == st.st_size and e.mtime_ns == st.st_mtime_ns

    def changed(self, source: Path, rel: str, st: os.stat_result) -> str | None:
        """The file's sha256 when its content differs from the last upload, else None.
        A same-size same-mtime file is taken as unchanged without reading it."""
        if self.unchanged_by_stat(rel, st):
            return None
        digest = sha256_file(source / rel)
        e = self.files.get(rel)
        if e is not None and e.sha256 == digest:
            e.size, e.mtime_ns = st.st_size, st.st_mtime_ns
            return None
        return digest

    def record(self, rel: str, sha256: str, st: os.stat_result) -> None:
        self.files[rel] = Entry(sha256, st.st_size, st.st_mtime_ns)


@contextmanager
def locked(state_dir: Path) -> Iterator[None]:
    """Serialises index updates between `sync once` and a running watcher."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with (state_dir / LOCK_FILE).open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
