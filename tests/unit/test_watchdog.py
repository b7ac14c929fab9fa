"""Idle watchdog units on a fake clock with fake signals: each signal alone and combined, the
warning window, the sync flush gate, each action and the RunPod API failure paths (localpod). The
hard cap's units: test_watchdog_hardcap.py; the fakes: watchdog_fakes.py.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import xmlrpc.client
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance import settings
from appliance.atomic import read_json
from appliance.runpod import RunpodClient
from appliance.sync.status import SyncStatus, write_status
from appliance.watchdog import __main__ as cli
from appliance.watchdog.actions import (
    DryRun,
    ExitSupervisord,
    Outcome,
    RunpodStop,
    SyncGate,
)
from appliance.watchdog.decision import Tracker, render_table, summary_line
from appliance.watchdog.signals import (
    Conn,
    GpuSample,
    GpuSignal,
    HeartbeatSignal,
    JupyterSignal,
    KeepaliveSignal,
    NvmlUnavailable,
    ProcessSignal,
    Reading,
    SshSignal,
    SyncSignal,
    nvml_samples,
    read_safely,
    write_keepalive,
)
from host_tools.emulators.localpod import Fault, LocalPodServer
from tests.unit.watchdog_fakes import T0, Clock, FakeAction, FakeSignal, make_dog, records
from tests.utils.localpod import CANARY

pytestmark = pytest.mark.timeout(60)


# -- signals alone --------------------------------------------------------------------------------


def test_gpu_without_nvml_is_unavailable_and_asked_once() -> None:
    calls = []

    def sampler() -> list[GpuSample]:
        calls.append(1)
        raise NvmlUnavailable("NVML cannot start: NVML Shared Library Not Found")

    sig = GpuSignal(5, sampler)
    for _ in range(3):
        r = sig.read(T0)
        assert (r.state, r.detail) == ("unavailable",
                                       "NVML cannot start: NVML Shared Library Not Found")
    assert calls == [1]


def test_real_nvml_here_reports_not_available_cleanly() -> None:
    # No GPU or driver on this machine: the real adapter must raise NvmlUnavailable, nothing else.
    try:
        samples = nvml_samples()
    except NvmlUnavailable as exc:
        assert str(exc).startswith(("NVML cannot start", "nvidia-ml-py is not installed"))
    else:  # a machine with a GPU: real samples
        assert all(0 <= s.util_percent <= 100 for s in samples)


def test_gpu_busy_above_threshold_only() -> None:
    samples = [GpuSample(0, 5, 1000, 80000), GpuSample(1, 0, 0, 80000)]
    sig = GpuSignal(5, lambda: samples)
    r = sig.read(T0)
    assert r.state == "quiet"
    assert r.detail == "gpu0 5% 1000/80000 MiB, gpu1 0% 0/80000 MiB (busy above 5%)"
    samples[1] = GpuSample(1, 6, 0, 80000)
    assert sig.read(T0).state == "active"
    assert GpuSignal(5, lambda: []).read(T0).detail == "NVML reports no GPU"


def test_ssh_counts_established_connections_to_its_port_only() -> None:
    conns = [Conn(22, "", "LISTEN"), Conn(2222, "10.0.0.1:5000", "ESTABLISHED"),
             Conn(22, "10.0.0.2:6000", "TIME_WAIT")]
    sig = SshSignal(22, lambda: conns)
    assert (sig.read(T0).state, sig.read(T0).detail) == ("quiet", "no connection to port 22")
    conns.append(Conn(22, "10.0.0.3:7000", "ESTABLISHED"))
    r = sig.read(T0)
    assert (r.state, r.detail) == ("active", "1 established connection(s) to port 22")


def _jupyter_get(kernels: list[dict[str, Any]], status: int = 200,
                 seen: list[dict[str, Any]] | None = None) -> Callable[..., httpx.Response]:
    def get(url: str, headers: dict[str, str], params: dict[str, str],
            timeout: float) -> httpx.Response:
        if seen is not None:
            seen.append({"url": url, "headers": headers, "params": params})
        body: Any = kernels if url.endswith("/api/kernels") else {
            "last_activity": "2027-01-15T08:00:00.000000Z", "kernels": len(kernels)}
        return httpx.Response(status, json=body)

    return get


def test_jupyter_busy_kernel_is_active_and_token_stays_in_the_header() -> None:
    seen: list[dict[str, Any]] = []
    kernels = [{"id": "a", "execution_state": "idle",
                "last_activity": "2027-01-15T08:00:05.000000Z"},
               {"id": "b", "execution_state": "busy", "last_activity": None}]
    sig = JupyterSignal("http://127.0.0.1:8888", lambda: "canary-jupyter-tok",
                        _jupyter_get(kernels, seen=seen))
    now = 1_800_000_000.0 + 10 ** 6
    r = sig.read(now)
    assert (r.state, r.detail) == ("active", "2 kernel(s), 1 busy")
    assert [s["url"] for s in seen] == ["http://127.0.0.1:8888/api/status",
                                        "http://127.0.0.1:8888/api/kernels"]
    assert all(s["headers"] == {"Authorization": "token canary-jupyter-tok"} for s in seen)
    assert all(s["params"] == {"no_track_activity": "1"} for s in seen)
    kernels[1]["execution_state"] = "idle"
    r = sig.read(now)
    assert (r.state, r.detail) == ("quiet", "2 kernel(s), 0 busy")


def test_jupyter_last_activity_is_parsed_exactly() -> None:
    # The newest of the server's (08:00:00) and the kernels' last_activity, as epoch seconds.
    kernels = [{"execution_state": "idle", "last_activity": "2027-01-15T08:00:05Z"}]
    r = JupyterSignal("http://h:1", lambda: None, _jupyter_get(kernels)).read(4_000_000_000)
    assert r.last_activity == datetime(2027, 1, 15, 8, 0, 5, tzinfo=UTC).timestamp()
    # Never in the future, whatever the server's clock says.
    assert JupyterSignal("http://h:1", lambda: None, _jupyter_get(kernels)).read(T0) \
        .last_activity == T0


def test_jupyter_refused_token_and_no_server() -> None:
    sig = JupyterSignal("http://127.0.0.1:8888", lambda: "canary-jupyter-tok",
                        _jupyter_get([], status=403))
    r = sig.read(T0)
    assert (r.state, r.detail) == ("error",
                                   "Jupyter refused the token (HTTP 403 on /api/status)")

    def refused(url: str, **kw: Any) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    r = JupyterSignal("http://127.0.0.1:8888", lambda: "canary-jupyter-tok", refused).read(T0)
    assert (r.state, r.detail) == ("unavailable", "no Jupyter server at http://127.0.0.1:8888")
    assert "canary" not in r.detail


def test_heartbeat_file(tmp_path: Path) -> None:
    assert HeartbeatSignal(None, 5).read(T0).detail == "INFERENCE_HEARTBEAT_FILE is not set"
    hb = tmp_path / "hb"
    sig = HeartbeatSignal(hb, 5)
    assert sig.read(T0).state == "quiet"
    hb.touch()
    os.utime(hb, (T0 - 2, T0 - 2))
    r = sig.read(T0)
    assert (r.state, r.last_activity) == ("active", T0 - 2)
    os.utime(hb, (T0 - 60, T0 - 60))
    assert (sig.read(T0).state, sig.read(T0).last_activity) == ("quiet", T0 - 60)


def test_keepalive_with_expiry_and_touched_by_hand(tmp_path: Path) -> None:
    path = tmp_path / ".autostop-keepalive"
    sig = KeepaliveSignal(path, 5)
    assert sig.read(T0).state == "quiet"
    write_keepalive(path, T0 + 7200, T0)
    r = sig.read(T0)
    assert (r.state, r.last_activity) == ("active", T0)
    assert r.detail.endswith("(2h00m left)")
    r = sig.read(T0 + 7201)
    assert (r.state, r.last_activity) == ("quiet", T0 + 7200)
    path.write_text("")  # `touch` by hand
    os.utime(path, (T0 - 1, T0 - 1))
    assert (sig.read(T0).state, sig.read(T0).last_activity) == ("active", T0 - 1)
    # A FIFO put there by a user neither blocks the (root) watchdog nor counts as an expiry.
    path.unlink()
    os.mkfifo(path)
    os.utime(path, (T0 - 1, T0 - 1))
    assert (sig.read(T0).state, sig.read(T0).last_activity) == ("active", T0 - 1)


def test_processes_match_patterns_but_not_the_watchdog_itself() -> None:
    procs = [(1, "tini -- python -m appliance.runtime.bootstrap"),
             (50, "python -m appliance.watchdog --explain appliance.training")]
    sig = ProcessSignal(["appliance.training", "torchrun"], lambda: procs, own_pid=50)
    r = sig.read(T0)
    assert (r.state, r.detail) == ("quiet", "no process matches 'appliance.training', 'torchrun'")
    procs.append((77, "python -m appliance.training.preset --token canary-secret"))
    r = sig.read(T0)
    assert (r.state, r.detail) == ("active", "pid 77 (appliance.training)")
    assert ProcessSignal([""], lambda: procs).read(T0).detail == \
        "AUTOSTOP_PROCESS_PATTERNS is empty"


def test_sync_pending_with_a_live_watcher_is_active_a_dead_ones_is_not(tmp_path: Path) -> None:
    alive = [True]
    sig = SyncSignal(tmp_path, alive=lambda s: alive[0])
    assert sig.read(T0).detail == "no sync watcher status"
    write_status(tmp_path, SyncStatus(pid=4242, mode="inotify", pending=2,
                                      last_error="HTTP 503", last_upload_epoch=T0 - 30))
    r = sig.read(T0)
    assert (r.state, r.detail, r.last_activity) == (
        "active", "2 file(s) pending upload; last error: HTTP 503", T0 - 30)
    alive[0] = False
    r = sig.read(T0)
    assert (r.state, r.detail) == (
        "quiet", "watcher pid 4242 not running; 2 file(s) pending (uploaded before a stop)")


def test_a_signal_that_raises_is_an_error_reading() -> None:
    class Broken:
        name = "ssh"

        def read(self, now: float) -> Reading:
            raise PermissionError("no /proc access")

    assert read_safely(Broken(), T0) == Reading("ssh", "error",
                                                "PermissionError: no /proc access")


# -- the decision ---------------------------------------------------------------------------------


def test_idle_only_when_every_signal_is_quiet_for_the_idle_time() -> None:
    tr = Tracker(idle_s=60, warn_s=0, started=T0)
    ssh, gpu = Reading("ssh", "quiet", ""), Reading("gpu", "unavailable", "")
    d = tr.step([ssh, gpu], T0 + 59)
    assert (d.act, d.left_s) == (False, 1)
    d = tr.step([ssh, gpu], T0 + 60)
    assert d.act
    # Combined: one active signal among quiet ones resets idleness.
    tr = Tracker(idle_s=60, warn_s=0, started=T0)
    d = tr.step([ssh, Reading("processes", "active", "")], T0 + 59)
    assert (d.active, d.act) == (("processes",), False)
    d = tr.step([ssh, Reading("processes", "quiet", "")], T0 + 118)
    assert (d.act, d.idle_since, d.left_s) == (False, T0 + 59, 1)
    assert tr.step([ssh], T0 + 119).act


def test_a_file_signals_own_last_activity_counts() -> None:
    tr = Tracker(idle_s=60, warn_s=0, started=T0)
    d = tr.step([Reading("heartbeat", "quiet", "", T0 + 30)], T0 + 80)
    assert (d.idle_since, d.act) == (T0 + 30, False)
    assert tr.step([Reading("heartbeat", "quiet", "", T0 + 30)], T0 + 90).act


def test_warning_window_then_stop_and_activity_cancels() -> None:
    tr = Tracker(idle_s=60, warn_s=10, started=T0)
    q = [Reading("ssh", "quiet", "")]
    assert not tr.step(q, T0 + 49).warn
    d = tr.step(q, T0 + 50)
    assert (d.warn, d.act, d.deadline) == (True, False, T0 + 60)
    d = tr.step([Reading("ssh", "active", "")], T0 + 55)
    assert (d.cancel, d.act, d.warn) == (True, False, False)
    assert tr.warned_at is None
    d = tr.step(q, T0 + 105)
    assert (d.warn, d.deadline) == (True, T0 + 115)
    assert not tr.step(q, T0 + 114).act
    assert tr.step(q, T0 + 115).act


def test_a_late_warning_still_gives_the_full_window() -> None:
    tr = Tracker(idle_s=60, warn_s=10, started=T0)
    d = tr.step([], T0 + 300)  # first look long after the deadline (a long poll)
    assert (d.warn, d.act, d.deadline) == (True, False, T0 + 310)
    assert not tr.step([], T0 + 309).act
    assert tr.step([], T0 + 310).act


# -- the loop with a fake clock ----------------------------------------------------------------


def test_loop_warns_then_stops_and_records_the_reason(tmp_path: Path) -> None:
    clock = Clock()
    ssh = FakeSignal("ssh")
    action = FakeAction()
    dog, notes = make_dog(tmp_path, [ssh, FakeSignal("gpu")], action, clock)
    steps = []
    while action.calls == 0 and clock.t < T0 + 200:
        steps.append(dog.step())
        clock.sleep(5)
    assert clock.t - T0 == 65  # acted at the step at T0+60
    assert len(notes) == 1 and "It will be stopped (runpod_api) in 10s" in notes[0]
    assert steps[-1].outcome == Outcome(True, "stopped")
    requested, rec = records(tmp_path)[-2:]
    assert (requested["phase"], requested["reason"]) == ("autostop_requested", (
        "idle 1m00s (AUTOSTOP_IDLE_MINUTES=1): ssh quiet; gpu quiet; "
        "sync: no artifact upload pending; action runpod_api"))
    assert (rec["source"], rec["phase"], rec["status"]) == ("idle_watchdog", "autostop", "ok")
    assert rec["reason"] == ("idle 1m00s (AUTOSTOP_IDLE_MINUTES=1): ssh quiet; gpu quiet; "
                             "sync: no artifact upload pending; action runpod_api: stopped")
    state = read_json(tmp_path / "state" / "watchdog.json")
    assert state is not None and state["note"] == "last stop: stopped"
    # After a stop idleness counts afresh: no second stop right away.
    dog.step()
    assert action.calls == 1


def test_activity_in_the_warning_window_cancels_the_stop(tmp_path: Path) -> None:
    clock = Clock()
    ssh = FakeSignal("ssh")
    action = FakeAction()
    dog, notes = make_dog(tmp_path, [ssh], action, clock)
    clock.t = T0 + 50
    assert dog.step().decision.warn
    ssh.is_active = True
    clock.t = T0 + 55
    assert dog.step().decision.cancel
    ssh.is_active = False
    clock.t = T0 + 60
    dog.step()
    assert action.calls == 0
    assert notes[1] == "chess-bot pod: automatic stop cancelled, activity seen (ssh)."
    assert records(tmp_path)[-1]["phase"] == "autostop_cancelled"


def test_unfinished_sync_blocks_the_stop_and_says_why(tmp_path: Path) -> None:
    clock = Clock()
    write_status(tmp_path / "sync", SyncStatus(pid=1, mode="inotify", pending=3,
                                               last_error="HTTP 503 from the Hub"))
    gate = SyncGate(tmp_path / "sync", 30, alive=lambda s: True, clock=clock,
                    sleep=clock.sleep)
    action = FakeAction()
    dog, _ = make_dog(tmp_path, [FakeSignal("ssh")], action, clock, warn_s=0, gate=gate)
    clock.t = T0 + 60
    step = dog.step()
    assert action.calls == 0
    why = "3 artifact file(s) still pending upload after 30 s (last error: HTTP 503 from the Hub)"
    assert step.outcome == Outcome(False, why)
    rec = records(tmp_path)[-1]
    assert (rec["phase"], rec["status"]) == ("autostop", "refused")
    assert rec["reason"].endswith(f"sync flush unfinished: {why}")
    state = read_json(tmp_path / "state" / "watchdog.json")
    assert state is not None and state["note"] == f"not stopping: {why}"
    # Held for the flush limit, then tried again: the uploads finished meanwhile.
    write_status(tmp_path / "sync", SyncStatus(pid=1, mode="inotify", pending=0))
    clock.t += 10
    dog.step()
    assert action.calls == 0
    clock.t += 30
    dog.step()
    assert action.calls == 1


def test_a_failed_stop_is_retried_with_backoff_never_terminated(tmp_path: Path) -> None:
    clock = Clock()
    action = FakeAction(results=[Outcome(False, "stop pod p1 failed: HTTP 500"),
                                 Outcome(False, "stop pod p1 failed: HTTP 500"),
                                 Outcome(True, "pod p1 stopped")])
    dog, _ = make_dog(tmp_path, [FakeSignal("ssh")], action, clock, warn_s=0, poll_s=5)
    attempts = []
    while action.calls < 3 and clock.t < T0 + 300:
        before = action.calls
        dog.step()
        if action.calls > before:
            attempts.append(clock.t - T0)
        clock.sleep(1)
    assert attempts == [60, 65, 75]  # backoff 5 s, then 10 s
    assert [(r["phase"], r["status"]) for r in records(tmp_path)] == [
        ("autostop_requested", "ok"), ("autostop", "error"), ("autostop_requested", "ok"),
        ("autostop", "error"), ("autostop_requested", "ok"), ("autostop", "ok")]


def test_dry_run_records_and_stops_nothing(tmp_path: Path) -> None:
    clock = Clock()
    dog, _ = make_dog(tmp_path, [FakeSignal("ssh")], DryRun(), clock, warn_s=0)
    clock.t = T0 + 60
    step = dog.step()
    assert step.outcome == Outcome(True, "dry run (AUTOSTOP_ACTION=none): nothing stopped")
    assert records(tmp_path)[-1]["status"] == "dry_run"


def test_exit_action_records_before_it_acts(tmp_path: Path) -> None:
    clock = Clock()
    seen_records: list[int] = []

    class Exit(FakeAction):
        def stop(self) -> Outcome:
            seen_records.append(len(records(tmp_path)))
            return super().stop()

    dog, _ = make_dog(tmp_path, [FakeSignal("ssh")], Exit("exit"), clock, warn_s=0)
    clock.t = T0 + 60
    dog.step()
    assert seen_records == [1]
    assert records(tmp_path)[0]["reason"].endswith("action exit")


def test_explain_table_and_status_line(tmp_path: Path) -> None:
    clock = Clock()
    dog, _ = make_dog(tmp_path, [FakeSignal("ssh"), FakeSignal("processes", True)],
                      FakeAction(), clock)
    dog.step()
    state = read_json(tmp_path / "state" / "watchdog.json")
    assert state is not None
    table = render_table(state).splitlines()
    assert table[0].split() == ["signal", "state", "last", "activity", "detail"]
    assert table[2].split()[:3] == ["processes", "active", "now"]
    assert table[-1] == "idle watchdog: active (processes); stop after 1 idle min (runpod_api)"
    clock.t += 20
    dog.signals[1].is_active = False  # type: ignore[attr-defined]
    dog.step()
    state = read_json(tmp_path / "state" / "watchdog.json")
    assert state is not None
    assert summary_line(state) == "idle watchdog: idle 20s, watching, stop (runpod_api) in 40s"


# -- the sync gate --------------------------------------------------------------------------------


def test_gate_runs_sync_once_when_no_watcher_runs(tmp_path: Path) -> None:
    write_status(tmp_path, SyncStatus(pid=999999, mode="stopped", pending=2))
    calls: list[float] = []

    def once(limit: float) -> Outcome:
        calls.append(limit)
        return Outcome(True, "pending files uploaded by `python -m appliance.sync once`")

    gate = SyncGate(tmp_path, 42, alive=lambda s: False, sync_once=once)
    assert gate.flush().ok and calls == [42]
    gate = SyncGate(tmp_path, 42, alive=lambda s: False,
                    sync_once=lambda limit: Outcome(False, "`python -m appliance.sync once` "
                                                    "failed (exit 2): no HF_REPO_ID"))
    assert gate.flush() == Outcome(False, "`python -m appliance.sync once` failed (exit 2): "
                                          "no HF_REPO_ID")
    assert SyncGate(tmp_path / "none", 1).flush() == Outcome(True, "no artifact upload pending")


def test_gate_waits_for_a_live_watcher_to_drain(tmp_path: Path) -> None:
    clock = Clock()
    write_status(tmp_path, SyncStatus(pid=1, mode="inotify", pending=1))

    def sleep(s: float) -> None:
        clock.sleep(s)
        if clock.t - T0 >= 3:
            write_status(tmp_path, SyncStatus(pid=1, mode="inotify", pending=0))

    gate = SyncGate(tmp_path, 10, alive=lambda s: True, clock=clock, sleep=sleep)
    assert gate.flush() == Outcome(True, "pending uploads finished")
    assert clock.t - T0 == 3


# -- actions --------------------------------------------------------------------------------------


def _pod_client(server: LocalPodServer, key: str, sleeps: list[float]) -> Callable[[], Any]:
    def factory() -> RunpodClient:
        client = RunpodClient(key, rest_url=server.rest_url, graphql_url=server.graphql_url,
                              sleep=sleeps.append, keyring_lookup=lambda: None)

        def no_terminate(pod_id: str) -> None:
            raise AssertionError("the watchdog must never terminate")

        client.terminate_pod = no_terminate  # type: ignore[method-assign]
        return client

    return factory


def _make_pod(server: LocalPodServer) -> Any:
    return server.account.create_pod(
        {"name": "wd", "image": "i", "gpu_id": "NVIDIA A40", "gpu_count": 1, "cloud": "SECURE",
         "ports": ["22/tcp"]}, "account")


def test_runpod_stop_with_the_pod_scoped_key(localpod: LocalPodServer,
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    pod = _make_pod(localpod)
    localpod.account.get_pod(pod.id, "account")
    sleeps: list[float] = []
    out = RunpodStop(pod.id, _pod_client(localpod, pod.pod_key, sleeps)).stop()
    assert out.ok and out.detail == f"pod {pod.id} stopped through the RunPod API (EXITED)"
    assert localpod.account.pods[pod.id].status == "EXITED"
    # Stopping a stopped pod is not a failure.
    out = RunpodStop(pod.id, _pod_client(localpod, pod.pod_key, sleeps)).stop()
    assert out.ok and out.detail == f"pod {pod.id} is already EXITED"
    assert pod.pod_key not in caplog.text + out.detail


def test_runpod_stop_retries_5xx_and_falls_back_to_graphql(localpod: LocalPodServer) -> None:
    pod = _make_pod(localpod)
    sleeps: list[float] = []
    localpod.account.faults.append(Fault(match=r"^POST /v2/pods/.*/action", status=500, times=2))
    assert RunpodStop(pod.id, _pod_client(localpod, pod.pod_key, sleeps)).stop().ok
    assert sleeps == [1.0, 2.0]
    pod2 = _make_pod(localpod)
    localpod.account.faults.append(Fault(match=r"^POST /v2/pods/.*/action", status=404))
    out = RunpodStop(pod2.id, _pod_client(localpod, pod2.pod_key, sleeps)).stop()
    assert out.ok and localpod.account.pods[pod2.id].status == "EXITED"
    assert any(r["path"] == "/graphql" for r in localpod.account.requests)


def test_runpod_stop_failure_is_reported_without_the_key(localpod: LocalPodServer) -> None:
    pod = _make_pod(localpod)
    sleeps: list[float] = []
    localpod.account.faults.append(Fault(match=r"^POST /v2/pods/.*/action", status=500,
                                         message=f"boom {CANARY}", times=10))
    out = RunpodStop(pod.id, _pod_client(localpod, CANARY, sleeps)).stop()
    assert not out.ok
    assert out.detail.startswith(f"stop pod {pod.id} failed: stop pod {pod.id}: boom <redacted> "
                                 "(HTTP 500)")
    assert CANARY not in out.detail and len(sleeps) == 4
    assert localpod.account.pods[pod.id].status != "EXITED"
    bad = RunpodStop(pod.id, _pod_client(localpod, "rpk_wrong_key_000", sleeps)).stop()
    assert not bad.ok and "(HTTP 401)" in bad.detail and "rpk_wrong_key_000" not in bad.detail


def test_exit_action_shuts_supervisord_down_or_sends_sigterm(tmp_path: Path) -> None:
    calls: list[str] = []

    class Rpc:
        class supervisor:  # noqa: N801 (mirrors the XML-RPC namespace)
            @staticmethod
            def shutdown() -> bool:
                calls.append("shutdown")
                return True

    out = ExitSupervisord(tmp_path / "s.sock", tmp_path / "pid",
                          rpc=lambda p: Rpc()).stop()  # type: ignore[arg-type,return-value]
    assert out == Outcome(True, "supervisord is shutting down")
    assert calls == ["shutdown"]

    def down(path: Path) -> Any:
        raise xmlrpc.client.Fault(1, "SHUTDOWN_STATE")

    kills: list[tuple[int, int]] = []
    (tmp_path / "pid").write_text("4321\n")
    out = ExitSupervisord(tmp_path / "s.sock", tmp_path / "pid", rpc=down,
                          kill=lambda pid, sig: kills.append((pid, sig))).stop()
    assert out.ok and kills == [(4321, signal.SIGTERM)]
    (tmp_path / "pid").unlink()
    out = ExitSupervisord(tmp_path / "s.sock", tmp_path / "pid", rpc=down).stop()
    assert not out.ok and out.detail.startswith(f"cannot stop supervisord: socket {tmp_path}/"
                                                "s.sock: Fault: <Fault 1: 'SHUTDOWN_STATE'>")


# -- CLI ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [("2h", 7200), ("90m", 5400), ("1h30m", 5400),
                                               ("45s", 45), ("10", 600), ("1d", 86400)])
def test_durations(text: str, seconds: float) -> None:
    assert cli.parse_duration(text) == seconds


@pytest.mark.parametrize(("text", "message"), [
    ("2x", "bad duration '2x': expected a number with a unit s, m, h or d, like 90m, 2h or "
           "1h30m (a bare number is minutes)"),
    ("0m", "bad duration '0m': must be more than zero"),
    ("8d", "bad duration '8d': at most 7d, so a forgotten keep-alive cannot bill for weeks"),
])
def test_bad_durations(text: str, message: str) -> None:
    with pytest.raises(ValueError) as exc:
        cli.parse_duration(text)
    assert str(exc.value) == message


@pytest.fixture
def no_machine_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    """The signals `--explain` builds, each reading a fake instead of this machine's GPUs, TCP
    connections, processes and Jupyter port: a training run or an SSH session here must not
    change the answer."""
    build_signals = cli.build_signals

    def no_gpu() -> list[GpuSample]:
        raise NvmlUnavailable("no NVML in this test")

    def refused(url: str, **kwargs: Any) -> httpx.Response:
        raise httpx.ConnectError("refused")

    def built(cfg: cli.Config) -> list[Any]:
        signals = build_signals(cfg)
        for sig in signals:
            if isinstance(sig, GpuSignal):
                sig.sampler = no_gpu
            elif isinstance(sig, SshSignal):
                sig.connections = list
            elif isinstance(sig, JupyterSignal):
                sig.http_get = refused
            elif isinstance(sig, ProcessSignal):
                sig.lister = list
        return signals

    monkeypatch.setattr(cli, "build_signals", built)


@pytest.mark.usefixtures("no_machine_sources")
def test_keepalive_command_and_explain_json(pod_env: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["keepalive", "2h"]) == 0
    assert capsys.readouterr().out.startswith("pod kept alive until ")
    assert cli.main(["--explain", "--json"]) == 0
    state = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in state["signals"]] == ["gpu", "ssh", "jupyter", "heartbeat",
                                                     "processes", "sync", "keepalive"]
    assert state["active"] == ["keepalive"] and state["watchdog_running"] is False
    assert cli.main(["keepalive", "off"]) == 0
    assert capsys.readouterr().out == "keep-alive removed\n"
    assert cli.main(["keepalive", "soon"]) == 2
    assert capsys.readouterr().err == (
        "keepalive: bad duration 'soon': expected a number with a unit s, m, h or d, like 90m, "
        "2h or 1h30m (a bare number is minutes)\n")


def test_runpod_api_action_needs_pod_id_and_key(pod_env: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    cfg = cli.Config.load()
    with pytest.raises(settings.SettingsError) as exc:
        cli.build_action(cfg)
    assert str(exc.value) == ("AUTOSTOP_ACTION=runpod_api needs RUNPOD_POD_ID and RUNPOD_API_KEY "
                              "(RunPod injects both into a pod); outside RunPod set "
                              "AUTOSTOP_ACTION=exit or none")
    assert cli.main([]) == 2
    assert "AUTOSTOP_ACTION=runpod_api needs RUNPOD_POD_ID" in capsys.readouterr().err


def test_bad_watchdog_settings_are_named(pod_env: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("AUTOSTOP_IDLE_MINUTES", "0")
    assert cli.main(["--explain"]) == 2
    assert capsys.readouterr().err.startswith(
        "idle-watchdog: error: bad environment: AUTOSTOP_IDLE_MINUTES='0': Input should be "
        "greater than 0")


def test_secrets_stay_out_of_the_watchdog_log(pod_env: Path, monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    monkeypatch.setenv("RUNPOD_API_KEY", CANARY)
    monkeypatch.setenv("JUPYTER_TOKEN", "canary-jupyter-7f3a99")
    cfg = cli.Config.load()
    from appliance.redact import Redactor, setup_service_logging

    setup_service_logging("idle-watchdog", Redactor(cfg.secrets), sys.stdout)
    handler = logging.getLogger().handlers[0]
    record = logging.LogRecord("appliance.watchdog", logging.ERROR, __file__, 1,
                               "failed with %s and %s", (CANARY, "canary-jupyter-7f3a99"), None)
    handler.filter(record)
    assert record.getMessage() == "failed with <redacted> and <redacted>"


