"""supervisord event listener `fatal-reviver`: records programs that end FATAL, revives them later.

supervisord never leaves FATAL by itself. This listener writes one JSON record per program under
--records, and after --cooldown seconds calls startProcess; after --max-revives revivals in a row
that did not last (sshd: no limit) it leaves the program alone. Every tick it also reads
supervisord's program states: a FATAL whose event went to a listener that died since (this
listener is a supervisord process too, and restarted) is recorded once two ticks in a row saw it
(a FATAL event still queued behind the first tick arrives before the second). It also hands every
event to the observers given to `run` (the service start times). stdout is the event protocol.
"""

from __future__ import annotations

import argparse
import sys
import time
import xmlrpc.client
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, Protocol, cast

from appliance import settings
from appliance.atomic import atomic_write_json
from appliance.runtime.config import Layout
from appliance.runtime.health import supervisor_proxy
from appliance.runtime.service_timing import ServiceStarts

ALREADY_STARTED = 60  # supervisor.xmlrpc.Faults


class Starter(Protocol):
    def __call__(self, name: str) -> None: ...


Observer = Callable[[str, dict[str, str]], None]
States = Callable[[], list[dict[str, Any]]]  # supervisor.getAllProcessInfo


@dataclass
class Record:
    name: str
    state: str  # fatal | reviving | running | given_up
    group: str = ""
    fatal_count: int = 0
    revives: int = 0  # in a row, reset once a revival has lasted a cool-down
    revives_total: int = 0
    fatal_at: float = 0.0
    revived_at: float = 0.0
    running_since: float = 0.0
    last_error: str = ""


class Reviver:
    def __init__(self, start: Starter, records: Path, cooldown: float, max_revives: int,
                 uncapped: frozenset[str], clock: Callable[[], float] = time.time,
                 log: IO[str] = sys.stderr, states: States | None = None) -> None:
        self.start = start
        self.states = states
        self.records_dir = records
        self.cooldown = cooldown
        self.max_revives = max_revives
        self.uncapped = uncapped
        self.clock = clock
        self.log = log
        self.records: dict[str, Record] = {}
        self.suspects: set[str] = set()  # FATAL at the last tick without a FATAL event
        records.mkdir(parents=True, exist_ok=True)

    def _say(self, message: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.clock()))
        print(f"{stamp} fatal-reviver: {message}", file=self.log, flush=True)

    def _save(self, rec: Record) -> None:
        atomic_write_json(self.records_dir / f"{rec.name}.json", asdict(rec), None, sort_keys=True)

    def handle(self, event: str, body: dict[str, str]) -> None:
        now = self.clock()
        name = body.get("processname", "")
        if event == "PROCESS_STATE_FATAL":
            self._fatal(name, body.get("groupname", name), now,
                        f"from {body.get('from_state', '?')}")
        elif event == "PROCESS_STATE_RUNNING" and name in self.records:
            rec = self.records[name]
            rec.state, rec.running_since = "running", now
            self._save(rec)
            self._say(f"{name} is RUNNING again")
        elif event.startswith("TICK"):
            self.tick(now)

    def _fatal(self, name: str, group: str, now: float, how: str) -> None:
        rec = self.records.setdefault(name, Record(name, "fatal"))
        rec.state, rec.fatal_at = "fatal", now
        rec.group = group
        rec.fatal_count += 1
        self._save(rec)
        self._say(f"{name} is FATAL ({how}; FATAL {rec.fatal_count} time(s)); starting it again "
                  f"in {self.cooldown:g} s")

    def _adopt(self, now: float) -> None:
        """Record the programs supervisord shows FATAL at two ticks in a row that this listener
        has not recorded as FATAL: their event went to a predecessor that died before reviving
        them."""
        if self.states is None:
            return
        try:
            infos = self.states()
        except (OSError, xmlrpc.client.Error) as exc:
            self._say(f"cannot read program states from supervisord: {exc}")
            return
        unknown: dict[str, str] = {}
        for info in infos:
            name = str(info.get("name", ""))
            rec = self.records.get(name)
            if info.get("statename") == "FATAL" and (rec is None or rec.state == "running"):
                unknown[name] = str(info.get("group") or name)
        for name in sorted(unknown.keys() & self.suspects):
            self._fatal(name, unknown[name], now, "found in supervisord's states, its event "
                        "missed")
        self.suspects = unknown.keys() - self.suspects

    def tick(self, now: float) -> None:
        self._adopt(now)
        for rec in self.records.values():
            if rec.state == "running" and rec.revives and now - rec.running_since >= self.cooldown:
                rec.revives = 0
                self._save(rec)
            if rec.state != "fatal" or now - rec.fatal_at < self.cooldown:
                continue
            if rec.name not in self.uncapped and rec.revives >= self.max_revives:
                rec.state = "given_up"
                self._save(rec)
                self._say(f"{rec.name} stays FATAL: {rec.revives} revival(s) in a row did not "
                          f"last; start it by hand (supervisorctl start {rec.name})")
                continue
            rec.revives += 1
            rec.revives_total += 1
            rec.revived_at = now
            rec.state = "reviving"
            try:
                self.start(f"{rec.group or rec.name}:{rec.name}")
                rec.last_error = ""
                self._say(f"starting {rec.name} (revival {rec.revives} in a row)")
            except xmlrpc.client.Fault as fault:
                if fault.faultCode == ALREADY_STARTED:
                    rec.state = "running"
                    rec.running_since = now
                else:
                    rec.state = "fatal"
                    rec.last_error = fault.faultString
                    self._say(f"cannot start {rec.name}: {fault.faultString}")
            except OSError as exc:
                rec.state = "fatal"
                rec.last_error = str(exc)
                self._say(f"cannot reach supervisord to start {rec.name}: {exc}")
            self._save(rec)


def parse_body(payload: str) -> dict[str, str]:
    """'k:v k2:v2' (the first line of an event payload) -> dict."""
    first = payload.split("\n", 1)[0]
    return dict(tok.split(":", 1) for tok in first.split() if ":" in tok)


def run(reviver: Reviver, stdin: IO[str], stdout: IO[str], once: bool = False,
        observers: Sequence[Observer] = ()) -> None:
    """The listener protocol: READY, read one header + payload, answer RESULT 2 OK."""
    while True:
        stdout.write("READY\n")
        stdout.flush()
        line = stdin.readline()
        if not line:
            return
        header = dict(tok.split(":", 1) for tok in line.split() if ":" in tok)
        payload = stdin.read(int(header.get("len", "0")))
        event, body = header.get("eventname", ""), parse_body(payload)
        for handle in (reviver.handle, *observers):
            try:
                handle(event, body)
            except Exception as exc:  # one bad event must not stop the listener
                print(f"fatal-reviver: error handling {event}: {exc!r}", file=reviver.log,
                      flush=True)
        stdout.write("RESULT 2\nOK")
        stdout.flush()
        if once:
            return


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m appliance.runtime.reviver", description=__doc__)
    p.add_argument("--socket", type=Path, required=True, help="supervisord's unix socket")
    p.add_argument("--records", type=Path, required=True, help="dir of per-program records")
    defaults = settings.RuntimeSettings.model_fields
    p.add_argument("--cooldown", type=float,
                   default=defaults["APPLIANCE_FATAL_COOLDOWN_SECONDS"].default,
                   help="seconds before a revival")
    p.add_argument("--max-revives", type=int,
                   default=defaults["APPLIANCE_FATAL_MAX_REVIVES"].default,
                   help="revivals in a row, then stop")
    p.add_argument("--uncapped", action="append", default=[], help="program with no limit")
    args = p.parse_args(argv)
    rpc = supervisor_proxy(args.socket, timeout=5.0)

    def start(name: str) -> None:
        rpc.supervisor.startProcess(name, False)

    def states() -> list[dict[str, Any]]:
        return cast(list[dict[str, Any]], rpc.supervisor.getAllProcessInfo())

    reviver = Reviver(start, args.records, args.cooldown, args.max_revives,
                      frozenset(args.uncapped), states=states)
    observers: list[Observer] = []
    try:
        layout = Layout.of(settings.load(settings.RuntimeSettings))
    except settings.SettingsError as exc:
        print(f"fatal-reviver: service starts not timed: {exc}", file=sys.stderr, flush=True)
    else:
        starts = ServiceStarts.from_boot_record(layout.boot_record,
                                                layout.appliance_run / "service-starts")
        if starts is not None:
            observers.append(starts.handle)
    run(reviver, sys.stdin, sys.stdout, observers=observers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
