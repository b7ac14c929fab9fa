"""The watcher's status file, `<HF_SYNC_STATE_DIR>/status.json`: how many files wait for upload,
so the idle watchdog can refuse to stop the pod with unsynced work (`pending_count`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from appliance.atomic import atomic_write_json

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
    atomic_write_json(state_dir / STATUS_FILE, asdict(status), indent=1)


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
