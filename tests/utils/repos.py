"""What a test pod installs from, made on the spot: git repositories owned by runner (the pod's
git runs as runner), minimal wheels, and fresh venvs that may see this project's packages.
"""

from __future__ import annotations

import base64
import hashlib
import os
import pwd
import subprocess
import sysconfig
import zipfile
from collections.abc import Mapping
from pathlib import Path

from tests.utils.appliance import PYTHON, USER


def git(*args: str, cwd: Path) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.invalid",
           "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.invalid"}
    return subprocess.run(["git", "-c", "init.defaultBranch=main", "-c", "safe.directory=*",
                           *args], cwd=cwd, env=env,
                          check=True, capture_output=True, text=True).stdout.strip()


def commit_files(repo: Path, files: Mapping[str, str], message: str) -> str:
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    git("add", *files, cwd=repo)
    git("commit", "-q", "-m", message, cwd=repo)
    give_to_runner(repo)
    return git("rev-parse", "--short", "HEAD", cwd=repo)


def give_to_runner(path: Path) -> None:
    """git refuses to serve a local repository owned by another user ("dubious ownership"),
    and the pod's git runs as runner: a test's source repository belongs to runner."""
    pw = pwd.getpwnam(USER)
    for d, _, names in os.walk(path):
        os.chown(d, pw.pw_uid, pw.pw_gid)
        for n in names:
            os.lchown(os.path.join(d, n), pw.pw_uid, pw.pw_gid)


def make_source_repo(path: Path, files: Mapping[str, str]) -> str:
    """A repository with one commit on main; returns its file:// URL."""
    path.mkdir(parents=True)
    git("init", "-q", cwd=path)
    commit_files(path, files, "first")
    return f"file://{path}"


def make_wheel(out_dir: Path, name: str = "tinypkg", version: str = "0.1") -> Path:
    """A minimal pure-Python wheel, so pip installs something real with no index."""
    out_dir.mkdir(parents=True, exist_ok=True)
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"VERSION = {version!r}\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\n"
                         "Tag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = "\n".join(record) + "\n"
    wheel = out_dir / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return wheel


def make_venv(path: Path, see_project: bool) -> Path:
    """A fresh venv (fast: no pip of its own); with `see_project`, this project's venv (pip,
    torch, jupyterlab, appliance) is on its path too, while installs land in the new venv."""
    subprocess.run([str(PYTHON), "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    if see_project:
        purelib = subprocess.run([str(python), "-c",
                                  "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 check=True, capture_output=True, text=True).stdout.strip()
        project = sysconfig.get_paths()["purelib"]
        Path(purelib, "_project_venv.pth").write_text(
            f"import site; site.addsitedir({project!r})\n")
    return python
