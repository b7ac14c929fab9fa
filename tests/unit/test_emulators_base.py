"""host_tools.emulators.base on its own: faults match by regex and are used up as configured, the
request log and control route, and background serving that frees its port when stopped.
"""

from __future__ import annotations

import json
import socket
from dataclasses import asdict, dataclass
from typing import ClassVar

import httpx
import pytest

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

pytestmark = pytest.mark.timeout(30)
CONTROL = ControlRoute("/_test", added_status=201, cleared_status=204, cleared_body=None)


@dataclass
class DemoFault(RegexFault):
    pattern_field: ClassVar[str] = "target"
    target: str
    status: int = 503
    method: str | None = None
    times: int = 1
    hits: int = 0


@dataclass
class Record:
    method: str
    path: str
    status: int


def test_a_fault_matches_by_regex_and_is_used_up_as_configured() -> None:
    controls: Controls[DemoFault, Record] = Controls(DemoFault, asdict)
    twice = controls.add_fault(DemoFault(r"^/api/.*/commit/", times=2))
    assert controls.take_fault("/api/models/a/b/tree/main") is None
    assert controls.take_fault("/api/models/a/b/commit/main") is twice
    assert controls.take_fault("/x/api/models/a/b/commit/main") is None  # anchored regex
    assert controls.take_fault("/api/datasets/a/b/commit/main?x=1") is twice
    assert twice.hits == 2 and controls.take_fault("/api/models/a/b/commit/main") is None

    # The first pending match wins; a method filter narrows a fault to one method.
    put_only = controls.add_fault(DemoFault("/upload/", method="PUT"))
    later = controls.add_fault(DemoFault("/upload/", status=429))
    assert controls.take_fault("/upload/1", "POST") is later
    assert controls.take_fault("/upload/1", "PUT") is put_only
    assert controls.take_fault("/upload/1", "PUT") is None
    controls.add_fault(DemoFault("."))
    controls.clear_faults()
    assert controls.faults == [] and controls.take_fault("/anything") is None


def test_faults_from_json_refuse_what_is_not_a_fault() -> None:
    controls: Controls[DemoFault, Record] = Controls(DemoFault, asdict)
    assert controls.fault_from_json({"target": "x", "times": 3}) == DemoFault("x", times=3)
    for bad in ({"nope": 1}, None, ["x"]):
        with pytest.raises(FaultSpecError):
            controls.fault_from_json(bad)
    # Refused when added, so that no later request can fail on them.
    for bad, message in (({"target": "(x"}, "'target' is not a regular expression: missing ), "
                          "unterminated subpattern at position 0"),
                         ({"target": "x", "times": "2"}, "'times' must be an integer >= 0"),
                         ({"target": "x", "hits": -1}, "'hits' must be an integer >= 0"),
                         ({"target": "x", "method": 1}, "'method' must be a string")):
        with pytest.raises(FaultSpecError) as info:
            controls.fault_from_json(bad)
        assert str(info.value) == message


class DemoHandler(EmulatorHandler):
    server: DemoServer

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        self.begin_request()
        controls = self.server.controls
        try:
            if self.path.startswith(CONTROL.prefix):
                answer = controls.control(CONTROL, self.command, self.path,
                                          lambda: json.loads(self.read_body(1024)))
                if answer is None:
                    raise HttpError(404, "no such control endpoint")
                self.send_json(*answer)
            elif (fault := controls.take_fault(self.path, self.command)) is not None:
                self.send_json(fault.status, {"fault": True}, {"Retry-After": "1"})
            else:
                self.send_json(200, {"echo": self.read_body(10).decode()})
        except FaultSpecError as exc:
            self.send_json(422, {"error": str(exc)})
        except HttpError as exc:
            self.skip_body(1024)
            self.send_json(exc.status, {"error": exc.message}, exc.headers)
        finally:
            controls.record(Record(self.command, self.path, self.sent_status))


class DemoServer(EmulatorServer):
    def __init__(self) -> None:
        self.controls: Controls[DemoFault, Record] = Controls(DemoFault, asdict)
        super().__init__(0, DemoHandler)


def test_request_log_and_control_route_over_http() -> None:
    with DemoServer() as server:
        assert server.url == f"http://{HOST}:{server.port}"
        with httpx.Client(base_url=server.url) as client:
            assert client.post("/a", content=b"hi").json() == {"echo": "hi"}
            too_big = client.post("/b", content=b"x" * 11)
            assert (too_big.status_code, too_big.json()) == (
                413, {"error": "request body of 11 bytes is over 10"})
            # the body was left unread, so the connection closes and the answer says so
            assert too_big.headers["connection"] == "close"
            added = client.post("/_test/faults", json={"target": "^/c$", "method": "GET"})
            assert (added.status_code, added.json()) == (
                201, {"target": "^/c$", "status": 503, "method": "GET", "times": 1, "hits": 0})
            assert client.post("/_test/faults", json={"bogus": 1}).status_code == 422
            faulted = client.get("/c")
            assert (faulted.status_code, faulted.headers["Retry-After"]) == (503, "1")
            assert client.get("/c").status_code == 200  # used up
            cleared = client.delete("/_test/faults")
            assert (cleared.status_code, cleared.content) == (204, b"")
            assert "content-type" not in cleared.headers
            assert client.get("/_test/nothing").status_code == 404
            log = client.get("/_test/requests").json()
        assert [(r["method"], r["path"], r["status"]) for r in log] == [
            ("POST", "/a", 200), ("POST", "/b", 413), ("POST", "/_test/faults", 201),
            ("POST", "/_test/faults", 422), ("GET", "/c", 503), ("GET", "/c", 200),
            ("DELETE", "/_test/faults", 204), ("GET", "/_test/nothing", 404)]
        assert server.controls.records()[-1] == Record("GET", "/_test/requests", 200)
        server.controls.clear_requests()
        assert server.controls.records() == []


def test_background_serving_stops_and_frees_its_port() -> None:
    server = DemoServer().start()
    port = server.port
    assert httpx.get(f"{server.url}/x").status_code == 200
    server.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://{HOST}:{port}/x", timeout=2)
    with socket.socket() as s:  # the port can be bound again at once
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((HOST, port))
    never_started = DemoServer()
    never_started.stop()  # closes the socket without waiting for a serve loop
    with pytest.raises(OSError):
        socket.create_connection((HOST, never_started.port), timeout=2).close()


def test_a_client_hanging_up_is_not_reported(capsys: pytest.CaptureFixture[str]) -> None:
    server = DemoServer()
    try:
        raise ConnectionResetError
    except ConnectionResetError:
        server.handle_error(None, ("127.0.0.1", 1))
    try:
        raise RuntimeError("a bug")
    except RuntimeError:
        server.handle_error(None, ("127.0.0.1", 1))
    server.stop()
    err = capsys.readouterr().err
    assert "ConnectionResetError" not in err and "RuntimeError: a bug" in err
