"""The idle decision: every signal quiet for the idle time means idle; a warning comes first and
any activity in its window cancels the stop. Pure (time is passed in), so tests need no clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.atomic import atomic_write_json
from appliance.watchdog.signals import Reading, clock_time, duration

STATE_FILE = "watchdog.json"


@dataclass(frozen=True)
class Decision:
    now: float
    idle_since: float
    deadline: float  # when the stop happens if nothing moves (after the warning, if later)
    active: tuple[str, ...]
    warn: bool = False  # the warning window opened at this step
    cancel: bool = False  # activity came back after a warning
    act: bool = False  # stop now

    @property
    def idle_s(self) -> float:
        return self.now - self.idle_since

    @property
    def left_s(self) -> float:
        return max(0.0, self.deadline - self.now)


@dataclass
class Tracker:
    """Remembers when each signal last showed activity; `step` decides."""

    idle_s: float
    warn_s: float
    started: float
    last_seen: dict[str, float] = field(default_factory=dict)
    warned_at: float | None = None

    def reset(self, now: float) -> None:
        """After an action (or a dry run): count idleness afresh from now."""
        self.started = now
        self.last_seen.clear()
        self.warned_at = None

    def step(self, readings: Sequence[Reading], now: float) -> Decision:
        for r in readings:
            seen = now if r.active else r.last_activity
            if seen is not None and seen > self.last_seen.get(r.name, float("-inf")):
                self.last_seen[r.name] = min(seen, now)
        active = tuple(r.name for r in readings if r.active)
        idle_since = max([self.started, *self.last_seen.values()])
        deadline = idle_since + self.idle_s
        if active:
            cancel = self.warned_at is not None
            self.warned_at = None
            return Decision(now, idle_since, deadline, active, cancel=cancel)
        if self.warned_at is not None:
            # The promised warning time holds even when the warning came late (a long poll).
            deadline = max(deadline, self.warned_at + self.warn_s)
            return Decision(now, idle_since, deadline, active, act=now >= deadline)
        if now >= deadline - self.warn_s:
            if self.warn_s <= 0:
                return Decision(now, idle_since, deadline, active, act=now >= deadline)
            self.warned_at = now
            deadline = max(deadline, now + self.warn_s)
            return Decision(now, idle_since, deadline, active, warn=True)
        return Decision(now, idle_since, deadline, active)


# -- the state file: the running watchdog's view, for --explain and appliance.runtime.status --


def write_state(path: Path, data: dict[str, Any]) -> None:
    # 0644 whatever the umask: runner's `appliance.runtime.status` reads it
    atomic_write_json(path, data, indent=1, mode=0o644)


def snapshot(decision: Decision, readings: Sequence[Reading], tracker: Tracker, *, action: str,
             pid: int, phase: str, note: str = "", idle: bool = True,
             cap: dict[str, float] | None = None) -> dict[str, Any]:
    """What the state file and `--json` hold; `idle`: idle stops on; `cap`: the hard cap
    (max_hours, started_epoch, deadline_epoch) or None."""
    return {
        "pid": pid,
        "updated_epoch": decision.now,
        "action": action,
        "phase": phase,  # watching, warned, holding, stopping
        "idle_minutes": tracker.idle_s / 60,
        "warn_minutes": tracker.warn_s / 60,
        "started_epoch": tracker.started,
        "idle_since_epoch": decision.idle_since,
        "idle_s": round(decision.idle_s, 3),
        "deadline_epoch": decision.deadline,
        "left_s": round(decision.left_s, 3),
        "active": list(decision.active),
        "note": note,
        "idle_stop": idle,
        "hard_cap": cap,
        "signals": [
            {**r.to_json(), "last_seen_epoch": tracker.last_seen.get(r.name)} for r in readings
        ],
    }


def summary_line(state: dict[str, Any]) -> str:
    """One line for `appliance.runtime.status`."""
    action = state.get("action", "?")
    active = state.get("active") or []
    note = f"; {state['note']}" if state.get("note") else ""
    cap = state.get("hard_cap")
    if isinstance(cap, dict):
        left = float(cap["deadline_epoch"]) - float(state.get("updated_epoch", 0))
        note += (f"; hard cap {float(cap['max_hours']):g} h: stop ({action}) in "
                 f"{duration(max(0.0, left))}")
    if state.get("idle_stop") is False:
        return f"idle watchdog: idle stop off (START_IDLE_WATCHDOG=0){note}"
    if active:
        return f"idle watchdog: active ({', '.join(active)}); stop after " \
               f"{float(state.get('idle_minutes', 0)):g} idle min ({action}){note}"
    return (f"idle watchdog: idle {duration(float(state.get('idle_s', 0)))}, "
            f"{state.get('phase', 'watching')}, stop ({action}) in "
            f"{duration(float(state.get('left_s', 0)))}{note}")


def render_table(state: dict[str, Any]) -> str:
    now = float(state["updated_epoch"])
    lines = [f"{'signal':<10} {'state':<11} {'last activity':<20} detail"]
    for s in state["signals"]:
        seen = s.get("last_seen_epoch")
        when = "-" if seen is None else (
            "now" if s["state"] == "active" else f"{clock_time(seen)} ({duration(now - seen)} ago)")
        lines.append(f"{s['name']:<10} {s['state']:<11} {when:<20} {s['detail']}")
    lines.append(summary_line(state))
    return "\n".join(lines)
