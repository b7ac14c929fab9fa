"""The pod's project checkout: clone or fast-forward REPO_DIR, and the requirements hash stamp.

git runs as the owner of REPO_DIR, never prompts, and its messages never show URL credentials;
`pip install -r` runs only when requirements.txt's hash differs from the stamp (or when forced).
"""

from __future__ import annotations

import os
import pwd
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.atomic import atomic_write, sha256_file
from appliance.runtime.config import strip_credentials

GIT_TIMEOUT_S = 600
PIP_TIMEOUT_S = 3600


class RepoError(RuntimeError):
    """A git or pip step that failed, with the command's own message (credentials removed)."""


@dataclass(frozen=True)
class Outcome:
    action: str  # cloned, pulled, up to date, skipped, installed, ...
    detail: str
    exit_code: int | None = None


class Git:
    def __init__(self, url: str, run_as: str | None, git: str = "git") -> None:
        self.url = url
        self.run_as = run_as
        self.git = git

    def _scrub(self, text: str) -> str:
        return text.replace(self.url, strip_credentials(self.url)).strip()

    def __call__(self, *args: str, cwd: Path | None = None, check: bool = True
                 ) -> subprocess.CompletedProcess[str]:
        # safe.directory: the checkout may belong to another uid than the one running git.
        cmd = [self.git, "-c", "safe.directory=*", *args]
        # Never wait for a password nobody can type: fail instead.
        env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true"}
        ids: dict[str, Any] = {}
        if self.run_as is not None and os.geteuid() == 0:
            pw = pwd.getpwnam(self.run_as)
            if pw.pw_uid != 0:
                ids = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
                env.update(HOME=pw.pw_dir, USER=pw.pw_name, LOGNAME=pw.pw_name)
        try:
            proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                                  timeout=GIT_TIMEOUT_S, stdin=subprocess.DEVNULL, **ids)
        except subprocess.TimeoutExpired:
            raise RepoError(f"git {args[0]} took longer than {GIT_TIMEOUT_S} s") from None
        if check and proc.returncode != 0:
            message = self._scrub(proc.stderr or proc.stdout) or "no message"
            raise RepoError(f"git {args[0]} failed (exit {proc.returncode}): {message}")
        return proc

    def head(self, repo: Path) -> str:
        return self("rev-parse", "--short", "HEAD", cwd=repo).stdout.strip()


def _owner(path: Path) -> str | None:
    try:
        return pwd.getpwuid(path.stat().st_uid).pw_name
    except KeyError:
        return None


def prepare_checkout(url: str, ref: str, repo_dir: Path, *, pull: bool,
                     run_as: str | None) -> Outcome:
    """Clone `url` into `repo_dir`, or fast-forward the checkout already there.

    An existing REPO_DIR that is not a git checkout: empty -> clone into it; holding a
    requirements.txt -> a mounted checkout, left alone; anything else -> left alone.
    """
    shown = strip_credentials(url)
    if repo_dir.exists() and not repo_dir.is_dir():
        raise RepoError(f"REPO_DIR={repo_dir} is a file, not a directory")
    if (repo_dir / ".git").exists():
        if not pull:
            return Outcome("skipped", f"{repo_dir} is a checkout; GIT_AUTO_PULL=0 leaves it as is")
        return _pull(Git(url, _owner(repo_dir) or run_as), ref, repo_dir)
    if repo_dir.is_dir() and any(repo_dir.iterdir()):
        if (repo_dir / "requirements.txt").exists():
            return Outcome("skipped", f"{repo_dir} is not a git checkout but holds "
                           "requirements.txt: used as a mounted checkout")
        return Outcome("skipped", f"{repo_dir} is not empty and not a git checkout: not cloning "
                       f"{shown} over it")
    repo_dir.mkdir(parents=True, exist_ok=True)
    if run_as is not None and os.geteuid() == 0:
        pw = pwd.getpwnam(run_as)
        os.chown(repo_dir, pw.pw_uid, pw.pw_gid)
    git = Git(url, run_as)
    git("clone", "--quiet", url, str(repo_dir))
    if ref:
        git("checkout", "--quiet", ref, cwd=repo_dir)
    return Outcome("cloned", f"{shown} at {ref or 'default branch'} ({git.head(repo_dir)}) into "
                   f"{repo_dir}")


def _pull(git: Git, ref: str, repo: Path) -> Outcome:
    before = git.head(repo)
    git("fetch", "--quiet", "--tags", "origin", cwd=repo)
    if ref:
        is_branch = git("rev-parse", "--verify", "--quiet", f"refs/remotes/origin/{ref}",
                        cwd=repo, check=False).returncode == 0
        if is_branch:
            current = git("symbolic-ref", "--quiet", "--short", "HEAD", cwd=repo,
                          check=False).stdout.strip()
            if current != ref:
                git("checkout", "--quiet", ref, cwd=repo)
            git("merge", "--ff-only", "--quiet", f"origin/{ref}", cwd=repo)
        else:
            git("checkout", "--quiet", "--detach", ref, cwd=repo)
    else:
        upstream = git("rev-parse", "--abbrev-ref", "--symbolic-full-name", "@{u}", cwd=repo,
                       check=False)
        if upstream.returncode != 0:
            return Outcome("skipped", f"{repo} has no upstream branch: left at {before}")
        git("merge", "--ff-only", "--quiet", "@{u}", cwd=repo)
    after = git.head(repo)
    if after == before:
        return Outcome("up to date", f"{repo} at {after}")
    return Outcome("pulled", f"{repo} {before} -> {after}")


# -- requirements ------------------------------------------------------------------------------

def requirements_hash(path: Path) -> str:
    return sha256_file(path)


def read_stamp(stamp: Path) -> str | None:
    try:
        return stamp.read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None


def pip_command(python: Path, requirements: Path) -> list[str]:
    return [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
            "-r", str(requirements)]


def sync_requirements(repo_dir: Path, python: Path, stamp: Path, *, force: bool,
                      log_lines: int = 5) -> Outcome:
    """`pip install -r requirements.txt` into `python`'s environment unless the stamp matches."""
    req = repo_dir / "requirements.txt"
    if not req.is_file():
        return Outcome("skipped", f"no {req}")
    digest = requirements_hash(req)
    stamped = read_stamp(stamp)
    if stamped == digest and not force:
        return Outcome("skipped", f"requirements.txt unchanged (sha256 {digest[:12]}): pip "
                       "not run")
    why = "forced (FORCE_REQUIREMENTS_SYNC=1)" if force and stamped == digest else (
        "no stamp yet" if stamped is None else f"hash changed from {stamped[:12]}")
    cmd: Sequence[str] = pip_command(python, req)
    try:
        proc = subprocess.run(cmd, cwd=repo_dir, capture_output=True, text=True,
                              timeout=PIP_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise RepoError(f"pip install -r {req} took longer than {PIP_TIMEOUT_S} s") from None
    except OSError as exc:
        raise RepoError(f"cannot run {python}: {exc.strerror}") from None
    tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-log_lines:])
    if proc.returncode != 0:
        raise RepoError(f"pip install -r {req} failed (exit {proc.returncode}); stamp not "
                        f"updated: {tail}")
    atomic_write(stamp, lambda fh: fh.write(f"{digest}\n".encode()))
    return Outcome("installed", f"pip install -r {req} ({why}); stamp {digest[:12]}",
                   exit_code=proc.returncode)
