"""Phase-timing records: one JSON line per timed phase, appended to the timing log.

Fields: ts_epoch_ms, source, run_id, phase, status, elapsed_ms; exit_code when a phase ran a
process, reason when a decision needs explaining (the idle watchdog's stops), and what a phase is
about (`program` of a service_start). `phase()` times a block and records "ok" or "error"
however the block ends.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path


class TimingLog:
    def __init__(self, path: Path, source: str, run_id: str = "") -> None:
        self.path = path
        self.source = source
        self.run_id = run_id

    def record(
        self, phase: str, status: str, elapsed_ms: int, exit_code: int | None = None,
        reason: str | None = None, extra: Mapping[str, str | int] | None = None,
    ) -> dict[str, object]:
        rec: dict[str, object] = {
            "ts_epoch_ms": int(time.time() * 1000),
            "source": self.source,
            "run_id": self.run_id,
            "phase": phase,
            "status": status,
            "elapsed_ms": int(elapsed_ms),
        }
        if exit_code is not None:
            rec["exit_code"] = exit_code
        if reason is not None:
            rec["reason"] = reason
        rec.update(extra or {})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec, separators=(",", ":")) + "\n")
        return rec

    def merge(self, src: Path) -> None:
        """Append another log's records (e.g. a container's, copied out) to this one."""
        if not src.is_file():
            return
        lines = [line for line in src.read_text(encoding="utf-8").splitlines() if line.strip()]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.writelines(line + "\n" for line in lines)

    @contextmanager
    def phase(self, name: str) -> Iterator[dict[str, int | None]]:
        """Time a block; the block may set result["exit_code"]."""
        result: dict[str, int | None] = {"exit_code": None}
        start = time.monotonic()
        status = "error"
        try:
            yield result
            code = result["exit_code"]
            status = "ok" if code in (None, 0) else "error"
        finally:
            elapsed = (time.monotonic() - start) * 1000
            self.record(name, status, int(elapsed), result["exit_code"])
