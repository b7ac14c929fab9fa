"""Hub emulator file downloads: GET/HEAD /{[type]s/}{id}/resolve/{rev}/{path}, with the Hub's
ETag, X-Repo-Commit and X-Linked-* headers and single byte ranges.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from host_tools.emulators.base import CHUNK
from host_tools.emulators.hubemu.store import HubError

if TYPE_CHECKING:
    from host_tools.emulators.hubemu.server import Handler


def resolve(h: Handler, repo_type: str, repo_id: str, revision: str, path: str) -> None:
    """A file of a repo at a revision, streamed from the object store."""
    repo = h.repo(repo_type, repo_id)
    commit = repo.resolve(revision)
    entry = commit.files.get(path)
    if entry is None:
        raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.oid})
    headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{entry.oid()}"',
               "Accept-Ranges": "bytes"}
    # The bytes the store holds, as a CDN serves an object: a truncated one is served short
    # (and complete as far as HTTP goes) rather than promised whole and left hanging.
    size = min(entry.size, h.state.store.object_path(entry.sha256).stat().st_size)
    if entry.lfs:
        headers["X-Linked-Etag"] = f'"{entry.sha256}"'
        headers["X-Linked-Size"] = str(size)
    start, end, status = 0, size - 1, 200
    if m := re.fullmatch(r"bytes=(\d*)-(\d*)", h.headers.get("Range", "")):
        if m[1]:
            start, end = int(m[1]), min(int(m[2]) if m[2] else end, end)
        elif m[2]:
            start = max(size - int(m[2]), 0)
        if start > end and size:
            raise HubError(416, "Range Not Satisfiable",
                           headers={"Content-Range": f"bytes */{size}"})
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    length = max(end - start + 1, 0)
    h.send_head(status, length, headers, "application/octet-stream")
    if h.command == "HEAD":
        return
    with h.state.store.open_object(entry.sha256) as fh:
        fh.seek(start)
        while length > 0:
            data = fh.read(min(CHUNK, length))
            if not data:
                break
            h.wfile.write(data)
            length -= len(data)
