"""Pod runtime benchmarks, one JSON line each, each against a baseline measured in the same run.

1. boot_to_ready: `python -m appliance.runtime.bootstrap` start -> every program RUNNING and sshd
   accepting a login as runner; the second start of the same pod (requirements stamp hit) against
   the first (requirements installed by pip), with each boot's phase times.
2. kill_recovery: kill -9 of jupyter and inference (BENCH_KILL_ROUNDS, default 5) -> a new process,
   and RUNNING again, against the startsecs supervisord must wait before it calls one RUNNING.
Needs root: sshd and supervisord run for real on loopback ports in a temporary root.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.utils import wait_until  # noqa: E402
from tests.utils.appliance import (  # noqa: E402
    Appliance,
    base_env,
    ensure_runner,
    make_client_key,
    make_root,
    remove_root,
)
from tests.utils.repos import make_source_repo, make_venv, make_wheel  # noqa: E402

PROGRAMS = ["fatal-reviver", "sshd", "inference", "jupyter"]
KILL_ROUNDS = int(os.environ.get("BENCH_KILL_ROUNDS", "5"))
STARTSECS = 5  # of jupyter and inference, supervisord.conf.d/


def emit(name: str, **fields: object) -> None:
    print(json.dumps({"benchmark": name, **fields}), flush=True)


def phases(timings: Path, run_id: str) -> dict[str, int]:
    out = {}
    for line in timings.read_text().splitlines():
        rec = json.loads(line)
        if rec["run_id"] == run_id:
            out[rec["phase"]] = rec["elapsed_ms"]
    return out


def boot(app: Appliance, run_id: str) -> float:
    app.env["RUN_ID"] = run_id
    t0 = time.monotonic()
    app.start()
    app.wait_running(PROGRAMS, timeout=240)
    app.trust_host_keys()
    app.wait_login(timeout=60)
    return time.monotonic() - t0


def kill_recovery(app: Appliance) -> None:
    respawn: dict[str, list[float]] = {"jupyter": [], "inference": []}
    running: dict[str, list[float]] = {"jupyter": [], "inference": []}
    for _ in range(KILL_ROUNDS):
        for name in respawn:
            old = app.infos()[name]["pid"]
            t0 = time.monotonic()
            os.kill(old, signal.SIGKILL)
            wait_until(lambda n=name, o=old: app.infos()[n]["pid"] not in (0, o), 10, 0.02,
                       f"{name} respawned")
            respawn[name].append(time.monotonic() - t0)
            app.wait_running([name], timeout=60)
            running[name].append(time.monotonic() - t0)
    emit("kill_recovery", rounds=KILL_ROUNDS,
         respawn_median_s={n: round(statistics.median(v), 3) for n, v in respawn.items()},
         running_again_median_s={n: round(statistics.median(v), 2) for n, v in running.items()},
         baseline_startsecs_s=STARTSECS,
         note="RUNNING again = respawn + startsecs; supervisord restarts at once")


def main() -> int:
    if os.geteuid() != 0:
        emit("boot_to_ready", skipped="needs root (starts sshd and supervisord)")
        return 0
    ensure_runner()
    root = make_root("bench-")
    try:
        wheels = root / "wheels"
        make_wheel(wheels, "tinypkg", "0.1")
        url = make_source_repo(root / "src", {
            "requirements.txt": f"--no-index\n--find-links {wheels}\ntinypkg==0.1\n",
            "README.md": "bench\n"})
        python = make_venv(root / "venv", see_project=True)
        key = make_client_key(root / "key")
        env = base_env(root, REPO_URL=url, APPLIANCE_PYTHON=str(python),
                       PUBLIC_KEY=key.with_name("key.pub").read_text().strip(),
                       JUPYTER_TOKEN="bench-token")
        app = Appliance(root, env, key)
        try:
            first = boot(app, "first")
            app.stop()
            second = boot(app, "second")
            kill_recovery(app)
        finally:
            app.stop()
        timings = Path(env["RUNPOD_PHASE_TIMING_LOG"])
        p1, p2 = phases(timings, "first"), phases(timings, "second")
        emit("boot_to_ready", programs=PROGRAMS,
             first_start_s=round(first, 2), second_start_s=round(second, 2),
             ratio_second_to_first=round(second / first, 3),
             requirements_ms={"first_pip_install": p1["requirements_sync"],
                              "second_stamp_hit": p2["requirements_sync"]},
             bootstrap_ms={"first": sum(p1.values()), "second": sum(p2.values())},
             torch_check_ms=p2["torch_check"], floor_startsecs_s=STARTSECS)
        emit("bootstrap_phases", first_ms=p1, second_ms=p2)
    finally:
        remove_root(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
