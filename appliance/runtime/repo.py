"""The pod's project checkout: which code runs, clone or fast-forward REPO_DIR, the state root,
and the requirements hash stamp.

REPO_DIR is the pod's state root on the volume and the place REPO_URL is cloned into; with no
checkout there and no REPO_URL the code baked in the image runs (nothing is copied). A clone into
a REPO_DIR that already holds files (the state of earlier runs) keeps every one of them: git
refuses to overwrite any, and the attempt is undone. git runs as the owner of REPO_DIR, never
prompts, and its messages never show URL credentials; `pip install -r` runs only when
requirements.txt's hash differs from the stamp (or when forced).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.atomic import atomic_write, sha256_file
from appliance.runtime.config import strip_credentials
from appliance.settings import PathSettings, holds_checkout

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
    requirements.txt -> a mounted checkout, left alone; holding other files (the pod's state)
    -> the clone is made around them, or refused naming the files it would overwrite.
    """
    shown = strip_credentials(url)
    if repo_dir.exists() and not repo_dir.is_dir():
        raise RepoError(f"REPO_DIR={repo_dir} is a file, not a directory")
    if (repo_dir / ".git").exists():
        if not pull:
            return Outcome("skipped", f"{repo_dir} is a checkout; GIT_AUTO_PULL=0 leaves it as is")
        return _pull(Git(url, _owner(repo_dir) or run_as), ref, repo_dir)
    if repo_dir.is_dir() and any(repo_dir.iterdir()):
        if holds_checkout(repo_dir):
            return Outcome("skipped", f"{repo_dir} is not a git checkout but holds "
                           "requirements.txt: used as a mounted checkout")
        return _clone_around(Git(url, _owner(repo_dir) or run_as), ref, repo_dir)
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


def _clone_around(git: Git, ref: str, repo_dir: Path) -> Outcome:
    """A clone into a non-empty dir: init, fetch, check out; git overwrites no file there
    (ignored ones included), and on any failure the .git made here is removed again."""
    shown = strip_credentials(git.url)
    kept = sorted(p.name for p in repo_dir.iterdir())
    git("init", "--quiet", str(repo_dir))
    try:
        git("remote", "add", "origin", git.url, cwd=repo_dir)
        git("fetch", "--quiet", "--tags", "origin", cwd=repo_dir)
        branch = ref or _default_branch(git, repo_dir)
        is_branch = git("rev-parse", "--verify", "--quiet", f"refs/remotes/origin/{branch}",
                        cwd=repo_dir, check=False).returncode == 0
        target = (["-b", branch, "--track", f"origin/{branch}"] if is_branch
                  else ["--detach", branch])
        proc = git("checkout", "--quiet", "--no-overwrite-ignore", *target, cwd=repo_dir,
                   check=False)
        if proc.returncode != 0:
            clash = [line.strip() for line in proc.stderr.splitlines()
                     if line.startswith(("\t", " "))]
            why = (f"it would overwrite {', '.join(clash)}" if clash
                   else git._scrub(proc.stderr) or f"exit {proc.returncode}")
            raise RepoError(f"not cloning {shown} into {repo_dir}, which holds "
                            f"{', '.join(kept)}: {why}; move those away or set REPO_DIR to "
                            "another dir")
    except BaseException:
        shutil.rmtree(repo_dir / ".git", ignore_errors=True)
        raise
    return Outcome("cloned", f"{shown} at {ref or 'default branch'} ({git.head(repo_dir)}) into "
                   f"{repo_dir}, keeping what was there ({', '.join(kept)})")


def _default_branch(git: Git, repo: Path) -> str:
    out = git("ls-remote", "--symref", "origin", "HEAD", cwd=repo).stdout
    for line in out.splitlines():
        if line.startswith("ref: refs/heads/") and line.endswith("\tHEAD"):
            return line.removeprefix("ref: refs/heads/").removesuffix("\tHEAD")
    raise RepoError(f"{strip_credentials(git.url)} names no default branch: set REPO_REF")


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


# -- which code runs, where the state goes ----------------------------------------------------

def code_choice(paths: PathSettings, url: str) -> Outcome:
    """Which code the pod runs, said once in the bootstrap log."""
    if holds_checkout(paths.REPO_DIR):
        return Outcome("checkout", f"code from the checkout in {paths.REPO_DIR}")
    if url:
        return Outcome("image code", f"{paths.REPO_DIR} holds no checkout (REPO_URL was not "
                       f"cloned): using the code baked in the image at "
                       f"{paths.APPLIANCE_CODE_DIR}")
    return Outcome("image code", f"{paths.REPO_DIR} holds no checkout and REPO_URL is empty: "
                   f"using the code baked in the image at {paths.APPLIANCE_CODE_DIR} (nothing "
                   "copied)")


def checkout_pythonpath(paths: PathSettings) -> Path | None:
    """The checkout whose `appliance` package the services import ahead of the image's."""
    code = paths.code_dir
    if code == paths.APPLIANCE_CODE_DIR or not (code / "appliance" / "__init__.py").is_file():
        return None
    return code


def prepare_state_root(paths: PathSettings, user: str) -> list[Path]:
    """REPO_DIR, its artifacts/ and the phase log's dir exist and belong to `user` where root
    made them (the bootstrap logs phases before the account exists), so that `user` can train
    there. Returns the dirs given to `user`."""
    pw = pwd.getpwnam(user)
    root = paths.state_root
    dirs = [root, root / "artifacts"]
    log_dir = paths.timing_log.parent
    if log_dir.is_relative_to(root):
        parts = log_dir.relative_to(root).parts
        dirs += [root.joinpath(*parts[:i]) for i in range(1, len(parts) + 1)]
    given = []
    for d in dict.fromkeys(dirs):
        d.mkdir(parents=True, exist_ok=True)
        if d.stat().st_uid == 0 and pw.pw_uid != 0:
            os.chown(d, pw.pw_uid, pw.pw_gid)
            given.append(d)
    return given


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
