"""Where the code is and where the state goes: REPO_DIR as the state root, the code baked in the
image while REPO_DIR holds no checkout, and the service start times the listener records."""

from __future__ import annotations

import io
import json
import os
import pwd
from pathlib import Path

import pytest

from appliance import settings
from appliance.runtime.repo import (
    Outcome,
    checkout_pythonpath,
    code_choice,
    prepare_state_root,
)
from appliance.runtime.reviver import Reviver, run
from appliance.runtime.service_timing import ServiceStarts
from appliance.timing import TimingLog


@pytest.fixture
def paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> settings.PathSettings:
    for name in ("RUNPOD_PHASE_TIMING_LOG", "APPLIANCE_SECRETS_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REPO_DIR", str(tmp_path / "workspace" / "chess-bot"))
    monkeypatch.setenv("APPLIANCE_CODE_DIR", str(tmp_path / "opt" / "chessbot"))
    return settings.load(settings.PathSettings)


def test_state_defaults_follow_repo_dir_whichever_code_runs(paths, tmp_path):
    state = tmp_path / "workspace" / "chess-bot"
    hf = settings.HfSettings()
    assert paths.state_root == state
    assert paths.code_dir == tmp_path / "opt" / "chessbot"
    assert paths.timing_log == state / "artifacts" / "timings" / "runpod_phase_times.jsonl"
    assert hf.sync_source_dir(paths.state_root) == state / "artifacts"
    assert hf.sync_state_dir(paths.state_root) == state / ".appliance" / "hf-sync"
    assert hf.dataset_cache_dir(paths.state_root) == state / "data" / "hf_datasets"


@pytest.mark.parametrize("marker", [".git", "requirements.txt"])
def test_a_checkout_in_repo_dir_is_the_code(paths, marker):
    paths.REPO_DIR.mkdir(parents=True)
    if marker == ".git":
        (paths.REPO_DIR / marker).mkdir()
    else:
        (paths.REPO_DIR / marker).write_text("numpy\n")
    assert settings.holds_checkout(paths.REPO_DIR)
    assert paths.code_dir == paths.REPO_DIR == paths.state_root
    assert code_choice(paths, "") == Outcome("checkout",
                                             f"code from the checkout in {paths.REPO_DIR}")


def test_no_checkout_and_no_url_uses_the_image_code_and_says_so(paths):
    (paths.REPO_DIR / "artifacts").mkdir(parents=True)  # state alone is no checkout
    assert not settings.holds_checkout(paths.REPO_DIR)
    assert code_choice(paths, "") == Outcome(
        "image code", f"{paths.REPO_DIR} holds no checkout and REPO_URL is empty: using the code "
        f"baked in the image at {paths.APPLIANCE_CODE_DIR} (nothing copied)")
    assert code_choice(paths, "file:///srv/x.git") == Outcome(
        "image code", f"{paths.REPO_DIR} holds no checkout (REPO_URL was not cloned): using the "
        f"code baked in the image at {paths.APPLIANCE_CODE_DIR}")
    assert checkout_pythonpath(paths) is None
    assert not paths.APPLIANCE_CODE_DIR.exists()  # nothing was copied anywhere


def test_services_import_a_checkout_holding_the_package(paths):
    (paths.REPO_DIR / ".git").mkdir(parents=True)
    assert checkout_pythonpath(paths) is None  # another project: the image's package runs
    (paths.REPO_DIR / "appliance").mkdir()
    (paths.REPO_DIR / "appliance" / "__init__.py").write_text("")
    assert checkout_pythonpath(paths) == paths.REPO_DIR


def test_state_root_dirs_are_made_for_the_account(paths):
    user = pwd.getpwuid(os.geteuid()).pw_name
    assert prepare_state_root(paths, user) == []  # root training as root: nothing to give
    for d in (paths.REPO_DIR, paths.REPO_DIR / "artifacts", paths.timing_log.parent):
        assert d.is_dir()


def test_state_root_on_a_file_fails_with_the_path(paths):
    paths.REPO_DIR.parent.mkdir(parents=True)
    paths.REPO_DIR.write_text("not a dir")
    with pytest.raises(FileExistsError) as err:
        prepare_state_root(paths, pwd.getpwuid(os.geteuid()).pw_name)
    assert err.value.filename == str(paths.REPO_DIR)


# -- service start times ----------------------------------------------------------------------

def _boot_record(tmp_path: Path, **fields: object) -> Path:
    record = tmp_path / "bootstrap.json"
    record.write_text(json.dumps({"run_id": "boot-1", "started_epoch_ms": 1_000_000,
                                  "timing_log": str(tmp_path / "t.jsonl"), **fields}))
    return record


def _rows(tmp_path: Path) -> list[dict]:
    log = tmp_path / "t.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_first_running_of_each_program_is_recorded_once(tmp_path):
    starts = ServiceStarts.from_boot_record(_boot_record(tmp_path), tmp_path / "marks")
    assert starts is not None
    starts.clock = lambda: 1_002.5
    starts.handle("PROCESS_STATE_STARTING", {"processname": "sshd"})
    starts.handle("PROCESS_STATE_RUNNING", {"processname": "sshd", "groupname": "sshd"})
    starts.handle("PROCESS_STATE_RUNNING", {"processname": "sshd", "groupname": "sshd"})
    starts.clock = lambda: 1_007.25
    starts.handle("PROCESS_STATE_RUNNING", {"processname": "inference"})
    rows = _rows(tmp_path)
    assert [(r["source"], r["run_id"], r["phase"], r["status"], r["program"], r["elapsed_ms"])
            for r in rows] == [
        ("runpod_services", "boot-1", "service_start", "ok", "sshd", 2500),
        ("runpod_services", "boot-1", "service_start", "ok", "inference", 7250)]
    # a restarted listener (same boot) records nothing twice; a new boot starts afresh
    again = ServiceStarts.from_boot_record(_boot_record(tmp_path), tmp_path / "marks")
    assert again is not None
    again.handle("PROCESS_STATE_RUNNING", {"processname": "sshd"})
    assert len(_rows(tmp_path)) == 2
    nxt = ServiceStarts.from_boot_record(_boot_record(tmp_path, started_epoch_ms=2_000_000),
                                         tmp_path / "marks")
    assert nxt is not None
    nxt.handle("PROCESS_STATE_RUNNING", {"processname": "sshd"})
    assert [r["program"] for r in _rows(tmp_path)] == ["sshd", "inference", "sshd"]


@pytest.mark.parametrize("text", [None, "not json", '{"run_id": "x"}',
                                  '{"run_id": "x", "timing_log": "/t", "started_epoch_ms": "y"}'])
def test_no_usable_boot_record_means_no_timing(tmp_path, text):
    record = tmp_path / "bootstrap.json"
    if text is not None:
        record.write_text(text)
    assert ServiceStarts.from_boot_record(record, tmp_path / "marks") is None


def test_the_listener_hands_every_event_to_observers_and_survives_their_errors(tmp_path):
    log = io.StringIO()
    reviver = Reviver(lambda name: None, tmp_path / "fatal", 60, 2, frozenset(), log=log)
    seen: list[tuple[str, dict[str, str]]] = []

    def broken(event: str, body: dict[str, str]) -> None:
        raise ValueError("boom")

    payload = "processname:sshd groupname:sshd from_state:STARTING pid:7"
    stdin = io.StringIO(f"ver:3.0 eventname:PROCESS_STATE_RUNNING len:{len(payload)}\n"
                        f"{payload}")
    stdout = io.StringIO()
    run(reviver, stdin, stdout, once=True,
        observers=[broken, lambda e, b: seen.append((e, b))])
    assert stdout.getvalue() == "READY\nRESULT 2\nOK"
    assert seen == [("PROCESS_STATE_RUNNING", {"processname": "sshd", "groupname": "sshd",
                                               "from_state": "STARTING", "pid": "7"})]
    assert "error handling PROCESS_STATE_RUNNING: ValueError('boom')" in log.getvalue()


def test_timing_log_extra_fields_follow_the_documented_ones(tmp_path):
    rec = TimingLog(tmp_path / "t.jsonl", "s", "r").record("service_start", "ok", 5,
                                                          extra={"program": "sshd"})
    assert list(rec) == ["ts_epoch_ms", "source", "run_id", "phase", "status", "elapsed_ms",
                         "program"]
