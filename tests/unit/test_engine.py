"""host_tools.engine without a real engine: the flags each engine gets for run, build, push and
removal, and detection with an injected Probe (which binaries exist, whether `docker info`
answers, what an install does).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from host_tools import engine
from host_tools.engine import Engine, EngineError, HostFacts, Probe, detect_engine
from host_tools.engine import host_facts as real_host_facts  # no_real_processes pins it
from host_tools.settings import SettingsError
from tests.unit.process_fakes import DOCKER, PODMAN, PODMAN_FLAGS, FakeRun, Response, which_finds

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("no_real_processes")]


@dataclass
class Machine:
    """What detection sees: binaries present, a Docker daemon or not; records what it asks."""

    present: set[str]
    daemon: bool = False
    asked: list[list[str]] = field(default_factory=list)
    installed: list[list[str]] = field(default_factory=list)

    def answers(self, argv: Sequence[str]) -> bool:
        self.asked.append(list(argv))
        return self.daemon

    def install(self, packages: Sequence[str]) -> None:
        self.installed.append(list(packages))
        self.present |= {"podman", "runc"}

    def probe(self) -> Probe:
        return Probe(which=lambda name: f"/usr/bin/{name}" if name in self.present else None,
                     answers=self.answers, install=self.install)


# -- flags ----------------------------------------------------------------------------------------


def test_run_flags_per_engine() -> None:
    assert DOCKER.cmd("ps", "-a") == ["docker", "ps", "-a"]
    assert DOCKER.run_flags == () == engine.run_flags("docker")
    assert PODMAN.cmd() == ["podman"]
    assert list(PODMAN.run_flags) == PODMAN_FLAGS == list(engine.run_flags("podman"))


def test_build_flags_per_engine() -> None:
    assert DOCKER.build_flags == ()
    assert list(PODMAN.build_flags) == ["--network", "host", "--format", "docker", *PODMAN_FLAGS]


PLAIN = HostFacts(machine="x86_64", nested=False, crun=True, raise_limits=True)
ARM = HostFacts(machine="arm64", nested=False, crun=True, raise_limits=True)


def test_flags_follow_the_host_facts() -> None:
    """A normal machine: no podman workarounds; each fact adds only its own flags."""
    assert engine.run_flags("podman", PLAIN) == ()
    assert engine.build_flags("podman", PLAIN) == ("--format", "docker")
    assert engine.build_flags("docker", PLAIN) == engine.pull_flags("docker", PLAIN) == ()
    no_crun = HostFacts("x86_64", nested=False, crun=False, raise_limits=True)
    assert engine.run_flags("podman", no_crun) == ("--runtime", "runc")
    capped = HostFacts("x86_64", nested=False, crun=True, raise_limits=False)
    assert engine.run_flags("podman", capped) == ("--ulimit", "nofile=1024:1024",
                                                  "--ulimit", "nproc=1024:1024")
    nested = HostFacts("x86_64", nested=True, crun=True, raise_limits=True)
    assert engine.build_flags("podman", nested) == ("--network", "host", "--format", "docker")
    assert engine.run_flags("docker", HostFacts("x86_64", True, False, False)) == ()


def test_an_arm64_host_builds_and_pulls_for_amd64() -> None:
    assert engine.build_flags("docker", ARM) == ("--platform", "linux/amd64")
    assert engine.pull_flags("podman", ARM) == ("--platform", "linux/amd64")
    assert engine.build_flags("podman", ARM) == ("--platform", "linux/amd64", "--format",
                                                 "docker")
    aarch64 = HostFacts("aarch64", nested=False, crun=True, raise_limits=True)
    assert engine.platform_flags(aarch64) == ("--platform", "linux/amd64")
    assert engine.run_flags("docker", ARM) == ()  # emulated at run time without a flag


def test_host_facts_reads_this_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    real_host_facts.cache_clear()
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    try:
        facts = real_host_facts()
        assert facts.machine == os.uname().machine
        assert facts.raise_limits is True  # rootless podman keeps the limits it has
    finally:
        real_host_facts.cache_clear()


def test_push_flags_per_engine() -> None:
    assert engine.push_flags("podman", tls_verify=False) == ("--tls-verify=false",)
    assert engine.push_flags("podman") == ()
    assert engine.push_flags("docker", tls_verify=False) == ()


def test_remove_commands_per_engine() -> None:
    assert PODMAN.remove("c1") == [["podman", "rm", "-f", "-t", "10", "c1"]]
    assert PODMAN.remove("c1", 0, volumes=True) == [["podman", "rm", "-f", "-t", "0", "-v", "c1"]]
    assert DOCKER.remove("c1", 3) == [["docker", "stop", "-t", "3", "c1"],
                                      ["docker", "rm", "-f", "c1"]]
    assert engine.remove_commands("docker", "c1", volumes=True)[1] == ["docker", "rm", "-f", "-v",
                                                                       "c1"]


def test_answers_maps_exit_codes_and_failures(fake_run: FakeRun) -> None:
    fake_run.respond = lambda argv: (0, "", "")
    assert engine.answers(["docker", "info"]) is True
    assert fake_run.kwargs[0] == {"capture_output": True, "timeout": 30, "check": False}
    fake_run.respond = lambda argv: (1, "", "")
    assert engine.answers(("docker", "info"), timeout=5) is False
    assert fake_run.kwargs[1]["timeout"] == 5

    def missing(argv: list[str]) -> Response:
        raise FileNotFoundError(2, "nope")

    def slow(argv: list[str]) -> Response:
        raise subprocess.TimeoutExpired(argv, 30)

    for respond in (missing, slow):
        fake_run.respond = respond
        assert engine.answers(["docker", "info"]) is False


# -- detection ------------------------------------------------------------------------------------


def test_detect_engine_prefers_a_running_docker() -> None:
    machine = Machine({"docker", "podman"}, daemon=True)
    assert detect_engine(install=False, probe=machine.probe()) == Engine("docker")
    assert machine.asked == [["docker", "info"]]


def test_detect_engine_falls_back_to_podman() -> None:
    machine = Machine({"docker", "podman"}, daemon=False)
    found = detect_engine(install=False, probe=machine.probe())
    assert found == PODMAN and list(found.run_flags) == PODMAN_FLAGS
    machine = Machine({"podman"}, daemon=True)  # no docker binary: its daemon is never asked
    assert detect_engine(install=False, probe=machine.probe()) == PODMAN
    assert machine.asked == []


def test_detect_engine_honours_the_preference(monkeypatch: pytest.MonkeyPatch) -> None:
    machine = Machine({"docker", "podman"}, daemon=True)
    assert detect_engine("podman", install=False, probe=machine.probe()) == PODMAN
    assert machine.asked == []
    monkeypatch.setenv("CONTAINER_ENGINE", "podman")
    assert detect_engine(install=False, probe=machine.probe()) == PODMAN
    assert detect_engine("docker", install=False, probe=machine.probe()) == DOCKER  # arg wins
    monkeypatch.setenv("CONTAINER_ENGINE", "")
    assert detect_engine(install=False, probe=machine.probe()) == DOCKER


def test_detect_engine_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    probe = Machine({"docker", "podman"}, daemon=False).probe()
    with pytest.raises(EngineError) as exc:
        detect_engine("docker", install=False, probe=probe)
    assert str(exc.value) == "CONTAINER_ENGINE=docker but `docker info` fails: start the daemon"
    with pytest.raises(EngineError) as exc:
        detect_engine("lxc", install=False, probe=probe)
    assert str(exc.value) == "CONTAINER_ENGINE='lxc': expected docker or podman"
    probe = Machine({"docker"}, daemon=False).probe()
    for preferred in (None, "podman"):
        with pytest.raises(EngineError) as exc:
            detect_engine(preferred, install=False, probe=probe)
        assert str(exc.value) == ("no container engine: neither a running Docker nor podman "
                                  "was found")


def test_detect_engine_names_a_bad_container_engine_variable(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTAINER_ENGINE", "Docker")
    with pytest.raises(SettingsError, match=r"^bad environment: CONTAINER_ENGINE='Docker': "
                       r"Input should be 'docker' or 'podman' \(Container engine "):
        detect_engine(install=False, probe=Machine({"docker"}, daemon=True).probe())


def test_detect_engine_installs_podman_when_neither_exists() -> None:
    machine = Machine({"docker"}, daemon=False)
    assert detect_engine(probe=machine.probe()) == PODMAN
    assert machine.installed == [["podman", "runc"]]
    machine = Machine({"podman"})
    assert detect_engine(probe=machine.probe()) == PODMAN
    assert machine.installed == []  # podman exists: nothing installed


def test_installed_finds_podman_then_docker() -> None:
    assert engine.installed(lambda name: f"/bin/{name}") == "/bin/podman"
    assert engine.installed(lambda name: "/bin/docker" if name == "docker" else None) == \
        "/bin/docker"
    assert engine.installed(lambda name: None) is None


# -- apt_install (the default Probe's install) ----------------------------------------------------


def test_apt_install_needs_root(monkeypatch: pytest.MonkeyPatch) -> None:
    which_finds(monkeypatch, {"apt-get"})
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(EngineError) as exc:
        detect_engine()
    assert str(exc.value) == ("podman runc missing: install them (apt-get install podman runc) "
                              "or run as root on Debian/Ubuntu")


def test_apt_install_as_root(monkeypatch: pytest.MonkeyPatch, fake_run: FakeRun,
                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(engine.shutil, "which", lambda name: (
        "/usr/bin/apt-get" if name == "apt-get"
        else "/usr/bin/podman" if name == "podman" and len(fake_run.calls) == 2 else None))
    assert detect_engine() == PODMAN
    assert fake_run.calls == [["apt-get", "update", "-qq"],
                              ["apt-get", "install", "-y", "-qq", "podman", "runc"]]
    assert all(kw["env"]["DEBIAN_FRONTEND"] == "noninteractive" and kw["check"] is True
               for kw in fake_run.kwargs)
    assert capsys.readouterr().err == "image: installing podman runc (apt)\n"
