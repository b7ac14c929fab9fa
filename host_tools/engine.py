"""The container engine, in one place: which one runs here (Docker when its daemon answers, else
podman, installed with runc when neither exists) and the flags each engine needs on this host for
`run`/`create`, `build`, `pull`, `push` and removing a container, derived from facts about the
host (HostFacts: CPU architecture, nested in a container, crun, ulimit capability) read here
once. Every host tool, test tier and benchmark that starts a container takes its engine and flags
from here.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from host_tools.settings import EngineSettings, load

ENGINES = ("docker", "podman")
# RunPod runs linux/amd64 images; an arm64 host (Apple silicon) builds them under emulation.
TARGET_PLATFORM = "linux/amd64"
# podman's rootful default ulimits (nofile and nproc 1048576) need CAP_SYS_RESOURCE.
CAP_SYS_RESOURCE = 24


class EngineError(RuntimeError):
    """No usable container engine, or a host package it needs missing; says what to do."""


@dataclass(frozen=True)
class HostFacts:
    """What about this machine decides the engine flags; `host_facts()` reads them once."""

    machine: str  # os.uname().machine
    nested: bool  # inside a container (/.dockerenv, /run/.containerenv): no bridge networking
    crun: bool  # podman's default runtime is installed
    raise_limits: bool  # podman may raise ulimits (root with CAP_SYS_RESOURCE, or rootless)


@functools.cache
def host_facts() -> HostFacts:
    caps = 0
    try:
        status = Path("/proc/self/status").read_text(encoding="utf-8")
        caps = int(next(line.split()[1] for line in status.splitlines()
                        if line.startswith("CapEff:")), 16)
    except (OSError, StopIteration, ValueError):
        pass
    return HostFacts(
        machine=os.uname().machine,
        nested=Path("/.dockerenv").exists() or Path("/run/.containerenv").exists(),
        crun=shutil.which("crun") is not None,
        raise_limits=os.geteuid() != 0 or bool(caps >> CAP_SYS_RESOURCE & 1),
    )


def platform_flags(facts: HostFacts | None = None) -> tuple[str, ...]:
    """`--platform linux/amd64` on an arm64 host (emulated: slower builds and runs), else none."""
    facts = facts or host_facts()
    return ("--platform", TARGET_PLATFORM) if facts.machine in ("arm64", "aarch64") else ()


def run_flags(engine: str, facts: HostFacts | None = None) -> tuple[str, ...]:
    """Flags `run` and `create` need with this engine on this host: none with Docker; podman gets
    runc where its default crun is missing and explicit ulimits where it may not raise them
    (podman inside a container)."""
    if engine != "podman":
        return ()
    facts = facts or host_facts()
    flags: tuple[str, ...] = () if facts.crun else ("--runtime", "runc")
    if not facts.raise_limits:
        flags += ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024")
    return flags


def build_flags(engine: str, facts: HostFacts | None = None) -> tuple[str, ...]:
    """Flags `build` needs: the target platform; podman also `--format docker` (OCI images drop
    HEALTHCHECK and SHELL), host networking where nested (no bridge), and its run flags."""
    facts = facts or host_facts()
    if engine != "podman":
        return platform_flags(facts)
    network = ("--network", "host") if facts.nested else ()
    return (*platform_flags(facts), *network, "--format", "docker", *run_flags(engine, facts))


def pull_flags(engine: str, facts: HostFacts | None = None) -> tuple[str, ...]:
    """Flags `pull` needs: the target platform on an arm64 host."""
    return platform_flags(facts)


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

    @property
    def pull_flags(self) -> tuple[str, ...]:
        return pull_flags(self.name)

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
