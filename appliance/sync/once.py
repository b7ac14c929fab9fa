"""One sync pass: find the files matching the patterns whose content changed since the last upload
and upload them to the repo in a single commit, then record them in the upload index.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from appliance.hf import DEFAULT_ENDPOINT, CommitResult, HubClient
from appliance.sync.index import UploadIndex, is_candidate, locked, scan

NAMES_IN_MESSAGE = 5


@dataclass(frozen=True)
class SyncJob:
    source: Path
    repo_id: str
    patterns: tuple[str, ...]
    state_dir: Path
    repo_type: str = "model"
    endpoint: str = DEFAULT_ENDPOINT

    @property
    def target(self) -> str:
        """The index key: another repo, endpoint or source dir starts from an empty index."""
        return f"{self.endpoint} {self.repo_type}:{self.repo_id} {self.source.resolve()}"


@dataclass
class SyncResult:
    uploaded: list[tuple[str, int]] = field(default_factory=list)
    unchanged: int = 0
    commit: CommitResult | None = None
    elapsed_s: float = 0.0

    @property
    def bytes(self) -> int:
        return sum(size for _, size in self.uploaded)

    def summary(self, job: SyncJob) -> str:
        if not self.uploaded:
            return (f"nothing to upload: {self.unchanged} file(s) unchanged in {job.source} "
                    f"({job.repo_id})")
        names = ", ".join(rel for rel, _ in self.uploaded)
        oid = self.commit.oid[:12] if self.commit else "?"
        return (f"uploaded {len(self.uploaded)} file(s), {self.bytes} bytes, to {job.repo_id} in "
                f"commit {oid} ({self.elapsed_s:.1f} s): {names}; {self.unchanged} unchanged")

    def to_json(self) -> dict[str, object]:
        return {
            "uploaded": [{"path": rel, "bytes": size} for rel, size in self.uploaded],
            "unchanged": self.unchanged,
            "bytes": self.bytes,
            "commit": self.commit.oid if self.commit else None,
            "elapsed_s": round(self.elapsed_s, 3),
        }


def _stat_only(source: Path, rels: Iterable[str], patterns: tuple[str, ...]
               ) -> dict[str, os.stat_result]:
    found = {}
    for rel in sorted(set(rels)):
        if not is_candidate(rel, patterns):
            continue
        path = source / rel
        try:
            st = path.lstat()
        except FileNotFoundError:
            continue
        if path.is_file() and not path.is_symlink():
            found[rel] = st
    return found


def commit_message(rels: list[str]) -> str:
    shown = ", ".join(rels[:NAMES_IN_MESSAGE])
    more = f" and {len(rels) - NAMES_IN_MESSAGE} more" if len(rels) > NAMES_IN_MESSAGE else ""
    return f"hf-sync: {len(rels)} file(s): {shown}{more}"


def sync_once(client: HubClient, job: SyncJob, only: Iterable[str] | None = None) -> SyncResult:
    """Upload the changed files (all candidates, or just `only`) in one commit. No request is
    made when nothing changed."""
    started = time.monotonic()
    result = SyncResult()
    with locked(job.state_dir):
        index = UploadIndex(job.state_dir, job.target)
        stats = (scan(job.source, job.patterns) if only is None
                 else _stat_only(job.source, only, job.patterns))
        todo: list[tuple[str, str, os.stat_result]] = []
        for rel, st in stats.items():
            try:
                digest = index.changed(job.source, rel, st)
            except FileNotFoundError:
                continue
            if digest is None:
                result.unchanged += 1
            else:
                todo.append((rel, digest, st))
        if not todo:
            index.save()
            result.elapsed_s = time.monotonic() - started
            return result
        client.require_token(f"upload to {job.repo_id}")
        client.ensure_repo(job.repo_id, job.repo_type)
        rels = [rel for rel, _, _ in todo]
        result.commit = client.upload(
            job.repo_id, job.repo_type, [(job.source / rel, rel) for rel in rels],
            commit_message(rels))
        for rel, digest, st in todo:
            index.record(rel, digest, st)
            result.uploaded.append((rel, st.st_size))
        index.save()
    result.elapsed_s = time.monotonic() - started
    return result
