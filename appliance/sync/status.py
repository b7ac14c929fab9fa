"""The watcher's status file, `<HF_SYNC_STATE_DIR>/status.json`: how many files wait for upload,
so the idle watchdog can refuse to stop the pod with unsynced work (`pending_count`).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

STATUS_FILE = "status.json"
FILES_LISTED = 20


@dataclass
class SyncStatus:
    pid: int
    mode: str  # "inotify", "poll", "starting" or "stopped"
    pending: int
    pending_files: list[str] = field(default_factory=list)  # the first FILES_LISTED of them
    updated_epoch: float = 0.0
    last_commit: str | None = None
    last_upload_epoch: float | None = None
    last_error: str | None = None
    source: str = ""
    repo_id: str = ""


def write_status(state_dir: Path, status: SyncStatus) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=state_dir, prefix=".status.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(asdict(status), fh, indent=1)
        os.replace(tmp, state_dir / STATUS_FILE)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_status(state_dir: Path) -> SyncStatus | None:
    """The last status the watcher wrote, or None when there is none (or it is unreadable)."""
    try:
        data = json.loads((state_dir / STATUS_FILE).read_text(encoding="utf-8"))
        return SyncStatus(**data)
    except (OSError, ValueError, TypeError):
        return None


def pending_count(state_dir: Path) -> int:
    """Files the watcher has seen change but not yet uploaded; 0 when no watcher ever ran.

    A watcher that died keeps its last count: its files are still unsynced, so a stale
    non-zero count must still block an idle stop."""
    status = read_status(state_dir)
    return status.pending if status is not None else 0
