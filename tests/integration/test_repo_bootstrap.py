"""Repo bootstrap against real git repositories (file URLs): clone, pull, the non-git REPO_DIR
cases, and the requirements stamp through `python -m appliance.runtime.bootstrap --no-exec`."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.runtime.repo import Outcome, RepoError, prepare_checkout
from tests.utils.appliance import (
    USER,
    base_env,
    ensure_runner,
    make_root,
    remove_root,
    run_bootstrap,
)
from tests.utils.repos import (
    commit_files,
    git,
    give_to_runner,
    make_source_repo,
    make_venv,
    make_wheel,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: git runs as runner")


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    ensure_runner()
    path = make_root("repo-")
    yield path
    remove_root(path)


@pytest.fixture
def source(root: Path, request: pytest.FixtureRequest) -> tuple[Path, str]:
    path = root / f"src-{request.node.name}"
    return path, make_source_repo(path, {"README.md": "v1\n", "app.py": "print(1)\n"})


def test_fresh_clone_belongs_to_runner(root: Path, source: tuple[Path, str]):
    src, url = source
    dest = root / "clone-fresh" / "repo"
    outcome = prepare_checkout(url, "", dest, pull=True, run_as=USER)
    head = git("rev-parse", "--short", "HEAD", cwd=src)
    assert outcome == Outcome("cloned", f"{url} at default branch ({head}) into {dest}")
    assert (dest / "app.py").read_text() == "print(1)\n"
    assert pwd.getpwuid((dest / "app.py").stat().st_uid).pw_name == USER


def test_pull_brings_a_new_commit_and_then_is_up_to_date(root: Path, source: tuple[Path, str]):
    src, url = source
    dest = root / "clone-pull"
    prepare_checkout(url, "", dest, pull=True, run_as=USER)
    before = git("rev-parse", "--short", "HEAD", cwd=src)
    after = commit_files(src, {"new.txt": "new\n"}, "second")
    assert prepare_checkout(url, "", dest, pull=True, run_as=USER) == Outcome(
        "pulled", f"{dest} {before} -> {after}")
    assert (dest / "new.txt").read_text() == "new\n"
    assert prepare_checkout(url, "", dest, pull=True, run_as=USER) == Outcome(
        "up to date", f"{dest} at {after}")
    assert prepare_checkout(url, "", dest, pull=False, run_as=USER) == Outcome(
        "skipped", f"{dest} is a checkout; GIT_AUTO_PULL=0 leaves it as is")


def test_ref_selects_a_tag_and_a_branch(root: Path, source: tuple[Path, str]):
    src, url = source
    git("tag", "v1", cwd=src)
    git("checkout", "-q", "-b", "feature", cwd=src)
    feature = commit_files(src, {"feature.txt": "f\n"}, "feature")
    git("checkout", "-q", "main", cwd=src)
    dest = root / "clone-ref"
    assert prepare_checkout(url, "v1", dest, pull=True, run_as=USER).action == "cloned"
    assert not (dest / "feature.txt").exists()
    outcome = prepare_checkout(url, "feature", dest, pull=True, run_as=USER)
    assert outcome.action == "pulled" and outcome.detail.endswith(f"-> {feature}")
    assert git("symbolic-ref", "--short", "HEAD", cwd=dest) == "feature"


def test_empty_repo_dir_is_cloned_into(root: Path, source: tuple[Path, str]):
    _, url = source
    dest = root / "empty-dir"
    dest.mkdir()
    assert prepare_checkout(url, "", dest, pull=True, run_as=USER).action == "cloned"
    assert (dest / ".git").is_dir()


def test_non_git_dir_with_requirements_is_a_mounted_checkout(root: Path,
                                                             source: tuple[Path, str]):
    _, url = source
    dest = root / "mounted"
    dest.mkdir()
    (dest / "requirements.txt").write_text("numpy\n")
    assert prepare_checkout(url, "", dest, pull=True, run_as=USER) == Outcome(
        "skipped", f"{dest} is not a git checkout but holds requirements.txt: used as a mounted "
        "checkout")
    assert sorted(p.name for p in dest.iterdir()) == ["requirements.txt"]


def test_a_dir_holding_state_is_cloned_around_keeping_every_file(root: Path,
                                                                  source: tuple[Path, str]):
    src, url = source
    dest = root / "state"
    (dest / "artifacts" / "timings").mkdir(parents=True)
    (dest / "artifacts" / "timings" / "log.jsonl").write_text("{}\n")
    (dest / "notes.txt").write_text("mine\n")
    give_to_runner(dest)
    head = git("rev-parse", "--short", "HEAD", cwd=src)
    assert prepare_checkout(url, "", dest, pull=True, run_as=USER) == Outcome(
        "cloned", f"{url} at default branch ({head}) into {dest}, keeping what was there "
        "(artifacts, notes.txt)")
    assert (dest / "app.py").read_text() == "print(1)\n"
    assert (dest / "notes.txt").read_text() == "mine\n"
    assert (dest / "artifacts" / "timings" / "log.jsonl").read_text() == "{}\n"
    assert git("symbolic-ref", "--short", "HEAD", cwd=dest) == "main"
    assert git("rev-parse", "--abbrev-ref", "@{u}", cwd=dest) == "origin/main"
    # the next start fast-forwards it like any clone
    assert prepare_checkout(url, "", dest, pull=True, run_as=USER) == Outcome(
        "up to date", f"{dest} at {head}")


def test_a_clone_that_would_overwrite_a_file_is_refused_and_undone(root: Path,
                                                                   source: tuple[Path, str]):
    _, url = source
    dest = root / "clash"
    dest.mkdir()
    (dest / "app.py").write_text("my own app\n")
    (dest / "notes.txt").write_text("mine\n")
    give_to_runner(dest)
    with pytest.raises(RepoError) as err:
        prepare_checkout(url, "", dest, pull=True, run_as=USER)
    assert str(err.value) == (
        f"not cloning {url} into {dest}, which holds app.py, notes.txt: it would overwrite "
        "app.py; move those away or set REPO_DIR to another dir")
    assert sorted(p.name for p in dest.iterdir()) == ["app.py", "notes.txt"]
    assert (dest / "app.py").read_text() == "my own app\n"


def test_unreachable_url_fails_without_showing_the_credentials(root: Path):
    url = "http://user:canary-repo-secret@127.0.0.1:9/nothing.git"
    with pytest.raises(RepoError) as err:
        prepare_checkout(url, "", root / "unreachable", pull=True, run_as=USER)
    assert str(err.value).startswith("git clone failed (exit 128): ")
    assert "canary-repo-secret" not in str(err.value)


def _phase(timings: Path, run_id: str, phase: str) -> dict:
    for line in timings.read_text().splitlines():
        rec = json.loads(line)
        if rec["run_id"] == run_id and rec["phase"] == phase:
            return rec
    raise AssertionError(f"no {phase} record for run {run_id}")


def test_requirements_stamp_skips_pip_until_requirements_change(root: Path):
    work = root / "stamp"
    work.mkdir()
    wheels = work / "wheels"
    make_wheel(wheels, "tinypkg", "0.1")
    make_wheel(wheels, "tinypkg", "0.2")
    src = work / "src"
    url = make_source_repo(src, {"requirements.txt":
                                 f"--no-index\n--find-links {wheels}\ntinypkg==0.1\n"})
    python = make_venv(work / "venv", see_project=True)
    env = base_env(work, REPO_URL=url, APPLIANCE_PYTHON=str(python), START_SSHD="0",
                   START_JUPYTER="0", START_INFERENCE_API="0")

    def start(run_id: str) -> tuple[dict, str]:
        proc = run_bootstrap({**env, "RUN_ID": run_id}, "--no-exec")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return _phase(work / "timings.jsonl", run_id, "requirements_sync"), proc.stdout

    def installed() -> str:
        return subprocess.run([str(python), "-c", "import tinypkg; print(tinypkg.VERSION)"],
                              capture_output=True, text=True).stdout.strip()

    first, out = start("first")
    assert first["status"] == "ok" and first["exit_code"] == 0
    assert "requirements_sync: installed: pip install -r" in out and "(no stamp yet)" in out
    assert installed() == "0.1"
    digest = (work / "requirements.sha256").read_text().strip()

    second, out = start("second")
    assert "exit_code" not in second
    assert (f"requirements_sync: skipped: requirements.txt unchanged (sha256 {digest[:12]}): "
            "pip not run") in out

    commit_files(src, {"requirements.txt": f"--no-index\n--find-links {wheels}\ntinypkg==0.2\n"},
                 "bump tinypkg")
    third, out = start("third")
    assert third["exit_code"] == 0
    assert f"(hash changed from {digest[:12]})" in out
    assert installed() == "0.2"

    proc = run_bootstrap({**env, "RUN_ID": "forced", "FORCE_REQUIREMENTS_SYNC": "1"},
                         "--no-exec")
    assert "(forced (FORCE_REQUIREMENTS_SYNC=1))" in proc.stdout
    assert _phase(work / "timings.jsonl", "forced", "requirements_sync")["exit_code"] == 0


def test_without_torch_inference_is_left_out(root: Path):
    work = root / "notorch"
    work.mkdir()
    python = make_venv(work / "venv", see_project=False)
    env = base_env(work, APPLIANCE_PYTHON=str(python), START_SSHD="0", START_JUPYTER="0",
                   START_INFERENCE_API="1")
    proc = run_bootstrap(env, "--no-exec")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (f"torch_check: torch cannot be imported in {python} (ModuleNotFoundError: No module "
            "named 'torch'): the inference program is left out instead of crash-looping") \
        in proc.stdout
    conf_d = work / "etc" / "supervisor" / "conf.d"
    assert sorted(p.name for p in conf_d.iterdir()) == ["00-fatal-reviver.conf"]
    record = json.loads((work / "run" / "appliance" / "bootstrap.json").read_text())
    assert record["programs"] == ["fatal-reviver"]
    assert record["left_out"] == {"inference": "torch cannot be imported, so the inference API "
                                  "would crash-loop (ModuleNotFoundError: No module named "
                                  "'torch')"}


def test_bootstrap_log_hides_repo_url_credentials(root: Path):
    work = root / "creds"
    work.mkdir()
    env = base_env(work, REPO_URL="http://user:canary-url-secret@127.0.0.1:9/x.git",
                   START_SSHD="0", START_JUPYTER="0", START_INFERENCE_API="0",
                   SYNC_REQUIREMENTS_ON_START="0")
    proc = run_bootstrap(env, "--no-exec")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "repo_sync: git fetch failed (exit 128): " in proc.stdout
    assert f"; going on with what is in {work}/repo" in proc.stdout
    assert "canary-url-secret" not in proc.stdout + proc.stderr
    assert "canary-url-secret" not in (work / "workspace/.appliance/logs/bootstrap.log").read_text()
    assert _phase(work / "timings.jsonl", json.loads(
        (work / "run/appliance/bootstrap.json").read_text())["run_id"], "repo_sync")["status"] \
        == "error"
