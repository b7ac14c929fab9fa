"""Hub emulator HTTP server: the Hugging Face Hub API subset that huggingface_hub uses (repos,
uploads to any branch, downloads, listings, refs and history, settings, whoami) on 127.0.0.1.
This module routes requests (to repos.py, refs.py, commits.py, files.py), checks tokens, injects
faults and serves /_emu/faults and /_emu/requests; HubEmulator is the server tests and the CLI
start.
"""

from __future__ import annotations

import json
import re
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import parse_qs, unquote, urlsplit

from host_tools.emulators.base import (
    HOST,
    ControlRoute,
    Controls,
    EmulatorHandler,
    EmulatorServer,
    FaultSpecError,
    HttpError,
    RegexFault,
)
from host_tools.emulators.hubemu import commits, files, refs, repos
from host_tools.emulators.hubemu.repos import NAME
from host_tools.emulators.hubemu.store import HubError, HubStore, Repo

MAX_JSON_BODY = 64 * 1024 * 1024
DEFAULT_USER = "hubemu-user"
CONTROL = ControlRoute("/_emu", added_status=200, cleared_status=200, cleared_body={})
PREFIXES = {"datasets/": "dataset", "spaces/": "space"}
API_REPO = re.compile(
    rf"^/api/(?P<t>models|datasets|spaces)/(?P<id>{NAME}/{NAME})"
    r"(?:/(?P<op>[a-z-]+)(?:/(?P<rest>.+))?)?$"
)
LFS_BATCH = re.compile(rf"^/(?P<p>datasets/|spaces/)?(?P<id>{NAME}/{NAME})\.git/info/lfs/"
                       r"objects/batch$")
RESOLVE = re.compile(rf"^/(?P<p>datasets/|spaces/)?(?P<id>{NAME}/{NAME})/resolve/"
                     r"(?P<rev>[^/]+)/(?P<path>.+)$")
LFS_OBJECT = re.compile(r"^/_lfs/(?P<op>upload|verify)/(?P<oid>[0-9a-f]{64})$")


@dataclass
class Fault(RegexFault):
    """Answer matching requests with `status` (and Retry-After), or with `action="drop"` read
    half of the request body and close the connection without answering; `times` requests."""

    pattern_field: ClassVar[str] = "path"
    path: str  # regular expression searched in the request path with its query
    method: str | None = None
    status: int = 500
    action: Literal["status", "drop"] = "status"
    retry_after: float | None = None
    times: int = 1
    hits: int = 0


@dataclass
class RequestRecord:
    ts: float
    method: str
    path: str  # with its query
    status: int  # 0: no answer (a dropped connection)
    auth: bool
    body_bytes: int = 0


class EmulatorState(Controls[Fault, RequestRecord]):
    """The store and settings the handlers serve from, with the faults and request log."""

    def __init__(self, store: HubStore, tree_page_size: int,
                 tokens: frozenset[str] | None, user: str) -> None:
        super().__init__(Fault, asdict)
        self.store, self.tree_page_size, self.tokens = store, tree_page_size, tokens
        self.user = user


class Handler(EmulatorHandler):
    server: HubEmulator
    started = 0.0  # when the request being served began
    logged = False  # whether it is in the request log yet

    @property
    def state(self) -> EmulatorState:
        return self.server.state

    # -- helpers of the route modules --

    def base_url(self) -> str:
        return f"http://{self.headers.get('Host') or f'{HOST}:{self.server.port}'}"

    def json_body(self) -> Any:
        try:
            return json.loads(self.read_body(MAX_JSON_BODY) or b"{}")
        except json.JSONDecodeError as exc:
            raise HubError(400, f"request body is not JSON: {exc.msg}") from None

    def require_token(self) -> None:
        tokens = self.state.tokens
        if tokens is not None and self.bearer_token() not in tokens:
            raise HubError(401, "Invalid credentials in Authorization header")

    def repo(self, repo_type: str, repo_id: str) -> Repo:
        """The repo, if this request may read it (a private one needs an accepted token)."""
        repo = self.state.store.get(repo_type, repo_id)
        tokens = self.state.tokens
        if repo.private and tokens is not None and self.bearer_token() not in tokens:
            raise HubError(401, "Repository not found", "RepoNotFound")
        return repo

    # -- dispatch --

    def send_head(self, status: int, length: int, headers: dict[str, str] | None = None,
                  content_type: str | None = "application/json") -> None:
        # Logged before the answer goes out: a client that has its answer finds its request in
        # the log (logged after, a test that reads the log at once could miss the last one).
        self.sent_status = status
        self._log()
        super().send_head(status, length, headers, content_type)

    def _log(self) -> None:
        if not self.logged:
            self.logged = True
            self.state.record(RequestRecord(self.started, self.command, self.path,
                                            self.sent_status, self.bearer_token() is not None,
                                            self.body_bytes))

    def _dispatch(self) -> None:
        self.begin_request()
        self.started, self.logged = time.time(), False
        fault = self.state.take_fault(self.path, self.command)
        try:
            if fault is not None:
                self._apply_fault(fault)
            else:
                self._route()
        except HttpError as exc:
            self.skip_body(MAX_JSON_BODY)
            code = exc.code if isinstance(exc, HubError) else None
            self._error(exc.status, exc.message, code, exc.headers)
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        finally:
            self._log()  # a request that got no answer (a dropped connection) is logged too

    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _dispatch  # noqa: N815 (stdlib names)

    def _error(self, status: int, message: str, code: str | None = None,
               headers: dict[str, str] | None = None) -> None:
        extra = {"X-Error-Message": message, **(headers or {})}
        if code:
            extra["X-Error-Code"] = code
        self.send_json(status, {"error": message}, extra)

    def _apply_fault(self, fault: Fault) -> None:
        if fault.action == "drop":
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.body_bytes = len(self.rfile.read(length // 2))
            self.close_connection = True
            # An abrupt close (RST) mid-body is what a client sees when a proxy or the pod dies.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            return
        self.read_body(None)
        headers = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = f"{fault.retry_after:g}"
        self._error(fault.status, f"injected fault: HTTP {fault.status}", headers=headers)

    def _route(self) -> None:
        url = urlsplit(self.path)
        path, query = url.path, parse_qs(url.query)
        method = self.command
        if path.startswith(f"{CONTROL.prefix}/"):
            return self._control(method, path)
        if path == "/api/repos/create" and method == "POST":
            return repos.create_repo(self)
        if path == "/api/validate-yaml" and method == "POST":
            self.read_body(MAX_JSON_BODY)
            return self.send_json(200, {"errors": [], "warnings": []})
        if path == "/api/repos/delete" and method == "DELETE":
            return repos.delete_repo(self)
        if path == "/api/whoami-v2" and method == "GET":
            return repos.whoami(self)
        if m := API_REPO.match(path):
            route = REPO_ROUTES.get((method, m["op"], m["rest"] is not None))
            if route is not None:
                return route(self, m["t"][:-1], m["id"], m["rest"] or "", query)
        if (m := LFS_BATCH.match(path)) and method == "POST":
            return commits.lfs_batch(self, PREFIXES.get(m["p"] or "", "model"), m["id"])
        if (m := LFS_OBJECT.match(path)) and method in ("PUT", "POST"):
            return commits.lfs_object(self, m["op"], m["oid"])
        if (m := RESOLVE.match(path)) and method in ("GET", "HEAD"):
            return files.resolve(self, PREFIXES.get(m["p"] or "", "model"), m["id"],
                                 unquote(m["rev"]), unquote(m["path"]))
        self.read_body(None)
        raise HubError(404, f"no route for {method} {path}", "EntryNotFound")

    def _control(self, method: str, path: str) -> None:
        try:
            answer = self.state.control(CONTROL, method, path, self.json_body)
        except FaultSpecError as exc:
            raise HubError(400, f"bad fault: {exc}") from None
        if answer is None:
            raise HubError(404, f"no admin route {method} {path}", "EntryNotFound")
        self.send_json(*answer)


RepoRoute = Callable[[Handler, str, str, str, dict[str, list[str]]], None]
# (method, op, whether a revision or name follows op) -> the route, called with the handler, repo
# type and id, what follows op as sent (URL-quoted) and the query.
REPO_ROUTES: dict[tuple[str, str | None, bool], RepoRoute] = {
    ("GET", None, False): lambda h, t, i, _, q: repos.repo_info(h, t, i, "main", q),
    ("GET", "revision", True): lambda h, t, i, r, q: repos.repo_info(h, t, i, unquote(r), q),
    ("GET", "tree", True): repos.tree,
    ("GET", "commits", True): refs.list_commits,
    ("GET", "refs", False): lambda h, t, i, _, q: refs.list_refs(h, t, i, q),
    ("PUT", "settings", False): lambda h, t, i, _, q: repos.update_settings(h, t, i),
    ("POST", "paths-info", True): lambda h, t, i, r, _: repos.paths_info(h, t, i, unquote(r)),
    ("POST", "preupload", True): lambda h, t, i, r, q: commits.preupload(h, t, i, unquote(r), q),
    ("POST", "commit", True): lambda h, t, i, r, q: commits.commit(h, t, i, unquote(r), q),
    ("POST", "branch", True): lambda h, t, i, r, _: refs.branch(h, t, i, unquote(r)),
    ("DELETE", "branch", True): lambda h, t, i, r, _: refs.branch(h, t, i, unquote(r)),
    ("POST", "tag", True): lambda h, t, i, r, _: refs.tag(h, t, i, unquote(r)),
    ("DELETE", "tag", True): lambda h, t, i, r, _: refs.tag(h, t, i, unquote(r)),
}


class HubEmulator(EmulatorServer):
    """The emulator storing to `root`: `with HubEmulator(root) as hub: hub.url ...`, or
    `.start()` ... `.stop()`. `tree_page_size`: entries per page of tree and commit listings.
    `tokens`: the only ones accepted for writes and private repos (None: any token or none).
    `user`: who whoami says a token belongs to, the author of commits and the namespace of a
    repo created without one."""

    thread_name = "hubemu"

    def __init__(self, root: Path, port: int = 0, tree_page_size: int = 1000,
                 tokens: frozenset[str] | None = None, user: str = DEFAULT_USER) -> None:
        self.state = EmulatorState(HubStore(root), tree_page_size, tokens, user)
        super().__init__(port, Handler)

    def add_fault(self, path: str, **kwargs: Any) -> Fault:
        return self.state.add_fault(Fault(path=path, **kwargs))

    def clear_faults(self) -> None:
        self.state.clear_faults()

    def requests(self) -> list[RequestRecord]:
        return self.state.records()

    def clear_requests(self) -> None:
        self.state.clear_requests()
