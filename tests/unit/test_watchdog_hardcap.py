"""The idle watchdog's hard cap (AUTOSTOP_MAX_HOURS) on a fake clock: it stops an active pod after
a warning, stops even when the sync flush does not finish, retries a failed stop, acts alone when
idle stops are off, and is built from the variable (fakes: tests/unit/watchdog_fakes.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import psutil
import pytest

from appliance import settings
from appliance.atomic import read_json
from appliance.sync.status import SyncStatus, write_status
from appliance.timing import TimingLog
from appliance.watchdog import __main__ as cli
from appliance.watchdog.actions import Outcome, SyncGate
from appliance.watchdog.daemon import HardCap, Watchdog
from appliance.watchdog.decision import Tracker, summary_line
from tests.unit.watchdog_fakes import T0, Clock, FakeAction, FakeSignal, gate_ok, records

pytestmark = pytest.mark.timeout(60)


def capped_dog(tmp_path: Path, signals: list[Any], action: Any, clock: Clock, *,
               idle: bool = True, gate: SyncGate | None = None) -> tuple[Watchdog, list[str]]:
    notes: list[str] = []
    dog = Watchdog(signals, Tracker(600, 10, started=clock()), action, gate or gate_ok(tmp_path),
                   TimingLog(tmp_path / "t.jsonl", "idle_watchdog"),
                   state_path=tmp_path / "state" / "watchdog.json", poll_s=5,
                   notify=notes.append, clock=clock, cap=HardCap(T0 - 1800, 3600), idle=idle)
    return dog, notes


def test_the_hard_cap_stops_an_active_pod_after_a_warning(tmp_path: Path) -> None:
    clock = Clock()
    action = FakeAction()
    dog, notes = capped_dog(tmp_path, [FakeSignal("processes", True)], action, clock)
    stops = []
    while action.calls == 0 and clock.t < T0 + 3600:
        if dog.step().outcome is not None:
            stops.append(clock.t - T0)
        clock.sleep(5)
    assert stops == [1800]  # 1 h after the container started, busy or not
    assert notes == ["chess-bot pod: it has run 59m50s; its hard cap (AUTOSTOP_MAX_HOURS=1) "
                     "stops it (runpod_api) in 10s, whatever it is doing."]
    assert [(r["phase"], r["status"], r["reason"]) for r in records(tmp_path)] == [
        ("autostop_requested", "ok", "hard cap: running 1h00m (AUTOSTOP_MAX_HOURS=1), active "
         "or not; sync: no artifact upload pending; action runpod_api"),
        ("autostop", "ok", "hard cap: running 1h00m (AUTOSTOP_MAX_HOURS=1), active or not; "
         "sync: no artifact upload pending; action runpod_api: stopped")]
    state = read_json(tmp_path / "state" / "watchdog.json")
    assert state is not None and state["hard_cap"] == {
        "max_hours": 1.0, "started_epoch": T0 - 1800, "deadline_epoch": T0 + 1800}
    assert summary_line(state) == ("idle watchdog: active (processes); stop after 10 idle min "
                                   "(runpod_api); last stop: stopped; hard cap 1 h: stop "
                                   "(runpod_api) in 0s")
    dog.step()  # the cap acts once; a pod that still runs is not stopped again and again
    assert action.calls == 1


def test_the_hard_cap_stops_even_when_the_sync_flush_does_not_finish(tmp_path: Path) -> None:
    clock = Clock(T0 + 1800)
    write_status(tmp_path / "sync", SyncStatus(pid=1, mode="inotify", pending=2))
    gate = SyncGate(tmp_path / "sync", 30, alive=lambda s: True, clock=clock,
                    sleep=clock.sleep)
    action = FakeAction()
    dog, _ = capped_dog(tmp_path, [FakeSignal("ssh", True)], action, clock, gate=gate)
    step = dog.step()
    assert action.calls == 1 and step.outcome == Outcome(True, "stopped")
    assert clock.t == T0 + 1830  # the flush had its 30 s
    assert records(tmp_path)[-1]["reason"] == (
        "hard cap: running 1h00m (AUTOSTOP_MAX_HOURS=1), active or not; sync: flush unfinished "
        "(2 artifact file(s) still pending upload after 30 s); stopping anyway, the volume "
        "keeps the files; action runpod_api: stopped")


def test_a_failed_hard_cap_stop_is_retried(tmp_path: Path) -> None:
    clock = Clock(T0 + 1800)
    action = FakeAction(results=[Outcome(False, "HTTP 500"), Outcome(True, "pod stopped")])
    dog, _ = capped_dog(tmp_path, [FakeSignal("ssh", True)], action, clock)
    dog.step()
    clock.t += 1
    dog.step()
    assert action.calls == 1  # held for the backoff
    clock.t += 5
    dog.step()
    assert action.calls == 2
    assert [r["status"] for r in records(tmp_path) if r["phase"] == "autostop"] == ["error", "ok"]


def test_with_idle_stop_off_only_the_hard_cap_acts(tmp_path: Path) -> None:
    clock = Clock()
    action = FakeAction()
    dog, notes = capped_dog(tmp_path, [FakeSignal("ssh")], action, clock, idle=False)
    while clock.t < T0 + 1795:  # quiet far past the 10 idle minutes: no idle stop
        assert dog.step().outcome is None
        clock.sleep(5)
    assert action.calls == 0 and len(notes) == 1 and "hard cap" in notes[0]
    clock.t = T0 + 1800
    dog.step()
    assert action.calls == 1
    state = read_json(tmp_path / "state" / "watchdog.json")
    assert state is not None and state["idle_stop"] is False
    assert summary_line(state) == ("idle watchdog: idle stop off (START_IDLE_WATCHDOG=0); last "
                                   "stop: stopped; hard cap 1 h: stop (runpod_api) in 0s")


def test_max_hours_builds_the_cap_and_runs_without_idle_stop(
        pod_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOSTOP_ACTION", "none")
    monkeypatch.setenv("AUTOSTOP_MAX_HOURS", "1.5")
    monkeypatch.delenv("START_IDLE_WATCHDOG", raising=False)
    dog = cli.build(cli.Config.load(), T0, started=T0 - 60)
    assert (dog.cap, dog.idle) == (HardCap(T0 - 60, 5400.0), False)
    monkeypatch.setenv("START_IDLE_WATCHDOG", "1")
    monkeypatch.delenv("AUTOSTOP_MAX_HOURS")
    dog = cli.build(cli.Config.load(), T0)
    assert (dog.cap, dog.idle) == (None, True)
    # Started by hand without a cap (START_IDLE_WATCHDOG unset): it watches for idleness.
    monkeypatch.delenv("START_IDLE_WATCHDOG")
    dog = cli.build(cli.Config.load(), T0)
    assert (dog.cap, dog.idle) == (None, True)
    # supervisord's start (here: the test runner's parent), never in the future.
    assert cli.container_started(1000.0) == 1000.0
    assert cli.container_started(4e9) == psutil.Process(os.getppid()).create_time()
    monkeypatch.setenv("AUTOSTOP_MAX_HOURS", "0")
    with pytest.raises(settings.SettingsError) as exc:
        cli.Config.load()
    assert str(exc.value).startswith("bad environment: AUTOSTOP_MAX_HOURS='0': Input should be "
                                     "greater than 0")
