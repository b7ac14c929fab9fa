"""Hub emulator storage: repos as commit histories of path -> object maps, objects by sha256,
all kept in one directory so an emulator restarted on it serves the same repos.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from appliance.atomic import atomic_write_json
from host_tools.emulators.base import HttpError

REPO_TYPES = ("model", "dataset", "space")
# Patterns of the Hub's default .gitattributes: these paths are stored as LFS objects.
LFS_PATTERNS = (
    "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib",
    "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb",
    "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar", "*.safetensors", "*.tar", "*.tar.*", "*.tflite",
    "*.tgz", "*.wasm", "*.xz", "*.zip", "*.zst",
)
LFS_MIN_SIZE = 10 * 1024 * 1024
GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS)


class HubError(HttpError):
    """A request the Hub refuses: HTTP status, message, Hub error code (X-Error-Code), headers."""

    def __init__(self, status: int, message: str, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(status, message, headers)
        self.code = code


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_lfs_path(path: str, size: int, sample: bytes) -> bool:
    """The upload mode the Hub would choose: LFS by pattern, by size, or for binary content."""
    name = path.rsplit("/", 1)[-1]
    return (
        any(fnmatch.fnmatchcase(name, p) for p in LFS_PATTERNS)
        or size >= LFS_MIN_SIZE
        or b"\0" in sample
    )


@dataclass
class FileEntry:
    sha256: str
    size: int
    lfs: bool
    blob: str  # git blob sha1 of the content (what the Hub reports as a regular file's oid)

    def oid(self) -> str:
        return self.sha256 if self.lfs else self.blob


@dataclass
class Commit:
    oid: str
    parent: str | None
    summary: str
    ts: float
    files: dict[str, FileEntry]


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    commits: list[Commit] = field(default_factory=list)

    @property
    def head(self) -> Commit:
        return self.commits[-1]

    def resolve(self, revision: str) -> Commit:
        if revision == "main":
            return self.head
        if len(revision) == 40:
            for commit in self.commits:
                if commit.oid == revision:
                    return commit
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def to_json(self) -> dict[str, Any]:
        return {
            "repo_type": self.repo_type,
            "repo_id": self.repo_id,
            "private": self.private,
            "commits": [
                {
                    "oid": c.oid,
                    "parent": c.parent,
                    "summary": c.summary,
                    "ts": c.ts,
                    "files": {p: vars(f) for p, f in c.files.items()},
                }
                for c in self.commits
            ],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Repo:
        repo = cls(data["repo_type"], data["repo_id"], data["private"])
        for c in data["commits"]:
            files = {p: FileEntry(**f) for p, f in c["files"].items()}
            repo.commits.append(Commit(c["oid"], c["parent"], c["summary"], c["ts"], files))
        return repo


@dataclass
class Operation:
    """One line of an NDJSON commit, already decoded."""

    kind: str  # "add", "delete_file" or "delete_folder"
    path: str
    entry: FileEntry | None = None


class HubStore:
    """Repos and content-addressed objects under `root`; every change is written atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.objects = root / "objects"
        self.repos_dir = root / "repos"
        self.tmp = root / "tmp"
        for d in (self.objects, self.repos_dir, self.tmp):
            d.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._repos: dict[tuple[str, str], Repo] = {}
        for path in self.repos_dir.glob("*/*/*.json"):
            repo = Repo.from_json(json.loads(path.read_text(encoding="utf-8")))
            self._repos[(repo.repo_type, repo.repo_id)] = repo

    # -- objects --

    def object_path(self, sha256: str) -> Path:
        return self.objects / sha256

    def has_object(self, sha256: str) -> bool:
        return self.object_path(sha256).is_file()

    def put_bytes(self, data: bytes) -> FileEntry:
        sha = hashlib.sha256(data).hexdigest()
        if not self.has_object(sha):
            self._publish(sha, lambda fh: fh.write(data))
        return FileEntry(sha, len(data), False, git_blob_sha1(data))

    def put_stream(self, expected_sha256: str, chunks: Iterable[bytes]) -> int:
        """Store an LFS upload; the content must hash to `expected_sha256`."""
        digest = hashlib.sha256()
        size = 0
        fd, tmp = tempfile.mkstemp(dir=self.tmp)
        try:
            with os.fdopen(fd, "wb") as fh:
                for chunk in chunks:
                    digest.update(chunk)
                    size += len(chunk)
                    fh.write(chunk)
            if digest.hexdigest() != expected_sha256:
                raise HubError(
                    400, f"sha256 of the uploaded content is {digest.hexdigest()}, "
                    f"not the announced oid {expected_sha256}"
                )
            os.replace(tmp, self.object_path(expected_sha256))
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return size

    def lfs_entry(self, sha256: str, size: int, path: str) -> FileEntry:
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise HubError(400, f"LFS oid of {path!r} is not a sha256 hex digest")
        obj = self.object_path(sha256)
        if not obj.is_file():
            raise HubError(
                422, f"LFS object {sha256} of {path!r} was never uploaded", "LfsObjectMissing"
            )
        if obj.stat().st_size != size:
            raise HubError(422, f"LFS object {sha256} of {path!r} is not {size} bytes")
        digest = hashlib.sha1(b"blob %d\0" % size)
        with obj.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
        return FileEntry(sha256, size, True, digest.hexdigest())

    def _publish(self, sha256: str, write: Any) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.tmp)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, self.object_path(sha256))

    def open_object(self, sha256: str) -> IO[bytes]:
        return self.object_path(sha256).open("rb")

    # -- repos --

    def _save(self, repo: Repo) -> None:
        path = self.repos_dir / f"{repo.repo_type}s" / f"{repo.repo_id}.json"
        atomic_write_json(path, repo.to_json(), indent=None)

    def get(self, repo_type: str, repo_id: str) -> Repo:
        with self._lock:
            repo = self._repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def create(self, repo_type: str, repo_id: str, private: bool) -> tuple[Repo, bool]:
        """Returns the repo and whether it was created now (False: it existed)."""
        with self._lock:
            existing = self._repos.get((repo_type, repo_id))
            if existing is not None:
                return existing, False
            repo = Repo(repo_type, repo_id, private)
            entry = self.put_bytes(GITATTRIBUTES.encode())
            repo.commits.append(
                Commit(self._new_oid(repo_id, "init"), None, "initial commit", time.time(),
                       {".gitattributes": entry})
            )
            self._repos[(repo_type, repo_id)] = repo
            self._save(repo)
            return repo, True

    def commit(
        self, repo: Repo, revision: str, summary: str, ops: list[Operation],
        parent: str | None = None,
    ) -> Commit:
        """Apply all of `ops` as one new commit on main, or none of them."""
        if revision != "main":
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        with self._lock:
            head = repo.head
            if parent is not None and parent != head.oid:
                raise HubError(412, f"A commit has happened since {parent}; head is "
                                    f"{head.oid}")
            files = dict(head.files)
            for op in ops:
                if op.kind == "add":
                    assert op.entry is not None
                    files[op.path] = op.entry
                elif op.kind == "delete_file":
                    if files.pop(op.path, None) is None:
                        raise HubError(
                            404, f"A file with this name doesn't exist: {op.path}", "EntryNotFound"
                        )
                else:
                    prefix = op.path.rstrip("/") + "/"
                    gone = [p for p in files if p.startswith(prefix)]
                    if not gone:
                        raise HubError(
                            404, f"A folder with this name doesn't exist: {op.path}",
                            "EntryNotFound",
                        )
                    for p in gone:
                        del files[p]
            commit = Commit(self._new_oid(repo.repo_id, summary), head.oid, summary, time.time(),
                            files)
            repo.commits.append(commit)
            self._save(repo)
            return commit

    @staticmethod
    def _new_oid(repo_id: str, salt: str) -> str:
        return hashlib.sha1(f"{repo_id}\0{salt}\0{time.time_ns()}\0{os.urandom(8).hex()}"
                            .encode()).hexdigest()


def tree_entries(commit: Commit, folder: str, recursive: bool) -> list[dict[str, Any]]:
    """Tree listing of `folder` ("" = root) at `commit`, as the Hub's JSON items, sorted."""
    prefix = folder.strip("/") + "/" if folder.strip("/") else ""
    dirs: set[str] = set()
    files: list[str] = []
    for path in commit.files:
        if not path.startswith(prefix):
            continue
        rest = path[len(prefix):].split("/")
        if recursive:
            dirs.update(prefix + "/".join(rest[:i]) for i in range(1, len(rest)))
            files.append(path)
        elif len(rest) == 1:
            files.append(path)
        else:
            dirs.add(prefix + rest[0])
    if prefix and not files and not dirs:
        raise HubError(404, f"{folder} does not exist on this revision", "EntryNotFound")
    items: list[dict[str, Any]] = [
        {"type": "directory", "oid": hashlib.sha1(f"{commit.oid}:{d}".encode()).hexdigest(),
         "size": 0, "path": d}
        for d in dirs
    ]
    for path in files:
        f = commit.files[path]
        item: dict[str, Any] = {"type": "file", "oid": f.blob, "size": f.size, "path": path}
        if f.lfs:
            item["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": 134}
        items.append(item)
    return sorted(items, key=lambda i: i["path"])
