"""Fakes for the host tools that start processes (host_tools.image, .localup, .engine): every
subprocess.run/Popen goes through a fake, and the fixture `no_real_processes` (a module asks for it
with `pytest.mark.usefixtures`; this file is a plugin of tests/conftest.py) makes any unfaked one
fail the test, so no engine, apt-get, pip or
debootstrap ever runs (only git and ssh-keygen, in a tmp dir, where a test asks for them by name).
"""

from __future__ import annotations

import shutil
import stat
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from host_tools import engine
from host_tools.engine import Engine, HostFacts

REAL_RUN = subprocess.run
REAL_POPEN = subprocess.Popen
DOCKER = Engine("docker")
PODMAN = Engine("podman")
# The machine these tools were built on: podman nested in a container, no crun, no CAP_SYS_RESOURCE.
NESTED_HOST = HostFacts(machine="x86_64", nested=True, crun=False, raise_limits=False)
PODMAN_FLAGS = ["--runtime", "runc", "--ulimit", "nofile=1024:1024", "--ulimit",
                "nproc=1024:1024"]
# Every variable the host tools read; a developer's shell must not steer the tests.
ENV_VARS = ("IMAGE_REPO", "IMAGE_TAG", "CONTAINER_ENGINE", "BASE_IMAGE", "TORCH_SPEC", "OFFLINE",
            "OFFLINE_BASE_IMAGE", "TORCH_INDEX_URL",
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


def unexpected(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError(f"a real process was about to start: {args!r}")


@pytest.fixture(autouse=True)
def pinned_host_facts(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests see NESTED_HOST, whatever machine runs them: engine flags (host_tools.engine)
    are then the same everywhere. Other tiers keep the real facts."""
    if "unit" in request.node.path.parts:
        monkeypatch.setattr(engine, "host_facts", lambda: NESTED_HOST)


@pytest.fixture
def no_real_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(subprocess, "run", unexpected)
    monkeypatch.setattr(subprocess, "Popen", unexpected)


@pytest.fixture
def fake_run(monkeypatch: pytest.MonkeyPatch) -> FakeRun:
    fake = FakeRun()
    monkeypatch.setattr(subprocess, "run", fake)
    return fake


@pytest.fixture
def real_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subprocess, "run", REAL_RUN)
    monkeypatch.setattr(subprocess, "Popen", REAL_POPEN)


def logged(log: list[Any], item: Any, result: Any) -> Any:
    """Record a call in a lambda-sized fake, then answer it."""
    log.append(item)
    return result


def file_mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def which_finds(monkeypatch: pytest.MonkeyPatch, present: set[str]) -> None:
    """shutil.which finds exactly these binaries."""
    monkeypatch.setattr(shutil, "which",
                        lambda name: f"/usr/bin/{name}" if name in present else None)


def engine_spy(monkeypatch: pytest.MonkeyPatch, module: Any,
               engine: Engine = DOCKER) -> list[tuple[Any, ...]]:
    """Replace `module.detect_engine`; returns its (preferred, install) calls."""
    calls: list[tuple[Any, ...]] = []

    def detect(preferred: str | None = None, install: bool = True) -> Engine:
        calls.append((preferred, install))
        return engine

    monkeypatch.setattr(module, "detect_engine", detect)
    return calls
