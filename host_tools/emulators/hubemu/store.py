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
SYSTEM_AUTHOR = "system"  # the author the Hub shows for a repo's initial commit
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


def check_ref_name(kind: str, name: str) -> None:
    """HubError 400 unless `name` can name a new branch or tag: git's ref-name rules, not under
    refs/ (the Hub keeps refs/pr/, refs/convert/ for itself) and not a commit id."""
    problem = None
    if not name or len(name) > 255:
        problem = "it must have 1 to 255 characters"
    elif name.startswith("refs/"):
        problem = "refs/ names are reserved"
    elif re.fullmatch(r"[0-9a-f]{40}", name):
        problem = "it looks like a commit id"
    elif (re.search(r"[\x00-\x20\x7f~^:?*\[\\]", name) or ".." in name or "@{" in name
          or "//" in name or name.startswith(("/", "-", ".")) or name.endswith(("/", ".", ".lock"))
          or "/." in name):
        problem = "git does not allow it as a ref name"
    if problem:
        raise HubError(400, f"Invalid {kind} name {name!r}: {problem}")


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
    description: str = ""
    author: str = SYSTEM_AUTHOR


@dataclass
class Repo:
    """A repo: its commits by oid (each knows its parent), branch and tag names pointing at
    commits, and its settings."""

    repo_type: str
    repo_id: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    gated: str | bool = False  # False, "auto" or "manual", as the Hub reports it

    @property
    def head(self) -> Commit:
        return self.commits[self.branches["main"]]

    def resolve(self, revision: str) -> Commit:
        """A branch, a tag (also as refs/heads/..., refs/tags/...), or a commit id (7 to 40 hex
        digits, unique)."""
        if revision.startswith("refs/heads/"):
            oid = self.branches.get(revision[len("refs/heads/"):])
        elif revision.startswith("refs/tags/"):
            oid = self.tags.get(revision[len("refs/tags/"):])
        else:
            oid = self.branches.get(revision) or self.tags.get(revision)
            if oid is None and re.fullmatch(r"[0-9a-f]{7,40}", revision):
                # list(): a one-step copy, as a writer may add a commit meanwhile
                found = [o for o in list(self.commits) if o.startswith(revision)]
                oid = found[0] if len(found) == 1 else None
        if oid is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return self.commits[oid]

    def branch(self, revision: str) -> str:
        """The branch a commit to `revision` goes to: an existing branch, by name or ref."""
        name = revision.removeprefix("refs/heads/")
        if name in self.branches:
            return name
        self.resolve(revision)  # 404 when it names nothing at all
        raise HubError(400, f"Invalid rev id: {revision} is not a branch; commits go to a "
                       "branch")

    def history(self, revision: str) -> list[Commit]:
        """The commits reachable from `revision`, newest first."""
        commit: Commit | None = self.resolve(revision)
        chain = []
        while commit is not None:
            chain.append(commit)
            commit = self.commits[commit.parent] if commit.parent else None
        return chain

    def to_json(self) -> dict[str, Any]:
        return {
            "repo_type": self.repo_type,
            "repo_id": self.repo_id,
            "private": self.private,
            "gated": self.gated,
            "branches": self.branches,
            "tags": self.tags,
            "commits": [
                {**{k: v for k, v in vars(c).items() if k != "files"},
                 "files": {p: vars(f) for p, f in c.files.items()}}
                for c in self.commits.values()
            ],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Repo:
        repo = cls(data["repo_type"], data["repo_id"], data["private"], gated=data.get("gated",
                                                                                    False))
        for c in data["commits"]:
            files = {p: FileEntry(**f) for p, f in c["files"].items()}
            fields = {k: v for k, v in c.items() if k != "files"}
            repo.commits[c["oid"]] = Commit(files=files, **fields)
        # A store written before branches existed had one line of commits: main is the last.
        repo.branches = data.get("branches") or {"main": data["commits"][-1]["oid"]}
        repo.tags = data.get("tags", {})
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
            first = Commit(self._new_oid(repo_id, "init"), None, "initial commit", time.time(),
                           {".gitattributes": entry})
            repo.commits[first.oid] = first
            repo.branches["main"] = first.oid
            self._repos[(repo_type, repo_id)] = repo
            self._save(repo)
            return repo, True

    def delete(self, repo_type: str, repo_id: str) -> None:
        """Forget the repo (its objects stay: other repos may share them)."""
        with self._lock:
            if self._repos.pop((repo_type, repo_id), None) is None:
                raise HubError(404, "Repository not found", "RepoNotFound")
            (self.repos_dir / f"{repo_type}s" / f"{repo_id}.json").unlink()

    def update_settings(self, repo: Repo, private: bool | None, gated: str | bool | None) -> None:
        with self._lock:
            if private is not None:
                repo.private = private
            if gated is not None:
                repo.gated = gated
            self._save(repo)

    def set_ref(self, repo: Repo, kind: str, name: str, target: str | None) -> None:
        """Create (`target`: a revision) or delete (None) the branch or tag `name`."""
        refs = repo.branches if kind == "branch" else repo.tags
        full = f"refs/{'heads' if kind == 'branch' else 'tags'}/{name}"
        with self._lock:
            if target is None:
                if kind == "branch" and name == "main":
                    raise HubError(403, "The default branch main cannot be deleted")
                if refs.pop(name, None) is None:
                    raise HubError(404, f"Invalid rev id: {full}", "RevisionNotFound")
            else:
                check_ref_name(kind, name)
                if name in refs:
                    raise HubError(409, f"Reference already exists: {full}")
                refs[name] = repo.resolve(target).oid
            self._save(repo)

    def commit(
        self, repo: Repo, revision: str, summary: str, ops: list[Operation],
        parent: str | None = None, description: str = "", author: str = SYSTEM_AUTHOR,
    ) -> Commit:
        """Apply all of `ops` as one new commit on the branch `revision`, or none of them."""
        with self._lock:
            branch = repo.branch(revision)
            head = repo.commits[repo.branches[branch]]
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
                            files, description, author)
            repo.commits[commit.oid] = commit
            repo.branches[branch] = commit.oid
            self._save(repo)
            return commit

    @staticmethod
    def _new_oid(repo_id: str, salt: str) -> str:
        return hashlib.sha1(f"{repo_id}\0{salt}\0{time.time_ns()}\0{os.urandom(8).hex()}"
                            .encode()).hexdigest()

