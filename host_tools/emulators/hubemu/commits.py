"""Hub emulator routes that write: preupload (upload mode per file), the LFS batch API and its
object upload/verify endpoints, and NDJSON commits applied atomically to a branch.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import TYPE_CHECKING, Any

from host_tools.emulators.hubemu.repos import flag, repo_url_prefix
from host_tools.emulators.hubemu.store import HubError, Operation, is_lfs_path

if TYPE_CHECKING:
    from host_tools.emulators.hubemu.server import Handler


def no_pull_requests(query: dict[str, list[str]]) -> None:
    if flag(query, "create_pr"):
        raise HubError(400, "hubemu has no pull requests: commit to a branch instead")


def preupload(h: Handler, repo_type: str, repo_id: str, revision: str,
              query: dict[str, list[str]]) -> None:
    """The upload mode the Hub would choose for each file, and the oid it has for it now."""
    no_pull_requests(query)
    h.require_token()
    body = h.json_body()
    repo = h.repo(repo_type, repo_id)
    head = repo.resolve(revision)
    answer = []
    for spec in body.get("files", []):
        try:
            path, size = spec["path"], int(spec["size"])
            sample = base64.b64decode(spec.get("sample") or "")
        except (KeyError, TypeError, ValueError, binascii.Error):
            raise HubError(400, f"bad preupload entry {spec!r}") from None
        lfs = is_lfs_path(path, size, sample)
        existing = head.files.get(path)
        oid = None
        if existing is not None:
            oid = existing.sha256 if lfs else existing.blob
        answer.append({"path": path, "uploadMode": "lfs" if lfs else "regular",
                       "shouldIgnore": False, "oid": oid})
    h.send_json(200, {"files": answer, "commitOid": head.oid})


def lfs_batch(h: Handler, repo_type: str, repo_id: str) -> None:
    """The git LFS batch API: upload and verify actions for objects not stored yet."""
    h.require_token()
    body = h.json_body()
    h.repo(repo_type, repo_id)
    store = h.state.store
    objects = []
    for obj in body.get("objects", []):
        oid, size = obj.get("oid"), obj.get("size")
        if not isinstance(oid, str) or not re.fullmatch(r"[0-9a-f]{64}", oid) or not isinstance(
            size, int
        ):
            raise HubError(422, f"bad LFS object {obj!r}")
        item: dict[str, Any] = {"oid": oid, "size": size}
        if not store.has_object(oid):
            item["actions"] = {
                "upload": {"href": f"{h.base_url()}/_lfs/upload/{oid}"},
                "verify": {"href": f"{h.base_url()}/_lfs/verify/{oid}"},
            }
        objects.append(item)
    h.send_bytes(200, json.dumps({"transfer": "basic", "objects": objects}).encode(),
                 content_type="application/vnd.git-lfs+json")


def lfs_object(h: Handler, op: str, oid: str) -> None:
    """PUT /_lfs/upload/{oid} (stored only when the content hashes to oid), POST verify."""
    store = h.state.store
    if op == "upload":
        store.put_stream(oid, h.body_chunks())
        return h.send_bytes(200)
    body = h.json_body()
    if not store.has_object(oid) or store.object_path(oid).stat().st_size != body.get("size"):
        raise HubError(404, f"LFS object {oid} is missing or has another size", "EntryNotFound")
    h.send_json(200, {})


def commit(h: Handler, repo_type: str, repo_id: str, revision: str,
           query: dict[str, list[str]]) -> None:
    """An NDJSON commit (header, file, lfsFile, deletedFile, deletedFolder lines): all or none."""
    no_pull_requests(query)
    h.require_token()
    repo = h.repo(repo_type, repo_id)
    store = h.state.store
    summary, description, parent = "", "", None
    ops: list[Operation] = []
    for line_no, line in enumerate(h.read_body(None).splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                summary, parent = value.get("summary", ""), value.get("parentCommit")
                description = value.get("description") or ""
            elif key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise HubError(400, f"commit line {line_no}: unknown encoding")
                entry = store.put_bytes(base64.b64decode(value["content"]))
                ops.append(Operation("add", value["path"], entry))
            elif key == "lfsFile":
                entry = store.lfs_entry(value["oid"], int(value["size"]), value["path"])
                ops.append(Operation("add", value["path"], entry))
            elif key == "deletedFile":
                ops.append(Operation("delete_file", value["path"]))
            elif key == "deletedFolder":
                ops.append(Operation("delete_folder", value["path"]))
            else:
                raise HubError(400, f"commit line {line_no}: unknown key {key!r}")
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, binascii.Error):
            raise HubError(400, f"commit line {line_no} is malformed") from None
    for op in ops:
        if op.path.startswith("/") or ".." in op.path.split("/") or not op.path:
            raise HubError(400, f"bad path in commit: {op.path!r}")
    new = store.commit(repo, revision, summary, ops, parent, description, h.state.user)
    url = f"{h.base_url()}/{repo_url_prefix(repo_type)}{repo.repo_id}/commit/{new.oid}"
    h.send_json(200, {"success": True, "commitOid": new.oid, "commitUrl": url,
                      "pullRequestUrl": None, "hookOutput": ""})
