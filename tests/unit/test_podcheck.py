"""appliance/runtime/podcheck.py without a pod: supervisorctl parsing, the check runner, /infer
against a real loopback HTTP server, the training epoch's failures, and run_checks with its
pod-bound parts (supervisorctl, the preset, service restarts) replaced.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from appliance.runtime import podcheck
from appliance.runtime.podcheck import (
    FAIL,
    PASS,
    PROBE_MOVES,
    SKIP,
    SMOKE_TRAIN_ENV,
    Check,
    CheckFailed,
    Checks,
    check_infer,
    supervisor_states,
    train_epoch,
    wait_healthy,
)
from appliance.settings import DEFAULT_REPO_DIR
from tests.utils import free_port

pytestmark = pytest.mark.timeout(60)

LEGAL = {"best_legal": "b8c6", "topk": [{"move": "b8c6"}, {"move": "g8f6"}, {"move": "d7d6"}]}
STATUS = """\
inference                        RUNNING   pid 41, uptime 0:01:02
jupyter                          STARTING
sshd                             RUNNING   pid 12, uptime 0:01:05
idle-watchdog                    FATAL     Exited too quickly (process log may have details)
"""


# -- a loopback HTTP server answering from a table of routes --------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


Route = Callable[[Seen], tuple[int, Any]]


@dataclass
class Api:
    base: str
    port: int
    routes: dict[tuple[str, str], Route] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)


@pytest.fixture
def api() -> Iterator[Api]:
    holder: list[Api] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            seen = Seen(self.command, self.path, dict(self.headers.items()),
                        json.loads(raw) if raw else None)
            holder[0].seen.append(seen)
            route = holder[0].routes.get((self.command, self.path))
            status, body = route(seen) if route else (404, {"detail": "not found"})
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain" if isinstance(body, str)
                             else "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = int(server.server_address[1])
    holder.append(Api(f"http://127.0.0.1:{port}", port))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield holder[0]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                 "all_proxy"):
        monkeypatch.delenv(name, raising=False)


# -- supervisor_states ----------------------------------------------------------------------------


def fake_run(stdout: str, stderr: str = "", code: int = 0,
             calls: list[tuple[list[str], dict[str, Any]]] | None = None
             ) -> Callable[..., subprocess.CompletedProcess[str]]:
    def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        if calls is not None:
            calls.append((argv, kwargs))
        return subprocess.CompletedProcess(argv, code, stdout, stderr)
    return run


def test_supervisor_states_parses_each_program() -> None:
    calls: list[tuple[list[str], dict[str, Any]]] = []
    # supervisorctl status exits 3 when a program is not RUNNING; the states still count.
    states = supervisor_states(fake_run(STATUS + "\n   \nlonely\n", code=3, calls=calls))
    assert states == {"inference": "RUNNING", "jupyter": "STARTING", "sshd": "RUNNING",
                      "idle-watchdog": "FATAL"}
    assert calls == [(["supervisorctl", "status"],
                      {"capture_output": True, "text": True, "timeout": 30, "check": False})]


def test_supervisor_states_nothing_answered_names_exit_and_stderr() -> None:
    with pytest.raises(CheckFailed) as info:
        supervisor_states(fake_run("", "error: <class 'PermissionError'>, denied\n", code=2))
    assert str(info.value) == ("supervisorctl status answered nothing (exit 2): error: "
                               "<class 'PermissionError'>, denied")
    with pytest.raises(CheckFailed) as info:
        supervisor_states(fake_run("\n", code=7))
    assert str(info.value) == "supervisorctl status answered nothing (exit 7): "


def test_supervisor_states_keeps_the_last_300_characters() -> None:
    with pytest.raises(CheckFailed) as info:
        supervisor_states(fake_run("", "x" * 1000 + "END", code=1))
    assert str(info.value) == ("supervisorctl status answered nothing (exit 1): "
                               + "x" * 297 + "END")


def test_supervisor_states_socket_error_on_stdout_is_a_failure() -> None:
    with pytest.raises(CheckFailed):
        supervisor_states(fake_run("unix:///run/supervisor.sock no such file\n", code=4))


# -- Checks.run -----------------------------------------------------------------------------------


def test_checks_rows_pass_skip_fail() -> None:
    emitted: list[Check] = []
    checks = Checks(emitted.append)
    with checks.run("a") as out:
        out["detail"] = "fine"
    with checks.run("b") as out:
        out.update(status=SKIP, detail="not here")
    with checks.run("c") as out:
        out["detail"] = "half done"
        raise CheckFailed("it broke")
    with checks.run("d"):
        raise RuntimeError()
    with checks.run("e"):
        {}["missing"]  # noqa: B018 - a plain bug in a check is a FAIL row too
    with checks.run("f") as out:
        raise ValueError("bad value")
    assert [(c.check, c.status, c.detail) for c in checks.results] == [
        ("a", PASS, "fine"), ("b", SKIP, "not here"), ("c", FAIL, "it broke"),
        ("d", FAIL, "RuntimeError"), ("e", FAIL, "'missing'"), ("f", FAIL, "bad value")]
    assert emitted == checks.results
    assert all(isinstance(c.elapsed_ms, int) and c.elapsed_ms >= 0 for c in emitted)


def test_checks_emit_each_row_as_it_ends() -> None:
    order: list[str] = []
    checks = Checks(lambda c: order.append(f"emit {c.check}"))
    with checks.run("first"):
        order.append("body first")
    with checks.run("second"):
        order.append("body second")
    assert order == ["body first", "emit first", "body second", "emit second"]


def test_checks_do_not_swallow_an_interrupt() -> None:
    checks = Checks(lambda c: None)
    with pytest.raises(KeyboardInterrupt), checks.run("a"):
        raise KeyboardInterrupt
    assert checks.results == []


# -- check_infer and wait_healthy -----------------------------------------------------------------


def infer_route(body: Any, status: int = 200) -> Route:
    return lambda seen: (status, body)


def test_check_infer_legal_move_and_bearer_token(api: Api) -> None:
    api.routes[("POST", "/infer")] = infer_route(LEGAL)
    assert check_infer(api.base, "s3cret") == "best_legal b8c6 after e2e4 e7e5 g1f3"
    (seen,) = api.seen
    assert seen.body == {"moves": PROBE_MOVES, "topk": 3}
    assert seen.headers["Authorization"] == "Bearer s3cret"


def test_check_infer_without_token_sends_no_authorization(api: Api) -> None:
    api.routes[("POST", "/infer")] = infer_route(LEGAL)
    check_infer(api.base, None)
    check_infer(api.base, "")
    assert all("Authorization" not in s.headers for s in api.seen)


@pytest.mark.parametrize("body", [
    {**LEGAL, "best_legal": "e2e4"},  # white's move, black is to move
    {**LEGAL, "best_legal": "e7e5"},  # already played
    {**LEGAL, "best_legal": None},
    {"topk": LEGAL["topk"]},
    {**LEGAL, "topk": LEGAL["topk"][:2]},
    {"best_legal": "b8c6"},
])
def test_check_infer_refuses_a_bad_answer(api: Api, body: dict[str, Any]) -> None:
    api.routes[("POST", "/infer")] = infer_route(body)
    with pytest.raises(CheckFailed) as info:
        check_infer(api.base, None)
    assert str(info.value) == f"POST /infer gave no legal best move: {json.dumps(body)}"


def test_check_infer_http_error(api: Api) -> None:
    api.routes[("POST", "/infer")] = infer_route({"detail": "bad token"}, 401)
    with pytest.raises(CheckFailed) as info:
        check_infer(api.base, "wrong")
    assert str(info.value) == 'POST /infer answered 401: {"detail": "bad token"}'
    api.routes[("POST", "/infer")] = infer_route("x" * 500, 500)
    with pytest.raises(CheckFailed) as info:
        check_infer(api.base, None)
    assert str(info.value) == "POST /infer answered 500: " + "x" * 200


def test_wait_healthy_waits_for_200(api: Api) -> None:
    answers = [(503, {"status": "no_model"}), (200, {"status": "ok", "model_path": "/m.pt"})]
    api.routes[("GET", "/healthz")] = lambda seen: answers.pop(0) if len(answers) > 1 \
        else answers[0]
    assert wait_healthy(f"{api.base}/healthz", 10) == {"status": "ok", "model_path": "/m.pt"}
    assert len(api.seen) == 2


def test_wait_healthy_times_out_with_the_last_answer(api: Api) -> None:
    api.routes[("GET", "/healthz")] = lambda seen: (503, {"status": "no_model"})
    with pytest.raises(CheckFailed) as info:
        wait_healthy(f"{api.base}/healthz", 0.6)
    assert str(info.value) == (f"{api.base}/healthz not healthy after 1 s (last: 503 "
                               '{"status": "no_model"})')


def test_wait_healthy_nothing_listening(refused_port: int) -> None:
    url = f"http://127.0.0.1:{refused_port}/healthz"
    with pytest.raises(CheckFailed) as info:
        wait_healthy(url, 0.3)
    assert str(info.value) == f"{url} not healthy after 0 s (last: ConnectError)"


# -- train_epoch ----------------------------------------------------------------------------------


def test_train_epoch_preset_failure_is_a_check_failure(tmp_path: Path) -> None:
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "train.jsonl").write_text("{}\n")  # no val.jsonl
    out = tmp_path / ".smoke-1"
    with pytest.raises(CheckFailed) as info:
        train_epoch(DEFAULT_REPO_DIR, out, dataset, timeout=120)
    assert str(info.value) == (f"training preset exit 2: error: TRAIN_DATASET_DIR={dataset}: "
                               "needs train.jsonl and val.jsonl")


def fake_preset(repo: Path, body: str) -> Path:
    """A repo dir whose appliance.training.preset (first on `python -m`'s path) runs `body`."""
    pkg = repo / "appliance" / "training"
    pkg.mkdir(parents=True)
    (repo / "appliance" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "preset.py").write_text("import json, os, sys\nfrom pathlib import Path\n" + body)
    return repo


def test_train_epoch_runs_the_preset_with_the_smoke_settings(tmp_path: Path) -> None:
    repo = fake_preset(tmp_path / "repo", (
        "out = Path(os.environ['TRAIN_OUTPUT_DIR'])\n"
        "out.mkdir(parents=True)\n"
        "(out / 'model_best.pt').write_bytes(b'w')\n"
        "(out / 'seen.json').write_text(json.dumps({'argv': sys.argv[1:], 'cwd': os.getcwd(), "
        "'env': dict(os.environ)}))\n"))
    out, dataset = tmp_path / "artifacts" / ".smoke-ab12", tmp_path / "data"
    detail = train_epoch(repo, out, dataset, timeout=60)
    assert detail.startswith(f"1 epoch (at most 10 steps) on {dataset} in ")
    assert detail.endswith(" s")
    seen = json.loads((out / "seen.json").read_text())
    assert seen["argv"] == ["--no-evaluate"]
    assert seen["cwd"] == str(repo)
    assert {k: seen["env"][k] for k in SMOKE_TRAIN_ENV} == SMOKE_TRAIN_ENV
    assert seen["env"]["TRAIN_DATASET_DIR"] == str(dataset)
    assert seen["env"]["TRAIN_OUTPUT_DIR"] == str(out)
    assert seen["env"]["RUN_ID"] == ".smoke-ab12"
    assert seen["env"]["RUNPOD_PHASE_TIMING_LOG"] == str(out / "timings.jsonl")


def test_train_epoch_without_a_model_fails(tmp_path: Path) -> None:
    repo = fake_preset(tmp_path / "repo", "print('trained nothing')\n")
    out = tmp_path / ".smoke-1"
    with pytest.raises(CheckFailed) as info:
        train_epoch(repo, out, tmp_path, timeout=60)
    assert str(info.value) == f"training ended but wrote no {out / 'model_best.pt'}"


def test_train_epoch_failure_shows_the_end_of_stdout_without_stderr(tmp_path: Path) -> None:
    repo = fake_preset(tmp_path / "repo", "print('a' * 1000 + 'LAST')\nsys.exit(5)\n")
    with pytest.raises(CheckFailed) as info:
        train_epoch(repo, tmp_path / "o", tmp_path, timeout=60)
    assert str(info.value) == "training preset exit 5: " + "a" * 396 + "LAST"


def test_train_epoch_timeout_propagates(tmp_path: Path) -> None:
    repo = fake_preset(tmp_path / "repo", "import time\ntime.sleep(30)\n")
    with pytest.raises(subprocess.TimeoutExpired):
        train_epoch(repo, tmp_path / "o", tmp_path, timeout=0.5)


# -- run_checks and main --------------------------------------------------------------------------


@dataclass
class Pod:
    """What run_checks reaches outside itself in a pod, faked."""

    api: Api
    repo: Path
    states: list[dict[str, str]]
    serving: bool = False
    restarts: list[list[str]] = field(default_factory=list)
    trained: list[tuple[Path, Path, Path, float]] = field(default_factory=list)
    make_model: bool = True

    def supervisor_states(self) -> dict[str, str]:
        return self.states.pop(0) if len(self.states) > 1 else self.states[0]

    def train_epoch(self, repo_dir: Path, out_dir: Path, dataset: Path, timeout: float) -> str:
        self.trained.append((repo_dir, out_dir, dataset, timeout))
        out_dir.mkdir(parents=True)
        if self.make_model:
            (out_dir / "model_best.pt").write_bytes(b"w")
        return f"1 epoch on {dataset}"

    def run(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        assert argv == ["supervisorctl", "restart", "inference"]
        self.restarts.append(argv)
        # The first restart serves the smoke's model, the second goes back to no model.
        self.serving = len(self.restarts) == 1
        return subprocess.CompletedProcess(argv, 0, "", "")

    def healthz(self, seen: Seen) -> tuple[int, Any]:
        if self.serving:
            model = next(iter(self.repo.glob("artifacts/.smoke-*/model_best.pt")), None)
            return 200, {"status": "ok", "model_path": str(model or "/opt/m/model_best.pt")}
        return 503, {"status": "no_model"}


@pytest.fixture
def pod(api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Pod:
    fake = Pod(api, tmp_path / "repo",
               [{"inference": "RUNNING", "jupyter": "RUNNING", "sshd": "RUNNING"}])
    fake.repo.mkdir()
    for name in ("APPLIANCE_SECRETS_DIR", "JUPYTER_PASSWORD", "INFERENCE_API_TOKEN",
                 "RUNPOD_PHASE_TIMING_LOG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REPO_DIR", str(fake.repo))
    # REPO_DIR holds no checkout: the code (and its sample data) is the image's.
    monkeypatch.setenv("APPLIANCE_CODE_DIR", str(fake.repo.parent / "code"))
    monkeypatch.setenv("APPLIANCE_BIND_HOST", "127.0.0.1")
    monkeypatch.setenv("INFERENCE_PORT", str(api.port))
    monkeypatch.setenv("JUPYTER_PORT", str(api.port))
    monkeypatch.setenv("JUPYTER_TOKEN", "jtok")
    monkeypatch.setenv("INFERENCE_API_TOKEN", "itok")
    monkeypatch.setattr(podcheck, "supervisor_states", fake.supervisor_states)
    monkeypatch.setattr(podcheck, "train_epoch", fake.train_epoch)
    monkeypatch.setattr(podcheck, "subprocess", SimpleNamespace(run=fake.run))
    api.routes[("GET", "/healthz")] = fake.healthz
    api.routes[("GET", "/api/status")] = lambda seen: (
        (200, {"kernels": 2}) if seen.headers.get("Authorization") == "token jtok"
        else (403, {"message": "Forbidden"}))
    api.routes[("POST", "/infer")] = lambda seen: (
        (200, LEGAL) if seen.headers.get("Authorization") == "Bearer itok"
        else (401, {"detail": "bad token"}))
    return fake


def rows(results: list[Check]) -> list[tuple[str, str, str]]:
    return [(c.check, c.status, c.detail) for c in results]


def test_run_checks_without_a_model_serves_the_smoke_model_and_restores(pod: Pod) -> None:
    emitted: list[Check] = []
    results = podcheck.run_checks(emitted.append, restart_timeout=10)
    ((repo_dir, smoke_dir, dataset, timeout),) = pod.trained
    code = pod.repo.parent / "code"
    assert (repo_dir, dataset, timeout) == (code, code / "data" / "sample", 600)
    assert smoke_dir.parent == pod.repo / "artifacts" and smoke_dir.name.startswith(".smoke-")
    assert rows(results) == [
        ("supervisorctl", PASS, "RUNNING: inference jupyter sshd"),
        ("healthz", PASS, "503 no_model (the smoke trains one for /infer)"),
        ("jupyter_api", PASS, "200 with the token, 403 without; kernels 2"),
        ("train_epoch", PASS, f"1 epoch on {pod.repo.parent / 'code' / 'data' / 'sample'}"),
        ("infer", PASS, "best_legal b8c6 after e2e4 e7e5 g1f3 (smoke model model_best.pt)"),
        ("cleanup", PASS, f"removed {smoke_dir}; inference restarted without the smoke model")]
    assert emitted == results
    assert len(pod.restarts) == 2 and not pod.serving
    assert not smoke_dir.exists()


def test_run_checks_with_a_served_model_does_not_restart(pod: Pod, tmp_path: Path) -> None:
    pod.serving = True
    pod.restarts.append(["already"])  # so that a restart would stop serving
    dataset = tmp_path / "mine"
    results = podcheck.run_checks(lambda c: None, dataset=dataset, train_timeout=5)
    assert pod.trained[0][2:] == (dataset, 5)
    assert rows(results)[1] == ("healthz", PASS, "200 ok, serving /opt/m/model_best.pt")
    assert rows(results)[4] == ("infer", PASS, "best_legal b8c6 after e2e4 e7e5 g1f3")
    smoke_dir = pod.trained[0][1]
    assert rows(results)[5] == ("cleanup", PASS, f"removed {smoke_dir}")
    assert pod.restarts == [["already"]]


def test_run_checks_waits_for_starting_programs(pod: Pod) -> None:
    pod.states = [{"sshd": "STARTING"}, {"sshd": "RUNNING"}]
    results = podcheck.run_checks(lambda c: None)
    assert rows(results) == [
        ("supervisorctl", PASS, "RUNNING: sshd"),
        ("healthz", SKIP, "no inference program in this pod"),
        ("jupyter_api", SKIP, "no jupyter program in this pod"),
        ("train_epoch", PASS, f"1 epoch on {pod.repo.parent / 'code' / 'data' / 'sample'}"),
        ("infer", SKIP, "no inference program in this pod"),
        ("cleanup", PASS, f"removed {pod.trained[0][1]}")]
    assert pod.api.seen == []


def test_run_checks_failures_are_rows(pod: Pod) -> None:
    pod.states = [{"inference": "RUNNING", "jupyter": "RUNNING", "sshd": "RUNNING",
                   "hf-sync": "FATAL", "idle-watchdog": "BACKOFF"}]
    pod.api.routes[("GET", "/api/status")] = lambda seen: (200, {"kernels": 0})  # no auth
    pod.make_model = False
    results = podcheck.run_checks(lambda c: None, settle_timeout=0)
    assert rows(results)[0] == ("supervisorctl", FAIL,
                                "not RUNNING: hf-sync FATAL, idle-watchdog BACKOFF")
    assert rows(results)[2] == ("jupyter_api", FAIL, "GET /api/status: 200 with the token, 200 "
                                                     "without (want 200 and 403)")
    assert rows(results)[4] == ("infer", FAIL,
                                "no model is served and the training epoch made none")
    assert pod.restarts == []


def test_run_checks_healthz_error(pod: Pod) -> None:
    pod.api.routes[("GET", "/healthz")] = lambda seen: (500, {"status": "broken"})
    results = podcheck.run_checks(lambda c: None, restart_timeout=0.6)
    assert rows(results)[1] == ("healthz", FAIL,
                                "GET /healthz answered 500: {'status': 'broken'}")
    # A broken service is not restarted for /infer (that would only wait out the timeout).
    assert rows(results)[4] == ("infer", FAIL, "not tried: /healthz failed")
    assert pod.restarts == []


def test_main_prints_one_json_line_per_check(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    got: list[tuple[Path | None, float]] = []

    def run_checks(emit: Callable[[Check], None], dataset: Path | None,
                   train_timeout: float) -> list[Check]:
        got.append((dataset, train_timeout))
        results = [Check("a", PASS, "ok", 3), Check("b", SKIP, "none", 0)]
        for r in results:
            emit(r)
        return results

    monkeypatch.setattr(podcheck, "run_checks", run_checks)
    assert podcheck.main(["--dataset", "/d", "--train-timeout", "30"]) == 0
    assert got == [(Path("/d"), 30.0)]
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in lines] == [
        {"check": "a", "status": "PASS", "detail": "ok", "elapsed_ms": 3},
        {"check": "b", "status": "SKIP", "detail": "none", "elapsed_ms": 0}]


def test_main_exit_1_on_a_fail_row(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(podcheck, "run_checks", lambda emit, dataset, train_timeout: [
        Check("a", PASS, "ok"), Check("b", FAIL, "broke")])
    assert podcheck.main([]) == 1


def test_main_bad_setting_is_exit_2(monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("APPLIANCE_SECRETS_DIR", raising=False)
    monkeypatch.setenv("INFERENCE_PORT", "eighty")
    assert podcheck.main([]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: bad environment: INFERENCE_PORT='eighty': ")



def test_run_checks_wait_for_a_port_that_is_not_bound_yet(pod: Pod, refused_port: int,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """RUNNING comes after supervisord's startsecs; a loaded pod can get there before Jupyter
    binds its port: the check waits for the port (bounded), then fails naming it."""
    monkeypatch.setenv("JUPYTER_PORT", str(refused_port))
    started = time.monotonic()
    results = podcheck.run_checks(lambda c: None, settle_timeout=0.6)
    assert rows(results)[2] == ("jupyter_api", FAIL, "nothing accepts connections on "
                                f"127.0.0.1:{refused_port} after 0.6 s (Connection refused)")
    assert 0.6 <= time.monotonic() - started < 30
    assert rows(results)[1][:2] == ("healthz", PASS)


def test_wait_listening_returns_once_the_port_is_bound() -> None:
    port = free_port()

    def bind_later() -> None:
        time.sleep(0.5)
        with socket.socket() as srv:
            srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            srv.bind(("127.0.0.1", port))
            srv.listen()
            accepted.wait(5)

    accepted = threading.Event()
    thread = threading.Thread(target=bind_later)
    thread.start()
    try:
        started = time.monotonic()
        podcheck.wait_listening(f"http://127.0.0.1:{port}/api/status", 10)
        assert 0.4 <= time.monotonic() - started < 10
    finally:
        accepted.set()
        thread.join()
