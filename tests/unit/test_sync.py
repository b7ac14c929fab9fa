"""Artifact sync without a Hub or threads: file selection, the upload index, and the watcher's
decisions (debounce, open files, batching, backoff, fallback to polling) on a fake clock."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.atomic import sha256_file
from appliance.sync import pending_count, read_status
from appliance.sync.index import UploadIndex, is_candidate, scan
from appliance.sync.once import SyncJob, SyncResult, commit_message
from appliance.sync.watcher import WatchConfig, Watcher, filesystem_type

PATTERNS = ("*.pt", "*.json")


@pytest.mark.parametrize(("rel", "expected"), [
    ("model.pt", True), ("run1/metrics.json", True), ("run1/notes.txt", False),
    (".model.pt", False), ("run1/.model_best.pt.abc.tmp", False), ("run1/model.pt.tmp", False),
    (".cache/x.json", False), ("run1/ckpt.pt.partial", False),
])
def test_candidates(rel: str, expected: bool):
    assert is_candidate(rel, PATTERNS) is expected


def test_patterns_with_a_slash_match_the_relative_path():
    assert is_candidate("runs/a/model.pt", ("runs/*/model.pt",))
    assert not is_candidate("other/a/model.pt", ("runs/*/model.pt",))


def test_scan_skips_links_hidden_dirs_and_non_matches(tmp_path: Path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "m.pt").write_bytes(b"1")
    (tmp_path / "a" / "m.txt").write_bytes(b"1")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "x.json").write_text("{}")
    (tmp_path / "link.pt").symlink_to(tmp_path / "a" / "m.pt")
    assert sorted(scan(tmp_path, PATTERNS)) == ["a/m.pt"]


def test_index_detects_content_changes_not_touches(tmp_path: Path):
    state, src = tmp_path / "state", tmp_path / "src"
    src.mkdir()
    f = src / "m.pt"
    f.write_bytes(b"weights")
    index = UploadIndex(state, "target-1")
    digest = index.changed(src, "m.pt", f.stat())
    assert digest == sha256_file(f)
    index.record("m.pt", digest, f.stat())
    index.save()
    again = UploadIndex(state, "target-1")
    assert again.changed(src, "m.pt", f.stat()) is None
    os.utime(f, ns=(1, 1))  # touched: same bytes, so still unchanged (after one hash)
    assert again.changed(src, "m.pt", f.stat()) is None
    f.write_bytes(b"weightz")
    assert again.changed(src, "m.pt", f.stat()) == sha256_file(f)
    assert UploadIndex(state, "target-2").changed(src, "m.pt", f.stat()) is not None
    (state / "upload_index.json").write_text("{broken")
    assert UploadIndex(state, "target-1").files == {}  # a damaged index means re-upload


def test_commit_message_names_files():
    assert commit_message(["a.pt"]) == "hf-sync: 1 file(s): a.pt"
    assert commit_message([f"{i}.pt" for i in range(7)]) == (
        "hf-sync: 7 file(s): 0.pt, 1.pt, 2.pt, 3.pt, 4.pt and 2 more")


# -- the watcher on a fake clock --


class FakeObserver:
    def __init__(self, fail: OSError | None = None) -> None:
        self.fail = fail
        self.alive = True
        self.stopped = False

    def start(self) -> None:
        if self.fail:
            raise self.fail

    def stop(self) -> None:
        self.stopped = True

    def join(self, timeout: float | None = None) -> None:
        pass

    def healthy(self) -> bool:
        return self.alive


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _watcher(tmp_path: Path, uploads: list[list[str]], *, fail_times: int = 0,
             observer: FakeObserver | None = None, fs: str = "ext4",
             **cfg: float | str) -> tuple[Watcher, Clock, Path]:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    job = SyncJob(src, "acme/art", PATTERNS, tmp_path / "state")
    failures = [fail_times]

    def upload(rels: list[str]) -> SyncResult:
        if failures[0] > 0:
            failures[0] -= 1
            raise RuntimeError("HTTP 503 from the Hub")
        uploads.append(list(rels))
        index = UploadIndex(job.state_dir, job.target)  # as sync_once records what went up
        for rel in rels:
            index.record(rel, sha256_file(src / rel), (src / rel).stat())
        index.save()
        return SyncResult(uploaded=[(r, 1) for r in rels])

    clock = Clock()
    obs = observer or FakeObserver()
    factory: Callable[..., FakeObserver] = lambda source, emit: obs  # noqa: E731
    w = Watcher(job, upload, WatchConfig(**{"debounce_s": 2.0, "poll_s": 10.0, **cfg}),
                clock=clock, wall=lambda: 5.0, observer_factory=factory,
                fs_type=lambda p: fs)
    w.start()
    return w, clock, src


def _steps(w: Watcher, clock: Clock, seconds: float, tick: float = 0.5) -> None:
    end = clock.now + seconds
    while clock.now < end:
        clock.now += tick
        w.step()


def test_open_file_waits_for_close_then_debounce(tmp_path: Path):
    uploads: list[list[str]] = []
    w, clock, src = _watcher(tmp_path, uploads)
    assert w.mode == "inotify"
    w.step()
    f = src / "ckpt.pt"
    f.write_bytes(b"part 1")
    w.emit("created", str(f))
    w.emit("modified", str(f))
    _steps(w, clock, 10)  # quiet for long, but never closed: still being written
    assert uploads == [] and w.pending == 1
    assert pending_count(tmp_path / "state") == 1
    assert read_status(tmp_path / "state").pending_files == ["ckpt.pt"]  # type: ignore[union-attr]
    with f.open("ab") as fh:
        fh.write(b" part 2")
    w.emit("modified", str(f))
    w.emit("closed", str(f))
    _steps(w, clock, 1.5)
    assert uploads == []  # closed, but the debounce has not passed
    _steps(w, clock, 1.5)
    assert uploads == [["ckpt.pt"]]
    assert w.pending == 0 and pending_count(tmp_path / "state") == 0


def test_files_ready_together_go_in_one_batch_and_temp_files_never(tmp_path: Path):
    uploads: list[list[str]] = []
    w, clock, src = _watcher(tmp_path, uploads)
    for name in ("a.pt", "b.json", "notes.txt", ".x.pt.tmp"):
        (src / name).write_text(name)
        w.emit("closed", str(src / name))
    (src / "sub").mkdir()
    (src / "sub" / "c.pt").write_text("c")
    w.emit("moved_in", str(src / "sub" / "c.pt"))
    _steps(w, clock, 3)
    assert uploads == [["a.pt", "b.json", "sub/c.pt"]]
    (src / "gone.pt").write_text("x")
    w.emit("closed", str(src / "gone.pt"))
    (src / "gone.pt").unlink()
    w.emit("deleted", str(src / "gone.pt"))
    _steps(w, clock, 3)
    assert len(uploads) == 1 and w.pending == 0


def test_failed_uploads_back_off_and_keep_files_pending(tmp_path: Path):
    uploads: list[list[str]] = []
    w, clock, src = _watcher(tmp_path, uploads, fail_times=2, backoff_s=5.0)
    (src / "m.pt").write_text("x")
    w.emit("closed", str(src / "m.pt"))
    _steps(w, clock, 2.5)
    first_failure = clock.now
    assert w.failures == 1 and w.retry_at == first_failure + 5.0
    status = read_status(tmp_path / "state")
    assert status is not None
    assert (status.pending, status.last_error) == (1, "HTTP 503 from the Hub")
    _steps(w, clock, 5.0)
    assert w.failures == 2 and w.retry_at == clock.now + 10.0  # doubled
    _steps(w, clock, 10.0)
    assert uploads == [["m.pt"]] and w.failures == 0
    assert read_status(tmp_path / "state").last_error is None  # type: ignore[union-attr]


@pytest.mark.parametrize(("observer", "fs", "mode"), [
    (FakeObserver(OSError(errno.ENOSPC, "inotify watch limit reached")), "ext4", "poll"),
    (FakeObserver(OSError(errno.EMFILE, "inotify instance limit reached")), "ext4", "poll"),
    (FakeObserver(), "nfs4", "poll"),
    (FakeObserver(), "fuse.sshfs", "poll"),
    (FakeObserver(), "overlay", "inotify"),
])
def test_falls_back_to_polling(tmp_path: Path, observer: FakeObserver, fs: str, mode: str):
    w, _, _ = _watcher(tmp_path, [], observer=observer, fs=fs)
    assert w.mode == mode


def test_polling_finds_new_files_and_waits_for_them_to_settle(tmp_path: Path):
    uploads: list[list[str]] = []
    w, clock, src = _watcher(tmp_path, uploads, mode="poll", poll_s=1.0, debounce_s=1.0)
    assert w.mode == "poll"
    w.step()
    f = src / "m.pt"
    f.write_bytes(b"1")
    for i in range(4):  # keeps growing between looks: never uploaded half-written
        _steps(w, clock, 1.0)
        with f.open("ab") as fh:
            fh.write(b"%d" % i)
        os.utime(f, ns=(i + 10, i + 10))
    assert uploads == []
    _steps(w, clock, 3.0)
    assert uploads == [["m.pt"]]


def test_inotify_dying_later_switches_to_polling(tmp_path: Path):
    observer = FakeObserver()
    w, clock, src = _watcher(tmp_path, [], observer=observer)
    assert w.mode == "inotify"
    observer.alive = False
    w.step()
    assert w.mode == "poll" and observer.stopped


def test_missing_source_is_waited_for(tmp_path: Path):
    uploads: list[list[str]] = []
    w, clock, src = _watcher(tmp_path, uploads)
    src.rmdir()
    w2 = Watcher(w.job, w.uploader, w.cfg, clock=clock, wall=lambda: 5.0,
                 observer_factory=lambda s, e: FakeObserver(), fs_type=lambda p: "ext4")
    w2.start()
    assert w2.mode == "poll"
    _steps(w2, clock, 2)
    src.mkdir()
    (src / "late.pt").write_text("x")
    _steps(w2, clock, 1)
    assert w2.mode == "inotify"  # the directory appeared: events from now on
    _steps(w2, clock, 4)
    assert uploads == [["late.pt"]]


def test_status_file_and_pending_count(tmp_path: Path):
    assert pending_count(tmp_path / "nothing") == 0
    w, clock, src = _watcher(tmp_path, [], fail_times=99)
    (src / "m.pt").write_text("x")
    w.emit("closed", str(src / "m.pt"))
    _steps(w, clock, 3)
    data = json.loads((tmp_path / "state" / "status.json").read_text())
    assert {k: data[k] for k in ("mode", "pending", "pending_files", "source", "repo_id")} == {
        "mode": "inotify", "pending": 1, "pending_files": ["m.pt"], "source": str(src),
        "repo_id": "acme/art"}


def test_filesystem_type_of_root():
    assert filesystem_type(Path("/")) != ""
