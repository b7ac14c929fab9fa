"""A real bootstrap (as root, up to the exec of supervisord) with the predecessor's variables in
its environment: one line each in the container log and bootstrap.log, the run id and the login
shells' variables taken from them, a new variable that is set winning."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.utils.appliance import PYTHON, base_env, ensure_runner, make_root, remove_root

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the bootstrap's steps")]

LINES = [
    "START_HF_WATCH=1 ignored: START_HF_SYNC=0 is set and wins",
    "RUNPOD_PHASE_TIMING_RUN_ID=legacy-boot-1 read as RUN_ID=legacy-boot-1",
    "IDLE_TIMEOUT_SECONDS=5400 read as AUTOSTOP_IDLE_MINUTES=90",
    "VENV_DIR=/opt/venvs/chessbot has no effect: the services and pip use APPLIANCE_PYTHON (the "
    "image sets it to its venv's python)",
]


@pytest.fixture
def root() -> Iterator[Path]:
    ensure_runner()
    path = make_root("legacy-")
    yield path
    if not os.environ.get("APPLIANCE_KEEP_TEST_ROOT"):
        remove_root(path)


def test_the_bootstrap_logs_each_old_variable_and_uses_it(root: Path):
    env = base_env(root, START_JUPYTER="0", START_INFERENCE_API="0", START_HF_WATCH="1",
                   RUNPOD_PHASE_TIMING_RUN_ID="legacy-boot-1", IDLE_TIMEOUT_SECONDS="5400",
                   VENV_DIR="/opt/venvs/chessbot")
    (root / "repo").mkdir()
    proc = subprocess.run([str(PYTHON), "-m", "appliance.runtime.bootstrap", "--no-exec"],
                          env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    said = [line.split(" appliance-bootstrap: ", 1)[1] for line in proc.stdout.splitlines()]
    assert said[0].startswith("validate_settings: ")
    assert said[1:5] == LINES
    log = (root / "workspace" / ".appliance" / "logs" / "bootstrap.log").read_text()
    assert [line.split(" appliance-bootstrap: ", 1)[1] for line in log.splitlines()][1:5] == LINES
    records = [json.loads(x) for x in Path(env["RUNPOD_PHASE_TIMING_LOG"]).read_text().splitlines()]
    assert {r["run_id"] for r in records} == {"legacy-boot-1"}
    shell = (root / "etc" / "profile.d" / "appliance-env.sh").read_text().splitlines()
    assert "export AUTOSTOP_IDLE_MINUTES=90" in shell and "export START_HF_SYNC=0" in shell
    assert "export RUN_ID=legacy-boot-1" in shell
    assert sorted(p.name for p in (root / "etc" / "supervisor" / "conf.d").iterdir()) == [
        "00-fatal-reviver.conf", "10-sshd.conf"]  # START_HF_SYNC=0 won: no hf-sync
