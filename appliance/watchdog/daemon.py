"""The watchdog loop: read every signal each poll, decide, warn, flush the sync, record the reason
in the phase log and act. Clock, waiting, signals, notifier and action are all injected.

Besides idleness, an optional hard cap (AUTOSTOP_MAX_HOURS) stops the pod a fixed time after its
container started, whatever it is doing: warned like an idle stop but not cancelled by activity,
and stopped even when the sync flush does not finish (a stop keeps the volume, so the files stay;
a forgotten pod must not bill forever). With idle stops off (`idle=False`) only the cap acts.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from appliance.retry import backoff_delay
from appliance.timing import TimingLog
from appliance.watchdog.actions import Action, Outcome, SyncGate
from appliance.watchdog.decision import Decision, Tracker, snapshot, write_state
from appliance.watchdog.signals import Reading, Signal, duration, read_safely

log = logging.getLogger("appliance.watchdog")
TIMING_SOURCE = "idle_watchdog"


@dataclass(frozen=True)
class Step:
    decision: Decision
    readings: list[Reading]
    outcome: Outcome | None = None  # set when a stop was attempted (or refused by the gate)


@dataclass(frozen=True)
class HardCap:
    """Stop `max_s` after `started` (epoch seconds: the container's start), active or not."""

    started: float
    max_s: float

    @property
    def deadline(self) -> float:
        return self.started + self.max_s

    def to_json(self) -> dict[str, float]:
        return {"max_hours": self.max_s / 3600, "started_epoch": self.started,
                "deadline_epoch": self.deadline}


class Watchdog:
    def __init__(self, signals: Sequence[Signal], tracker: Tracker, action: Action,
                 gate: SyncGate, timing: TimingLog, *, state_path: Path | None,
                 poll_s: float, notify: Callable[[str], None],
                 clock: Callable[[], float] = time.time, cap: HardCap | None = None,
                 idle: bool = True) -> None:
        self.signals, self.tracker, self.action, self.gate = signals, tracker, action, gate
        self.timing, self.state_path, self.poll_s = timing, state_path, poll_s
        self.notify, self.clock = notify, clock
        self.cap, self.idle = cap, idle
        self.cap_warned = False
        self.cap_done = False  # the cap's stop succeeded (a dry run or a pod that still runs)
        self.hold_until = float("-inf")
        self.failures = 0
        self.stopped = False  # the exit action succeeded: supervisord is taking us down
        self._last_active: tuple[str, ...] | None = None
        self.phase = "watching"
        self.note = ""

    def read(self, now: float) -> list[Reading]:
        return [read_safely(s, now) for s in self.signals]

    def step(self) -> Step:
        now = self.clock()
        readings = self.read(now)
        d = self.tracker.step(readings, now)
        if not self.idle:  # the hard cap alone acts
            d = replace(d, warn=False, cancel=False, act=False)
        outcome = None
        if d.active != self._last_active and self.idle:
            self._log_change(d, readings)
            self._last_active = d.active
        cap = self.cap
        if cap is not None and not self.cap_done and not self.stopped:
            if now >= cap.deadline and now >= self.hold_until:
                outcome = self._stop(self._cap_reason(now), force=True)
                self._write_state(d, readings)
                return Step(d, readings, outcome)
            if not self.cap_warned and now >= cap.deadline - self.tracker.warn_s \
                    and now < cap.deadline:
                self.cap_warned = True
                msg = (f"chess-bot pod: it has run {duration(now - cap.started)}; its hard cap "
                       f"(AUTOSTOP_MAX_HOURS={cap.max_s / 3600:g}) stops it ({self.action.name}) "
                       f"in {duration(cap.deadline - now)}, whatever it is doing.")
                log.info("hard cap warning sent: stop (%s) in %s", self.action.name,
                         duration(cap.deadline - now))
                self.notify(msg)
        if d.cancel:
            why = ", ".join(d.active)
            log.info("stop cancelled: activity (%s)", why)
            self.notify(f"chess-bot pod: automatic stop cancelled, activity seen ({why}).")
            self.timing.record("autostop_cancelled", "ok", 0, reason=f"activity: {why}")
            self.phase, self.note = "watching", ""
        elif d.warn:
            self.phase = "warned"
            msg = (f"chess-bot pod: idle for {duration(d.idle_s)} (no SSH session, busy notebook, "
                   f"training process, GPU load, inference traffic or keep-alive). It will be "
                   f"stopped ({self.action.name}) in {duration(d.left_s)}. Any activity cancels "
                   f"this; `python -m appliance.watchdog keepalive 2h` keeps it up.")
            log.info("warning sent: stop (%s) in %s", self.action.name, duration(d.left_s))
            self.notify(msg)
        elif d.act and now >= self.hold_until and not self.stopped:
            outcome = self._stop(self._reason(d, readings))
        elif not d.active and self.phase == "watching" and self.hold_until < now:
            self.note = ""
        self._write_state(d, readings)
        return Step(d, readings, outcome)

    def _log_change(self, d: Decision, readings: list[Reading]) -> None:
        if d.active:
            details = "; ".join(f"{r.name}: {r.detail}" for r in readings if r.active)
            log.info("active: %s", details)
        else:
            log.info("all signals quiet; stop (%s) at %s unless activity comes back",
                     self.action.name, time.strftime("%H:%M:%S", time.localtime(d.deadline)))

    def _reason(self, d: Decision, readings: list[Reading]) -> str:
        quiet = "; ".join(f"{r.name} {r.state}" for r in readings)
        return (f"idle {duration(d.idle_s)} (AUTOSTOP_IDLE_MINUTES={self.tracker.idle_s / 60:g}): "
                f"{quiet}")

    def _cap_reason(self, now: float) -> str:
        assert self.cap is not None
        return (f"hard cap: running {duration(now - self.cap.started)} "
                f"(AUTOSTOP_MAX_HOURS={self.cap.max_s / 3600:g}), active or not")

    def _stop(self, reason: str, force: bool = False) -> Outcome:
        """`force` (the hard cap): an unfinished sync flush is recorded, and the stop goes on."""
        self.phase = "stopping"
        started = time.monotonic()
        gate = self.gate.flush()
        if not gate.ok and force:
            log.error("sync flush unfinished (%s); stopping anyway: hard cap", gate.detail)
            gate = Outcome(True, f"flush unfinished ({gate.detail}); stopping anyway, the "
                           "volume keeps the files")
        if not gate.ok:
            # Unsynced work outweighs the GPU bill: no stop, and the reason is on record.
            self.hold_until = self.clock() + max(self.poll_s, self.gate.limit_s)
            self.phase, self.note = "holding", f"not stopping: {gate.detail}"
            log.error("not stopping: %s", gate.detail)
            self.timing.record("autostop", "refused", _ms(started),
                               reason=f"{reason}; sync flush unfinished: {gate.detail}")
            return gate
        log.info("stopping (%s): %s; sync: %s", self.action.name, reason, gate.detail)
        if self.action.name == "exit":
            # supervisord's shutdown takes this process down too: the record goes first.
            self.timing.record("autostop", "ok", _ms(started),
                               reason=f"{reason}; sync: {gate.detail}; action exit")
        elif self.action.name == "runpod_api":
            # The platform may end this container as soon as it takes the stop call: the
            # reason is on record before the call, the outcome after it (when there is time).
            self.timing.record("autostop_requested", "ok", _ms(started),
                               reason=f"{reason}; sync: {gate.detail}; action runpod_api")
        outcome = self.action.stop()
        status = "ok" if outcome.ok else "error"
        if self.action.name == "none":
            status = "dry_run"
        if self.action.name != "exit" or not outcome.ok:
            self.timing.record("autostop", status, _ms(started),
                               reason=f"{reason}; sync: {gate.detail}; action "
                               f"{self.action.name}: {outcome.detail}")
        if outcome.ok:
            log.info("%s", outcome.detail)
            self.failures = 0
            self.stopped = self.action.name == "exit"
            self.cap_done = force
            # A stopped pod ends this process; if it still runs, idleness counts afresh.
            self.tracker.reset(self.clock())
            self.phase, self.note = "watching", f"last stop: {outcome.detail}"
        else:
            self.failures += 1
            delay = backoff_delay(self.failures - 1, self.poll_s, 900.0)
            self.hold_until = self.clock() + delay
            self.phase, self.note = "holding", f"stop failed, retry in {duration(delay)}"
            log.error("%s; retrying in %s", outcome.detail, duration(delay))
        return outcome

    def _write_state(self, d: Decision, readings: list[Reading]) -> None:
        if self.state_path is None:
            return
        try:
            write_state(self.state_path, self.snapshot(d, readings))
        except OSError as exc:
            log.warning("cannot write %s: %s", self.state_path, exc)

    def snapshot(self, d: Decision, readings: list[Reading]) -> dict[str, Any]:
        return snapshot(d, readings, self.tracker, action=self.action.name, pid=os.getpid(),
                        phase=self.phase, note=self.note, idle=self.idle,
                        cap=self.cap.to_json() if self.cap else None)

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.step()
            stop.wait(self.poll_s)


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
