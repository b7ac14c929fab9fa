"""host_tools.image (`make image`/`push`/`base-image`) and host_tools.localup (`make up`/`down`/
`smoke`) without a container engine.

Every process these modules start goes through a fake here: an autouse fixture makes any
unfaked subprocess.run/Popen fail the test, so no engine, apt-get, pip or debootstrap ever runs
(only git and ssh-keygen, in a tmp dir, where a test asks for them by name).
"""

from __future__ import annotations

import http.server
import io
import json
import os
import socket
import stat
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from host_tools import image, localup
from host_tools.image import (
    DEFAULT_BASE_IMAGE,
    DEFAULT_IMAGE_REPO,
    DEFAULT_MIRROR,
    PODMAN_RUN_FLAGS,
    ROOT,
    Engine,
    ImageError,
)
from host_tools.localup import LocalPod, SshKey, UpError

pytestmark = pytest.mark.timeout(60)

REAL_RUN = subprocess.run
REAL_POPEN = subprocess.Popen
DOCKER = Engine("docker")
PODMAN = Engine("podman", PODMAN_RUN_FLAGS)
PODMAN_FLAGS = ["--runtime", "runc", "--ulimit", "nofile=1024:1024", "--ulimit",
                "nproc=1024:1024"]
REPO_HINT = "is not an image name like ghcr.io/owner/chess-bot"
# Every variable the two modules read; a developer's shell must not steer the tests.
ENV_VARS = ("IMAGE_REPO", "IMAGE_TAG", "CONTAINER_ENGINE", "BASE_IMAGE", "TORCH_SPEC",
            "TORCH_VARIANT", "DEBIAN_MIRROR", "LOCAL_POD_IMAGE", "LOCAL_POD_NAME",
            "SMOKE_TRAIN_ROWS", "SMOKE_VAL_ROWS", "SMOKE_EPOCHS", "SMOKE_BATCH_SIZE",
            "SMOKE_PROGRESS_JSONL_OUT", "RUN_ID")

Response = tuple[int, str, str]


class FakeRun:
    """Stands in for subprocess.run: records each argv and its keyword arguments."""

    def __init__(self, respond: Callable[[list[str]], Response] | None = None) -> None:
        self.calls: list[list[str]] = []
        self.kwargs: list[dict[str, Any]] = []
        self.respond: Callable[[list[str]], Response] = respond or (lambda argv: (0, "", ""))

    def __call__(self, argv: Sequence[str], *args: Any,
                 **kwargs: Any) -> subprocess.CompletedProcess[str]:
        cmd = [str(a) for a in argv]
        self.calls.append(cmd)
        self.kwargs.append(kwargs)
        rc, out, err = self.respond(cmd)
        if kwargs.get("check") and rc:
            raise subprocess.CalledProcessError(rc, cmd, out, err)
        return subprocess.CompletedProcess(cmd, rc, out, err)


def _unexpected(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError(f"a real process was about to start: {args!r}")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(subprocess, "run", _unexpected)
    monkeypatch.setattr(subprocess, "Popen", _unexpected)


@pytest.fixture
def fake_run(monkeypatch: pytest.MonkeyPatch) -> FakeRun:
    fake = FakeRun()
    monkeypatch.setattr(subprocess, "run", fake)
    return fake


@pytest.fixture
def real_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subprocess, "run", REAL_RUN)
    monkeypatch.setattr(subprocess, "Popen", REAL_POPEN)


def _logged(log: list[Any], item: Any, result: Any) -> Any:
    """Record a call in a lambda-sized fake, then answer it."""
    log.append(item)
    return result


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _which(monkeypatch: pytest.MonkeyPatch, present: set[str]) -> None:
    monkeypatch.setattr(image.shutil, "which",
                        lambda name: f"/usr/bin/{name}" if name in present else None)


# == host_tools.image ==========================================================================
# -- image_repo / tags ---------------------------------------------------------------------------
@pytest.mark.parametrize(("raw", "expected"), [
    ("ghcr.io/owner/chess-bot", "ghcr.io/owner/chess-bot"),
    ("GHCR.io/Owner/Chess-Bot", "ghcr.io/owner/chess-bot"),
    ("  quay.io/a/b  ", "quay.io/a/b"),
    ("localhost:5000/chessbot", "localhost:5000/chessbot"),
    ("registry.example.com/team_x/chess.bot", "registry.example.com/team_x/chess.bot"),
    ("chessbot", "chessbot"),
    ("", DEFAULT_IMAGE_REPO),
])
def test_image_repo_accepts_and_lowercases(raw: str, expected: str) -> None:
    assert image.image_repo(raw) == expected


def test_image_repo_reads_env_then_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert image.image_repo() == DEFAULT_IMAGE_REPO == "chessbot-appliance"
    monkeypatch.setenv("IMAGE_REPO", "")
    assert image.image_repo() == DEFAULT_IMAGE_REPO
    monkeypatch.setenv("IMAGE_REPO", "Quay.io/Me/Bot")
    assert image.image_repo() == "quay.io/me/bot"
    assert image.image_repo("ghcr.io/x/y") == "ghcr.io/x/y"  # the argument wins


@pytest.mark.parametrize("raw", [
    "Bad Repo", "-leading", "trailing-", "a//b", "a/b/", "host:1:2/x", "ümlaut/x", "a..b",
    "ghcr.io/o/r@sha256",
])
def test_image_repo_rejects_bad_shapes(raw: str) -> None:
    with pytest.raises(ImageError) as exc:
        image.image_repo(raw)
    assert str(exc.value) == f"IMAGE_REPO={raw!r} {REPO_HINT}"


def test_image_repo_error_names_the_env_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGE_REPO", "Bad Repo")
    with pytest.raises(ImageError) as exc:
        image.image_repo()
    assert str(exc.value) == f"IMAGE_REPO='Bad Repo' {REPO_HINT}"


def test_image_repo_rejects_a_repo_with_a_tag() -> None:
    with pytest.raises(ImageError):
        image.image_repo("ghcr.io/owner/chess-bot:v1")


def test_tags_explicit_env_and_git_sha(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(image, "git_sha", lambda root=ROOT: "0123456789ab")
    assert image.tags("ghcr.io/o/r", "v1") == ["ghcr.io/o/r:v1", "ghcr.io/o/r:latest"]
    assert image.tags("ghcr.io/o/r") == ["ghcr.io/o/r:0123456789ab", "ghcr.io/o/r:latest"]
    assert image.tags() == ["chessbot-appliance:0123456789ab", "chessbot-appliance:latest"]
    monkeypatch.setenv("IMAGE_TAG", "rc2")
    monkeypatch.setenv("IMAGE_REPO", "Quay.io/Me/Bot")
    assert image.tags() == ["quay.io/me/bot:rc2", "quay.io/me/bot:latest"]
    assert image.tags(tag="v3") == ["quay.io/me/bot:v3", "quay.io/me/bot:latest"]
    with pytest.raises(ImageError, match="IMAGE_REPO='no way'"):
        image.tags("no way", "v1")


# -- git_sha ----------------------------------------------------------------------------------
def _git(root: Path, *args: str) -> str:
    return REAL_RUN(["git", "-C", str(root), *args], capture_output=True, text=True,
                    check=True).stdout.strip()


@pytest.fixture
def git_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, real_processes: None) -> None:
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    for var in ("GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME"):
        monkeypatch.setenv(var, "test")
    for var in ("GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"):
        monkeypatch.setenv(var, "test@example.invalid")
    for var in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
        monkeypatch.delenv(var, raising=False)


def test_git_sha_clean_dirty_and_untracked(tmp_path: Path, git_env: None) -> None:
    root = tmp_path / "repo"
    (root / "appliance").mkdir(parents=True)
    (root / "appliance" / "a.py").write_text("x = 1\n")
    (root / "README.md").write_text("readme\n")
    _git(root, "init", "-q")
    _git(root, "add", "appliance/a.py", "README.md")
    _git(root, "commit", "-q", "-m", "one")
    head = _git(root, "rev-parse", "--short=12", "HEAD")
    assert len(head) == 12
    assert image.git_sha(root) == head
    # Outside the image's inputs and untracked files: the tag stays clean.
    (root / "README.md").write_text("changed\n")
    (root / "host_tools").mkdir()
    (root / "host_tools" / "new.py").write_text("y = 2\n")
    assert image.git_sha(root) == head
    (root / "appliance" / "a.py").write_text("x = 2\n")
    assert image.git_sha(root) == f"{head}-dirty"


def test_git_sha_without_a_commit_or_a_repo(tmp_path: Path, git_env: None) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    assert image.git_sha(plain) == "nogit"
    empty = tmp_path / "empty"
    empty.mkdir()
    _git(empty, "init", "-q")
    assert image.git_sha(empty) == "nogit"


def test_git_sha_without_git(fake_run: FakeRun) -> None:
    def respond(argv: list[str]) -> Response:
        raise FileNotFoundError(2, "No such file or directory", "git")

    fake_run.respond = respond
    assert image.git_sha(Path("/nowhere")) == "nogit"
    assert fake_run.calls == [["git", "-C", "/nowhere", "rev-parse", "--short=12", "HEAD"]]


# -- apt_mirror -------------------------------------------------------------------------------
DEB822 = """\
Types: deb
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
"""


def _sources(tmp_path: Path, files: dict[str, str]) -> Path:
    apt = tmp_path / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    for name, text in files.items():
        (apt / name).write_text(text, encoding="utf-8")
    return apt


@pytest.mark.parametrize(("files", "expected"), [
    ({}, DEFAULT_MIRROR),
    ({"sources.list.d/debian.sources": DEB822}, "http://mirror.example/debian"),
    ({"sources.list.d/debian.sources":
      "Types: deb\nURIs: https://m.example/debian/\nSuites: stable\nComponents: main\n"},
     "https://m.example/debian/"),
    ({"sources.list.d/debian.sources":
      "Types: deb\nURIs: http://m.example/debian\nSuites: trixie\nComponents: main\n"},
     DEFAULT_MIRROR),
    ({"sources.list.d/security.sources":
      "Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\n"},
     DEFAULT_MIRROR),
    ({"sources.list.d/ubuntu.sources":
      "Types: deb\nURIs: http://archive.ubuntu.com/ubuntu\nSuites: bookworm\n"},
     DEFAULT_MIRROR),
    ({"sources.list": "deb http://one.example/debian bookworm main\n"},
     "http://one.example/debian"),
    ({"sources.list": "# deb http://commented.example/debian bookworm main\n"
                      "deb-src http://src.example/debian bookworm main\n"
                      "deb http://upd.example/debian bookworm-updates main\n"
                      "deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] "
                      "http://opt.example/debian/ bookworm main contrib\n"},
     "http://opt.example/debian/"),
    ({"sources.list": "deb http://trixie.example/debian trixie main\n",
      "sources.list.d/b.sources": DEB822,
      "sources.list.d/a.list": "deb http://first.example/debian bookworm main\n"},
     "http://first.example/debian"),
    ({"sources.list": "deb http://list.example/debian bookworm main\n",
      "sources.list.d/a.sources": DEB822},
     "http://list.example/debian"),
])
def test_apt_mirror(tmp_path: Path, files: dict[str, str], expected: str) -> None:
    assert image.apt_mirror(_sources(tmp_path, files)) == expected


def test_apt_mirror_missing_dir_and_subdirs(tmp_path: Path) -> None:
    assert image.apt_mirror(tmp_path / "absent") == DEFAULT_MIRROR
    apt = _sources(tmp_path, {})
    (apt / "sources.list.d" / "a-dir").mkdir()
    (apt / "sources.list.d" / "z.list").write_text("deb http://z.example/debian bookworm main\n")
    assert image.apt_mirror(apt) == "http://z.example/debian"


def test_apt_mirror_deb822_field_order(tmp_path: Path) -> None:
    text = ("Types: deb\nSuites: bookworm bookworm-updates\nComponents: main\n"
            "URIs: http://mirror.example/debian\n\n"
            "Types: deb\nURIs: http://deb.debian.org/debian-security\n"
            "Suites: bookworm-security\n")
    apt = _sources(tmp_path, {"sources.list.d/debian.sources": text})
    assert image.apt_mirror(apt) == "http://mirror.example/debian"


# -- wheel_requirements / build_wheelhouse ------------------------------------------------------
def test_wheel_requirements(monkeypatch: pytest.MonkeyPatch) -> None:
    extras = ["supervisor", "jupyterlab", "huggingface_hub"]
    assert image.wheel_requirements("cpu") == ["torch==2.13.0+cpu", *extras]
    assert image.wheel_requirements("cuda") == ["torch==2.13.0", *extras]
    monkeypatch.setenv("TORCH_SPEC", "torch==2.12.1")
    assert image.wheel_requirements("cuda") == ["torch==2.12.1", *extras]
    for bad in ("gpu", "CPU", ""):
        with pytest.raises(ImageError) as exc:
            image.wheel_requirements(bad)
        assert str(exc.value) == f"TORCH_VARIANT={bad!r}: expected cpu or cuda"


def test_project_dependencies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "chess>=1.11" in image._project_dependencies()  # the real pyproject.toml
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\ndependencies = ["a>=1", "b"]\n', encoding="utf-8")
    monkeypatch.setattr(image, "ROOT", tmp_path)
    assert image._project_dependencies() == ["a>=1", "b"]


@pytest.fixture
def wheel_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_run: FakeRun) -> Path:
    monkeypatch.setattr(image, "ROOT", tmp_path)
    monkeypatch.setattr(image, "_project_dependencies", lambda: ["chess>=1.11", "numpy>=1.26"])

    def respond(argv: list[str]) -> Response:
        if "download" in argv:  # pip creates its -d directory
            Path(argv[argv.index("-d") + 1]).mkdir(parents=True)
        return 0, "", ""

    fake_run.respond = respond
    return tmp_path


def test_build_wheelhouse_resolves_once_per_inputs(wheel_root: Path, fake_run: FakeRun,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    dest = wheel_root / "build" / "wheelhouse"
    out = image.build_wheelhouse("cpu", dest=dest, python="/py")
    assert out == dest / "cpu"
    everything = ["torch==2.13.0+cpu", "supervisor", "jupyterlab", "huggingface_hub",
                  "chess>=1.11", "numpy>=1.26", "setuptools>=68", "wheel"]
    wheel, download = fake_run.calls
    assert wheel == ["/py", "-m", "pip", "wheel", "-q", "--prefer-binary", "-w",
                     str(dest / ".cpu-host"), *everything]
    platforms = ([f"manylinux_2_{minor}_x86_64" for minor in range(17, 37)]
                 + ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"])
    assert download == ["/py", "-m", "pip", "download", "-q", "--only-binary=:all:",
                        "--python-version", "3.11.2", "--implementation", "cp",
                        *[a for p in platforms for a in ("--platform", p)],
                        "--find-links", str(dest / ".cpu-host"), "-d", str(out), *everything]
    assert all(kw["check"] is True for kw in fake_run.kwargs)
    assert (out / "requirements.txt").read_text() == "\n".join(everything) + "\n"
    stamp = (out / ".inputs").read_text()
    assert len(stamp) == 17 and stamp.endswith("\n") and int(stamp, 16) >= 0
    assert capsys.readouterr().err == ("image: wheelhouse: resolving for CPython 3.11.2 into "
                                       "build/wheelhouse/cpu\n")

    fake_run.calls.clear()
    assert image.build_wheelhouse("cpu", dest=dest, python="/py") == out
    assert fake_run.calls == []
    assert capsys.readouterr().err == "image: wheelhouse build/wheelhouse/cpu up to date\n"

    monkeypatch.setenv("TORCH_SPEC", "torch==2.12.0+cpu")  # other inputs: resolved again
    image.build_wheelhouse("cpu", dest=dest, python="/py")
    assert len(fake_run.calls) == 2
    assert (out / "requirements.txt").read_text().splitlines()[0] == "torch==2.12.0+cpu"
    assert (out / ".inputs").read_text() != stamp


def test_build_wheelhouse_refuses_a_foreign_host(wheel_root: Path, fake_run: FakeRun,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "uname", lambda: SimpleNamespace(machine="aarch64"))
    with pytest.raises(ImageError) as exc:
        image.build_wheelhouse("cuda", dest=wheel_root / "wh")
    assert str(exc.value) == ("the wheelhouse is built with this Python for the image's bookworm "
                              "CPython 3.11 on x86_64; run it with such a Python (e.g. .venv)")
    with pytest.raises(ImageError, match="TORCH_VARIANT='rocm'"):
        image.build_wheelhouse("rocm", dest=wheel_root / "wh")
    assert fake_run.calls == []


def test_build_wheelhouse_pip_failure_propagates(wheel_root: Path, fake_run: FakeRun) -> None:
    fake_run.respond = lambda argv: (1, "", "no matching distribution")
    with pytest.raises(subprocess.CalledProcessError):
        image.build_wheelhouse("cpu", dest=wheel_root / "wh")
    assert not (wheel_root / "wh" / "cpu" / ".inputs").exists()


# -- engines ----------------------------------------------------------------------------------
def test_engine_cmd_and_flags() -> None:
    assert DOCKER.cmd("ps", "-a") == ["docker", "ps", "-a"]
    assert DOCKER.run_flags == ()
    assert PODMAN.cmd() == ["podman"]
    assert list(PODMAN.run_flags) == PODMAN_FLAGS


def test_ok_maps_exit_codes_and_failures(fake_run: FakeRun) -> None:
    fake_run.respond = lambda argv: (0, "", "")
    assert image._ok(["docker", "info"]) is True
    assert fake_run.kwargs[0] == {"capture_output": True, "timeout": 30, "check": False}
    fake_run.respond = lambda argv: (1, "", "")
    assert image._ok(("docker", "info"), timeout=5) is False
    assert fake_run.kwargs[1]["timeout"] == 5

    def missing(argv: list[str]) -> Response:
        raise FileNotFoundError(2, "nope")

    def slow(argv: list[str]) -> Response:
        raise subprocess.TimeoutExpired(argv, 30)

    for respond in (missing, slow):
        fake_run.respond = respond
        assert image._ok(["docker", "info"]) is False


def test_image_exists_inspects_the_ref(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    monkeypatch.setattr(image, "_ok", lambda argv, timeout=30: _logged(seen, list(argv), True))
    assert image.image_exists(PODMAN, "img:1") is True
    assert seen == [["podman", "image", "inspect", "img:1"]]


@pytest.fixture
def engines(monkeypatch: pytest.MonkeyPatch) -> Callable[[set[str], bool], list[list[str]]]:
    """Set which binaries exist and whether `docker info` answers; returns the _ok calls."""
    calls: list[list[str]] = []

    def setup(present: set[str], daemon: bool) -> list[list[str]]:
        _which(monkeypatch, present)
        monkeypatch.setattr(image, "_ok",
                            lambda argv, timeout=30: _logged(calls, list(argv), daemon))
        return calls

    return setup


def test_detect_engine_prefers_a_running_docker(
        engines: Callable[[set[str], bool], list[list[str]]]) -> None:
    calls = engines({"docker", "podman"}, True)
    assert image.detect_engine(install=False) == Engine("docker", ())
    assert calls == [["docker", "info"]]


def test_detect_engine_falls_back_to_podman(
        engines: Callable[[set[str], bool], list[list[str]]]) -> None:
    engines({"docker", "podman"}, False)
    assert image.detect_engine(install=False) == Engine("podman", PODMAN_RUN_FLAGS)
    engines({"podman"}, True)  # no docker binary: its daemon is never asked
    assert image.detect_engine(install=False) == PODMAN


def test_detect_engine_honours_the_preference(
        engines: Callable[[set[str], bool], list[list[str]]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls = engines({"docker", "podman"}, True)
    assert image.detect_engine("podman", install=False) == PODMAN
    assert calls == []
    monkeypatch.setenv("CONTAINER_ENGINE", "podman")
    assert image.detect_engine(install=False) == PODMAN
    assert image.detect_engine("docker", install=False) == DOCKER  # the argument wins
    monkeypatch.setenv("CONTAINER_ENGINE", "")
    assert image.detect_engine(install=False) == DOCKER


def test_detect_engine_errors(engines: Callable[[set[str], bool], list[list[str]]],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    engines({"docker", "podman"}, False)
    with pytest.raises(ImageError) as exc:
        image.detect_engine("docker", install=False)
    assert str(exc.value) == "CONTAINER_ENGINE=docker but `docker info` fails: start the daemon"
    with pytest.raises(ImageError) as exc:
        image.detect_engine("lxc", install=False)
    assert str(exc.value) == "CONTAINER_ENGINE='lxc': expected docker or podman"
    monkeypatch.setenv("CONTAINER_ENGINE", "Docker")
    with pytest.raises(ImageError, match="^CONTAINER_ENGINE='Docker': expected docker or podman$"):
        image.detect_engine(install=False)
    monkeypatch.delenv("CONTAINER_ENGINE")
    engines({"docker"}, False)
    for preferred in (None, "podman"):
        with pytest.raises(ImageError) as exc:
            image.detect_engine(preferred, install=False)
        assert str(exc.value) == ("no container engine: neither a running Docker nor podman "
                                  "was found")


def test_detect_engine_install_needs_root(engines: Callable[[set[str], bool], list[list[str]]],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    engines({"apt-get"}, False)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(ImageError) as exc:
        image.detect_engine()
    assert str(exc.value) == ("podman runc missing: install them (apt-get install podman runc) "
                              "or run as root on Debian/Ubuntu")


def test_detect_engine_installs_podman_as_root(monkeypatch: pytest.MonkeyPatch,
                                               fake_run: FakeRun,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(image, "_ok", lambda argv, timeout=30: False)
    monkeypatch.setattr(image.shutil, "which", lambda name: (
        "/usr/bin/apt-get" if name == "apt-get"
        else "/usr/bin/podman" if name == "podman" and len(fake_run.calls) == 2 else None))
    assert image.detect_engine() == PODMAN
    assert fake_run.calls == [["apt-get", "update", "-qq"],
                              ["apt-get", "install", "-y", "-qq", "podman", "runc"]]
    assert all(kw["env"]["DEBIAN_FRONTEND"] == "noninteractive" and kw["check"] is True
               for kw in fake_run.kwargs)
    assert capsys.readouterr().err == "image: installing podman runc (apt)\n"


# -- build_base -------------------------------------------------------------------------------
def test_build_base_skips_an_existing_image(monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(image, "image_exists", lambda engine, ref: ref == DEFAULT_BASE_IMAGE)
    assert image.build_base(PODMAN) == DEFAULT_BASE_IMAGE
    assert capsys.readouterr().err == (f"image: base image {DEFAULT_BASE_IMAGE} exists: skipped "
                                       "(FORCE=1 rebuilds it)\n")


def test_build_base_needs_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(image, "image_exists", lambda engine, ref: True)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    _which(monkeypatch, {"debootstrap", "apt-get"})
    with pytest.raises(ImageError) as exc:
        image.build_base(PODMAN, force=True)
    assert str(exc.value) == ("debootstrap needs root: run `make base-image` as root, or set "
                              "BASE_IMAGE to a bookworm image your engine can pull")
    _which(monkeypatch, {"apt-get"})
    with pytest.raises(ImageError) as exc:
        image.build_base(PODMAN, force=True)
    assert str(exc.value) == ("debootstrap missing: install them (apt-get install debootstrap) "
                              "or run as root on Debian/Ubuntu")


@pytest.fixture
def as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    _which(monkeypatch, {"debootstrap"})
    monkeypatch.setattr(image, "image_exists", lambda engine, ref: False)


def test_build_base_debootstrap_failure(as_root: None, fake_run: FakeRun,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEBIAN_MIRROR", "http://env.example/debian")
    fake_run.respond = lambda argv: (1, "", "I: Retrieving\nE: Couldn't download packages\n")
    with pytest.raises(ImageError) as exc:
        image.build_base(DOCKER)
    assert str(exc.value) == ("debootstrap from http://env.example/debian failed: "
                              "I: Retrieving\nE: Couldn't download packages")
    [argv] = fake_run.calls
    assert argv[:3] == ["debootstrap", "--variant=minbase", "bookworm"]
    assert argv[4] == "http://env.example/debian" and argv[3].endswith("/rootfs")
    assert argv[3].startswith("/var/tmp/chessbot-base-")
    assert not Path(argv[3]).parent.exists()  # the temporary dir is gone

    monkeypatch.delenv("DEBIAN_MIRROR")
    monkeypatch.setattr(image, "apt_mirror", lambda: "http://apt.example/debian")
    with pytest.raises(ImageError, match="^debootstrap from http://apt.example/debian failed"):
        image.build_base(DOCKER)
    with pytest.raises(ImageError, match="^debootstrap from http://arg.example/debian failed"):
        image.build_base(DOCKER, mirror="http://arg.example/debian")


class FakeTar:
    """Stands in for the `tar -c` Popen whose stdout feeds `<engine> import -`."""

    instances: list[FakeTar] = []
    exit_code = 0

    def __init__(self, argv: Sequence[str], stdout: Any = None) -> None:
        self.argv = list(argv)
        self.piped = stdout is subprocess.PIPE
        self.stdout = io.BytesIO(b"tar stream")
        self.returncode: int | None = None
        FakeTar.instances.append(self)

    def wait(self) -> int:
        self.returncode = FakeTar.exit_code
        return self.returncode


def test_build_base_imports_a_cleaned_rootfs(as_root: None, fake_run: FakeRun,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    FakeTar.instances = []
    FakeTar.exit_code = 0
    monkeypatch.setattr(subprocess, "Popen", FakeTar)
    seen: dict[str, Any] = {}

    def respond(argv: list[str]) -> Response:
        if argv[0] == "debootstrap":
            rootfs = Path(argv[3])
            seen["rootfs"] = rootfs
            for d in ("var/cache/apt/archives/partial", "var/lib/apt/lists", "etc"):
                (rootfs / d).mkdir(parents=True)
            (rootfs / "var/cache/apt/archives/bash.deb").write_text("deb")
            (rootfs / "var/lib/apt/lists/deb.debian.org_Packages").write_text("list")
            (rootfs / "etc/os-release").write_text("bookworm")
            return 0, "", ""
        seen["files"] = sorted(str(p.relative_to(seen["rootfs"]))
                               for p in seen["rootfs"].rglob("*"))
        return 0, "sha256:abc\n", ""

    fake_run.respond = respond
    ref = image.build_base(PODMAN, "localhost/base:test", "http://m.example/debian")
    assert ref == "localhost/base:test"
    assert fake_run.calls[1] == ["podman", "import", "-", "localhost/base:test"]
    [tar] = FakeTar.instances
    assert tar.argv == ["tar", "-C", str(seen["rootfs"]), "--numeric-owner", "-c", "."]
    assert tar.piped and fake_run.kwargs[1]["stdin"] is tar.stdout
    assert tar.stdout.closed and tar.returncode == 0
    # apt's caches are emptied (files only), the rest is imported as it is.
    assert seen["files"] == ["etc", "etc/os-release", "var", "var/cache", "var/cache/apt",
                             "var/cache/apt/archives", "var/cache/apt/archives/partial",
                             "var/lib", "var/lib/apt", "var/lib/apt/lists"]
    assert not seen["rootfs"].exists()
    assert capsys.readouterr().err.splitlines() == [
        "image: debootstrap bookworm from http://m.example/debian (a few minutes)",
        "image: base image localhost/base:test built in 0 s"]


def test_build_base_import_failure(as_root: None, fake_run: FakeRun,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    FakeTar.instances = []
    monkeypatch.setattr(subprocess, "Popen", FakeTar)
    fake_run.respond = lambda argv: ((0, "", "") if argv[0] == "debootstrap"
                                     else (125, "", "Error: no space left on device\n"))
    FakeTar.exit_code = 0
    with pytest.raises(ImageError) as exc:
        image.build_base(DOCKER, force=True, mirror="http://m.example/debian")
    assert str(exc.value) == "docker import failed: Error: no space left on device"
    fake_run.respond = lambda argv: (0, "", "")
    FakeTar.exit_code = 2
    with pytest.raises(ImageError, match="^docker import failed: $"):
        image.build_base(DOCKER, force=True, mirror="http://m.example/debian")
    FakeTar.exit_code = 0


# -- build ------------------------------------------------------------------------------------
@pytest.fixture
def build_seams(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    events: list[tuple[str, Any]] = []

    def base(engine: Engine, ref: str = DEFAULT_BASE_IMAGE, mirror: str | None = None,
             force: bool = False) -> str:
        events.append(("base", (engine, ref)))
        return ref

    def wheelhouse(variant: str = "cpu") -> Path:
        events.append(("wheelhouse", variant))
        return ROOT / "build" / "wheelhouse" / variant

    monkeypatch.setattr(image, "build_base", base)
    monkeypatch.setattr(image, "build_wheelhouse", wheelhouse)
    return events


def test_build_docker_argv(build_seams: list[tuple[str, Any]], fake_run: FakeRun,
                           capsys: pytest.CaptureFixture[str]) -> None:
    refs = image.build(DOCKER, repo="ghcr.io/o/r", tag="t1")
    assert refs == ["ghcr.io/o/r:t1", "ghcr.io/o/r:latest"]
    assert build_seams == [("base", (DOCKER, DEFAULT_BASE_IMAGE)), ("wheelhouse", "cpu")]
    assert fake_run.calls == [[
        "docker", "build", "-f", str(ROOT / "image" / "Dockerfile"),
        "--build-arg", f"BASE_IMAGE={DEFAULT_BASE_IMAGE}",
        "--build-arg", "TORCH_VARIANT=cpu",
        "--build-arg", "WHEELHOUSE=build/wheelhouse/cpu",
        "-t", "ghcr.io/o/r:t1", "-t", "ghcr.io/o/r:latest", str(ROOT)]]
    assert fake_run.kwargs == [{"check": False, "stdout": None}]
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "image: docker build -> ghcr.io/o/r:t1, ghcr.io/o/r:latest"
    assert err[1].startswith("image: built ghcr.io/o/r:t1 in ") and err[1].endswith(" s")


def test_build_podman_cuda_quiet_no_cache(build_seams: list[tuple[str, Any]],
                                          fake_run: FakeRun, tmp_path: Path) -> None:
    refs = image.build(PODMAN, variant="cuda", base="docker.io/library/debian:bookworm",
                       repo="r", tag="t", quiet=True, context=tmp_path, no_cache=True)
    assert refs == ["r:t", "r:latest"]
    assert build_seams == [("wheelhouse", "cuda")]  # a foreign base: no debootstrap
    assert fake_run.calls == [[
        "podman", "build", "-f", str(tmp_path / "image" / "Dockerfile"),
        "--build-arg", "BASE_IMAGE=docker.io/library/debian:bookworm",
        "--build-arg", "TORCH_VARIANT=cuda",
        "--build-arg", "WHEELHOUSE=build/wheelhouse/cuda",
        "--network", "host", "--pull=never", "--format", "docker", *PODMAN_FLAGS,
        "-t", "r:t", "-t", "r:latest", "-q", "--no-cache", str(tmp_path)]]
    assert fake_run.kwargs[0]["stdout"] == subprocess.DEVNULL


def test_build_base_image_from_env_and_failure(build_seams: list[tuple[str, Any]],
                                               fake_run: FakeRun,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BASE_IMAGE", "localhost/other:1")
    monkeypatch.setenv("IMAGE_TAG", "envtag")
    fake_run.respond = lambda argv: (2, "", "")
    with pytest.raises(ImageError) as exc:
        image.build(DOCKER)
    assert str(exc.value) == "docker build failed (exit 2)"
    assert build_seams == [("wheelhouse", "cpu")]
    argv = fake_run.calls[0]
    assert "BASE_IMAGE=localhost/other:1" in argv
    assert argv[-5:] == ["-t", "chessbot-appliance:envtag", "-t", "chessbot-appliance:latest",
                         str(ROOT)]


def test_build_rejects_a_bad_variant_before_building(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(image, "build_base", lambda *a, **k: DEFAULT_BASE_IMAGE)
    with pytest.raises(ImageError, match=r"^TORCH_VARIANT='gpu': expected cpu or cuda$"):
        image.build(DOCKER, variant="gpu")


# -- push -------------------------------------------------------------------------------------
def test_push_dry_run_prints_and_runs_nothing(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(image, "image_exists", _unexpected)
    commands = image.push(DOCKER, repo="ghcr.io/o/r", tag="t1", dry_run=True, tls_verify=False)
    assert commands == [["docker", "push", "ghcr.io/o/r:t1"],
                        ["docker", "push", "ghcr.io/o/r:latest"]]
    assert capsys.readouterr().out == ("would run: docker push ghcr.io/o/r:t1\n"
                                       "would run: docker push ghcr.io/o/r:latest\n")
    commands = image.push(PODMAN, repo="localhost:5000/r", tag="t", dry_run=True,
                          tls_verify=False)
    assert commands == [["podman", "push", "--tls-verify=false", "localhost:5000/r:t"],
                        ["podman", "push", "--tls-verify=false", "localhost:5000/r:latest"]]
    assert image.push(PODMAN, repo="r", tag="t", dry_run=True)[0] == ["podman", "push", "r:t"]


def test_push_runs_both_tags(monkeypatch: pytest.MonkeyPatch, fake_run: FakeRun,
                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(image, "image_exists", lambda engine, ref: True)
    image.push(PODMAN, repo="ghcr.io/o/r", tag="t1")
    assert fake_run.calls == [["podman", "push", "ghcr.io/o/r:t1"],
                              ["podman", "push", "ghcr.io/o/r:latest"]]
    assert capsys.readouterr().err == ("image: podman push ghcr.io/o/r:t1\n"
                                       "image: podman push ghcr.io/o/r:latest\n")


def test_push_errors(monkeypatch: pytest.MonkeyPatch, fake_run: FakeRun) -> None:
    monkeypatch.setattr(image, "image_exists", lambda engine, ref: not ref.endswith(":t1"))
    with pytest.raises(ImageError) as exc:
        image.push(DOCKER, repo="ghcr.io/o/r", tag="t1")
    assert str(exc.value) == "ghcr.io/o/r:t1 does not exist locally: run `make image` first"
    assert fake_run.calls == []
    monkeypatch.setattr(image, "image_exists", lambda engine, ref: True)
    fake_run.respond = lambda argv: (1, "", "denied")
    with pytest.raises(ImageError) as exc:
        image.push(DOCKER, repo="ghcr.io/o/r", tag="t2")
    assert str(exc.value) == ("docker push ghcr.io/o/r:t2 failed: is `docker login` done for "
                              "ghcr.io?")
    assert fake_run.calls == [["docker", "push", "ghcr.io/o/r:t2"]]  # stops at the first


@pytest.mark.parametrize("repo", ["owner/chess-bot", DEFAULT_IMAGE_REPO])
def test_push_failure_names_docker_hub(repo: str, monkeypatch: pytest.MonkeyPatch,
                                       fake_run: FakeRun) -> None:
    monkeypatch.setattr(image, "image_exists", lambda engine, ref: True)
    fake_run.respond = lambda argv: (1, "", "denied")
    with pytest.raises(ImageError) as exc:
        image.push(DOCKER, repo=repo, tag="t")
    assert str(exc.value).endswith("is `docker login` done for docker.io?")


# -- image main -------------------------------------------------------------------------------
def _engine_spy(monkeypatch: pytest.MonkeyPatch, module: Any,
                engine: Engine = DOCKER) -> list[tuple[Any, ...]]:
    calls: list[tuple[Any, ...]] = []

    def detect(preferred: str | None = None, install: bool = True) -> Engine:
        calls.append((preferred, install))
        return engine

    monkeypatch.setattr(module, "detect_engine", detect)
    return calls


def test_image_main_tags(monkeypatch: pytest.MonkeyPatch,
                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("IMAGE_REPO", "ghcr.io/o/r")
    monkeypatch.setenv("IMAGE_TAG", "v9")
    assert image.main(["tags"]) == 0
    assert capsys.readouterr().out == "ghcr.io/o/r:v9\nghcr.io/o/r:latest\n"
    monkeypatch.setenv("IMAGE_REPO", "Not Valid")
    assert image.main(["tags"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("image: error: IMAGE_REPO=") and err.endswith(f" {REPO_HINT}\n")


def test_image_main_wheelhouse(monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    assert image.main(["wheelhouse", "--variant", "gpu"]) == 1
    assert capsys.readouterr().err == "image: error: TORCH_VARIANT='gpu': expected cpu or cuda\n"
    monkeypatch.setattr(image, "build_wheelhouse", lambda variant: Path("/wh") / variant)
    monkeypatch.setenv("TORCH_VARIANT", "cuda")  # the default of --variant
    assert image.main(["wheelhouse"]) == 0
    assert capsys.readouterr().out == "/wh/cuda\n"

    def fails(variant: str) -> Path:
        raise subprocess.CalledProcessError(2, ["pip", "wheel"])

    monkeypatch.setattr(image, "build_wheelhouse", fails)
    assert image.main(["wheelhouse"]) == 1
    assert capsys.readouterr().err == ("image: error: Command '['pip', 'wheel']' returned "
                                       "non-zero exit status 2.\n")


def test_image_main_push_dry_run_engine_choice(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("IMAGE_TAG", "t")
    detect = _engine_spy(monkeypatch, image, DOCKER)
    assert image.main(["--engine", "podman", "push", "--dry-run", "--tls-verify", "false"]) == 0
    assert detect == []  # a dry run with --engine asks no engine
    assert capsys.readouterr().out == (
        "would run: podman push --tls-verify=false chessbot-appliance:t\n"
        "would run: podman push --tls-verify=false chessbot-appliance:latest\n")
    assert image.main(["push", "--dry-run"]) == 0
    assert detect == [(None, False)]  # nor installs one
    assert capsys.readouterr().out.splitlines()[0] == "would run: docker push chessbot-appliance:t"


def test_image_main_push_real(monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    detect = _engine_spy(monkeypatch, image, PODMAN)
    pushed: list[dict[str, Any]] = []
    monkeypatch.setattr(image, "push", lambda engine, **kw: pushed.append({"e": engine, **kw}))
    assert image.main(["--engine", "podman", "push", "--tls-verify", "false"]) == 0
    assert detect == [("podman", True)]
    assert pushed == [{"e": PODMAN, "dry_run": False, "tls_verify": False}]


def test_image_main_engine_build_base(monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    detect = _engine_spy(monkeypatch, image, PODMAN)
    assert image.main(["engine"]) == 0
    assert capsys.readouterr().out == "podman\n"
    built: list[tuple[Any, ...]] = []
    monkeypatch.setattr(image, "build", lambda engine, **kw: _logged(built, (engine, kw),
                                                            ["r:1", "r:latest"]))
    assert image.main(["--engine", "docker", "build", "--variant", "cuda", "--base", "b:1",
                       "--quiet"]) == 0
    assert built == [(PODMAN, {"variant": "cuda", "base": "b:1", "quiet": True})]
    assert capsys.readouterr().out == "r:1\nr:latest\n"
    bases: list[tuple[Any, ...]] = []
    monkeypatch.setattr(image, "build_base", lambda *a: _logged(bases, a, a[1]))
    assert image.main(["base-image"]) == 0
    monkeypatch.setenv("BASE_IMAGE", "localhost/mine:1")
    assert image.main(["base-image", "--force", "--mirror", "http://m/debian"]) == 0
    assert bases == [(PODMAN, DEFAULT_BASE_IMAGE, None, False),
                     (PODMAN, "localhost/mine:1", "http://m/debian", True)]
    assert capsys.readouterr().out == f"{DEFAULT_BASE_IMAGE}\nlocalhost/mine:1\n"
    assert detect == [(None, True), ("docker", True), (None, True), (None, True)]


def test_image_main_errors(monkeypatch: pytest.MonkeyPatch,
                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CONTAINER_ENGINE", "lxc")
    assert image.main(["engine"]) == 1
    assert capsys.readouterr().err == ("image: error: CONTAINER_ENGINE='lxc': expected docker "
                                       "or podman\n")
    for argv in ([], ["--engine", "lxc", "engine"], ["frobnicate"]):
        with pytest.raises(SystemExit) as exc:
            image.main(argv)
        assert exc.value.code == 2
    assert "invalid choice: 'lxc'" in capsys.readouterr().err


# == host_tools.localup ========================================================================
# -- ports and polling ------------------------------------------------------------------------
def test_port_free_and_pick_port() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert localup.port_free(port) is False
        other = localup.pick_port(port)
        assert other != port and 0 < other < 65536
    free = localup.free_port()
    assert 0 < free < 65536
    assert localup.port_free(free) is True
    assert localup.pick_port(free) == free


def test_wait_for() -> None:
    assert 0 <= localup.wait_for(lambda: True, 5, "x") < 1
    answers = iter([False, False, True])
    assert localup.wait_for(lambda: next(answers), 5, "x", interval=0) >= 0
    with pytest.raises(UpError) as exc:
        localup.wait_for(lambda: False, 0.05, "the inference API", interval=0.01)
    assert str(exc.value) == "the inference API not ready within 0 s"


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        ok = self.path == "/healthz" and self.headers.get("Authorization") in (None, "Bearer t")
        self.send_response(200 if ok else 401)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def health_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_http_status(health_server: int) -> None:
    base = f"http://127.0.0.1:{health_server}"
    assert localup.http_status(f"{base}/healthz") == 200
    assert localup.http_status(f"{base}/healthz", {"Authorization": "Bearer t"}) == 200
    assert localup.http_status(f"{base}/healthz", {"Authorization": "Bearer x"}) == 401
    assert localup.http_status(f"{base}/other") == 401
    assert localup.http_status(f"http://127.0.0.1:{localup.free_port()}/healthz") == 0


# -- the user's side: keys, tokens, env file ----------------------------------------------------
def _keypair(home: Path, name: str, public: str) -> None:
    (home / ".ssh").mkdir(parents=True, exist_ok=True)
    (home / ".ssh" / name).write_text("PRIVATE\n")
    (home / ".ssh" / f"{name}.pub").write_text(f"{public}\n")


def test_ssh_key_uses_the_users_own_key(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _keypair(home, "id_rsa", "ssh-rsa AAAArsa me@host")
    _keypair(home, "id_ecdsa", "ecdsa-sha2-nistp256 AAAAec me@host")
    (home / ".ssh" / "id_ed25519.pub").write_text("ssh-ed25519 AAAAorphan\n")  # no private
    key = localup.ssh_key(tmp_path / "cfg", home)
    assert key == SshKey(home / ".ssh" / "id_ecdsa", "ecdsa-sha2-nistp256 AAAAec me@host")
    _keypair(home, "id_ed25519", "ssh-ed25519 AAAAed me@host")
    assert localup.ssh_key(tmp_path / "cfg", home).private == home / ".ssh" / "id_ed25519"
    assert not (tmp_path / "cfg").exists()


def test_ssh_key_created_once_in_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        real_processes: None,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(localup, "ROOT", tmp_path)
    config = tmp_path / "config" / "local-pod"
    home = tmp_path / "home"
    home.mkdir()
    key = localup.ssh_key(config, home)
    assert key.private == config / "id_ed25519"
    assert key.public_text.startswith("ssh-ed25519 ")
    assert key.public_text.endswith(" chessbot-local-pod")
    assert _mode(key.private) == 0o600
    assert _mode(config) == 0o700
    assert capsys.readouterr().err == (f"up: no SSH key in {home / '.ssh'}: created "
                                       "config/local-pod/id_ed25519\n")
    monkeypatch.setattr(subprocess, "run", _unexpected)  # reused: ssh-keygen not run again
    assert localup.ssh_key(config, home) == key
    assert capsys.readouterr().err == ""


def test_ssh_key_without_ssh_keygen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _which(monkeypatch, set())
    with pytest.raises(UpError) as exc:
        localup.ssh_key(tmp_path / "cfg", tmp_path / "home")
    assert str(exc.value) == ("no SSH key in ~/.ssh and no ssh-keygen to make one: install "
                              "openssh-client")


def test_ssh_key_in_a_config_outside_the_repo(tmp_path: Path, real_processes: None) -> None:
    (tmp_path / "home").mkdir()
    key = localup.ssh_key(tmp_path / "cfg", tmp_path / "home")
    assert key.private == tmp_path / "cfg" / "id_ed25519"


def test_token_generated_once_and_private(tmp_path: Path) -> None:
    config = tmp_path / "cfg"
    first = localup.token(config, "JUPYTER_TOKEN")
    path = config / "secrets" / "JUPYTER_TOKEN"
    assert len(first) == 32 and set(first) <= set(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert path.read_text() == first
    assert _mode(path) == 0o600 and _mode(path.parent) == 0o700
    assert localup.token(config, "JUPYTER_TOKEN") == first
    other = localup.token(config, "INFERENCE_API_TOKEN")
    assert other != first and len(other) == 32
    path.write_text("  kept-by-hand \n")
    assert localup.token(config, "JUPYTER_TOKEN") == "kept-by-hand"
    path.write_text("\n")  # empty: a new one replaces it
    fresh = localup.token(config, "JUPYTER_TOKEN")
    assert len(fresh) == 32 and path.read_text() == fresh


def test_env_file_contents_and_mode(tmp_path: Path) -> None:
    config = tmp_path / "cfg"
    config.mkdir(mode=0o755)
    stale = config / "pod.env"
    stale.write_text("OLD=1\n")
    stale.chmod(0o644)
    path = localup.env_file(config, {"PUBLIC_KEY": "ssh-ed25519 AAAA me", "EMPTY": "",
                                     "TOKEN": "a=b c"})
    assert path == stale
    assert path.read_text() == "PUBLIC_KEY=ssh-ed25519 AAAA me\nEMPTY=\nTOKEN=a=b c\n"
    assert _mode(path) == 0o600 and _mode(config) == 0o700
    with pytest.raises(UpError) as exc:
        localup.env_file(tmp_path / "other", {"OK": "1", "BAD": "two\nlines"})
    assert str(exc.value) == "BAD holds a newline; an env file cannot carry it"
    assert not (tmp_path / "other").exists()


def test_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "cfg"
    key = SshKey(Path("/keys/id_ed25519"), "ssh-ed25519 AAAA")
    lines = localup.summary({"ssh": 2222, "jupyter": 8890, "api": 8001}, key, config)
    jupyter = (config / "secrets" / "JUPYTER_TOKEN").read_text()
    rel = "cfg/secrets/INFERENCE_API_TOKEN"
    assert lines == [
        "local pod is up:",
        "  SSH      ssh -i /keys/id_ed25519 -p 2222 runner@127.0.0.1",
        f"  Jupyter  http://127.0.0.1:8890/lab?token={jupyter}",
        f"  API      http://127.0.0.1:8001  (token in {rel})",
        "  try      curl -s http://127.0.0.1:8001/infer "
        f"-H \"Authorization: Bearer $(cat {rel})\" -d '{{\"moves\": [\"e2e4\", \"e7e5\"], "
        "\"topk\": 3}'",
        "  stop     make down   (the /workspace volume is kept)",
    ]
    assert localup.summary({"ssh": 1, "jupyter": 2, "api": 3}, key, config)[2] == (
        f"  Jupyter  http://127.0.0.1:2/lab?token={jupyter}")  # the same token next time


# -- the engine side --------------------------------------------------------------------------
def test_run_wraps_failures(fake_run: FakeRun) -> None:
    fake_run.respond = lambda argv: (0, "true\n", "")
    proc = localup._run(["docker", "inspect", "-f", "x", "name"], timeout=7)
    assert proc.stdout == "true\n"
    assert fake_run.kwargs[0] == {"capture_output": True, "text": True, "timeout": 7,
                                  "check": False}
    fake_run.respond = lambda argv: (3, "", "x" * 700 + "boom\n")
    with pytest.raises(UpError) as exc:
        localup._run(["docker", "inspect", "-f", "x", "name"])
    assert str(exc.value) == "docker inspect -f ... failed (3): " + "x" * 596 + "boom"
    assert localup._run(["docker", "ps"], check=False).returncode == 3


def test_running_and_published(fake_run: FakeRun) -> None:
    answers = {"true\n": 0, "false\n": 0, "": 1}
    for out, rc in answers.items():
        fake_run.respond = lambda argv, out=out, rc=rc: (rc, out, "")  # type: ignore[misc]
        assert localup.running(DOCKER, "pod") is (out == "true\n")
    assert fake_run.calls[0] == ["docker", "inspect", "-f", "{{.State.Running}}", "pod"]
    fake_run.respond = lambda argv: (0, "127.0.0.1:4022\n[::1]:4022\n", "")
    assert localup.published(PODMAN, "pod", 22) == 4022
    assert fake_run.calls[-1] == ["podman", "port", "pod", "22/tcp"]
    fake_run.respond = lambda argv: (1, "", "Error: no such container")
    with pytest.raises(UpError, match=r"^podman port pod \.\.\. failed \(1\): Error: no such"):
        localup.published(PODMAN, "pod", 22)


def test_ensure_image(monkeypatch: pytest.MonkeyPatch,
                     capsys: pytest.CaptureFixture[str]) -> None:
    exists: dict[str, bool] = {}
    builds: list[tuple[Engine, dict[str, Any]]] = []
    monkeypatch.setattr(localup, "image_exists", lambda engine, ref: exists.get(ref, False))
    monkeypatch.setattr(localup, "build", lambda engine, **kw: _logged(builds, (engine, kw), []))
    monkeypatch.setenv("IMAGE_REPO", "ghcr.io/o/r")
    monkeypatch.setenv("IMAGE_TAG", "t")
    exists["ghcr.io/o/r:latest"] = True
    assert localup.ensure_image(DOCKER) == "ghcr.io/o/r:latest"
    assert builds == []
    monkeypatch.setenv("LOCAL_POD_IMAGE", "mine:2")
    assert localup.ensure_image(PODMAN) == "mine:2"
    assert builds == [(PODMAN, {"quiet": True})]
    assert capsys.readouterr().err == ("up: mine:2 not built yet: building it (first time: a few "
                                       "minutes)\n")


def test_local_pod_exec_passes_env_by_name(fake_run: FakeRun) -> None:
    pod = LocalPod(PODMAN)
    assert pod.volume == "chessbot-local-workspace"
    fake_run.respond = lambda argv: (0, "ok", "")
    assert pod.exec("ls", "-l", user="runner", env={"SECRET": "s3cr3t"}).stdout == "ok"
    assert fake_run.calls == [["podman", "exec", "-u", "runner", "-e", "SECRET",
                               "chessbot-local", "ls", "-l"]]
    assert fake_run.kwargs[0]["env"]["SECRET"] == "s3cr3t"
    assert fake_run.kwargs[0]["timeout"] == 600
    fake_run.respond = lambda argv: (1, "stdout tail", "")
    with pytest.raises(UpError) as exc:
        pod.exec("python", "-m", "appliance.training.preset", "--x")
    assert str(exc.value) == ("python -m appliance.training.preset in chessbot-local failed (1): "
                              "stdout tail")
    fake_run.respond = lambda argv: (1, "out", "err text\n")
    with pytest.raises(UpError, match=r"failed \(1\): err text$"):
        pod.exec("true")
    assert pod.exec("false", check=False).returncode == 1


def test_local_pod_probes_and_tiny_training(fake_run: FakeRun) -> None:
    pod = LocalPod(DOCKER, "p1")
    for rc, up in ((0, True), (1, True), (3, False), (126, False)):
        fake_run.respond = lambda argv, rc=rc: (rc, "", "")  # type: ignore[misc]
        assert pod.supervisor_up() is up
    assert fake_run.calls[0] == ["docker", "exec", "p1", "python", "-m", "appliance.runtime.status",
                                 "--json"]
    assert fake_run.kwargs[0]["timeout"] == 30
    fake_run.respond = lambda argv: (0, "", "")
    assert pod.has_model() is True
    assert fake_run.calls[-1] == ["docker", "exec", "p1", "test", "-f",
                                  "/workspace/artifacts/local-up/model_best.pt"]
    fake_run.respond = lambda argv: (1, "", "")
    assert pod.has_model() is False
    fake_run.calls.clear()
    fake_run.kwargs.clear()
    fake_run.respond = lambda argv: (1 if "supervisorctl" in argv else 0, "", "")
    pod.train_tiny()  # a failing restart is tolerated
    names = [a for k, v in localup.TINY_TRAIN_ENV.items() for a in ("-e", k)]
    assert fake_run.calls == [
        ["docker", "exec", "-u", "runner", *names, "p1", "python", "-m",
         "appliance.training.preset"],
        ["docker", "exec", "p1", "supervisorctl", "restart", "inference"]]
    assert fake_run.kwargs[0]["timeout"] == 900 and fake_run.kwargs[1]["timeout"] == 60
    assert fake_run.kwargs[0]["env"]["TRAIN_EPOCHS"] == "1"


def test_local_pod_start_keeps_secrets_out_of_argv(tmp_path: Path, fake_run: FakeRun,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(localup, "pick_port", lambda preferred: preferred + 1)
    fake_run.respond = lambda argv: (1 if argv[1:3] == ["volume", "inspect"] else 0, "", "")
    config = tmp_path / "cfg"
    key = SshKey(tmp_path / "id", "ssh-ed25519 AAAA me")
    pod = LocalPod(PODMAN, "pod1", config)
    ports = pod.start("img:latest", key)
    assert ports == {"ssh": 2223, "jupyter": 8889, "api": 8001}
    env = config / "pod.env"
    assert fake_run.calls == [
        ["podman", "rm", "-f", "pod1"],
        ["podman", "volume", "inspect", "pod1-workspace"],
        ["podman", "volume", "create", "pod1-workspace"],
        ["podman", "run", "-d", "--name", "pod1", "--hostname", "pod1",
         "-v", "pod1-workspace:/workspace", "--env-file", str(env), *PODMAN_FLAGS,
         "-p", "127.0.0.1:2223:22", "-p", "127.0.0.1:8889:8888", "-p", "127.0.0.1:8001:8000",
         "img:latest"]]
    jupyter = localup.token(config, "JUPYTER_TOKEN")
    api = localup.token(config, "INFERENCE_API_TOKEN")
    assert env.read_text().splitlines() == [
        "PUBLIC_KEY=ssh-ed25519 AAAA me", f"JUPYTER_TOKEN={jupyter}",
        f"INFERENCE_API_TOKEN={api}",
        "INFERENCE_MODEL_PATH=/workspace/artifacts/local-up/model_best.pt",
        "INFERENCE_MODEL_RESCAN_SECONDS=2"]
    assert _mode(env) == 0o600
    argv_text = " ".join(" ".join(c) for c in fake_run.calls)
    assert jupyter not in argv_text and api not in argv_text
    # An existing volume is reused; a failing run is reported.
    fake_run.calls.clear()
    fake_run.respond = lambda argv: (125 if argv[1] == "run" else 0, "", "Error: port taken")
    with pytest.raises(UpError, match=r"^podman run -d \.\.\. failed \(125\): Error: port taken$"):
        pod.start("img:latest", key)
    assert [c[1:3] for c in fake_run.calls] == [["rm", "-f"], ["volume", "inspect"],
                                                ["run", "-d"]]
    assert localup.token(config, "JUPYTER_TOKEN") == jupyter  # tokens survive a restart


def test_local_pod_ports(fake_run: FakeRun) -> None:
    mapping = {"22/tcp": 4022, "8888/tcp": 4888, "8000/tcp": 4800}
    fake_run.respond = lambda argv: (0, f"127.0.0.1:{mapping[argv[3]]}\n", "")
    assert LocalPod(DOCKER).ports() == {"ssh": 4022, "jupyter": 4888, "api": 4800}


@pytest.fixture
def up_seams(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    state: dict[str, Any] = {"events": [], "urls": [], "running": False, "model": False,
                             "key": SshKey(tmp_path / "id", "ssh-ed25519 AAAA me"),
                             "ports": {"ssh": 2301, "jupyter": 2302, "api": 2303}}
    events = state["events"]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(localup, "ssh_key", lambda config: state["key"])
    monkeypatch.setattr(localup, "running", lambda engine, name: state["running"])
    monkeypatch.setattr(localup, "ensure_image",
                        lambda engine: _logged(events, "ensure_image", "img:latest"))
    monkeypatch.setattr(LocalPod, "start", lambda self, image, key: _logged(
        events, ("start", self.name, image, key), state["ports"]))
    monkeypatch.setattr(LocalPod, "ports", lambda self: _logged(events, "ports", state["ports"]))
    monkeypatch.setattr(LocalPod, "supervisor_up", lambda self: True)
    monkeypatch.setattr(LocalPod, "has_model", lambda self: state["model"])
    monkeypatch.setattr(LocalPod, "train_tiny", lambda self: events.append("train"))
    monkeypatch.setattr(localup, "http_status",
                        lambda url, headers=None, timeout=3: _logged(state["urls"], url, 200))
    return state


def test_up_starts_trains_and_prints_the_summary(up_seams: dict[str, Any], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "cfg"
    assert localup.up(PODMAN, config, "pod1") == up_seams["ports"]
    assert up_seams["events"] == ["ensure_image", ("start", "pod1", "img:latest",
                                                   up_seams["key"]), "train"]
    assert up_seams["urls"] == ["http://127.0.0.1:2303/healthz"]
    out, err = capsys.readouterr()
    assert out.splitlines() == localup.summary(up_seams["ports"], up_seams["key"], config)
    assert err == ("up: started pod1 from img:latest; waiting for supervisord\n"
                   "up: no model on the volume yet: training a tiny one on data/sample "
                   "(seconds)\n")


def test_up_when_already_running(up_seams: dict[str, Any], tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    up_seams["running"] = True
    up_seams["model"] = True
    assert localup.up(DOCKER, tmp_path / "cfg") == up_seams["ports"]
    assert up_seams["events"] == ["ports"]
    assert capsys.readouterr().err == "up: chessbot-local is already running\n"


def test_down(fake_run: FakeRun, capsys: pytest.CaptureFixture[str]) -> None:
    fake_run.respond = lambda argv: (1, "", "Error: no container with name or ID")
    assert localup.down(PODMAN) is False
    assert fake_run.calls == [["podman", "rm", "-f", "-t", "10", "chessbot-local"]]
    assert capsys.readouterr().err == "up: chessbot-local is not running\n"
    fake_run.respond = lambda argv: (0, "", "")  # podman rm -f of nothing: no output
    assert localup.down(PODMAN, "p2") is False
    assert capsys.readouterr().err == "up: p2 is not running\n"
    fake_run.respond = lambda argv: (0, "p2\n", "")
    assert localup.down(PODMAN, "p2") is True
    assert capsys.readouterr().err == ("up: p2 stopped; volume p2-workspace kept (podman volume "
                                       "rm p2-workspace deletes it)\n")


def test_down_with_docker(fake_run: FakeRun) -> None:
    known = {"rm": {"-f", "--force", "-v", "--volumes", "-l", "--link"},
             "stop": {"-t", "--time", "--timeout", "-s", "--signal"}}

    def docker_cli(argv: list[str]) -> Response:  # docker 28's option sets for rm and stop
        flags = {a for a in argv[2:] if a.startswith("-")}
        if not flags <= known.get(argv[1], flags):
            return 125, "", f"unknown shorthand flag: {sorted(flags)[0]!r}"
        return 0, f"{argv[-1]}\n", ""

    fake_run.respond = docker_cli
    assert localup.down(DOCKER) is True


# -- make smoke -------------------------------------------------------------------------------
@pytest.mark.parametrize(("raw", "expected"), [(None, 64), ("", 64), ("5", 5), (" 7 ", 7),
                                               ("1", 1)])
def test_env_int_values(raw: str | None, expected: int, monkeypatch: pytest.MonkeyPatch) -> None:
    if raw is not None:
        monkeypatch.setenv("SMOKE_TRAIN_ROWS", raw)
    assert localup._env_int("SMOKE_TRAIN_ROWS", 64) == expected


@pytest.mark.parametrize("raw", ["abc", "0", "-1", "1.5", "0x10"])
def test_env_int_rejects(raw: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMOKE_EPOCHS", raw)
    with pytest.raises(UpError) as exc:
        localup._env_int("SMOKE_EPOCHS", 1)
    assert str(exc.value) == f"SMOKE_EPOCHS={raw!r}: expected a positive integer"


def _sample(tmp_path: Path, train: int, val: int) -> Path:
    sample = tmp_path / "sample"
    sample.mkdir()
    for name, rows in (("train", train), ("val", val)):
        (sample / f"{name}.jsonl").write_text(
            "".join(json.dumps({"name": name, "i": i}) + "\n" for i in range(rows)))
    return sample


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_smoke_checks_settings_and_sample_first(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(localup, "ensure_image", _unexpected)
    monkeypatch.setenv("RUN_ID", "r1")
    monkeypatch.setenv("SMOKE_BATCH_SIZE", "0")
    with pytest.raises(UpError, match=r"^SMOKE_BATCH_SIZE='0': expected a positive integer$"):
        localup.smoke(DOCKER, tmp_path / "out", _sample(tmp_path, 3, 2))
    assert not (tmp_path / "out").exists()
    monkeypatch.delenv("SMOKE_BATCH_SIZE")
    monkeypatch.setenv("SMOKE_TRAIN_ROWS", "5")
    with pytest.raises(UpError) as exc:
        localup.smoke(DOCKER, tmp_path / "out", tmp_path / "sample")
    src = tmp_path / "sample" / "train.jsonl"
    assert str(exc.value) == f"SMOKE_TRAIN_ROWS=5: {src} has only 3"
    [rec] = _records(tmp_path / "out" / "r1" / "runpod_phase_times.jsonl")
    assert (rec["phase"], rec["status"], rec["source"], rec["run_id"]) == (
        "prepare_smoke_dataset", "error", "local_runpod_smoke", "r1")


@pytest.fixture
def smoke_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_run: FakeRun
              ) -> dict[str, Any]:
    state: dict[str, Any] = {"start_rc": 0, "copy_out": True}
    monkeypatch.setattr(localup, "ensure_image", lambda engine: "img:latest")
    monkeypatch.setenv("RUN_ID", "Smoke-T1")
    monkeypatch.setenv("SMOKE_TRAIN_ROWS", "4")
    monkeypatch.setenv("SMOKE_VAL_ROWS", "2")
    monkeypatch.setenv("SMOKE_EPOCHS", "3")

    def respond(argv: list[str]) -> Response:
        if argv[1] == "start":
            return state["start_rc"], "", ""
        if argv[1] == "cp" and argv[2].startswith("chessbot-smoke-"):
            if not state["copy_out"]:
                return 1, "", "no such file"
            fname = Path(argv[3]).name
            text = ('{"source":"runpod_entrypoint","phase":"bootstrap"}\n'
                    if fname == "timings.jsonl" else '{"step":1}\n')
            Path(argv[3]).write_text(text)
        return 0, "", ""

    fake_run.respond = respond
    return state


def test_smoke_runs_the_preset_and_merges_the_logs(
        smoke_env: dict[str, Any], fake_run: FakeRun, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    progress = tmp_path / "progress" / "deep" / "p.jsonl"
    monkeypatch.setenv("SMOKE_PROGRESS_JSONL_OUT", str(progress))
    sample = _sample(tmp_path, 10, 5)
    log_path = localup.smoke(PODMAN, tmp_path / "out", sample)
    out = tmp_path / "out" / "Smoke-T1"
    assert log_path == out / "runpod_phase_times.jsonl"
    dataset = out / "dataset"
    assert (dataset / "train.jsonl").read_text().splitlines() == (
        (sample / "train.jsonl").read_text().splitlines()[:4])
    assert len((dataset / "val.jsonl").read_text().splitlines()) == 2
    assert json.loads((dataset / "stats.json").read_text()) == {
        "dataset_format": "game_jsonl_runtime_splice_v1", "train_rows": 4, "val_rows": 2,
        "created_by": {"tool": "host_tools.localup smoke", "source": str(sample)}}
    name = "chessbot-smoke-smoke-t1"
    env_names = ["RUN_ID", "RUNPOD_PHASE_TIMING_LOG", "TRAIN_DATASET_DIR", "TRAIN_OUTPUT_DIR",
                 "TRAIN_EPOCHS", "TRAIN_BATCH_SIZE", "TRAIN_PROGRESS_JSONL_OUT", "START_SSHD",
                 "START_JUPYTER", "START_INFERENCE_API"]
    calls = fake_run.calls
    assert calls[0] == ["podman", "rm", "-f", "-v", name]
    assert calls[1] == ["podman", "create", "--name", name, *PODMAN_FLAGS,
                        *[a for k in env_names for a in ("-e", k)],
                        "--entrypoint", "/usr/bin/tini", "img:latest", "--", "/bin/sh", "-c",
                        "python -m appliance.runtime.bootstrap --no-exec && "
                        "exec python -m appliance.training.preset"]
    create_env = fake_run.kwargs[1]["env"]
    assert {k: create_env[k] for k in ("RUN_ID", "TRAIN_EPOCHS", "TRAIN_BATCH_SIZE",
                                       "TRAIN_DATASET_DIR", "START_SSHD")} == {
        "RUN_ID": "Smoke-T1", "TRAIN_EPOCHS": "3", "TRAIN_BATCH_SIZE": "16",
        "TRAIN_DATASET_DIR": "/tmp/smoke", "START_SSHD": "0"}
    assert fake_run.kwargs[1]["check"] is True
    assert calls[2] == ["podman", "cp", str(dataset), f"{name}:/tmp/smoke"]
    assert calls[3] == ["podman", "start", "-a", name]
    assert [c[:3] + [c[3].rsplit("/", 1)[1]] for c in calls[4:6]] == [
        ["podman", "cp", f"{name}:/tmp/smoke/timings.jsonl", "timings.jsonl"],
        ["podman", "cp", f"{name}:/tmp/smoke/progress.jsonl", "progress.jsonl"]]
    assert calls[6:] == [["podman", "rm", "-f", "-v", name]]
    assert progress.read_text() == '{"step":1}\n'
    records = _records(log_path)
    assert [(r["phase"], r.get("status")) for r in records] == [
        ("prepare_smoke_dataset", "ok"), ("prepare_timing_log_file", "ok"),
        ("bootstrap", None), ("docker_run_smoke_training", "ok")]
    assert records[2]["source"] == "runpod_entrypoint" and records[3]["exit_code"] == 0
    assert capsys.readouterr().out == f"smoke run Smoke-T1: exit 0; timing log {log_path}\n"


def test_smoke_failing_preset(smoke_env: dict[str, Any], fake_run: FakeRun,
                              tmp_path: Path) -> None:
    smoke_env["start_rc"] = 2
    smoke_env["copy_out"] = False
    with pytest.raises(UpError) as exc:
        localup.smoke(DOCKER, tmp_path / "out", _sample(tmp_path, 4, 2))
    log_path = tmp_path / "out" / "Smoke-T1" / "runpod_phase_times.jsonl"
    assert str(exc.value) == ("the training preset in the container failed (exit 2); see "
                              f"{log_path}")
    assert fake_run.calls[-1] == ["docker", "rm", "-f", "-v", "chessbot-smoke-smoke-t1"]
    last = _records(log_path)[-1]
    assert (last["phase"], last["status"], last["exit_code"]) == (
        "docker_run_smoke_training", "error", 2)
    assert len(_records(log_path)) == 3  # nothing copied out of the container


# -- localup main -----------------------------------------------------------------------------
def test_localup_main_engine_errors(monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CONTAINER_ENGINE", "lxc")
    assert localup.main(["down"]) == 1
    assert capsys.readouterr().err == ("down: error: CONTAINER_ENGINE='lxc': expected docker or "
                                       "podman\n")
    for argv in (["--engine", "lxc", "up"], [], ["sideways"]):
        with pytest.raises(SystemExit) as exc:
            localup.main(argv)
        assert exc.value.code == 2


def test_localup_main_up_error(monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    detect = _engine_spy(monkeypatch, localup, DOCKER)
    calls: list[tuple[Engine, str]] = []

    def up(engine: Engine, name: str) -> dict[str, int]:
        calls.append((engine, name))
        raise UpError("supervisord in the container not ready within 120 s")

    monkeypatch.setattr(localup, "up", up)
    assert localup.main(["--engine", "docker", "--name", "mine", "up"]) == 1
    assert (detect, calls) == ([("docker", True)], [(DOCKER, "mine")])
    assert capsys.readouterr().err == ("up: error: supervisord in the container not ready "
                                       "within 120 s\n")


def test_localup_main_down_and_smoke(monkeypatch: pytest.MonkeyPatch, fake_run: FakeRun,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    _engine_spy(monkeypatch, localup, PODMAN)
    monkeypatch.setenv("LOCAL_POD_NAME", "from-env")
    fake_run.respond = lambda argv: (1, "", "no such container")
    assert localup.main(["down"]) == 0  # nothing to stop is not an error
    assert fake_run.calls == [["podman", "rm", "-f", "-t", "10", "from-env"]]
    assert capsys.readouterr().err == "up: from-env is not running\n"
    monkeypatch.setenv("SMOKE_EPOCHS", "abc")
    assert localup.main(["smoke"]) == 1
    assert capsys.readouterr().err == ("smoke: error: SMOKE_EPOCHS='abc': expected a positive "
                                       "integer\n")
    assert len(fake_run.calls) == 1
