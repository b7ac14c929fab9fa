"""The fatal-reviver listener: event protocol, records, cool-down, cap, recovery."""

from __future__ import annotations

import io
import json
import xmlrpc.client
from pathlib import Path

from appliance.runtime.reviver import Reviver, parse_body, run


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _reviver(tmp_path: Path, fail: Exception | None = None, max_revives: int = 2):
    started: list[str] = []

    def start(name: str) -> None:
        started.append(name)
        if fail is not None:
            raise fail

    clock, log = Clock(), io.StringIO()
    rev = Reviver(start, tmp_path, cooldown=60, max_revives=max_revives,
                  uncapped=frozenset({"sshd"}), clock=clock, log=log)
    return rev, started, clock, log


def _record(tmp_path: Path, name: str) -> dict:
    return json.loads((tmp_path / f"{name}.json").read_text())


def _fatal(rev: Reviver, name: str) -> None:
    rev.handle("PROCESS_STATE_FATAL", {"processname": name, "groupname": name,
                                       "from_state": "BACKOFF"})


def test_fatal_is_recorded_and_revived_only_after_the_cooldown(tmp_path):
    rev, started, clock, log = _reviver(tmp_path)
    _fatal(rev, "jupyter")
    assert _record(tmp_path, "jupyter")["state"] == "fatal"
    clock.now += 59
    rev.handle("TICK_5", {"when": "1"})
    assert started == []
    clock.now += 1
    rev.handle("TICK_5", {"when": "2"})
    assert started == ["jupyter:jupyter"]
    rec = _record(tmp_path, "jupyter")
    assert (rec["state"], rec["revives"], rec["revives_total"]) == ("reviving", 1, 1)
    rev.handle("PROCESS_STATE_RUNNING", {"processname": "jupyter", "groupname": "jupyter"})
    assert _record(tmp_path, "jupyter")["state"] == "running"
    assert "jupyter is FATAL (from BACKOFF; FATAL 1 time(s)); starting it again in 60 s" in (
        log.getvalue())


def test_the_cap_stops_revivals_but_not_for_sshd(tmp_path):
    rev, started, clock, log = _reviver(tmp_path, max_revives=2)
    for _ in range(4):
        _fatal(rev, "inference")
        _fatal(rev, "sshd")
        clock.now += 60
        rev.handle("TICK_5", {})
    assert started.count("inference:inference") == 2
    assert started.count("sshd:sshd") == 4
    assert _record(tmp_path, "inference")["state"] == "given_up"
    assert ("inference stays FATAL: 2 revival(s) in a row did not last; start it by hand "
            "(supervisorctl start inference)") in log.getvalue()


def test_a_revival_that_lasts_resets_the_count(tmp_path):
    rev, started, clock, _ = _reviver(tmp_path, max_revives=1)
    _fatal(rev, "jupyter")
    clock.now += 60
    rev.handle("TICK_5", {})
    rev.handle("PROCESS_STATE_RUNNING", {"processname": "jupyter"})
    clock.now += 60
    rev.handle("TICK_5", {})
    assert _record(tmp_path, "jupyter")["revives"] == 0
    _fatal(rev, "jupyter")
    clock.now += 60
    rev.handle("TICK_5", {})
    assert started == ["jupyter:jupyter", "jupyter:jupyter"]


def test_a_failed_start_is_logged_and_retried(tmp_path):
    rev, started, clock, log = _reviver(tmp_path, fail=xmlrpc.client.Fault(50, "SPAWN_ERROR: x"))
    _fatal(rev, "jupyter")
    clock.now += 60
    rev.handle("TICK_5", {})
    rec = _record(tmp_path, "jupyter")
    assert (rec["state"], rec["last_error"]) == ("fatal", "SPAWN_ERROR: x")
    assert "cannot start jupyter: SPAWN_ERROR: x" in log.getvalue()


def test_protocol_ready_event_result(tmp_path):
    rev, started, _, _ = _reviver(tmp_path)
    payload = "processname:cat groupname:cat from_state:BACKOFF"
    header = f"ver:3.0 server:supervisor serial:1 pool:fatal-reviver poolserial:1 " \
             f"eventname:PROCESS_STATE_FATAL len:{len(payload)}\n"
    out = io.StringIO()
    run(rev, io.StringIO(header + payload), out, once=True)
    assert out.getvalue() == "READY\nRESULT 2\nOK"
    assert _record(tmp_path, "cat")["fatal_count"] == 1


def test_a_bad_event_is_answered_ok_and_logged(tmp_path):
    rev, _, _, log = _reviver(tmp_path)
    rev.handle = None  # type: ignore[assignment]
    out = io.StringIO()
    run(rev, io.StringIO("eventname:TICK_5 len:0\n"), out, once=True)
    assert out.getvalue() == "READY\nRESULT 2\nOK"
    assert "fatal-reviver: error handling TICK_5: TypeError(" in log.getvalue()


def test_parse_body():
    assert parse_body("processname:a groupname:b from_state:STARTING\nextra") == {
        "processname": "a", "groupname": "b", "from_state": "STARTING"}


def test_a_fatal_whose_event_went_to_a_dead_predecessor_is_revived(tmp_path):
    """The soak's finding: the listener that got hf-sync's FATAL event was killed before its
    cool-down ended; its successor must revive hf-sync from supervisord's states."""
    infos = [{"name": "hf-sync", "group": "hf-sync", "statename": "FATAL"},
             {"name": "jupyter", "group": "jupyter", "statename": "RUNNING"},
             {"name": "fatal-reviver", "group": "fatal-reviver", "statename": "RUNNING"}]
    started: list[str] = []
    clock, log = Clock(), io.StringIO()
    rev = Reviver(started.append, tmp_path, cooldown=60, max_revives=2,
                  uncapped=frozenset({"sshd"}), clock=clock, log=log, states=lambda: infos)
    rev.handle("TICK_5", {})
    assert rev.records == {}  # its FATAL event may still be queued behind this tick
    rev.handle("TICK_5", {})
    assert list(rev.records) == ["hf-sync"]
    rec = _record(tmp_path, "hf-sync")
    assert (rec["state"], rec["group"], rec["fatal_count"]) == ("fatal", "hf-sync", 1)
    assert ("hf-sync is FATAL (found in supervisord's states, its event missed; FATAL 1 "
            "time(s)); starting it again in 60 s") in log.getvalue()
    clock.now += 59
    rev.handle("TICK_5", {})
    assert started == []
    clock.now += 1
    rev.handle("TICK_5", {})  # still FATAL for supervisord until the start: not counted again
    assert started == ["hf-sync:hf-sync"]
    assert _record(tmp_path, "hf-sync")["fatal_count"] == 1


def test_states_adopt_only_fatals_the_listener_does_not_handle(tmp_path):
    infos = {"jupyter": "FATAL", "inference": "RUNNING"}
    started: list[str] = []
    clock, log = Clock(), io.StringIO()
    rev = Reviver(started.append, tmp_path, cooldown=60, max_revives=1,
                  uncapped=frozenset(), clock=clock, log=log,
                  states=lambda: [{"name": n, "group": n, "statename": s}
                                  for n, s in infos.items()])
    for name in ("jupyter", "inference"):
        _fatal(rev, name)
    clock.now += 60
    rev.handle("TICK_5", {})
    assert started == ["jupyter:jupyter", "inference:inference"]
    rev.handle("PROCESS_STATE_RUNNING", {"processname": "inference"})
    _fatal(rev, "jupyter")  # the revival did not last
    clock.now += 60
    rev.handle("TICK_5", {})  # the cap: jupyter is given up, FATAL for supervisord, and stays so
    rev.handle("TICK_5", {})
    assert _record(tmp_path, "jupyter")["state"] == "given_up"
    assert _record(tmp_path, "jupyter")["fatal_count"] == 2
    # inference, RUNNING for the listener, went FATAL while its event was lost: adopted once.
    infos["inference"] = "FATAL"
    for _ in range(3):
        rev.handle("TICK_5", {})
    rec = _record(tmp_path, "inference")
    assert (rec["state"], rec["fatal_count"]) == ("fatal", 2)
    assert started == ["jupyter:jupyter", "inference:inference"]


def test_unreadable_states_are_logged_and_known_fatals_still_revived(tmp_path):
    def states() -> list[dict]:
        raise OSError("connection refused")

    started: list[str] = []
    clock, log = Clock(), io.StringIO()
    rev = Reviver(started.append, tmp_path, cooldown=60, max_revives=2,
                  uncapped=frozenset(), clock=clock, log=log, states=states)
    _fatal(rev, "jupyter")
    clock.now += 60
    rev.handle("TICK_5", {})
    assert started == ["jupyter:jupyter"]
    assert "cannot read program states from supervisord: connection refused" in log.getvalue()


def test_a_fatal_event_queued_behind_a_tick_is_counted_once(tmp_path):
    infos = [{"name": "jupyter", "group": "jupyter", "statename": "FATAL"}]
    clock, log = Clock(), io.StringIO()
    rev = Reviver(lambda name: None, tmp_path, cooldown=60, max_revives=2,
                  uncapped=frozenset(), clock=clock, log=log, states=lambda: infos)
    rev.handle("TICK_5", {})  # supervisord already shows FATAL; the event comes next
    _fatal(rev, "jupyter")
    rev.handle("TICK_5", {})
    rev.handle("TICK_5", {})
    assert _record(tmp_path, "jupyter")["fatal_count"] == 1
    assert "found in supervisord's states" not in log.getvalue()
