"""What the idle watchdog does before and at a stop: warn logged-in users (wall), flush the
artifact sync (bounded), then stop this pod (RunPod API), end supervisord, or only log.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import xmlrpc.client
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from appliance.runpod import ConflictError, RunpodClient, RunpodError
from appliance.sync.status import SyncStatus, read_status
from appliance.watchdog.signals import watcher_alive

log = logging.getLogger("appliance.watchdog")


@dataclass(frozen=True)
class Outcome:
    ok: bool
    detail: str


class Action(Protocol):
    name: str

    def stop(self) -> Outcome: ...


class DryRun:
    name = "none"

    def stop(self) -> Outcome:
        return Outcome(True, "dry run (AUTOSTOP_ACTION=none): nothing stopped")


class RunpodStop:
    """Stops this pod through the one RunPod client (REST v2, GraphQL fallback, retries inside).
    Stop only: terminate would delete the volume and the work on it."""

    name = "runpod_api"

    def __init__(self, pod_id: str, client_factory: Callable[[], RunpodClient]) -> None:
        self.pod_id = pod_id
        self.client_factory = client_factory

    def stop(self) -> Outcome:
        try:
            with self.client_factory() as client:
                pod = client.stop_pod(self.pod_id)
        except ConflictError as exc:
            if exc.state in ("EXITED", "STOPPED"):
                return Outcome(True, f"pod {self.pod_id} is already {exc.state}")
            return Outcome(False, f"stop pod {self.pod_id} refused: {exc}")
        except RunpodError as exc:  # messages are scrubbed of the key by the client
            return Outcome(False, f"stop pod {self.pod_id} failed: {exc}")
        status = pod.status if pod is not None else "stop accepted"
        return Outcome(True, f"pod {self.pod_id} stopped through the RunPod API ({status})")


def supervisor_rpc(socket_path: Path) -> xmlrpc.client.ServerProxy:
    from appliance.runtime.health import supervisor_proxy

    return supervisor_proxy(socket_path, timeout=10.0)


class ExitSupervisord:
    """Asks supervisord to shut down (every program stopped in order; the container ends with
    it). When its socket does not answer, SIGTERM to the pid in its pid file does the same."""

    name = "exit"

    def __init__(self, socket_path: Path, pidfile: Path,
                 rpc: Callable[[Path], xmlrpc.client.ServerProxy] = supervisor_rpc,
                 kill: Callable[[int, int], None] = os.kill) -> None:
        self.socket_path = socket_path
        self.pidfile = pidfile
        self.rpc = rpc
        self.kill = kill

    def stop(self) -> Outcome:
        try:
            self.rpc(self.socket_path).supervisor.shutdown()
            return Outcome(True, "supervisord is shutting down")
        except (OSError, xmlrpc.client.Error) as exc:
            why = f"{type(exc).__name__}: {exc}"[:160]
        try:
            pid = int(self.pidfile.read_text().strip())
            self.kill(pid, signal.SIGTERM)
        except (OSError, ValueError) as exc:
            return Outcome(False, f"cannot stop supervisord: socket {self.socket_path}: {why}; "
                           f"pid file {self.pidfile}: {type(exc).__name__}: {exc}"[:300])
        return Outcome(True, f"SIGTERM sent to supervisord pid {pid} (socket: {why})")


# -- warnings -------------------------------------------------------------------------------------


def wall(message: str) -> None:
    """Every logged-in terminal gets the message; no terminal is not an error."""
    try:
        subprocess.run(["wall"], input=message, text=True, timeout=10, check=False,
                       capture_output=True)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("wall message not sent: %s", exc)


# -- the sync flush gate --------------------------------------------------------------------------


def sync_once_command() -> list[str]:
    return [sys.executable, "-m", "appliance.sync", "once"]


def run_sync_once(timeout_s: float) -> Outcome:
    try:
        proc = subprocess.run(sync_once_command(), capture_output=True, text=True,
                              timeout=timeout_s, stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        return Outcome(False, f"`python -m appliance.sync once` did not finish in {timeout_s:g} s")
    if proc.returncode == 0:
        return Outcome(True, "pending files uploaded by `python -m appliance.sync once`")
    last = (proc.stderr.strip().splitlines() or ["no message"])[-1][:200]
    return Outcome(False, f"`python -m appliance.sync once` failed (exit {proc.returncode}): "
                   f"{last}")


class SyncGate:
    """Before a stop, pending artifact uploads finish: a running watcher gets up to `limit_s` to
    drain them; with no watcher running, `sync once` uploads them. Unfinished: no stop."""

    def __init__(self, state_dir: Path, limit_s: float, *,
                 reader: Callable[[Path], SyncStatus | None] = read_status,
                 alive: Callable[[SyncStatus], bool] = watcher_alive,
                 sync_once: Callable[[float], Outcome] = run_sync_once,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, interval_s: float = 1.0) -> None:
        self.state_dir, self.limit_s = state_dir, limit_s
        self.reader, self.alive, self.sync_once = reader, alive, sync_once
        self.clock, self.sleep, self.interval_s = clock, sleep, interval_s

    def flush(self) -> Outcome:
        status = self.reader(self.state_dir)
        if status is None or status.pending == 0:
            return Outcome(True, "no artifact upload pending")
        if not self.alive(status):
            return self.sync_once(self.limit_s)
        deadline = self.clock() + self.limit_s
        log.info("waiting up to %g s for %d pending upload(s)", self.limit_s, status.pending)
        while True:
            status = self.reader(self.state_dir)
            if status is None or status.pending == 0:
                return Outcome(True, "pending uploads finished")
            if not self.alive(status):
                return self.sync_once(max(1.0, deadline - self.clock()))
            if self.clock() >= deadline:
                error = f" (last error: {status.last_error[:160]})" if status.last_error else ""
                return Outcome(False, f"{status.pending} artifact file(s) still pending upload "
                               f"after {self.limit_s:g} s{error}")
            self.sleep(self.interval_s)
