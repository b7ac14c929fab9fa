"""How a repo's content looks in the Hub's JSON: tree and paths-info items (with their last
commit when expanded), siblings with file metadata, and commit-list items.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from host_tools.emulators.hubemu.store import Commit, FileEntry, HubError, Repo


def iso_date(ts: float) -> str:
    """A timestamp as the Hub writes dates: UTC, milliseconds, Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


def pointer_size(entry: FileEntry) -> int:
    """Bytes of the git LFS pointer file that stands for `entry` in git."""
    return len(f"version https://git-lfs.github.com/spec/v1\noid sha256:{entry.sha256}\n"
               f"size {entry.size}\n")


def folder_oid(commit: Commit, folder: str) -> str:
    return hashlib.sha1(f"{commit.oid}:{folder}".encode()).hexdigest()


def _under(commit: Commit, path: str) -> dict[str, str]:
    """The file oids at `path` itself or below it."""
    prefix = path + "/"
    return {p: f.oid() for p, f in commit.files.items() if p == path or p.startswith(prefix)}


def last_commit(repo: Repo, commit: Commit, path: str) -> dict[str, str]:
    """The newest commit up to `commit` that changed `path` (a file or a folder), as the Hub's
    lastCommit object."""
    state = _under(commit, path)
    while commit.parent is not None:
        parent = repo.commits[commit.parent]
        if _under(parent, path) != state:
            break
        commit = parent
    return {"id": commit.oid, "title": commit.summary, "date": iso_date(commit.ts)}


def file_item(path: str, f: FileEntry) -> dict[str, Any]:
    item: dict[str, Any] = {"type": "file", "oid": f.blob, "size": f.size, "path": path}
    if f.lfs:
        item["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": pointer_size(f)}
    return item


def folder_item(commit: Commit, path: str) -> dict[str, Any]:
    return {"type": "directory", "oid": folder_oid(commit, path), "size": 0, "path": path}


def expanded(repo: Repo, commit: Commit, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`items` with the lastCommit of each, as the Hub adds with expand=true."""
    return [{**item, "lastCommit": last_commit(repo, commit, item["path"])} for item in items]


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
    items = [folder_item(commit, d) for d in dirs]
    items += [file_item(path, commit.files[path]) for path in files]
    return sorted(items, key=lambda i: i["path"])


def path_items(commit: Commit, paths: list[str]) -> list[dict[str, Any]]:
    """The paths-info answer: an item for each of `paths` that exists at `commit` (a file or a
    folder), in the order asked, each once; missing paths are left out, as the Hub does."""
    items = []
    for path in dict.fromkeys(p.strip("/") for p in paths):
        if path in commit.files:
            items.append(file_item(path, commit.files[path]))
        elif path and any(p.startswith(path + "/") for p in commit.files):
            items.append(folder_item(commit, path))
    return items


def siblings(commit: Commit, blobs: bool) -> list[dict[str, Any]]:
    """The siblings of repo info; with `blobs` (files_metadata) also size, blobId and lfs."""
    answer: list[dict[str, Any]] = []
    for path in sorted(commit.files):
        sibling: dict[str, Any] = {"rfilename": path}
        if blobs:
            f = commit.files[path]
            sibling.update(blobId=f.blob, size=f.size)
            if f.lfs:
                sibling["lfs"] = {"sha256": f.sha256, "size": f.size,
                                  "pointerSize": pointer_size(f)}
        answer.append(sibling)
    return answer


def commit_item(commit: Commit) -> dict[str, Any]:
    """One entry of the commits listing."""
    return {"id": commit.oid, "title": commit.summary, "message": commit.description,
            "authors": [{"user": commit.author}], "date": iso_date(commit.ts)}
