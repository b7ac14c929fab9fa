"""Idle watchdog benchmarks, one JSON line each, each against a baseline measured in the same run.

1. cpu_per_poll: the real `python -m appliance.watchdog` (every signal read each poll, action none)
   for BENCH_WATCHDOG_SECONDS (default 60) at a 1 s poll, against an idle Python process that
   wakes as often and does nothing; CPU seconds per poll, and the share of one core at the 60 s
   default poll.
2. decision_latency: the delay from the idle deadline to the stop (the dry-run record), at a
   0.7 s poll with a 3 s idle time, against the poll interval.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
SECONDS = float(os.environ.get("BENCH_WATCHDOG_SECONDS", "60"))
DEFAULT_POLL_S = 60.0


def emit(name: str, **fields: object) -> None:
    print(json.dumps({"benchmark": name, **fields}), flush=True)


def env_for(tmp: Path, poll_s: float, idle_min: float) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AUTOSTOP_", "RUNPOD_", "JUPYTER_", "HF_", "APPLIANCE_"))}
    env.update(WORKSPACE_DIR=str(tmp / "ws"), REPO_DIR=str(tmp / "repo"),
               RUNPOD_PHASE_TIMING_LOG=str(tmp / "timings.jsonl"), AUTOSTOP_ACTION="none",
               AUTOSTOP_POLL_SECONDS=str(poll_s), AUTOSTOP_IDLE_MINUTES=str(idle_min),
               AUTOSTOP_WARN_MINUTES="0", JUPYTER_PORT="1", SSH_PORT="22",
               PYTHONPATH=str(ROOT))
    return env


def cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


def bench_cpu(tmp: Path) -> None:
    poll_s = 1.0
    env = env_for(tmp, poll_s, idle_min=10_000)
    dog = subprocess.Popen([sys.executable, "-m", "appliance.watchdog"], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    idle = subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(1.0)"])
    state = tmp / "ws" / ".appliance" / "watchdog.json"
    try:
        deadline = time.monotonic() + 60
        while not state.exists():  # the first poll is done: start-up (imports) is not counted
            if time.monotonic() > deadline or dog.poll() is not None:
                raise SystemExit("the watchdog did not start")
            time.sleep(0.1)
        pd, pi = psutil.Process(dog.pid), psutil.Process(idle.pid)
        d0, i0, t0 = cpu_s(pd), cpu_s(pi), time.monotonic()
        time.sleep(SECONDS)
        d1, i1, t1 = cpu_s(pd), cpu_s(pi), time.monotonic()
    finally:
        for p in (dog, idle):
            p.terminate()
            p.wait(15)
    wall = t1 - t0
    polls = wall / poll_s
    per_poll = (d1 - d0) / polls
    emit("cpu_per_poll", seconds=round(wall, 1), polls=round(polls),
         processes_on_machine=len(psutil.pids()),
         watchdog_cpu_ms_per_poll=round(per_poll * 1000, 2),
         watchdog_core_share_at_1s_poll=round((d1 - d0) / wall, 5),
         watchdog_core_share_at_default_60s_poll=round(per_poll / DEFAULT_POLL_S, 6),
         baseline_idle_process_core_share=round((i1 - i0) / wall, 5),
         ratio_vs_baseline=round((d1 - d0) / max(i1 - i0, 1e-3), 1))


def bench_latency(tmp: Path) -> None:
    poll_s, idle_s, rounds = 0.7, 3.0, int(os.environ.get("BENCH_WATCHDOG_ROUNDS", "6"))
    env = env_for(tmp, poll_s, idle_min=idle_s / 60)
    log = tmp / "timings.jsonl"
    dog = subprocess.Popen([sys.executable, "-m", "appliance.watchdog"], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60 + rounds * (idle_s + 2 * poll_s)
        stamps: list[float] = []
        while len(stamps) < rounds + 1 and time.monotonic() < deadline:
            time.sleep(0.2)
            if log.exists():
                stamps = [json.loads(line)["ts_epoch_ms"] / 1000
                          for line in log.read_text().splitlines()]
    finally:
        dog.terminate()
        dog.wait(15)
    # After each stop idleness counts afresh, so each later stop's deadline is the previous
    # stop plus the idle time.
    delays = [b - a - idle_s for a, b in zip(stamps, stamps[1:], strict=False)]
    emit("decision_latency", idle_s=idle_s, poll_s=poll_s, stops=len(delays),
         median_delay_s=round(statistics.median(delays), 3), max_delay_s=round(max(delays), 3),
         baseline_poll_interval_s=poll_s,
         median_vs_poll=round(statistics.median(delays) / poll_s, 2))


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-wd-") as d:
        bench_latency(Path(d) / "latency")
        bench_cpu(Path(d) / "cpu")


if __name__ == "__main__":
    main()
