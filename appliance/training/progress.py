"""Training progress for people (tqdm lines on stderr, rank 0 only) and for machines (JSON-lines
events appended to --progress-jsonl-out: start, step, epoch, done)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm


class Progress:
    """Progress for people (tqdm on a terminal, rank 0) and machines (JSON lines)."""

    def __init__(self, path: Path | None, primary: bool) -> None:
        self.primary = primary
        self.fh: IO[str] | None = None
        if path is not None and primary:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.fh = path.open("a", encoding="utf-8")

    def event(self, kind: str, **fields: Any) -> None:
        if self.fh is not None:
            rec = {"event": kind, "ts": round(time.time(), 3), **fields}
            self.fh.write(json.dumps(rec) + "\n")
            self.fh.flush()

    def say(self, line: str) -> None:
        if self.primary:
            tqdm.write(line, file=sys.stderr)

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
