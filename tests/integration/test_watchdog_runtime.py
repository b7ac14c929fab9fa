"""The idle watchdog with real processes: an SSH session and a training process keep a real
supervisord pod alive, then all quiet the exit action stops it; a busy kernel in a real Jupyter
server keeps it alive; runpod_api stops a localpod pod after uploading pending artifacts.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from host_tools.emulators.hubemu import HubEmulator
from host_tools.emulators.localpod import Account, LocalPodServer, RecordsBackend
from tests.utils import free_port, wait_until
from tests.utils.appliance import (
    PYTHON,
    Appliance,
    base_env,
    ensure_runner,
    make_client_key,
    make_root,
    remove_root,
)
from tests.utils.hubemu import CANARY

pytestmark = pytest.mark.slow
IDLE_MIN, WARN_MIN, POLL_S = "0.05", "0.02", "0.3"  # 3 s idle, 1.2 s warning, 0.3 s polls
IDLE_S = 3 + 1.2
JUPYTER_CANARY = "canary-jupyter-wd-51e0"
RUNPOD_ACCOUNT_KEY = "rpk_ACCOUNT_wd_1f2e3d4c5b6a"


def _fake_wall(root: Path) -> tuple[Path, str]:
    """A `wall` first on PATH that records its message, so the tests never broadcast."""
    bin_dir = root / "fakebin"
    bin_dir.mkdir()
    (bin_dir / "wall").write_text(f"#!/bin/sh\ncat >> {root / 'wall.txt'}\n")
    (bin_dir / "wall").chmod(0o755)
    return root / "wall.txt", f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"


def _state(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return None


def _records(path: Path, phase: str = "autostop") -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["phase"] == phase]


def _held_active(state_path: Path, active: list[str], alive: Any) -> None:
    """The watchdog saw only `active` for longer than idle + warning time, and the pod lives."""
    first = wait_until(lambda: (s := _state(state_path)) and s["active"] == active
                       and s["updated_epoch"], 30, 0.1, what=f"active == {active}")

    def long_enough() -> bool:
        s = _state(state_path)
        assert s is not None and s["active"] == active, s
        assert alive(), "the pod was stopped while active"
        return bool(s["updated_epoch"] - first > IDLE_S + 1.5)

    wait_until(long_enough, 30, 0.2, what=f"{active} held for the idle time")


# -- a real pod: sshd + supervisord + the watchdog with the exit action ------------------------


@pytest.fixture
def pod() -> Iterator[tuple[Appliance, str]]:
    if os.geteuid() != 0:
        pytest.skip("needs root: sshd and supervisord")
    ensure_runner()
    root = make_root("wd-")
    key = make_client_key(root / "key")
    wall_txt, path = _fake_wall(root)
    pattern = f"wd-train-{uuid.uuid4().hex[:8]}"
    env = base_env(root, PUBLIC_KEY=key.with_name("key.pub").read_text().strip(),
                   PATH=path, START_JUPYTER="0", START_INFERENCE_API="0",
                   START_IDLE_WATCHDOG="1", AUTOSTOP_ACTION="exit",
                   AUTOSTOP_IDLE_MINUTES=IDLE_MIN, AUTOSTOP_WARN_MINUTES=WARN_MIN,
                   AUTOSTOP_POLL_SECONDS=POLL_S, AUTOSTOP_PROCESS_PATTERNS=pattern,
                   RUNPOD_API_KEY="canary-runpod-wd-77aa")
    # A keep-alive holds the pod up while it boots and the test logs in.
    ws = root / "workspace"
    ws.mkdir()
    (ws / ".autostop-keepalive").write_text(json.dumps({"until_epoch": time.time() + 600}))
    app = Appliance(root, env, key)
    app.start()
    try:
        app.wait_running(["sshd", "idle-watchdog"], timeout=120)
        app.trust_host_keys()
        app.wait_login()
        yield app, pattern
    finally:
        app.stop()
        if not os.environ.get("APPLIANCE_KEEP_TEST_ROOT"):
            remove_root(root)


def test_ssh_and_training_keep_the_pod_alive_then_exit_stops_supervisord(
        pod: tuple[Appliance, str]) -> None:
    app, pattern = pod
    assert app.proc is not None
    state_path = Path(app.env["WORKSPACE_DIR"]) / ".appliance" / "watchdog.json"
    alive = lambda: app.proc is not None and app.proc.poll() is None  # noqa: E731
    session = subprocess.Popen([*app.ssh_args(), "sleep 300"], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    trainer: subprocess.Popen[bytes] | None = None
    try:
        off = app.ssh("python -m appliance.watchdog keepalive off")  # as runner
        assert (off.returncode, off.stdout) == (0, "keep-alive removed\n"), off.stderr
        _held_active(state_path, ["ssh"], alive)
        status = subprocess.run([str(PYTHON), "-m", "appliance.runtime.status"], env=app.env,
                                capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stdout + status.stderr
        assert status.stdout.splitlines()[-2].startswith("idle watchdog: active (ssh); stop "
                                                         "after 0.05 idle min (exit)")

        trainer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)",
                                    pattern])
        session.terminate()
        session.wait(10)
        _held_active(state_path, ["processes"], alive)
        explain = subprocess.run([str(PYTHON), "-m", "appliance.watchdog", "--explain",
                                  "--json"], env=app.env, capture_output=True, text=True,
                                 timeout=60)
        data = json.loads(explain.stdout)
        assert data["watchdog_running"] is True and data["active"] == ["processes"]
        assert {s["name"]: s["state"] for s in data["signals"]}["ssh"] == "quiet"

        trainer.kill()
        trainer.wait(10)
        quiet_at = time.time()
        wait_until(lambda: not alive(), 60, 0.2, what="supervisord stopped by the watchdog")
        assert app.proc.returncode == 0
        took = time.time() - quiet_at
        assert took >= 3, f"stopped {took:.1f} s after the last activity: before the idle time"
    finally:
        session.kill()
        if trainer is not None:
            trainer.kill()
    timings = Path(app.env["RUNPOD_PHASE_TIMING_LOG"])
    [rec] = _records(timings)
    assert rec["source"] == "idle_watchdog" and rec["status"] == "ok"
    assert rec["reason"].startswith("idle ")
    assert rec["reason"].endswith("sync: no artifact upload pending; action exit")
    wall = (app.root / "wall.txt").read_text()
    assert "It will be stopped (exit) in" in wall
    log = (app.log_dir / "idle-watchdog.log").read_text()
    assert "supervisord is shutting down" in log
    assert "canary-runpod-wd-77aa" not in log + rec["reason"]


# -- a real Jupyter server with a busy kernel ------------------------------------------------------


async def _execute(base: str, kernel_id: str, code: str) -> None:
    from tornado.websocket import websocket_connect

    url = base.replace("http://", "ws://") + f"/api/kernels/{kernel_id}/channels"
    from tornado.httpclient import HTTPRequest

    conn = await websocket_connect(HTTPRequest(
        url, headers={"Authorization": f"token {JUPYTER_CANARY}"}))
    msg_id = uuid.uuid4().hex
    conn.write_message(json.dumps({
        "header": {"msg_id": msg_id, "username": "test", "session": uuid.uuid4().hex,
                   "msg_type": "execute_request", "version": "5.3"},
        "parent_header": {}, "metadata": {}, "channel": "shell",
        "content": {"code": code, "silent": False, "store_history": False,
                    "user_expressions": {}, "allow_stdin": False},
    }))
    while True:  # until the kernel says it is busy with our request
        raw = await conn.read_message()
        if raw is None:
            raise AssertionError("kernel channel closed")
        msg = json.loads(raw)
        if (msg.get("msg_type") == "status" and msg["content"].get("execution_state") == "busy"
                and msg.get("parent_header", {}).get("msg_id") == msg_id):
            conn.close()
            return


@pytest.fixture
def jupyter(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    (tmp_path / "nb").mkdir()
    env = {**os.environ, "HOME": str(tmp_path), "JUPYTER_TOKEN": JUPYTER_CANARY,
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"), "JUPYTER_DATA_DIR": str(tmp_path / "d")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter_server", "--no-browser", "--allow-root",
         "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
         f"--ServerApp.root_dir={tmp_path / 'nb'}"], env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            assert proc.poll() is None, "jupyter server exited"
            try:
                return httpx.get(f"{base}/api/status", timeout=2, headers={
                    "Authorization": f"token {JUPYTER_CANARY}"}).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, 90, 0.3, what="jupyter server up")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def _watchdog_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    _, path = _fake_wall(tmp_path)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AUTOSTOP_", "RUNPOD_", "JUPYTER_", "HF_", "APPLIANCE_"))}
    env.update(PATH=path, WORKSPACE_DIR=str(tmp_path / "ws"), REPO_DIR=str(tmp_path / "repo"),
               RUNPOD_PHASE_TIMING_LOG=str(tmp_path / "timings.jsonl"),
               SSH_PORT=str(free_port()), JUPYTER_PORT=str(free_port()),
               AUTOSTOP_IDLE_MINUTES=IDLE_MIN, AUTOSTOP_WARN_MINUTES=WARN_MIN,
               AUTOSTOP_POLL_SECONDS=POLL_S,
               AUTOSTOP_PROCESS_PATTERNS=f"wd-none-{uuid.uuid4().hex[:8]}")
    env.update(extra)
    return env


def _start_watchdog(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "appliance.watchdog"], env=env,
                                stdout=out, stderr=subprocess.STDOUT, cwd="/")


def test_a_busy_jupyter_kernel_keeps_the_pod_alive(jupyter: str, tmp_path: Path) -> None:
    auth = {"Authorization": f"token {JUPYTER_CANARY}"}
    kernel = httpx.post(f"{jupyter}/api/kernels", headers=auth, json={"name": "python3"},
                        timeout=30).json()
    asyncio.run(_execute(jupyter, kernel["id"], "import time\nwhile True: time.sleep(0.5)"))
    env = _watchdog_env(tmp_path, AUTOSTOP_ACTION="none", JUPYTER_TOKEN=JUPYTER_CANARY,
                        JUPYTER_PORT=jupyter.rsplit(":", 1)[1])
    log = tmp_path / "watchdog.log"
    dog = _start_watchdog(env, log)
    state_path = tmp_path / "ws" / ".appliance" / "watchdog.json"
    timings = tmp_path / "timings.jsonl"
    try:
        _held_active(state_path, ["jupyter"], lambda: dog.poll() is None)
        assert _records(timings) == []
        detail = {s["name"]: s["detail"] for s in _state(state_path)["signals"]}  # type: ignore[index]
        assert detail["jupyter"] == "1 kernel(s), 1 busy"
        httpx.post(f"{jupyter}/api/kernels/{kernel['id']}/interrupt", headers=auth, timeout=30)
        [rec] = wait_until(lambda: _records(timings), 60, 0.2, what="dry-run stop record")
        assert rec["status"] == "dry_run" and "jupyter quiet" in rec["reason"]
    finally:
        dog.terminate()
        dog.wait(15)
    assert dog.returncode == 0
    assert JUPYTER_CANARY not in log.read_text() + timings.read_text()


# -- runpod_api against localpod, pending artifacts uploaded first ------------------------------


def test_runpod_api_stops_the_localpod_pod_after_uploading_pending_artifacts(
        tmp_path: Path) -> None:
    server = LocalPodServer(Account(RecordsBackend(), {RUNPOD_ACCOUNT_KEY}, boot_polls=0))
    server.start()
    hub = HubEmulator(tmp_path / "hub", tokens=frozenset({CANARY})).start()
    try:
        pod = server.account.create_pod(
            {"name": "wd", "image": "i", "gpu_id": "NVIDIA A40", "gpu_count": 1,
             "cloud": "SECURE", "ports": ["22/tcp"]}, "account")
        server.account.get_pod(pod.id, "account")
        artifacts = tmp_path / "repo" / "artifacts"
        artifacts.mkdir(parents=True)
        (artifacts / "model_best.pt").write_bytes(b"weights" * 100)
        state_dir = tmp_path / "sync-state"
        # A watcher that died with one file pending: the gate must upload it before the stop.
        from appliance.sync.status import SyncStatus, write_status

        write_status(state_dir, SyncStatus(pid=2 ** 22 + 1, mode="inotify", pending=1,
                                           pending_files=["model_best.pt"]))
        env = _watchdog_env(
            tmp_path, AUTOSTOP_ACTION="runpod_api",
            **{k: v for k, v in pod.injected_env("", server.url).items()
               if k.startswith("RUNPOD_")},
            HF_ENDPOINT=hub.url, HF_HUB_DISABLE_XET="1", HF_TOKEN=CANARY,
            HF_REPO_ID="acme/pod-artifacts", HF_SYNC_STATE_DIR=str(state_dir),
            HF_HOME=str(tmp_path / "hf_home"), AUTOSTOP_SYNC_FLUSH_SECONDS="60")
        log = tmp_path / "watchdog.log"
        dog = _start_watchdog(env, log)
        try:
            wait_until(lambda: server.account.pods[pod.id].status == "EXITED", 90, 0.2,
                       what="pod EXITED through the API")
        finally:
            dog.terminate()
            dog.wait(15)
        assert server.account.pods[pod.id].status == "EXITED"  # stopped, not terminated
        repo = hub.state.store.get("model", "acme/pod-artifacts")
        assert "model_best.pt" in repo.head.files
        [rec] = _records(tmp_path / "timings.jsonl")
        assert rec["status"] == "ok"
        assert "sync: pending files uploaded by `python -m appliance.sync once`" in rec["reason"]
        assert rec["reason"].endswith(f"action runpod_api: pod {pod.id} stopped through the "
                                      "RunPod API (EXITED)")
        paths = [r["path"] for r in server.account.requests]
        assert f"/v2/pods/{pod.id}/action" in paths and all(
            r["method"] != "DELETE" for r in server.account.requests)
        text = log.read_text() + (tmp_path / "timings.jsonl").read_text()
        assert pod.pod_key not in text and CANARY not in text
    finally:
        hub.stop()
        server.stop()
