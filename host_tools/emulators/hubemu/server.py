"""Hub emulator HTTP server: the Hugging Face Hub API subset that huggingface_hub uses for our
flows (reference/hf_hub_protocol.md section 4), on 127.0.0.1, with fault injection for tests.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

from host_tools.emulators.hubemu.store import (
    REPO_TYPES,
    HubStore,
    HubStoreError,
    Operation,
    Repo,
    is_lfs_path,
    tree_entries,
)

HOST = "127.0.0.1"
CHUNK = 1 << 20
MAX_JSON_BODY = 64 * 1024 * 1024
PREFIXES = {"datasets/": "dataset", "spaces/": "space"}
_NAME = r"[A-Za-z0-9][\w.-]*"
API_REPO = re.compile(
    rf"^/api/(?P<t>models|datasets|spaces)/(?P<id>{_NAME}/{_NAME})"
    r"(?:/(?P<op>revision|preupload|commit|tree)/(?P<rest>.+))?$"
)
LFS_BATCH = re.compile(rf"^/(?P<p>datasets/|spaces/)?(?P<id>{_NAME}/{_NAME})\.git/info/lfs/"
                       r"objects/batch$")
RESOLVE = re.compile(rf"^/(?P<p>datasets/|spaces/)?(?P<id>{_NAME}/{_NAME})/resolve/"
                     r"(?P<rev>[^/]+)/(?P<path>.+)$")
LFS_OBJECT = re.compile(r"^/_lfs/(?P<op>upload|verify)/(?P<oid>[0-9a-f]{64})$")


@dataclass
class Fault:
    """Answer matching requests with `status` (and Retry-After), or with `action="drop"` read
    half of the request body and close the connection without answering; `times` requests."""

    path: str  # regular expression searched in the request path with its query
    method: str | None = None
    status: int = 500
    action: Literal["status", "drop"] = "status"
    retry_after: float | None = None
    times: int = 1
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        return (
            self.hits < self.times
            and (self.method is None or self.method == method)
            and re.search(self.path, path) is not None
        )


@dataclass
class RequestRecord:
    ts: float
    method: str
    path: str
    status: int
    auth: bool
    body_bytes: int = 0


@dataclass
class EmulatorState:
    store: HubStore
    tree_page_size: int
    tokens: frozenset[str] | None
    faults: list[Fault] = field(default_factory=list)
    log: list[RequestRecord] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.matches(method, path):
                    fault.hits += 1
                    return fault
        return None


class _Reply(Exception):
    """Ends a request with an error answer."""

    def __init__(self, status: int, message: str, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers = headers or {}


def _repo_url_prefix(repo_type: str) -> str:
    return {"model": "", "dataset": "datasets/", "space": "spaces/"}[repo_type]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    _status = 0
    _body_bytes = 0
    _body_started = False

    # -- plumbing --

    @property
    def state(self) -> EmulatorState:
        return self.server.state

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        pass  # the request log below replaces stderr noise

    def _base(self) -> str:
        return f"http://{self.headers.get('Host') or f'{HOST}:{self.server.server_port}'}"

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/json") -> None:
        self._status = status
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(data).encode(), headers)

    def _error(self, status: int, message: str, code: str | None = None,
               headers: dict[str, str] | None = None) -> None:
        extra = {"X-Error-Message": message, **(headers or {})}
        if code:
            extra["X-Error-Code"] = code
        self._json(status, {"error": message}, extra)

    def _read_body(self, limit: int | None = MAX_JSON_BODY) -> bytes:
        return b"".join(self._body_chunks(limit))

    def _body_chunks(self, limit: int | None = None) -> Iterator[bytes]:
        self._body_started = True
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return
                data = self.rfile.read(size)
                self.rfile.readline()
                self._body_bytes += len(data)
                yield data
        length = int(self.headers.get("Content-Length") or 0)
        if limit is not None and length > limit:
            raise _Reply(413, f"request body of {length} bytes is over {limit}")
        while length > 0:
            data = self.rfile.read(min(CHUNK, length))
            if not data:
                raise _Reply(400, "request body ended early")
            length -= len(data)
            self._body_bytes += len(data)
            yield data

    def _json_body(self) -> Any:
        try:
            return json.loads(self._read_body() or b"{}")
        except json.JSONDecodeError as exc:
            raise _Reply(400, f"request body is not JSON: {exc.msg}") from None

    def _token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        return auth[7:] if auth.startswith("Bearer ") else None

    def _require_token(self) -> None:
        tokens = self.state.tokens
        if tokens is not None and self._token() not in tokens:
            raise _Reply(401, "Invalid credentials in Authorization header")

    def _readable(self, repo: Repo) -> None:
        tokens = self.state.tokens
        if repo.private and tokens is not None and self._token() not in tokens:
            raise _Reply(401, "Repository not found", "RepoNotFound")

    def _repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.state.store.get(repo_type, repo_id)
        self._readable(repo)
        return repo

    def _dispatch(self) -> None:
        self._status = 0
        self._body_bytes = 0
        self._body_started = False
        started = time.time()
        fault = self.state.take_fault(self.command, self.path)
        try:
            if fault is not None:
                self._apply_fault(fault)
            else:
                self._route()
        except _Reply as reply:
            self._skip_body()
            self._error(reply.status, reply.message, reply.code, reply.headers)
        except HubStoreError as exc:
            self._skip_body()
            self._error(exc.status, exc.message, exc.code)
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        finally:
            with self.state.lock:
                self.state.log.append(RequestRecord(
                    started, self.command, self.path, self._status,
                    self._token() is not None, self._body_bytes))

    def _skip_body(self) -> None:
        """A request refused before its body was read: read it, or the body's bytes would be
        taken for the next request on this keep-alive connection."""
        if self._body_started:
            if self._body_bytes < int(self.headers.get("Content-Length") or 0):
                self.close_connection = True  # refused halfway through the body
            return
        try:
            for _ in self._body_chunks(limit=MAX_JSON_BODY):
                pass
        except (_Reply, ValueError):
            self.close_connection = True

    def _apply_fault(self, fault: Fault) -> None:
        if fault.action == "drop":
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self._body_bytes = len(self.rfile.read(length // 2))
            self.close_connection = True
            # An abrupt close (RST) mid-body is what a client sees when a proxy or the pod dies.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            return
        self._read_body(limit=None)
        headers = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = f"{fault.retry_after:g}"
        self._error(fault.status, f"injected fault: HTTP {fault.status}", headers=headers)

    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _dispatch  # noqa: N815 (stdlib names)

    # -- routes --

    def _route(self) -> None:
        url = urlsplit(self.path)
        path, query = url.path, parse_qs(url.query)
        method = self.command
        if path.startswith("/_emu/"):
            return self._admin(method, path)
        if path == "/api/repos/create" and method == "POST":
            return self._create_repo()
        if path == "/api/validate-yaml" and method == "POST":
            self._read_body()
            return self._json(200, {"errors": [], "warnings": []})
        if m := API_REPO.match(path):
            repo_type = m["t"][:-1]
            op, rest = m["op"], m["rest"]
            if method == "GET" and op in (None, "revision"):
                return self._repo_info(repo_type, m["id"], unquote(rest) if rest else "main")
            if method == "GET" and op == "tree":
                return self._tree(repo_type, m["id"], rest, query)
            if method == "POST" and op == "preupload":
                return self._preupload(repo_type, m["id"], unquote(rest))
            if method == "POST" and op == "commit":
                return self._commit(repo_type, m["id"], unquote(rest))
        if (m := LFS_BATCH.match(path)) and method == "POST":
            return self._lfs_batch(PREFIXES.get(m["p"] or "", "model"), m["id"])
        if (m := LFS_OBJECT.match(path)) and method in ("PUT", "POST"):
            return self._lfs_object(m["op"], m["oid"])
        if (m := RESOLVE.match(path)) and method in ("GET", "HEAD"):
            return self._resolve(PREFIXES.get(m["p"] or "", "model"), m["id"], unquote(m["rev"]),
                                 unquote(m["path"]))
        self._read_body(limit=None)
        raise _Reply(404, f"no route for {method} {path}", "EntryNotFound")

    def _admin(self, method: str, path: str) -> None:
        st = self.state
        if path == "/_emu/faults" and method == "POST":
            spec = self._json_body()
            try:
                fault = Fault(**spec)
            except TypeError as exc:
                raise _Reply(400, f"bad fault: {exc}") from None
            with st.lock:
                st.faults.append(fault)
            return self._json(200, asdict(fault))
        if path == "/_emu/faults" and method == "DELETE":
            with st.lock:
                st.faults.clear()
            return self._json(200, {})
        if path == "/_emu/requests" and method == "GET":
            with st.lock:
                return self._json(200, [asdict(r) for r in st.log])
        raise _Reply(404, f"no admin route {method} {path}", "EntryNotFound")

    def _create_repo(self) -> None:
        self._require_token()
        body = self._json_body()
        name, org = body.get("name"), body.get("organization")
        repo_type = body.get("type") or "model"
        if repo_type not in REPO_TYPES:
            raise _Reply(400, f"unknown repo type {repo_type!r}")
        if not isinstance(name, str) or not isinstance(org, str) or not re.fullmatch(
            rf"{_NAME}/{_NAME}", f"{org}/{name}"
        ):
            raise _Reply(400, "a repo needs an organization and a name made of letters, digits, "
                         "'.', '_' and '-'")
        private = body.get("visibility") == "private" or body.get("private") is True
        repo, created = self.state.store.create(repo_type, f"{org}/{name}", private)
        url = f"{self._base()}/{_repo_url_prefix(repo_type)}{repo.repo_id}"
        if created:
            return self._json(200, {"url": url, "name": repo.repo_id})
        self._json(409, {"error": "You already created this repo", "url": url},
                   {"X-Error-Message": "You already created this repo"})

    def _repo_info(self, repo_type: str, repo_id: str, revision: str) -> None:
        repo = self._repo(repo_type, repo_id)
        commit = repo.resolve(revision)
        self._json(200, {
            "id": repo.repo_id,
            "sha": commit.oid,
            "private": repo.private,
            "lastModified": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(commit.ts)),
            "siblings": [{"rfilename": p} for p in sorted(commit.files)],
        })

    def _tree(self, repo_type: str, repo_id: str, rest: str, query: dict[str, list[str]]) -> None:
        repo = self._repo(repo_type, repo_id)
        rev, _, folder = rest.partition("/")
        commit = repo.resolve(unquote(rev))
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        items = tree_entries(commit, unquote(folder), recursive)
        start = int(query.get("cursor", ["0"])[0])
        end = start + self.state.tree_page_size
        headers = {}
        if end < len(items):
            params = {k: v[0] for k, v in query.items()}
            params["cursor"] = str(end)
            base = f"/api/{repo_type}s/{repo_id}/tree/{rest}"
            headers["Link"] = f'<{self._base()}{base}?{urlencode(params)}>; rel="next"'
        self._json(200, items[start:end], headers)

    def _preupload(self, repo_type: str, repo_id: str, revision: str) -> None:
        self._require_token()
        body = self._json_body()
        repo = self._repo(repo_type, repo_id)
        head = repo.resolve(revision)
        answer = []
        for spec in body.get("files", []):
            try:
                path, size = spec["path"], int(spec["size"])
                sample = base64.b64decode(spec.get("sample") or "")
            except (KeyError, TypeError, ValueError, binascii.Error):
                raise _Reply(400, f"bad preupload entry {spec!r}") from None
            lfs = is_lfs_path(path, size, sample)
            existing = head.files.get(path)
            oid = None
            if existing is not None:
                oid = existing.sha256 if lfs else existing.blob
            answer.append({"path": path, "uploadMode": "lfs" if lfs else "regular",
                           "shouldIgnore": False, "oid": oid})
        self._json(200, {"files": answer, "commitOid": head.oid})

    def _lfs_batch(self, repo_type: str, repo_id: str) -> None:
        self._require_token()
        body = self._json_body()
        self._repo(repo_type, repo_id)
        store = self.state.store
        objects = []
        for obj in body.get("objects", []):
            oid, size = obj.get("oid"), obj.get("size")
            if not isinstance(oid, str) or not re.fullmatch(r"[0-9a-f]{64}", oid) or not isinstance(
                size, int
            ):
                raise _Reply(422, f"bad LFS object {obj!r}")
            item: dict[str, Any] = {"oid": oid, "size": size}
            if not store.has_object(oid):
                item["actions"] = {
                    "upload": {"href": f"{self._base()}/_lfs/upload/{oid}"},
                    "verify": {"href": f"{self._base()}/_lfs/verify/{oid}"},
                }
            objects.append(item)
        self._send(200, json.dumps({"transfer": "basic", "objects": objects}).encode(),
                   content_type="application/vnd.git-lfs+json")

    def _lfs_object(self, op: str, oid: str) -> None:
        store = self.state.store
        if op == "upload":
            store.put_stream(oid, self._body_chunks())
            return self._send(200)
        body = self._json_body()
        if not store.has_object(oid) or store.object_path(oid).stat().st_size != body.get("size"):
            raise _Reply(404, f"LFS object {oid} is missing or has another size", "EntryNotFound")
        self._json(200, {})

    def _commit(self, repo_type: str, repo_id: str, revision: str) -> None:
        self._require_token()
        repo = self._repo(repo_type, repo_id)
        store = self.state.store
        summary, parent = "", None
        ops: list[Operation] = []
        for line_no, line in enumerate(self._read_body(limit=None).splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                key, value = item["key"], item["value"]
                if key == "header":
                    summary, parent = value.get("summary", ""), value.get("parentCommit")
                elif key == "file":
                    if value.get("encoding", "base64") != "base64":
                        raise _Reply(400, f"commit line {line_no}: unknown encoding")
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
                    raise _Reply(400, f"commit line {line_no}: unknown key {key!r}")
            except (json.JSONDecodeError, KeyError, TypeError, ValueError, binascii.Error):
                raise _Reply(400, f"commit line {line_no} is malformed") from None
        for op in ops:
            if op.path.startswith("/") or ".." in op.path.split("/") or not op.path:
                raise _Reply(400, f"bad path in commit: {op.path!r}")
        commit = store.commit(repo, revision, summary, ops, parent)
        url = f"{self._base()}/{_repo_url_prefix(repo_type)}{repo.repo_id}/commit/{commit.oid}"
        self._json(200, {"success": True, "commitOid": commit.oid, "commitUrl": url,
                         "pullRequestUrl": None, "hookOutput": ""})

    def _resolve(self, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        repo = self._repo(repo_type, repo_id)
        commit = repo.resolve(revision)
        entry = commit.files.get(path)
        if entry is None:
            raise _Reply(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{entry.oid()}"',
                   "Accept-Ranges": "bytes"}
        if entry.lfs:
            headers["X-Linked-Etag"] = f'"{entry.sha256}"'
            headers["X-Linked-Size"] = str(entry.size)
        start, end, status = 0, entry.size - 1, 200
        if m := re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "")):
            if m[1]:
                start, end = int(m[1]), min(int(m[2]) if m[2] else end, end)
            elif m[2]:
                start = max(entry.size - int(m[2]), 0)
            if start > end and entry.size:
                raise _Reply(416, "Range Not Satisfiable",
                             headers={"Content-Range": f"bytes */{entry.size}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{entry.size}"
        length = max(end - start + 1, 0)
        self._status = status
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command == "HEAD":
            return
        with self.state.store.open_object(entry.sha256) as fh:
            fh.seek(start)
            while length > 0:
                data = fh.read(min(CHUNK, length))
                if not data:
                    break
                self.wfile.write(data)
                length -= len(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, state: EmulatorState) -> None:
        self.state = state
        super().__init__((HOST, port), Handler)


class HubEmulator:
    """The emulator in a background thread: `with HubEmulator(dir) as hub: hub.url ...`."""

    def __init__(self, root: Path, port: int = 0, tree_page_size: int = 1000,
                 tokens: frozenset[str] | None = None) -> None:
        self.state = EmulatorState(HubStore(root), tree_page_size, tokens)
        self._server = _Server(port, self.state)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> HubEmulator:
        self._thread = threading.Thread(target=self._server.serve_forever, name="hubemu",
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever(poll_interval=0.2)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> HubEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def add_fault(self, path: str, **kwargs: Any) -> Fault:
        fault = Fault(path=path, **kwargs)
        with self.state.lock:
            self.state.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self.state.lock:
            self.state.faults.clear()

    def requests(self) -> list[RequestRecord]:
        with self.state.lock:
            return list(self.state.log)

    def clear_requests(self) -> None:
        with self.state.lock:
            self.state.log.clear()

    def file_url(self, repo_type: str, repo_id: str, path: str) -> str:
        return f"{self.url}/{_repo_url_prefix(repo_type)}{repo_id}/resolve/main/{quote(path)}"
