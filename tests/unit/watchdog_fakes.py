"""Fakes for the idle watchdog's units (tests/unit/test_watchdog*.py): signals, an action and
a clock; a watchdog on them (`make_dog`), the phase records it wrote; and the fixture `pod_env`
(a pod's variables pointing into tmp_path, nothing of this machine's). A plugin of
tests/conftest.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.timing import TimingLog
from appliance.watchdog.actions import Outcome, SyncGate
from appliance.watchdog.daemon import Watchdog
from appliance.watchdog.decision import Tracker
from appliance.watchdog.signals import Reading

T0 = 1_800_000_000.0


class FakeSignal:
    def __init__(self, name: str, active: bool = False, last: float | None = None) -> None:
        self.name, self.is_active, self.last = name, active, last

    def read(self, now: float) -> Reading:
        return Reading(self.name, "active" if self.is_active else "quiet", "fake", self.last)


class FakeAction:
    def __init__(self, name: str = "runpod_api", results: list[Outcome] | None = None) -> None:
        self.name = name
        self.results = list(results or [Outcome(True, "stopped")])
        self.calls = 0

    def stop(self) -> Outcome:
        self.calls += 1
        return self.results.pop(0) if len(self.results) > 1 else self.results[0]


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


def gate_ok(tmp_path: Path) -> SyncGate:
    return SyncGate(tmp_path / "no-sync", 5.0)


def make_dog(tmp_path: Path, signals: list[Any], action: Any, clock: Clock,
             idle_s: float = 60, warn_s: float = 10, poll_s: float = 5,
             gate: SyncGate | None = None) -> tuple[Watchdog, list[str]]:
    notes: list[str] = []
    dog = Watchdog(signals, Tracker(idle_s, warn_s, started=clock()), action,
                   gate or gate_ok(tmp_path), TimingLog(tmp_path / "t.jsonl", "idle_watchdog"),
                   state_path=tmp_path / "state" / "watchdog.json", poll_s=poll_s,
                   notify=notes.append, clock=clock)
    return dog, notes


def records(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "t.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def pod_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    for name in ("RUNPOD_POD_ID", "RUNPOD_API_KEY", "APPLIANCE_SECRETS_DIR", "JUPYTER_TOKEN",
                 "INFERENCE_HEARTBEAT_FILE", "AUTOSTOP_KEEPALIVE_FILE", "AUTOSTOP_ACTION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORKSPACE_DIR", str(tmp_path / "ws"))
    monkeypatch.setenv("REPO_DIR", str(tmp_path / "repo"))
    monkeypatch.setenv("JUPYTER_PORT", "1")  # nothing listens: unavailable at once
    yield tmp_path
