"""The inference API as supervisord runs it: a real uvicorn on a loopback port, a model trained
on data/sample in this test run, schemathesis fuzzing, concurrency, secret hygiene, a body that
stalls after its headers, HEAD /healthz and the docs a token closes."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.utils import free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
CANARY = "canary-inference-token-5c2e"
AUTH = {"Authorization": f"Bearer {CANARY}"}
BODY_TIMEOUT = 1.5


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("train")
    r = subprocess.run(
        [sys.executable, "-m", "appliance.training.train", "--train",
         str(ROOT / "data/sample/train.jsonl"), "--val", str(ROOT / "data/sample/val.jsonl"),
         "--output-dir", str(out), "--epochs", "1", "--arch", "recurrent", "--embed-dim", "16",
         "--hidden-dim", "32", "--batch-size", "64", "--lr", "3e-3"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return out / "model_best.pt"


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[str]
    log: Path
    heartbeat: Path


def start_server(tmp: Path, *args: str, **env: str) -> Server:
    port = free_port()
    log = tmp / "server.log"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("INFERENCE_")}
    heartbeat = tmp / "hb" / "inference.heartbeat"
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance.inference", "--host", "127.0.0.1", "--port",
         str(port), "--device", "cpu", *args],
        cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True,
        env={**clean, "INFERENCE_HEARTBEAT_FILE": str(heartbeat), **env})
    server = Server(f"http://127.0.0.1:{port}", proc, log, heartbeat)

    def up() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            httpx.get(server.url + "/healthz", timeout=1)
            return True
        except httpx.TransportError:
            return False

    wait_until(up, timeout=60)
    return server


def stop(server: Server) -> None:
    server.proc.send_signal(signal.SIGTERM)
    try:
        server.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()


@pytest.fixture(scope="module")
def server(trained_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # The docs are opened (a token closes them by default): the fuzz test reads the schema.
    srv = start_server(tmp_path_factory.mktemp("srv"), "--model", str(trained_model),
                       INFERENCE_API_TOKEN=CANARY, INFERENCE_OPEN_DOCS="1",
                       INFERENCE_BODY_TIMEOUT_SECONDS=str(BODY_TIMEOUT))
    wait_until(lambda: httpx.get(srv.url + "/healthz").status_code == 200, timeout=60)
    yield srv
    stop(srv)


def test_serves_the_trained_model(server: Server, trained_model: Path):
    health = httpx.get(server.url + "/healthz").json()
    sha = hashlib.sha256(trained_model.read_bytes()).hexdigest()
    assert health["status"] == "ok" and health["model_sha256"] == sha
    assert health["device"] == "cpu" and health["model_path"] == str(trained_model)
    r = httpx.post(server.url + "/infer", json={"moves": ["e2e4", "e7e5"]}, headers=AUTH)
    assert r.status_code == 200 and r.json()["side_to_move"] == "white"
    assert httpx.post(server.url + "/infer", json={}).status_code == 401
    wait_until(server.heartbeat.exists, timeout=5)
    log = server.log.read_text()
    assert f"model ready: path={trained_model} sha256={sha} parameters=" in log
    assert "device=cpu torch=" in log and "features=history,phase,side_to_move,board" in log


def test_secret_never_in_logs_arguments_or_responses(server: Server):
    cmdline = Path(f"/proc/{server.proc.pid}/cmdline").read_bytes()
    assert CANARY.encode() not in cmdline
    bodies = [httpx.get(server.url + p, headers=AUTH).text
              for p in ("/healthz", "/metrics", "/openapi.json")]
    bodies.append(httpx.post(server.url + "/infer", json={},
                             headers={"Authorization": "Bearer wrong"}).text)
    assert not any(CANARY in b for b in bodies)
    assert CANARY not in server.log.read_text()


def _raw_exchange(server: Server, request: bytes) -> tuple[float, bytes]:
    """Send `request` on a fresh connection and read until the server closes it (10 s at most):
    the seconds that took, and every byte received."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        t0 = time.monotonic()
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return time.monotonic() - t0, received


@pytest.mark.parametrize("sent", [b"", b'{"moves": ['])
def test_a_body_that_stalls_after_the_headers_is_answered_408(server: Server, sent: bytes):
    head = (f"POST /infer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {CANARY}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n").encode()
    elapsed, answer = _raw_exchange(server, head + sent)
    status, _, rest = answer.partition(b"\r\n")
    headers, _, body = rest.partition(b"\r\n\r\n")
    assert status == b"HTTP/1.1 408 Request Timeout"
    assert b"connection: close" in headers.lower().split(b"\r\n")
    assert json.loads(body) == {"error": f"request body not received within {BODY_TIMEOUT:g} s"}
    # Answered, and the connection closed; uvloop's clock counts whole milliseconds, so its timer
    # may fire up to a millisecond before the client's clock says the timeout has passed.
    assert BODY_TIMEOUT - 0.002 <= elapsed < BODY_TIMEOUT + 5
    assert httpx.get(server.url + "/healthz").status_code == 200


def test_head_healthz_and_open_docs(server: Server):
    r = httpx.head(server.url + "/healthz")
    assert (r.status_code, r.content) == (200, b"")
    assert httpx.get(server.url + "/docs").status_code == 200  # INFERENCE_OPEN_DOCS=1
    assert "/infer" in httpx.get(server.url + "/openapi.json").json()["paths"]


def test_concurrent_requests_share_forward_passes(server: Server):
    def one(i: int) -> int:
        moves = ["e2e4", "e7e5", "g1f3", "b8c6"][: i % 5]
        return httpx.post(server.url + "/infer", json={"moves": moves}, headers=AUTH,
                          timeout=30).status_code

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(one, range(160)))
    assert codes == [200] * 160
    metrics = httpx.get(server.url + "/metrics", headers=AUTH).text
    count = float(metrics.split("inference_batch_size_count ")[1].split()[0])
    singles = float(metrics.split('inference_batch_size_bucket{le="1.0"} ')[1].split()[0])
    assert count < 160 + 10  # fewer forward passes than requests...
    assert singles < count  # ...because some passes held several positions


def test_fuzzed_requests_never_get_a_server_error(server: Server):
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    failures: list[str] = []
    calls: dict[str, int] = {}
    operations = [op.ok() for op in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/healthz", "/infer", "/infer/batch", "/metrics"}
    def fuzz(op: schemathesis.APIOperation) -> None:
        @settings(max_examples=40, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy())
        def check(case: schemathesis.Case) -> None:
            response = case.call(base_url=server.url, headers=AUTH, timeout=30)
            calls[op.path] = calls.get(op.path, 0) + 1
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.path} {case.body!r} -> "
                                f"{response.status_code}")

        check()

    for op in operations:
        fuzz(op)
    assert failures == []
    assert calls["/infer"] >= 20 and calls["/infer/batch"] >= 20, calls
    assert server.proc.poll() is None


def test_no_model_keeps_serving_503_then_picks_one_up(trained_model: Path, tmp_path: Path):
    repo = tmp_path / "repo"
    repo.mkdir()
    srv = start_server(tmp_path, REPO_DIR=str(repo), INFERENCE_MODEL_RESCAN_SECONDS="0.2",
                       INFERENCE_API_TOKEN=CANARY)
    try:
        head = httpx.head(srv.url + "/healthz")
        assert (head.status_code, head.content) == (503, b"")
        for path in ("/docs", "/redoc", "/openapi.json"):  # closed by the token
            closed = httpx.get(srv.url + path, headers=AUTH)
            assert (closed.status_code, closed.json()) == (404, {"error": f"not found: {path}"})
        r = httpx.get(srv.url + "/healthz")
        assert r.status_code == 503
        assert r.json() == {"status": "no_model", "reason": (
            f"no model found: no *.pt under {repo / 'artifacts'}; train one (make train) or set "
            "INFERENCE_MODEL_PATH")}
        assert httpx.post(srv.url + "/infer", json={}, headers=AUTH).status_code == 503
        target = repo / "artifacts" / "train" / "run" / "model_best.pt"
        target.parent.mkdir(parents=True)
        shutil.copy(trained_model, target)
        wait_until(lambda: httpx.get(srv.url + "/healthz").status_code == 200, timeout=30)
        assert httpx.get(srv.url + "/healthz").json()["model_path"] == str(target)
        assert srv.proc.poll() is None
        assert srv.log.read_text().count("inference not ready: no model found") == 1
    finally:
        stop(srv)
