"""`provision.py watch` benchmark, one JSON line: the delay from a progress line appended to the
file to its display by the watcher (median and p90 of BENCH_WATCH_EVENTS, default 200), and the
watcher's CPU use (its own process plus its `tail -F`) per event and as a share of one core.

The watcher is the real one (host_tools.watch.Watcher) following a local file through a local
`tail -n +K -F`: its ssh command line is run by bash on this machine instead of ssh, so the
number is the watcher's own delay, without the network's.
"""

from __future__ import annotations

import io
import json
import os
import re
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from appliance.runpod import Pod
from appliance.runpod.models import PortMapping
from host_tools.cli import Env, ProcessLines
from host_tools.watch import PROGRESS_FILE, Watcher, WatchOptions

EVENTS = int(os.environ.get("BENCH_WATCH_EVENTS", "200"))
GAP_S = 0.05  # between appends, after the previous line was shown
STEP = re.compile(r"step (\d+)/")


class Display(io.StringIO):
    """The terminal: when each step line was shown."""

    def __init__(self) -> None:
        super().__init__()
        self.shown: dict[int, float] = {}
        self.changed = threading.Condition()

    def write(self, text: str) -> int:
        now = time.monotonic()
        match = STEP.search(text)
        if match:
            with self.changed:
                self.shown.setdefault(int(match.group(1)), now)
                self.changed.notify_all()
        return super().write(text)


class LocalPod:
    """get_pod for the watcher: one pod, no GPU, a made-up SSH endpoint (never dialled)."""

    def __init__(self) -> None:
        self.pod = Pod(id="bench", name="bench", status="RUNNING",
                       mappings=[PortMapping(22, 2222, "tcp", "127.0.0.1")])

    def get_pod(self, pod_id: str) -> Pod:
        return self.pod


def local(argv: list[str]) -> list[str]:
    return ["bash", "-c", argv[-1]]  # the command ssh would run in the pod, run here


def run_local(argv: list[str], stdin: Path | None, stdout: Path | None) -> int:
    with (stdout or Path(os.devnull)).open("wb") as out:
        return subprocess.call(local(argv), stdout=out)


def shown(display: Display, step: int) -> bool:
    with display.changed:
        return display.changed.wait_for(lambda: step in display.shown, 10)


def main() -> None:
    os.environ.pop("RUNPOD_HEALTHCHECKS_URL", None)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        run_dir.mkdir()
        progress = run_dir / PROGRESS_FILE
        display = Display()
        tails: list[ProcessLines] = []

        def stream(argv: list[str]) -> ProcessLines:
            tails.append(ProcessLines(local(argv)))
            return tails[-1]

        env = Env(out=display, err=io.StringIO(), stream=stream, remote=run_local)
        opts = WatchOptions(run_id="run", remote_dir=str(run_dir), out=Path(tmp) / "out",
                            stall_s=3600, on_stall="none", as_json=False)
        client: Any = LocalPod()
        watcher = Watcher(env, client, client.pod, opts)
        me = psutil.Process()
        cpu0 = sum(me.cpu_times()[:2])
        t0 = time.monotonic()
        thread = threading.Thread(target=watcher.run, daemon=True)
        thread.start()
        delays = []
        with progress.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({"event": "start", "ts": time.time(), "epochs": 1}) + "\n")
            fh.flush()
            for step in range(1, EVENTS + 1):
                rec = {"event": "step", "ts": time.time(), "epoch": 1, "step": step,
                       "steps": EVENTS, "loss": 1.0}
                written = time.monotonic()
                fh.write(json.dumps(rec) + "\n")
                fh.flush()
                if not shown(display, step):
                    raise SystemExit(f"step {step} was not shown within 10 s")
                delays.append(display.shown[step] - written)
                time.sleep(GAP_S)
            tail_cpu = sum(sum(psutil.Process(t.proc.pid).cpu_times()[:2]) for t in tails
                           if t.proc.poll() is None)
            fh.write(json.dumps({"event": "done", "ts": time.time()}) + "\n")
        thread.join(30)
        wall = time.monotonic() - t0
        cpu = sum(me.cpu_times()[:2]) - cpu0 + tail_cpu
    delays.sort()
    print(json.dumps({
        "benchmark": "watch_display_delay", "events": EVENTS,
        "median_ms": round(statistics.median(delays) * 1000, 2),
        "p90_ms": round(delays[int(len(delays) * 0.9) - 1] * 1000, 2),
        "cpu_s_per_event": round(cpu / EVENTS, 5), "cpu_share_of_core": round(cpu / wall, 4),
        "note": "local file, local tail -F (no SSH); the appender's own CPU is included",
    }), flush=True)


if __name__ == "__main__":
    main()
