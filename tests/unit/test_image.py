"""host_tools.image (`make image`/`push`/`base-image`) without a container engine: tags, git
SHA, apt mirror, wheelhouse, base image, build and push argv, and its command line. Every process
goes through tests/unit/process_fakes.py.
"""

from __future__ import annotations

import io
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from host_tools import image
from host_tools.engine import Engine
from host_tools.image import (
    DEFAULT_BASE_IMAGE,
    DEFAULT_MIRROR,
    DEFAULT_OFFLINE_BASE,
    IMAGE_CODE_DIR,
    ROOT,
    ImageError,
)
from host_tools.settings import ImageSettings
from tests.unit.process_fakes import (
    DOCKER,
    PODMAN,
    PODMAN_FLAGS,
    REAL_RUN,
    FakeRun,
    Response,
    engine_spy,
    logged,
    unexpected,
    which_finds,
)

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("no_real_processes")]

DEFAULT_IMAGE_REPO = ImageSettings.model_fields["IMAGE_REPO"].default
REPO_HINT = "is not an image name like ghcr.io/owner/chess-bot"


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
    assert image.wheel_requirements("cuda") == ["torch==2.13.0,!=2.13.0+cpu", *extras]
    monkeypatch.setenv("TORCH_SPEC", "torch==2.12.1")
    assert image.wheel_requirements("cuda") == ["torch==2.12.1", *extras]
    for bad in ("gpu", "CPU", ""):
        with pytest.raises(ImageError) as exc:
            image.wheel_requirements(bad)
        assert str(exc.value) == f"TORCH_VARIANT={bad!r}: expected cpu or cuda"


def test_project_dependencies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "chess>=1.11" in image.project_dependencies()  # the real pyproject.toml
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\ndependencies = ["a>=1", "b"]\n', encoding="utf-8")
    monkeypatch.setattr(image, "ROOT", tmp_path)
    assert image.project_dependencies() == ["a>=1", "b"]


@pytest.fixture
def wheel_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_run: FakeRun) -> Path:
    monkeypatch.setattr(image, "ROOT", tmp_path)
    monkeypatch.setattr(image, "project_dependencies", lambda: ["chess>=1.11", "numpy>=1.26"])

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


def test_image_exists_inspects_the_ref(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    monkeypatch.setattr(image, "answers", lambda argv, timeout=30: logged(seen, list(argv), True))
    assert image.image_exists(PODMAN, "img:1") is True
    assert seen == [["podman", "image", "inspect", "img:1"]]


# -- build_base -------------------------------------------------------------------------------
def test_build_base_skips_an_existing_image(monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(image, "image_exists", lambda engine, ref: ref == DEFAULT_OFFLINE_BASE)
    assert image.build_base(PODMAN) == DEFAULT_OFFLINE_BASE
    assert capsys.readouterr().err == (f"image: base image {DEFAULT_OFFLINE_BASE} exists: skipped "
                                       "(FORCE=1 rebuilds it)\n")


def test_build_base_needs_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(image, "image_exists", lambda engine, ref: True)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    which_finds(monkeypatch, {"debootstrap", "apt-get"})
    with pytest.raises(ImageError) as exc:
        image.build_base(PODMAN, force=True)
    assert str(exc.value) == ("debootstrap needs root: run `make base-image` as root, or let "
                              "the build pull BASE_IMAGE (unset OFFLINE)")
    which_finds(monkeypatch, {"apt-get"})
    with pytest.raises(ImageError) as exc:
        image.build_base(PODMAN, force=True)
    assert str(exc.value) == ("debootstrap missing: install them (apt-get install debootstrap) "
                              "or run as root on Debian/Ubuntu")


@pytest.fixture
def as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    which_finds(monkeypatch, {"debootstrap"})
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


# -- pull, find-links, the default path's dependency set -----------------------------------
def test_pull_reports_why_not(fake_run: FakeRun) -> None:
    assert image.pull(PODMAN, "docker.io/library/debian:bookworm-slim") is None
    assert fake_run.calls == [["podman", "pull", "docker.io/library/debian:bookworm-slim"]]
    assert fake_run.kwargs[0] == {"capture_output": True, "text": True, "check": False}
    fake_run.respond = lambda argv: (125, "", "Trying to pull x...\nError: no such host\n")
    assert image.pull(DOCKER, "x") == "Error: no such host"
    fake_run.respond = lambda argv: (1, "", "")
    assert image.pull(DOCKER, "x") == "exit 1"


def test_pip_config_and_find_links_dirs(tmp_path: Path, fake_run: FakeRun) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    fake_run.respond = lambda argv: (0, (
        f":env:.find-links='{tmp_path / 'a'} file://{tmp_path / 'b'}'\n"
        f"global.find-links='{tmp_path / 'a'} https://example.org/wheels {tmp_path / 'gone'}'\n"
        "global.cert='/etc/ca.pem'\nglobal.extra-index-url='file:///opt/pypi/simple'\n"), "")
    config = image.pip_config("/py")
    assert fake_run.calls == [["/py", "-m", "pip", "config", "list"]]
    assert config == {"find-links": [f"{tmp_path / 'a'} file://{tmp_path / 'b'}",
                                     f"{tmp_path / 'a'} https://example.org/wheels "
                                     f"{tmp_path / 'gone'}"],
                      "cert": ["/etc/ca.pem"], "extra-index-url": ["file:///opt/pypi/simple"]}
    assert image.find_links_dirs(config) == [tmp_path / "a", tmp_path / "b"]
    assert image.find_links_dirs({}) == []


def test_local_wheels_take_only_the_pinned_torch(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    for folder, names in ((one, ["torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl",
                                 "nvidia_nccl-2.29-py3-none-any.whl", "notes.txt"]),
                          (two, ["torch-2.13.0-cp311-cp311-linux_x86_64.whl",
                                 "nvidia_nccl-2.29-py3-none-any.whl"])):
        folder.mkdir()
        for name in names:
            (folder / name).write_text(name)
    names = [w.name for w in image.local_wheels("torch==2.13.0,!=2.13.0+cpu", [one, two])]
    assert names == ["nvidia_nccl-2.29-py3-none-any.whl",
                     "torch-2.13.0-cp311-cp311-linux_x86_64.whl"]
    assert image.local_wheels("torch==2.13.0", [one, two])[0].parent == one  # first dir wins
    names = [w.name for w in image.local_wheels("torch==2.13.0+cpu", [one, two])]
    assert names == ["nvidia_nccl-2.29-py3-none-any.whl",
                     "torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl"]
    assert [w.name for w in image.local_wheels("torch>=2", [one])] == [
        "nvidia_nccl-2.29-py3-none-any.whl"]


def test_prepare_deps_offers_local_wheels_else_the_torch_index(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(image, "project_dependencies", lambda: ["chess>=1.11"])
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    torch = wheels / "torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl"
    torch.write_text("w")
    links = {"find-links": [str(wheels)]}
    out = image.prepare_deps("cpu", dest=tmp_path / "deps", config=links)
    assert out == tmp_path / "deps" / "cpu"
    assert (out / "requirements.txt").read_text() == ("torch==2.13.0+cpu\nsupervisor\n"
                                                      "jupyterlab\nhuggingface_hub\n"
                                                      "chess>=1.11\nsetuptools>=68\nwheel\n")
    assert (out / "pip.args").read_text() == "--find-links\n/deps/wheels\n"
    assert (out / "wheels" / torch.name).stat().st_ino == torch.stat().st_ino  # a hard link
    assert capsys.readouterr().err == ("image: dependencies: torch==2.13.0+cpu from a local "
                                       "wheel; 1 wheel(s) from pip's find-links here\n")
    mtime = (out / "pip.args").stat().st_mtime_ns
    image.prepare_deps("cpu", dest=tmp_path / "deps", config=links)
    assert (out / "pip.args").stat().st_mtime_ns == mtime  # unchanged: the build cache holds
    capsys.readouterr()
    # Without a local torch wheel: torch's CPU index; a stale link goes.
    image.prepare_deps("cpu", dest=tmp_path / "deps", config={})
    assert list((out / "wheels").iterdir()) == []
    assert (out / "pip.args").read_text() == ("--find-links\n/deps/wheels\n--extra-index-url\n"
                                              "https://download.pytorch.org/whl/cpu\n")
    assert capsys.readouterr().err == ("image: dependencies: torch==2.13.0+cpu from "
                                       "https://download.pytorch.org/whl/cpu\n")
    out = image.prepare_deps("cuda", dest=tmp_path / "deps", config=links)
    assert (out / "pip.args").read_text() == "--find-links\n/deps/wheels\n"  # PyPI's CUDA torch
    assert capsys.readouterr().err == ("image: dependencies: torch==2.13.0,!=2.13.0+cpu from "
                                       "the package index\n")
    monkeypatch.setenv("TORCH_INDEX_URL", "https://mirror.example/torch-cpu")
    out = image.prepare_deps("cpu", dest=tmp_path / "deps", config={})
    assert (out / "pip.args").read_text().splitlines()[-1] == "https://mirror.example/torch-cpu"
    # pip's cert here (a TLS-inspecting proxy's CA) goes into the build with the set.
    (tmp_path / "proxy-ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.delenv("TORCH_INDEX_URL")
    capsys.readouterr()
    out = image.prepare_deps("cuda", dest=tmp_path / "deps",
                             config={"cert": [str(tmp_path / "gone.pem"),
                                              str(tmp_path / "proxy-ca.pem")]})
    assert (out / "pip.args").read_text() == "--find-links\n/deps/wheels\n--cert\n/deps/ca.pem\n"
    assert (out / "ca.pem").read_text() == "-----BEGIN CERTIFICATE-----\n"
    assert capsys.readouterr().err == ("image: dependencies: torch==2.13.0,!=2.13.0+cpu from "
                                       "the package index; pip's CA bundle "
                                       f"{tmp_path / 'proxy-ca.pem'}\n")


# -- build ------------------------------------------------------------------------------------
@pytest.fixture
def build_seams(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """Pulls succeed unless `pull_error` is set; the sets are recorded, not made."""
    events: list[tuple[str, Any]] = []

    def base(engine: Engine, ref: str = DEFAULT_OFFLINE_BASE, mirror: str | None = None,
             force: bool = False) -> str:
        events.append(("base", (engine, ref)))
        return ref

    def wheelhouse(variant: str = "cpu", dest: Path = ROOT / "build" / "wheelhouse") -> Path:
        events.append(("wheelhouse", variant))
        return dest / variant

    def deps(variant: str = "cpu", dest: Path = ROOT / "build" / "deps") -> Path:
        events.append(("deps", variant))
        return dest / variant

    def pull(engine: Engine, ref: str) -> str | None:
        events.append(("pull", ref))
        return getattr(build_seams_state, "pull_error", None)

    monkeypatch.setattr(image, "build_base", base)
    monkeypatch.setattr(image, "build_wheelhouse", wheelhouse)
    monkeypatch.setattr(image, "prepare_deps", deps)
    monkeypatch.setattr(image, "pull", pull)
    monkeypatch.setattr(image, "image_exists",
                        lambda engine, ref: ref in getattr(build_seams_state, "here", ()))
    build_seams_state.pull_error = None
    build_seams_state.here = ()
    return events


build_seams_state = SimpleNamespace(pull_error=None, here=())


def test_build_default_path_does_not_pull_a_base_that_is_here(
        build_seams: list[tuple[str, Any]], fake_run: FakeRun,
        capsys: pytest.CaptureFixture[str]) -> None:
    build_seams_state.here = (DEFAULT_BASE_IMAGE,)
    image.build(PODMAN, repo="r", tag="t")
    assert build_seams == [("deps", "cpu")]  # no pull: it would void the layer cache
    assert f"BASE_IMAGE={DEFAULT_BASE_IMAGE}" in fake_run.calls[0]
    assert capsys.readouterr().err.splitlines()[0] == (
        f"image: default path: found {DEFAULT_BASE_IMAGE}; pip installs the dependencies in "
        "the build (cache mount)")


def test_build_default_path_docker_argv(build_seams: list[tuple[str, Any]], fake_run: FakeRun,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    refs = image.build(DOCKER, repo="ghcr.io/o/r", tag="t1")
    assert refs == ["ghcr.io/o/r:t1", "ghcr.io/o/r:latest"]
    assert build_seams == [("pull", DEFAULT_BASE_IMAGE), ("deps", "cpu")]
    assert DEFAULT_BASE_IMAGE == "docker.io/library/debian:bookworm-slim"
    assert fake_run.calls == [[
        "docker", "build", "-f", str(ROOT / "image" / "Dockerfile"),
        "--build-arg", f"BASE_IMAGE={DEFAULT_BASE_IMAGE}",
        "--build-arg", "TORCH_VARIANT=cpu",
        "--build-arg", "DEPS=build/deps/cpu",
        "-t", "ghcr.io/o/r:t1", "-t", "ghcr.io/o/r:latest", str(ROOT)]]
    assert fake_run.kwargs == [{"check": False, "stdout": None}]
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (f"image: default path: pulled {DEFAULT_BASE_IMAGE}; pip installs the "
                      "dependencies in the build (cache mount)")
    assert err[1] == "image: docker build -> ghcr.io/o/r:t1, ghcr.io/o/r:latest"
    assert err[2].startswith("image: built ghcr.io/o/r:t1 in ") and err[2].endswith(" s")


def test_build_takes_the_offline_path_when_the_pull_fails(
        build_seams: list[tuple[str, Any]], fake_run: FakeRun,
        capsys: pytest.CaptureFixture[str]) -> None:
    build_seams_state.pull_error = "Error: no such host"
    image.build(PODMAN, repo="r", tag="t")
    assert build_seams == [("pull", DEFAULT_BASE_IMAGE), ("base", (PODMAN, DEFAULT_OFFLINE_BASE)),
                           ("wheelhouse", "cpu")]
    assert fake_run.calls[0][4:10] == ["--build-arg", f"BASE_IMAGE={DEFAULT_OFFLINE_BASE}",
                                       "--build-arg", "TORCH_VARIANT=cpu",
                                       "--build-arg", "DEPS=build/wheelhouse/cpu"]
    assert capsys.readouterr().err.splitlines()[0] == (
        f"image: offline path: {DEFAULT_BASE_IMAGE} cannot be pulled (Error: no such host); "
        f"base {DEFAULT_OFFLINE_BASE}, wheelhouse downloaded on this host")


def test_build_offline_by_setting_pulls_nothing(build_seams: list[tuple[str, Any]],
                                                fake_run: FakeRun,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("OFFLINE", "1")
    monkeypatch.setenv("OFFLINE_BASE_IMAGE", "localhost/mine:1")
    image.build(DOCKER, repo="r", tag="t")
    assert build_seams == [("wheelhouse", "cpu")]  # not the default offline base: no debootstrap
    assert "BASE_IMAGE=localhost/mine:1" in fake_run.calls[0]
    assert capsys.readouterr().err.splitlines()[0] == (
        "image: offline path: OFFLINE=1; base localhost/mine:1, wheelhouse downloaded on this "
        "host")
    monkeypatch.setenv("OFFLINE", "0")
    image.build(DOCKER, repo="r", tag="t", offline=True)  # the argument wins
    assert build_seams[-1] == ("wheelhouse", "cpu")
    assert ("pull", DEFAULT_BASE_IMAGE) not in build_seams


def test_build_podman_cuda_quiet_no_cache(build_seams: list[tuple[str, Any]],
                                          fake_run: FakeRun, tmp_path: Path) -> None:
    refs = image.build(PODMAN, variant="cuda", base="quay.io/x/debian:bookworm",
                       repo="r", tag="t", quiet=True, context=tmp_path, no_cache=True)
    assert refs == ["r:t", "r:latest"]
    assert build_seams == [("pull", "quay.io/x/debian:bookworm"), ("deps", "cuda")]
    assert fake_run.calls == [[
        "podman", "build", "-f", str(tmp_path / "image" / "Dockerfile"),
        "--build-arg", "BASE_IMAGE=quay.io/x/debian:bookworm",
        "--build-arg", "TORCH_VARIANT=cuda",
        "--build-arg", "DEPS=build/deps/cuda",
        "--network", "host", "--format", "docker", *PODMAN_FLAGS,
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
    assert build_seams == [("pull", "localhost/other:1"), ("deps", "cpu")]
    argv = fake_run.calls[0]
    assert "BASE_IMAGE=localhost/other:1" in argv
    assert argv[-5:] == ["-t", "chessbot-appliance:envtag", "-t", "chessbot-appliance:latest",
                         str(ROOT)]


def test_build_rejects_a_bad_variant_before_pulling(build_seams: list[tuple[str, Any]]) -> None:
    with pytest.raises(ImageError, match=r"^TORCH_VARIANT='gpu': expected cpu or cuda$"):
        image.build(DOCKER, variant="gpu")
    assert build_seams == []


# -- push -------------------------------------------------------------------------------------
def test_push_dry_run_prints_and_runs_nothing(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(image, "image_exists", unexpected)
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
    # A loopback registry is plain HTTP unless told otherwise; others keep TLS verification.
    for repo in ("127.0.0.1:5000/o/r", "localhost:5000/r", "localhost/r"):
        assert image.push(PODMAN, repo=repo, tag="t", dry_run=True)[0] == [
            "podman", "push", "--tls-verify=false", f"{repo}:t"]
    assert image.push(PODMAN, repo="127.0.0.1:5000/r", tag="t", dry_run=True,
                      tls_verify=True)[0] == ["podman", "push", "127.0.0.1:5000/r:t"]
    assert image.push(PODMAN, repo="reg.example:5000/r", tag="t", dry_run=True)[0] == [
        "podman", "push", "reg.example:5000/r:t"]


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
    detect = engine_spy(monkeypatch, image, DOCKER)
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
    detect = engine_spy(monkeypatch, image, PODMAN)
    pushed: list[dict[str, Any]] = []
    monkeypatch.setattr(image, "push", lambda engine, **kw: pushed.append({"e": engine, **kw}))
    assert image.main(["--engine", "podman", "push", "--tls-verify", "false"]) == 0
    assert detect == [("podman", True)]
    assert pushed == [{"e": PODMAN, "dry_run": False, "tls_verify": False}]


def test_image_main_engine_build_base(monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    detect = engine_spy(monkeypatch, image, PODMAN)
    assert image.main(["engine"]) == 0
    assert capsys.readouterr().out == "podman\n"
    built: list[tuple[Any, ...]] = []
    monkeypatch.setattr(image, "build", lambda engine, **kw: logged(built, (engine, kw),
                                                            ["r:1", "r:latest"]))
    assert image.main(["--engine", "docker", "build", "--variant", "cuda", "--base", "b:1",
                       "--quiet"]) == 0
    assert built == [(PODMAN, {"variant": "cuda", "base": "b:1", "quiet": True,
                               "offline": None})]
    assert image.main(["build", "--offline"]) == 0
    assert built[1] == (PODMAN, {"variant": "cpu", "base": None, "quiet": False,
                                 "offline": True})
    assert capsys.readouterr().out == "r:1\nr:latest\n" * 2
    bases: list[tuple[Any, ...]] = []
    monkeypatch.setattr(image, "build_base", lambda *a: logged(bases, a, a[1]))
    assert image.main(["base-image"]) == 0
    monkeypatch.setenv("OFFLINE_BASE_IMAGE", "localhost/mine:1")
    assert image.main(["base-image", "--force", "--mirror", "http://m/debian"]) == 0
    assert bases == [(PODMAN, DEFAULT_OFFLINE_BASE, None, False),
                     (PODMAN, "localhost/mine:1", "http://m/debian", True)]
    assert capsys.readouterr().out == f"{DEFAULT_OFFLINE_BASE}\nlocalhost/mine:1\n"
    assert detect == [(None, True), ("docker", True), (None, True), (None, True), (None, True)]


def test_image_main_errors(monkeypatch: pytest.MonkeyPatch,
                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CONTAINER_ENGINE", "lxc")
    assert image.main(["engine"]) == 1
    assert capsys.readouterr().err == (
        "image: error: bad environment: CONTAINER_ENGINE='lxc': Input should be 'docker' or "
        "'podman' (Container engine for image builds, the local pod and the container tests; "
        "default Docker when its daemon answers, else podman.)\n")
    for argv in ([], ["--engine", "lxc", "engine"], ["frobnicate"]):
        with pytest.raises(SystemExit) as exc:
            image.main(argv)
        assert exc.value.code == 2
    assert "invalid choice: 'lxc'" in capsys.readouterr().err


# == host_tools.localup ========================================================================


def test_the_image_code_dir_is_the_dockerfiles() -> None:
    text = (ROOT / "image" / "Dockerfile").read_text()
    assert f"APPLIANCE_CODE_DIR={IMAGE_CODE_DIR} " in text
    assert f"COPY --chown=1000:1000 appliance {IMAGE_CODE_DIR}/appliance\n" in text
    assert "COPY --chown=1000:1000 . " not in text  # build/ (the dependency sets) stays out
