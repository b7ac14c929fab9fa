"""`python -m appliance.watchdog`: the idle watchdog (supervisord's idle-watchdog program), its
`--explain` view (`--json` for machines) and `keepalive DURATION|off` for users.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from appliance import settings
from appliance.atomic import read_json
from appliance.redact import Redactor, setup_service_logging
from appliance.timing import TimingLog
from appliance.watchdog.actions import (
    Action,
    DryRun,
    ExitSupervisord,
    RunpodStop,
    SyncGate,
    wall,
)
from appliance.watchdog.daemon import TIMING_SOURCE, HardCap, Watchdog
from appliance.watchdog.decision import STATE_FILE, Tracker, render_table, snapshot
from appliance.watchdog.signals import (
    GpuSignal,
    HeartbeatSignal,
    JupyterSignal,
    KeepaliveSignal,
    ProcessSignal,
    Signal,
    SshSignal,
    SyncSignal,
    clear_keepalive,
    keepalive_until,
    read_safely,
    write_keepalive,
)

EXIT_OK, EXIT_CONFIG = 0, 2
KEEPALIVE_MAX_S = 7 * 86400
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
log = logging.getLogger("appliance.watchdog")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_CONFIG, f"{self.prog}: error: {message} (see --help)\n")


def parse_duration(text: str) -> float:
    """'2h', '90m', '1h30m', '45s', '1d'; a bare number is minutes."""
    t = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", t):
        seconds = float(t) * 60
    elif t and re.fullmatch(r"(\d+(\.\d+)?[smhd])+", t):
        seconds = sum(float(n) * _UNITS[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([smhd])", t))
    else:
        raise ValueError(f"bad duration {text!r}: expected a number with a unit s, m, h or d, "
                         "like 90m, 2h or 1h30m (a bare number is minutes)")
    if seconds <= 0:
        raise ValueError(f"bad duration {text!r}: must be more than zero")
    if seconds > KEEPALIVE_MAX_S:
        raise ValueError(f"bad duration {text!r}: at most 7d, so a forgotten keep-alive cannot "
                         "bill for weeks")
    return seconds


@dataclass(frozen=True)
class Config:
    wd: settings.WatchdogSettings
    runtime: settings.RuntimeSettings
    paths: settings.PathSettings
    ssh: settings.SshSettings
    jupyter: settings.JupyterSettings
    inference: settings.InferenceSettings
    hf: settings.HfSettings
    runpod: settings.RunpodSettings

    @classmethod
    def load(cls) -> Config:
        s = settings
        return cls(s.load(s.WatchdogSettings), s.load(s.RuntimeSettings), s.load(s.PathSettings),
                   s.load(s.SshSettings), s.load(s.JupyterSettings), s.load(s.InferenceSettings),
                   s.load(s.HfSettings), s.load(s.RunpodSettings))

    @property
    def state_dir(self) -> Path:
        return self.runtime.APPLIANCE_STATE_DIR or self.runtime.WORKSPACE_DIR / ".appliance"

    @property
    def state_path(self) -> Path:
        return self.state_dir / STATE_FILE

    @property
    def keepalive_path(self) -> Path:
        return self.wd.AUTOSTOP_KEEPALIVE_FILE or self.runtime.WORKSPACE_DIR / ".autostop-keepalive"

    @property
    def secrets(self) -> list[str | None]:
        key = self.runpod.RUNPOD_API_KEY
        return [key.get_secret_value() if key else None, self.jupyter.token]


def build_signals(cfg: Config) -> list[Signal]:
    from appliance.runtime.health import local_url

    wd = cfg.wd
    jupyter_url = local_url(cfg.runtime.APPLIANCE_BIND_HOST, cfg.jupyter.JUPYTER_PORT, "")
    patterns = [p.strip() for p in wd.AUTOSTOP_PROCESS_PATTERNS.split(",")]
    return [
        GpuSignal(wd.AUTOSTOP_GPU_UTIL_PERCENT, mem_threshold_mb=wd.AUTOSTOP_GPU_MEM_MB),
        SshSignal(cfg.ssh.SSH_PORT),
        JupyterSignal(jupyter_url, lambda: cfg.jupyter.token),
        HeartbeatSignal(cfg.inference.INFERENCE_HEARTBEAT_FILE, wd.AUTOSTOP_POLL_SECONDS),
        ProcessSignal(patterns),
        SyncSignal(cfg.hf.sync_state_dir(cfg.paths.REPO_DIR)),
        KeepaliveSignal(cfg.keepalive_path, wd.AUTOSTOP_POLL_SECONDS),
    ]


def build_action(cfg: Config) -> Action:
    """The configured action; runpod_api without a pod id or key is a configuration error."""
    from appliance.runtime.config import Layout

    action = cfg.wd.AUTOSTOP_ACTION
    if action == "none":
        return DryRun()
    if action == "exit":
        layout = Layout.of(cfg.runtime)
        return ExitSupervisord(layout.socket, layout.pidfile)
    pod_id = cfg.runpod.RUNPOD_POD_ID
    key = cfg.runpod.RUNPOD_API_KEY
    missing = [n for n, v in (("RUNPOD_POD_ID", pod_id),
                              ("RUNPOD_API_KEY", key.get_secret_value() if key else ""))
               if not v.strip()]
    if missing:
        raise settings.SettingsError(
            f"AUTOSTOP_ACTION=runpod_api needs {' and '.join(missing)} (RunPod injects both "
            "into a pod); outside RunPod set AUTOSTOP_ACTION=exit or none")

    def client() -> Any:
        from appliance.runpod import RunpodClient

        # The pod-scoped key from the env only: a keyring inside a pod would be someone's.
        return RunpodClient(settings=cfg.runpod, keyring_lookup=lambda: None)

    return RunpodStop(pod_id.strip(), client)


def container_started(now: float) -> float:
    """When this pod's supervisord started (the bootstrap exec's into it as the container
    starts; a restart of this program keeps it), else `now`."""
    import psutil

    try:
        return min(float(psutil.Process(os.getppid()).create_time()), now)
    except (psutil.Error, OSError):
        return now


def build(cfg: Config, now: float, started: float | None = None) -> Watchdog:
    """`started`: the container's start for the hard cap (default: container_started)."""
    wd = cfg.wd
    tracker = Tracker(wd.AUTOSTOP_IDLE_MINUTES * 60, wd.AUTOSTOP_WARN_MINUTES * 60, started=now)
    gate = SyncGate(cfg.hf.sync_state_dir(cfg.paths.REPO_DIR), wd.AUTOSTOP_SYNC_FLUSH_SECONDS,
                    interval_s=min(1.0, wd.AUTOSTOP_POLL_SECONDS))
    timing = TimingLog(cfg.paths.timing_log, TIMING_SOURCE, cfg.paths.RUN_ID)
    cap = None
    if wd.AUTOSTOP_MAX_HOURS is not None:
        cap = HardCap(container_started(now) if started is None else started,
                      wd.AUTOSTOP_MAX_HOURS * 3600)
    return Watchdog(build_signals(cfg), tracker, build_action(cfg), gate, timing,
                    state_path=cfg.state_path, poll_s=wd.AUTOSTOP_POLL_SECONDS, notify=wall,
                    cap=cap, idle=_idle_stops(wd))


def _run(cfg: Config) -> int:
    setup_service_logging("idle-watchdog", Redactor(cfg.secrets), sys.stdout,
                          cfg.wd.AUTOSTOP_LOG_LEVEL)
    dog = build(cfg, time.time())
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("received %s: exiting", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    wd = cfg.wd
    if dog.idle:
        log.info("watching: stop (%s) after %g idle min, warning %g min ahead, poll every %g "
                 "s; signals %s", dog.action.name, wd.AUTOSTOP_IDLE_MINUTES,
                 wd.AUTOSTOP_WARN_MINUTES, wd.AUTOSTOP_POLL_SECONDS,
                 ", ".join(s.name for s in dog.signals))
    else:
        log.info("idle stop off (START_IDLE_WATCHDOG=0): running for the hard cap alone")
    if dog.cap is not None:
        log.info("hard cap: stop (%s) at %s, %g h after the container started, active or not",
                 dog.action.name, time.strftime("%Y-%m-%d %H:%M:%S",
                                                time.localtime(dog.cap.deadline)),
                 wd.AUTOSTOP_MAX_HOURS)
    dog.run(stop)
    return EXIT_OK


def _pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def explain(cfg: Config, now: float) -> dict[str, Any]:
    """Every signal read now, merged with the running watchdog's memory of past activity."""
    running = read_json(cfg.state_path)
    if running is not None and not _pid_alive(running.get("pid")):
        running = None
    wd = cfg.wd
    tracker = Tracker(wd.AUTOSTOP_IDLE_MINUTES * 60, wd.AUTOSTOP_WARN_MINUTES * 60, started=now)
    note = "the idle-watchdog program is not running: idle time counts from now"
    if running is not None:
        tracker.started = float(running.get("started_epoch") or now)
        for s in running.get("signals") or []:
            if isinstance(s, dict) and isinstance(s.get("last_seen_epoch"), int | float):
                tracker.last_seen[str(s["name"])] = float(s["last_seen_epoch"])
        if running.get("phase") == "warned":
            tracker.warned_at = now
        note = str(running.get("note") or "")
    action_name = wd.AUTOSTOP_ACTION
    readings = [read_safely(s, now) for s in build_signals(cfg)]
    d = tracker.step(readings, now)
    phase = "warned" if tracker.warned_at is not None else (
        str(running.get("phase")) if running else "watching")
    cap = running.get("hard_cap") if running else None
    state = snapshot(d, readings, tracker, action=action_name,
                     pid=int(running["pid"]) if running else 0, phase=phase, note=note,
                     idle=_idle_stops(wd), cap=cap if isinstance(cap, dict) else None)
    state["watchdog_running"] = running is not None
    state["enabled"] = _enabled()
    return state


def _idle_stops(wd: settings.WatchdogSettings) -> bool:
    """Idle stops are on unless the watchdog runs only for its hard cap: AUTOSTOP_MAX_HOURS set
    while START_IDLE_WATCHDOG=0 (the bootstrap then starts it for the cap alone). Started by
    hand without a cap, it watches for idleness as it always did."""
    return wd.AUTOSTOP_MAX_HOURS is None or _enabled()


def _enabled() -> bool:
    try:
        return bool(settings.load(settings.ServiceSettings).START_IDLE_WATCHDOG)
    except settings.SettingsError:
        return False


def _keepalive(cfg: Config, duration: str, as_json: bool) -> int:
    path = cfg.keepalive_path
    now = time.time()
    if duration.strip().lower() in ("off", "0", "cancel"):
        removed = clear_keepalive(path)
        print(json.dumps({"keepalive": None, "removed": removed}) if as_json else
              ("keep-alive removed" if removed else "no keep-alive was set"))
        return EXIT_OK
    if duration.strip().lower() == "status":
        until = keepalive_until(path)
        left = (until - now) if until is not None else None
        if as_json:
            print(json.dumps({"keepalive_until_epoch": until, "left_s": left}))
        elif until is None or left is None or left <= 0:
            print("no keep-alive in force")
        else:
            print(f"keep-alive until {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(until))}")
        return EXIT_OK
    try:
        seconds = parse_duration(duration)
    except ValueError as exc:
        print(f"keepalive: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    until = now + seconds
    try:
        write_keepalive(path, until, now)
    except OSError as exc:
        print(f"keepalive: cannot write {path}: {exc.strerror or exc} "
              "(AUTOSTOP_KEEPALIVE_FILE)", file=sys.stderr)
        return EXIT_CONFIG
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(until))
    print(json.dumps({"keepalive_until_epoch": until, "file": str(path)}) if as_json else
          f"pod kept alive until {when}; `python -m appliance.watchdog keepalive off` ends it")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m appliance.watchdog",
        description="Stop this pod when it is idle: every signal (gpu, ssh, jupyter, heartbeat, "
        "processes, sync, keepalive) quiet for AUTOSTOP_IDLE_MINUTES. Logged-in users get a "
        "wall message AUTOSTOP_WARN_MINUTES ahead and any activity cancels; pending artifact "
        "uploads finish first. Without arguments it runs (the idle-watchdog program).")
    p.add_argument("--explain", action="store_true",
                   help="print each signal's state, last activity and the time left, then exit")
    p.add_argument("--json", action="store_true", help="with --explain or keepalive: JSON")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    ka = sub.add_parser("keepalive", help="keep the pod up for DURATION (2h, 90m, 1h30m), "
                        "'off' to end it, 'status' to show it")
    ka.add_argument("duration", metavar="DURATION|off|status")
    ka.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = Config.load()
    except settings.SettingsError as exc:
        print(f"idle-watchdog: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "keepalive":
        return _keepalive(cfg, args.duration, args.json)
    if args.explain:
        state = explain(cfg, time.time())
        print(json.dumps(state, indent=1) if args.json else render_table(state))
        return EXIT_OK
    if args.json:
        print("idle-watchdog: error: --json needs --explain or keepalive", file=sys.stderr)
        return EXIT_CONFIG
    try:
        return _run(cfg)
    except settings.SettingsError as exc:
        print(f"idle-watchdog: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
