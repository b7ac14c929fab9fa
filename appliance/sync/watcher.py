"""The hf-sync watcher: inotify (watchdog) or polling marks files dirty, quiet and closed files go
up in one commit, failures back off, and the pending count is written to status.json.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from appliance.retry import backoff_delay
from appliance.sync.index import UploadIndex, is_candidate, scan
from appliance.sync.once import SyncJob, SyncResult
from appliance.sync.status import FILES_LISTED, SyncStatus, write_status

log = logging.getLogger("appliance.sync")

# inotify sees only local writes on these; changes made on another host go unnoticed.
NETWORK_FS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "lustre", "gpfs",
    "fuse.sshfs", "fuse.s3fs", "fuse.rclone", "fuse.gcsfuse", "fuse.mfs", "afs",
})
HEARTBEAT_S = 30.0


@dataclass
class WatchConfig:
    debounce_s: float = 2.0
    poll_s: float = 10.0
    mode: str = "auto"  # "auto", "inotify" or "poll"
    rescan_s: float = 600.0  # full reconcile in inotify mode too, for events the kernel dropped
    open_timeout_s: float = 300.0  # a file written to but never closed counts as done after this
    backoff_s: float = 5.0
    max_backoff_s: float = 300.0
    tick_s: float = 0.1


@dataclass
class Dirty:
    last_change: float  # monotonic time of the last event or observed stat change
    open: bool = False  # written to (inotify IN_MODIFY) and not closed since
    key: tuple[int, int] | None = None  # (size, mtime_ns) at the last check


class Observer(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def join(self, timeout: float | None = None) -> None: ...
    def healthy(self) -> bool: ...


Uploader = Callable[[list[str]], SyncResult]
ObserverFactory = Callable[[Path, Callable[[str, str], None]], Observer]


def filesystem_type(path: Path) -> str:
    """The type of the filesystem holding `path`, from /proc/mounts ("" when unknown)."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return ""
    best, fstype = "", ""
    target = str(path.resolve())
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        mount = parts[1].replace("\\040", " ")
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, fstype = mount, parts[2]
    return fstype


class WatchdogObserver:
    """watchdog's inotify observer, reporting events as (kind, absolute path)."""

    def __init__(self, source: Path, emit: Callable[[str, str], None]) -> None:
        from watchdog.events import (
            DirDeletedEvent,
            DirMovedEvent,
            FileClosedEvent,
            FileCreatedEvent,
            FileDeletedEvent,
            FileModifiedEvent,
            FileMovedEvent,
            FileSystemEvent,
            FileSystemEventHandler,
        )
        from watchdog.observers.inotify import InotifyObserver

        # Opened and closed-without-write events are left out: they are readers, us included.
        kinds: dict[type, str] = {
            FileClosedEvent: "closed", FileModifiedEvent: "modified",
            FileCreatedEvent: "created", FileDeletedEvent: "deleted",
            DirDeletedEvent: "dir_deleted",
        }

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if isinstance(event, FileMovedEvent | DirMovedEvent):
                    emit("dir_deleted" if event.is_directory else "deleted",
                         os.fsdecode(event.src_path))
                    if not event.is_directory:  # watchdog reports a moved dir's files one by one
                        emit("moved_in", os.fsdecode(event.dest_path))
                elif (kind := kinds.get(type(event))) is not None:
                    emit(kind, os.fsdecode(event.src_path))

        self._observer: Any = InotifyObserver()
        self._observer.schedule(Handler(), str(source), recursive=True)

    def start(self) -> None:
        self._observer.start()

    def stop(self) -> None:
        self._observer.stop()

    def join(self, timeout: float | None = None) -> None:
        self._observer.join(timeout)

    def healthy(self) -> bool:
        return bool(self._observer.is_alive()) and all(
            e.is_alive() for e in self._observer.emitters)


class Watcher:
    """The loop of `python -m appliance.sync watch`; `step()` is one pass of it, for tests.

    A dirty file is uploaded once it has been quiet for the debounce time, unchanged between two
    looks, and (with inotify) closed by its writer. Inotify is used unless the source is on a
    network filesystem, inotify cannot start (watch or instance limits) or dies later: then the
    watcher polls, which needs only stat(). Failed uploads are retried with exponential backoff.
    """

    def __init__(
        self,
        job: SyncJob,
        uploader: Uploader,
        cfg: WatchConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        observer_factory: ObserverFactory = WatchdogObserver,
        fs_type: Callable[[Path], str] = filesystem_type,
    ) -> None:
        self.job = job
        self.uploader = uploader
        self.cfg = cfg or WatchConfig()
        self.clock = clock
        self.wall = wall
        self.observer_factory = observer_factory
        self.fs_type = fs_type
        self.events: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()
        self.wake = threading.Event()
        self.dirty: dict[str, Dirty] = {}
        self.mode = "starting"
        self.observer: Observer | None = None
        self.awaiting_source = False
        self.failures = 0
        self.retry_at = 0.0
        self.next_scan = 0.0
        self.status = SyncStatus(os.getpid(), self.mode, 0, source=str(job.source),
                                 repo_id=job.repo_id)
        self._written: tuple[Any, ...] | None = None
        self._written_at = 0.0
        self._source_missing_logged = False

    # -- events --

    def emit(self, kind: str, path: str) -> None:
        """Called from the observer thread with an absolute path."""
        self.events.put((kind, path))
        self.wake.set()

    def _apply(self, kind: str, path: str, now: float) -> None:
        try:
            rel = Path(path).relative_to(self.job.source).as_posix()
        except ValueError:
            return
        if kind == "dir_deleted":
            prefix = rel.rstrip("/") + "/"
            for gone in [r for r in self.dirty if r.startswith(prefix)]:
                del self.dirty[gone]
            return
        if not is_candidate(rel, self.job.patterns):
            return
        if kind == "deleted":
            self.dirty.pop(rel, None)
            return
        d = self.dirty.setdefault(rel, Dirty(now))
        d.last_change = now
        if kind == "modified":
            d.open = True
        elif kind in ("closed", "moved_in"):
            d.open = False

    # -- modes --

    def start(self) -> None:
        self._set_mode(self._choose_mode())

    def _choose_mode(self) -> str:
        if self.cfg.mode == "poll":
            return "poll"
        if not self.job.source.is_dir():
            self.awaiting_source = True  # inotify needs the directory; try again once it exists
            return "poll"
        self.awaiting_source = False
        fstype = self.fs_type(self.job.source)
        if self.cfg.mode == "auto" and fstype in NETWORK_FS:
            log.info("%s is on %s (a network filesystem): polling every %g s", self.job.source,
                     fstype, self.cfg.poll_s)
            return "poll"
        try:
            observer = self.observer_factory(self.job.source, self.emit)
            observer.start()
        except OSError as exc:
            log.warning("inotify unavailable for %s (%s): polling every %g s instead",
                        self.job.source, exc.strerror or exc, self.cfg.poll_s)
            return "poll"
        self.observer = observer
        return "inotify"

    def _set_mode(self, mode: str) -> None:
        if mode != self.mode:
            log.info("watching %s in %s mode (patterns %s, debounce %g s)", self.job.source, mode,
                     ",".join(self.job.patterns), self.cfg.debounce_s)
        self.mode = mode
        self.next_scan = 0.0  # reconcile at once: events may have been missed meanwhile

    def _check_mode(self) -> None:
        if self.mode == "inotify" and self.observer is not None and not self.observer.healthy():
            log.warning("inotify watcher stopped working: polling every %g s instead",
                        self.cfg.poll_s)
            self._stop_observer()
            self._set_mode("poll")
        elif self.mode == "poll" and self.awaiting_source and self.job.source.is_dir():
            self._set_mode(self._choose_mode())

    def _stop_observer(self) -> None:
        if self.observer is not None:
            self.observer.stop()
            self.observer.join(timeout=5)
            self.observer = None

    # -- the loop --

    def _reconcile(self, now: float) -> None:
        """A full scan: files that differ from the upload index by size or mtime become dirty."""
        if not self.job.source.is_dir():
            if not self._source_missing_logged:
                log.warning("source directory %s does not exist yet; waiting for it",
                            self.job.source)
                self._source_missing_logged = True
            return
        self._source_missing_logged = False
        index = UploadIndex(self.job.state_dir, self.job.target)
        for rel, st in scan(self.job.source, self.job.patterns).items():
            if rel not in self.dirty and not index.unchanged_by_stat(rel, st):
                self.dirty[rel] = Dirty(now)

    def _ready(self, now: float) -> list[str]:
        ready = []
        for rel, d in list(self.dirty.items()):
            try:
                st = (self.job.source / rel).stat()
            except FileNotFoundError:
                del self.dirty[rel]
                continue
            key = (st.st_size, st.st_mtime_ns)
            if key != d.key:
                if d.key is not None:
                    d.last_change = max(d.last_change, now)
                d.key = key
                continue  # one more look before trusting that it stopped changing
            quiet = now - d.last_change
            if quiet >= self.cfg.debounce_s and (not d.open or quiet >= self.cfg.open_timeout_s):
                ready.append(rel)
        return sorted(ready)

    def step(self) -> None:
        now = self.clock()
        while True:
            try:
                kind, path = self.events.get_nowait()
            except queue.Empty:
                break
            self._apply(kind, path, now)
        self._check_mode()
        if now >= self.next_scan:
            self._reconcile(now)
            interval = self.cfg.poll_s if self.mode == "poll" else self.cfg.rescan_s
            self.next_scan = now + interval
        ready = self._ready(now)
        if ready and now >= self.retry_at:
            self._upload(ready, now)
        self._write_status()

    def _upload(self, ready: list[str], started: float) -> None:
        try:
            result = self.uploader(ready)
        except Exception as exc:  # the watcher must outlive any failure; it retries
            self.failures += 1
            delay = backoff_delay(self.failures - 1, self.cfg.backoff_s, self.cfg.max_backoff_s)
            self.retry_at = self.clock() + delay
            self.status.last_error = str(exc)
            log.error("upload of %d file(s) failed (attempt %d): %s; retrying in %.0f s",
                      len(ready), self.failures, exc, delay)
            return
        self.failures = 0
        self.retry_at = 0.0
        self.status.last_error = None
        for rel in ready:
            d = self.dirty.get(rel)
            if d is not None and d.last_change <= started:
                del self.dirty[rel]
        if result.uploaded:
            self.status.last_commit = result.commit.oid if result.commit else None
            self.status.last_upload_epoch = self.wall()
            log.info("%s", result.summary(self.job))

    def _write_status(self, force: bool = False) -> None:
        pending = sorted(self.dirty)
        self.status.mode = self.mode
        self.status.pending = len(pending)
        self.status.pending_files = pending[:FILES_LISTED]
        key = (self.mode, tuple(pending), self.status.last_commit, self.status.last_error)
        now = self.clock()
        if force or key != self._written or now - self._written_at >= HEARTBEAT_S:
            self.status.updated_epoch = self.wall()
            try:
                write_status(self.job.state_dir, self.status)
            except OSError as exc:
                log.error("cannot write %s: %s", self.job.state_dir, exc)
                return
            self._written, self._written_at = key, now

    def run(self, stop: threading.Event) -> None:
        self.start()
        try:
            while not stop.is_set():
                self.step()
                self.wake.wait(self.cfg.tick_s)
                self.wake.clear()
        finally:
            self._stop_observer()
            self.flush()
            self.mode = "stopped"
            self._write_status(force=True)

    def flush(self) -> None:
        """On shutdown: upload dirty files that nobody is writing any more, at once."""
        now = self.clock()
        done = [rel for rel, d in self.dirty.items() if not d.open and (self.job.source / rel)
                .is_file()]
        if done:
            log.info("stopping: uploading %d pending file(s) first", len(done))
            self._upload(sorted(done), now)

    @property
    def pending(self) -> int:
        return len(self.dirty)
