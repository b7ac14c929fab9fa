"""The container engine, in one place: which one runs here (Docker when its daemon answers, else
podman, installed with runc when neither exists) and the flags each engine needs on this host for
`run`/`create`, `build`, `push` and removing a container. Every host tool, test tier and benchmark
that starts a container takes its engine and flags from here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from host_tools.settings import EngineSettings, load

ENGINES = ("docker", "podman")
# Podman without a Docker engine (as in podman-in-a-container) may have no usable crun and may
# not raise limits, so every podman container states its runtime and limits explicitly.
PODMAN_RUN_FLAGS = ("--runtime", "runc", "--ulimit", "nofile=1024:1024",
                    "--ulimit", "nproc=1024:1024")
# No registry and no bridge networking here; the build never pulls the base.
# --format docker: OCI images drop HEALTHCHECK and SHELL.
PODMAN_BUILD_FLAGS = ("--network", "host", "--pull=never", "--format", "docker",
                      *PODMAN_RUN_FLAGS)


class EngineError(RuntimeError):
    """No usable container engine, or a host package it needs missing; says what to do."""


def run_flags(engine: str) -> tuple[str, ...]:
    """Flags `run` and `create` need with this engine here."""
    return PODMAN_RUN_FLAGS if engine == "podman" else ()


def build_flags(engine: str) -> tuple[str, ...]:
    """Flags `build` needs with this engine here."""
    return PODMAN_BUILD_FLAGS if engine == "podman" else ()


def push_flags(engine: str, tls_verify: bool = True) -> tuple[str, ...]:
    """Flags `push` needs; only podman can push to a plain-HTTP registry."""
    return ("--tls-verify=false",) if engine == "podman" and not tls_verify else ()


def remove_commands(engine: str, name: str, grace_s: int = 10,
                    volumes: bool = False) -> list[list[str]]:
    """Stop a container (SIGTERM, SIGKILL after grace_s) and remove it: podman's `rm -t` does
    both; `docker rm` has no -t, so Docker stops first."""
    vol = ["-v"] if volumes else []
    if engine == "podman":
        return [[engine, "rm", "-f", "-t", str(grace_s), *vol, name]]
    return [[engine, "stop", "-t", str(grace_s), name], [engine, "rm", "-f", *vol, name]]


@dataclass(frozen=True)
class Engine:
    """A working container engine: its binary and the flags its commands need here."""

    name: str

    def cmd(self, *args: str) -> list[str]:
        return [self.name, *args]

    @property
    def run_flags(self) -> tuple[str, ...]:
        return run_flags(self.name)

    @property
    def build_flags(self) -> tuple[str, ...]:
        return build_flags(self.name)

    def remove(self, name: str, grace_s: int = 10, volumes: bool = False) -> list[list[str]]:
        return remove_commands(self.name, name, grace_s, volumes)


def answers(argv: Sequence[str], timeout: float = 30) -> bool:
    """True when the command runs and exits 0 within `timeout` seconds."""
    try:
        return subprocess.run(list(argv), capture_output=True, timeout=timeout,
                              check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def apt_install(packages: Sequence[str]) -> None:
    """Install Debian packages (as root, where apt-get exists), else say how to."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise EngineError(f"{' '.join(packages)} missing: install them (apt-get install "
                          f"{' '.join(packages)}) or run as root on Debian/Ubuntu")
    print(f"image: installing {' '.join(packages)} (apt)", file=sys.stderr, flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *packages], check=True, env=env,
                   stdout=subprocess.DEVNULL)


@dataclass(frozen=True)
class Probe:
    """How detection looks at the machine; tests replace any of it."""

    which: Callable[[str], str | None] = field(default=lambda name: shutil.which(name))
    answers: Callable[[Sequence[str]], bool] = field(default=lambda argv: answers(argv))
    install: Callable[[Sequence[str]], None] = field(default=lambda pkgs: apt_install(pkgs))


def installed(which: Callable[[str], str | None] = shutil.which) -> str | None:
    """Where an engine binary is (podman, else docker), for setup checks; unlike detect_engine it
    does not ask whether the engine runs."""
    return next((path for path in map(which, ("podman", "docker")) if path), None)


def detect_engine(preferred: str | None = None, install: bool = True,
                  probe: Probe | None = None) -> Engine:
    """Docker when its daemon answers, else podman; installs podman+runc when neither exists.
    `preferred` (else CONTAINER_ENGINE) picks one."""
    probe = probe or Probe()
    preferred = preferred or load(EngineSettings).CONTAINER_ENGINE
    if preferred not in (None, *ENGINES):
        raise EngineError(f"CONTAINER_ENGINE={preferred!r}: expected docker or podman")
    if preferred in (None, "docker") and probe.which("docker") and \
            probe.answers(["docker", "info"]):
        return Engine("docker")
    if preferred == "docker":
        raise EngineError("CONTAINER_ENGINE=docker but `docker info` fails: start the daemon")
    if not probe.which("podman") and install:
        probe.install(["podman", "runc"])
    if probe.which("podman"):
        return Engine("podman")
    raise EngineError("no container engine: neither a running Docker nor podman was found")
