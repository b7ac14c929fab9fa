"""Artifact sync as supervisord runs it: `python -m appliance.sync once|watch` against the Hub
emulator with the real huggingface_hub, checking uploads, no-op re-syncs, the watcher, retries
and that the token never shows up."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from host_tools.emulators.hubemu import HubEmulator
from tests.utils import wait_until
from tests.utils.hubemu import CANARY, assert_canary_never_in_urls, assert_no_canary, hf_env

REPO_ID = "acme/artifacts"


def _sync(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "appliance.sync", *args], env=env, text=True,
                          capture_output=True, timeout=60, cwd=env["PYTHONPATH"])


def _files(hub: HubEmulator, repo_type: str = "model") -> dict[str, bytes]:
    """Path -> content of the repo's head commit, read from the emulator's store."""
    repo = hub.state.store.get(repo_type, REPO_ID)
    out = {}
    for path, entry in repo.head.files.items():
        if path != ".gitattributes":
            out[path] = hub.state.store.object_path(entry.sha256).read_bytes()
    return out


def _commits(hub: HubEmulator) -> int:
    return sum(1 for r in hub.requests() if "/commit/" in r.path and r.status == 200)


def _artifacts(root: Path) -> Path:
    (root / "run1").mkdir(parents=True)
    (root / "run1" / "model_best.pt").write_bytes(b"\0weights" * 1000)
    (root / "run1" / "metrics.json").write_text('{"top1": 0.11}\n')
    (root / "run1" / "notes.txt").write_text("not synced: no pattern matches\n")
    (root / "run1" / ".model_best.pt.x1.tmp").write_bytes(b"partial")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "secret.json").write_text("{}")
    return root


def test_once_uploads_changes_and_a_resync_sends_nothing(hub: HubEmulator, tmp_path: Path):
    src = _artifacts(tmp_path / "artifacts")
    env = hf_env(hub, tmp_path, HF_SYNC_STATE_DIR=str(tmp_path / "state"))
    done = _sync(env, "once", "--source", str(src), "--repo", REPO_ID)
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(
        r"uploaded 2 file\(s\), 8015 bytes, to acme/artifacts in commit [0-9a-f]{12} "
        r"\(\d+\.\d s\): run1/metrics\.json, run1/model_best\.pt; 0 unchanged\n", done.stdout)
    assert _files(hub) == {"run1/model_best.pt": b"\0weights" * 1000,
                           "run1/metrics.json": b'{"top1": 0.11}\n'}
    assert hub.state.store.get("model", REPO_ID).private is True

    hub.clear_requests()
    again = _sync(env, "once", "--source", str(src), "--repo", REPO_ID)
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"nothing to upload: 2 file(s) unchanged in {src} ({REPO_ID})\n"
    assert hub.requests() == []  # not a byte, not even a request

    (src / "run1" / "metrics.json").write_text('{"top1": 0.12}\n')
    (src / "run2").mkdir()
    (src / "run2" / "checkpoint_last.pt").write_bytes(b"\1" * 10)
    third = _sync(env, "once", "--source", str(src), "--repo", REPO_ID, "--json")
    assert third.returncode == 0, third.stderr
    result = json.loads(third.stdout)
    assert result["uploaded"] == [{"path": "run1/metrics.json", "bytes": 15},
                                  {"path": "run2/checkpoint_last.pt", "bytes": 10}]
    assert (result["unchanged"], result["bytes"]) == (1, 25)
    assert _commits(hub) == 1
    assert _files(hub)["run1/metrics.json"] == b'{"top1": 0.12}\n'
    assert_no_canary(done.stdout, done.stderr, again.stderr, third.stdout, third.stderr)
    assert_canary_never_in_urls(hub)
    index = (tmp_path / "state" / "upload_index.json").read_text()
    assert CANARY not in index and "run2/checkpoint_last.pt" in index


@pytest.mark.parametrize(("env_extra", "args", "message"), [
    ({}, [], "hf-sync once: error: no repo: pass --repo OWNER/NAME or set HF_REPO_ID"),
    ({}, ["--repo", "../etc"],
     "hf-sync once: error: --repo '../etc': expected OWNER/NAME (letters, digits, '.', '_', '-')"),
    ({"HF_TOKEN": ""}, ["--repo", REPO_ID],
     "hf-sync once: error: upload to acme/artifacts: no HF token found: set HF_TOKEN (or "
     "HF_TOKEN_PATH), pass --token where the command has it, or store it with `keyring set "
     "huggingface codex_hf_write_token`"),
    ({"HF_TOKEN": "hf_wrong_token_0000000"}, ["--repo", REPO_ID],
     "hf-sync once: error: create model repo acme/artifacts: HTTP 401, the Hub refused the "
     "token: set HF_TOKEN (or HF_TOKEN_PATH), pass --token where the command has it, or store "
     "it with `keyring set huggingface codex_hf_write_token`"),
    ({}, ["--repo", REPO_ID, "--source", "/nonexistent/artifacts"],
     "hf-sync once: error: source directory /nonexistent/artifacts does not exist (--source or "
     "HF_SYNC_SOURCE_DIR)"),
    ({"HF_SYNC_PATTERNS": ","}, ["--repo", REPO_ID],
     "hf-sync once: error: bad environment: HF_SYNC_PATTERNS=',': String should match pattern "
     "'[^,\\s]' (Comma-separated file-name globs to sync.)"),
])
def test_once_bad_input(hub: HubEmulator, tmp_path: Path, env_extra: dict[str, str],
                        args: list[str], message: str):
    src = _artifacts(tmp_path / "artifacts")
    env = hf_env(hub, tmp_path, HF_SYNC_STATE_DIR=str(tmp_path / "state"), **env_extra)
    done = _sync(env, "once", "--source", str(src), *args)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.splitlines()[-1] == message
    assert "hf_wrong_token_0000000" not in done.stderr


def _status(state: Path) -> dict[str, object]:
    try:
        return json.loads((state / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def test_watcher_waits_for_a_checkpoint_written_in_pieces(hub: HubEmulator, tmp_path: Path):
    from appliance.sync import pending_count

    src = tmp_path / "artifacts"
    (src / "run1").mkdir(parents=True)
    state = tmp_path / "state"
    env = hf_env(hub, tmp_path, HF_SYNC_STATE_DIR=str(state), HF_REPO_ID=REPO_ID,
                 HF_SYNC_SOURCE_DIR=str(src))
    proc = subprocess.Popen([sys.executable, "-m", "appliance.sync", "watch", "--debounce", "0.4"],
                            env=env, cwd=env["PYTHONPATH"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: _status(state).get("mode") == "inotify", timeout=20)
        pieces = [os.urandom(64 * 1024) for _ in range(4)]
        with (src / "run1" / "checkpoint_last.pt").open("wb") as fh:
            for piece in pieces:
                fh.write(piece)
                fh.flush()
                # Pauses longer than the debounce: only the close says the file is complete.
                time.sleep(0.6)
                assert _commits(hub) == 0
            assert pending_count(state) == 1
            assert _status(state)["pending_files"] == ["run1/checkpoint_last.pt"]
        wait_until(lambda: _commits(hub) == 1, timeout=15)
        assert _files(hub) == {"run1/checkpoint_last.pt": b"".join(pieces)}
        wait_until(lambda: pending_count(state) == 0, timeout=5)

        # An atomic write (temp file + rename, as the trainer does) goes up once, no temp file.
        tmp = src / "run1" / ".model_best.pt.abc.tmp"
        tmp.write_bytes(b"best" * 100)
        os.replace(tmp, src / "run1" / "model_best.pt")
        (src / "run1" / "metrics.json").write_text('{"done": true}')
        wait_until(lambda: _commits(hub) == 2, timeout=15)
        assert sorted(_files(hub)) == ["run1/checkpoint_last.pt", "run1/metrics.json",
                                       "run1/model_best.pt"]  # both in the second commit
        time.sleep(1.0)
        assert _commits(hub) == 2  # and nothing uploaded twice
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert _status(state)["mode"] == "stopped" and _status(state)["pending"] == 0
    assert "received SIGTERM: stopping" in err
    assert_no_canary(out, err, (state / "status.json").read_text())
    assert_canary_never_in_urls(hub)


def test_watcher_polls_and_retries_with_backoff(hub: HubEmulator, tmp_path: Path):
    src = tmp_path / "artifacts"
    src.mkdir()
    state = tmp_path / "state"
    env = hf_env(hub, tmp_path, HF_SYNC_STATE_DIR=str(state), HF_REPO_ID=REPO_ID,
                 HF_SYNC_SOURCE_DIR=str(src), HF_SYNC_MODE="poll", HF_SYNC_POLL_SECONDS="0.2",
                 HF_SYNC_DEBOUNCE_SECONDS="0.2")
    hub.add_fault("/commit/", status=503, times=2)
    proc = subprocess.Popen([sys.executable, "-m", "appliance.sync", "watch", "--retry-backoff",
                             "0.3"], env=env, cwd=env["PYTHONPATH"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: _status(state).get("mode") == "poll", timeout=20)
        (src / "model.pt").write_bytes(b"\0" * 1000)
        wait_until(lambda: _status(state).get("last_error") is not None, timeout=10)
        status = _status(state)
        assert status["pending"] == 1
        assert status["last_error"] == (
            f"commit 1 file(s) to {REPO_ID}: HTTP 503 from {hub.url} (gave up after 1 attempts)")
        wait_until(lambda: _commits(hub) == 1, timeout=15)
        wait_until(lambda: _status(state).get("pending") == 0, timeout=5)
        assert _status(state)["last_error"] is None
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    failed = [r for r in hub.requests() if "/commit/" in r.path]
    assert [r.status for r in failed] == [503, 503, 200]
    assert err.count("upload of 1 file(s) failed") == 2
    assert_no_canary(out, err)
