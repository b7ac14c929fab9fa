"""Service start times: each supervisord program's first RUNNING goes into the phase log.

One record per program and boot (phase=service_start, program=<name>, elapsed_ms since the
bootstrap started, source=runpod_services, the boot's run id), so the boot's own phases and
the programs' start-up read from one log. The bootstrap's start time, run id and log path come
from its boot record; a mark file per program and boot under the runtime dir keeps a restarted
listener (or a revived program) from recording a start twice. The fatal-reviver listener, which
hears every RUNNING anyway, feeds it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from appliance.timing import TimingLog

SERVICES_SOURCE = "runpod_services"
PHASE = "service_start"


class ServiceStarts:
    def __init__(self, log: TimingLog, started_ms: int, marks: Path,
                 clock: Callable[[], float] = time.time) -> None:
        self.log = log
        self.started_ms = started_ms
        self.marks = marks
        self.clock = clock
        marks.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_boot_record(cls, record: Path, marks_root: Path) -> ServiceStarts | None:
        """None when there is no usable boot record (the listener then only revives)."""
        try:
            boot = json.loads(record.read_text(encoding="utf-8"))
            log = TimingLog(Path(boot["timing_log"]), SERVICES_SOURCE, str(boot["run_id"]))
            started = int(boot["started_epoch_ms"])
            return cls(log, started, marks_root / str(started))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def handle(self, event: str, body: dict[str, str]) -> None:
        name = body.get("processname", "")
        if event != "PROCESS_STATE_RUNNING" or not name or "/" in name:
            return
        try:
            (self.marks / name).open("x").close()
        except FileExistsError:
            return
        elapsed = int(self.clock() * 1000) - self.started_ms
        self.log.record(PHASE, "ok", max(elapsed, 0), extra={"program": name})
