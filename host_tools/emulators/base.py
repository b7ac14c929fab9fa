"""What both emulators (localpod, hubemu) are built on: injected faults (matching by regex, use
counts, the fault-control route), the request log tests read, HTTP plumbing of a handler (bodies,
JSON answers, bearer tokens) and serving on 127.0.0.1 in a background thread, either a
`http.server` handler (EmulatorServer) or an ASGI app under uvicorn (AsgiServer).

Each emulator keeps its own fault and request-record types, since their JSON is part of its
interface; this module owns how they are matched, consumed, listed and served.
"""

from __future__ import annotations

import json
import re
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Generic, Self, TypeVar

import uvicorn

HOST = "127.0.0.1"
CHUNK = 1 << 20


class HttpError(Exception):
    """Ends a request with an error answer: HTTP status, message, optional headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


# -- faults --


class RegexFault:
    """Base of an emulator's fault dataclass: the fault answers the next `times` requests whose
    target matches; `hits` counts those answered. A subclass declares `times` and `hits` as
    fields (its JSON keeps its own key order) and names its regex field in `pattern_field`."""

    pattern_field: ClassVar[str]
    times: int
    hits: int
    method: str | None = None  # a subclass may declare it as a field: only this method matches

    def matches(self, target: str, method: str | None = None) -> bool:
        return (self.hits < self.times
                and (self.method is None or self.method == method)
                and re.search(getattr(self, self.pattern_field), target) is not None)

    def check(self) -> None:
        """FaultSpecError unless the fault's fields can be used as given (a valid regex, counts
        that are integers): a bad fault is refused when added, never raised by a later request."""
        try:
            re.compile(getattr(self, self.pattern_field))
        except (re.error, TypeError) as exc:
            raise FaultSpecError(f"{self.pattern_field!r} is not a regular expression: {exc}") \
                from None
        for name in ("times", "hits"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise FaultSpecError(f"{name!r} must be an integer >= 0")
        if self.method is not None and not isinstance(self.method, str):
            raise FaultSpecError("'method' must be a string")


F = TypeVar("F", bound=RegexFault)
R = TypeVar("R")


class FaultSpecError(ValueError):
    """A fault-control body that does not describe a fault."""


@dataclass(frozen=True)
class ControlRoute:
    """Where an emulator's test-control endpoints live and how they answer: POST
    {prefix}/faults adds a fault (its JSON echoed with `added_status`), DELETE {prefix}/faults
    clears them (`cleared_status`, `cleared_body`), GET {prefix}/requests lists the log."""

    prefix: str
    added_status: int
    cleared_status: int
    cleared_body: Any


class Controls(Generic[F, R]):
    """What tests steer and read on an emulator: pending faults (first match wins) and the log
    of requests served (`record_json` gives a record's JSON for GET .../requests). `lock` guards
    both, and whatever else the owner guards with it."""

    def __init__(self, fault_type: type[F], record_json: Callable[[R], Any]) -> None:
        self.fault_type, self.record_json = fault_type, record_json
        self.lock = threading.RLock()
        self.faults: list[F] = []
        self.requests: list[R] = []

    def add_fault(self, fault: F) -> F:
        with self.lock:
            self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()

    def take_fault(self, target: str, method: str | None = None) -> F | None:
        """The first fault matching the request, counted as used; None when none does."""
        with self.lock:
            for fault in self.faults:
                if fault.matches(target, method):
                    fault.hits += 1
                    return fault
        return None

    def fault_from_json(self, body: Any) -> F:
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise FaultSpecError("the body must be a JSON object of fault fields")
        try:
            fault = self.fault_type(**body)
        except TypeError as exc:
            raise FaultSpecError(str(exc)) from None
        fault.check()
        return fault

    def record(self, entry: R) -> None:
        with self.lock:
            self.requests.append(entry)

    def records(self) -> list[R]:
        with self.lock:
            return list(self.requests)

    def clear_requests(self) -> None:
        with self.lock:
            self.requests.clear()

    def control(self, route: ControlRoute, method: str, path: str,
                body: Callable[[], Any]) -> tuple[int, Any] | None:
        """Answer a request under route.prefix as (status, JSON or None); None: no such control
        endpoint. `body` reads the request's JSON body. Raises FaultSpecError for a bad fault."""
        if path == f"{route.prefix}/faults" and method == "POST":
            fault = self.add_fault(self.fault_from_json(body()))
            return route.added_status, asdict(fault)  # type: ignore[call-overload]
        if path == f"{route.prefix}/faults" and method == "DELETE":
            self.clear_faults()
            return route.cleared_status, route.cleared_body
        if path == f"{route.prefix}/requests" and method == "GET":
            with self.lock:
                return 200, [self.record_json(r) for r in self.requests]
        return None


# -- HTTP --


class EmulatorHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 plumbing both emulators' handlers share: request bodies (sized or chunked, with a
    limit), answers, bearer tokens. `sent_status` and `body_bytes` feed the request log."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms stall
    sent_status = 0
    body_bytes = 0
    body_started = False

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        pass  # the request log replaces stderr noise

    def begin_request(self) -> None:
        self.sent_status, self.body_bytes, self.body_started = 0, 0, False

    def send_head(self, status: int, length: int, headers: dict[str, str] | None = None,
                  content_type: str | None = "application/json") -> None:
        """The status line and headers of an answer of `length` bytes (no Content-Type when
        `content_type` is None); the caller writes the body."""
        self.sent_status = status
        self.send_response(status)
        if content_type is not None:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        if self.close_connection:  # e.g. a body left unread: say so, or a client reuses it
            self.send_header("Connection", "close")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()

    def send_bytes(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
                   content_type: str | None = "application/json") -> None:
        """Answer with `body` (not written for HEAD)."""
        self.send_head(status, len(body), headers, content_type)
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, status: int, data: Any, headers: dict[str, str] | None = None,
                  content_type: str = "application/json") -> None:
        """Answer with `data` as JSON; None answers with an empty body and no Content-Type."""
        if data is None:
            self.send_bytes(status, b"", headers, None)
        else:
            self.send_bytes(status, json.dumps(data).encode(), headers, content_type)

    def bearer_token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        return auth[7:].strip() if auth.lower().startswith("bearer ") else None

    def body_chunks(self, limit: int | None = None) -> Iterator[bytes]:
        """The request body as it arrives; HttpError 413 when its declared size is over
        `limit`, 400 when it ends early."""
        self.body_started = True
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return
                data = self.rfile.read(size)
                self.rfile.readline()
                self.body_bytes += len(data)
                yield data
        length = int(self.headers.get("Content-Length") or 0)
        if limit is not None and length > limit:
            raise HttpError(413, f"request body of {length} bytes is over {limit}")
        while length > 0:
            data = self.rfile.read(min(CHUNK, length))
            if not data:
                raise HttpError(400, "request body ended early")
            length -= len(data)
            self.body_bytes += len(data)
            yield data

    def read_body(self, limit: int | None) -> bytes:
        return b"".join(self.body_chunks(limit))

    def skip_body(self, limit: int) -> None:
        """A request refused before its body was read: read it, or the body's bytes would be
        taken for the next request on this keep-alive connection."""
        if self.body_started:
            if self.body_bytes < int(self.headers.get("Content-Length") or 0):
                self.close_connection = True  # refused halfway through the body
            return
        try:
            for _ in self.body_chunks(limit):
                pass
        except (HttpError, ValueError):
            self.close_connection = True


# -- serving --


class EmulatorServer(ThreadingHTTPServer):
    """An emulator's HTTP server on 127.0.0.1 (port 0: a free one). `start()` serves it in a
    daemon thread, `stop()` ends it and frees the port; `with server:` does both."""

    daemon_threads = True
    thread_name = "emulator"

    def __init__(self, port: int, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__((HOST, port), handler)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> Self:
        # A short poll interval keeps shutdown() (and so each test's teardown) fast.
        self._thread = threading.Thread(target=self.serve_forever, args=(0.05,),
                                        name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving (when started) and close the listening socket."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-answer is normal under fault tests; anything else is shown.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class AsgiServer:
    """An ASGI app served by uvicorn on 127.0.0.1 (port 0: a free one, bound at construction so
    `url` is known before `start()`). `start()` serves it in a daemon thread, `stop()` ends it
    and frees the port; `with server:` does both; `serve_forever()` serves in the calling thread
    until Ctrl-C. HTTP is h11's, which takes any method token (to answer 405, not a reset)."""

    thread_name = "emulator"

    def __init__(self, app: Any, port: int = 0) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((HOST, port))
        self._socket.listen(128)
        self._server = uvicorn.Server(uvicorn.Config(
            app, log_level="warning", access_log=False, lifespan="off", http="h11",
            timeout_graceful_shutdown=1, timeout_keep_alive=5))
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._socket.getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def serve_forever(self) -> None:
        self._server.run(sockets=[self._socket])

    def start(self) -> Self:
        self._thread = threading.Thread(target=self.serve_forever, name=self.thread_name,
                                        daemon=True)
        self._thread.start()
        while not self._server.started and self._thread.is_alive():
            self._thread.join(0.01)
        return self

    def stop(self) -> None:
        """Stop serving (when started) and close the listening socket."""
        if self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
            self._thread = None
        self._socket.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
