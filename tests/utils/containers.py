"""Plugin for the container and lifecycle tiers: the engine, the image built once per run, the
SSH client key, and `containers` (tracked containers: SSH as runner, always removed).

Modelled on jupyter/docker-stacks' tests: everything a test starts is removed by its fixture,
host ports are free ports on 127.0.0.1, readiness is polled with a deadline.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from host_tools.engine import Engine, EngineError, detect_engine
from host_tools.image import build
from tests.utils import free_port, wait_until

TEST_REPO = "localhost/chessbot-appliance-test"
# One tag per work tree when several build at once (CHESSBOT_TEST_IMAGE_TAG); CI uses "current".
TEST_TAG = os.environ.get("CHESSBOT_TEST_IMAGE_TAG", "current")


@pytest.fixture(scope="session")
def engine() -> Engine:
    try:
        return detect_engine(install=os.geteuid() == 0)
    except EngineError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"container tier needs an engine under CI=true: {exc}")
        pytest.skip(f"no container engine: {exc}")


@pytest.fixture(scope="session")
def image(engine: Engine) -> str:
    """Built once per run; the engine's layer cache makes an unchanged tree take seconds."""
    refs = build(engine, repo=TEST_REPO, tag=TEST_TAG, quiet=True)
    return refs[0]


@pytest.fixture(scope="session")
def client_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not shutil.which("ssh"):
        pytest.fail("the container tier needs an ssh client (apt-get install openssh-client)")
    key = tmp_path_factory.mktemp("ssh") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


@dataclass
class Pod:
    engine: Engine
    name: str
    volume: str
    ports: dict[int, int]
    key: Path

    def exec(self, *cmd: str, user: str | None = None, check: bool = True,
             timeout: float = 300) -> subprocess.CompletedProcess[str]:
        argv = self.engine.cmd("exec", *(["-u", user] if user else []), self.name, *cmd)
        return subprocess.run(argv, capture_output=True, text=True, check=check,
                              timeout=timeout)

    def ssh_argv(self, user: str = "runner", *extra: str) -> list[str]:
        return ["ssh", "-i", str(self.key), "-p", str(self.ports[22]), "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR", *extra, f"{user}@127.0.0.1"]

    def ssh(self, command: str, user: str = "runner", timeout: float = 300,
            *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.ssh_argv(user, *extra), command], capture_output=True,
                              text=True, timeout=timeout, check=False)

    def url(self, port: int, path: str = "") -> str:
        return f"http://127.0.0.1:{self.ports[port]}{path}"

    def running(self) -> bool:
        proc = subprocess.run(self.engine.cmd("inspect", "-f", "{{.State.Running}}", self.name),
                              capture_output=True, text=True, check=False)
        return proc.stdout.strip() == "true"

    def logs(self) -> str:
        proc = subprocess.run(self.engine.cmd("logs", self.name), capture_output=True,
                              text=True, check=False)
        return proc.stdout + proc.stderr

    def supervisor_status(self) -> dict[str, str]:
        out = self.exec("supervisorctl", "status", check=False).stdout
        return {line.split()[0]: line.split()[1] for line in out.splitlines() if line.strip()}

    def wait_ssh(self, timeout: float = 120) -> None:
        wait_until(lambda: self.ssh("true", timeout=15).returncode == 0, timeout, 0.5)

    def wait_all_running(self, timeout: float = 120) -> None:
        """appliance.runtime.status exits 0 once every enabled program is RUNNING."""
        wait_until(lambda: self.exec("python", "-m", "appliance.runtime.status", check=False,
                                     timeout=30).returncode == 0, timeout, 0.5)


@dataclass
class TrackedContainers:
    """Starts pods and removes every container and volume it made, also when a test fails."""

    engine: Engine
    image: str
    key: Path
    made: list[tuple[str, str]] = field(default_factory=list)

    def run(self, env: dict[str, str] | None = None, volume: str | None = None,
            wait: bool = True, mounts: tuple[str, ...] = ()) -> Pod:
        """`mounts`: more `-v SRC:DST[:OPTS]` specs besides the /workspace volume."""
        name = f"chessbot-test-{uuid.uuid4().hex[:8]}"
        volume = volume or f"{name}-ws"
        self.made.append((name, volume))
        ports = {inner: free_port() for inner in (22, 8888, 8000)}
        env = {"PUBLIC_KEY": self.key.with_suffix(".pub").read_text().strip(),
               "INFERENCE_MODEL_RESCAN_SECONDS": "1", **(env or {})}
        argv = self.engine.cmd("run", "-d", "--name", name, "-v", f"{volume}:/workspace",
                               *(a for m in mounts for a in ("-v", m)), *self.engine.run_flags)
        for inner, outer in ports.items():
            argv += ["-p", f"127.0.0.1:{outer}:{inner}"]
        for k in env:
            argv += ["-e", k]  # values come from the engine's env, not argv (tokens)
        subprocess.run([*argv, self.image], check=True, capture_output=True,
                       env={**os.environ, **env})
        pod = Pod(self.engine, name, volume, ports, self.key)
        if wait and env.get("START_SSHD", "1") == "1":
            pod.wait_ssh()
            pod.wait_all_running()
        return pod

    def cleanup(self) -> None:
        for name, volume in self.made:
            for argv in self.engine.remove(name, 0, volumes=True):
                subprocess.run(argv, capture_output=True, check=False)
            subprocess.run(self.engine.cmd("volume", "rm", "-f", volume), capture_output=True,
                           check=False)


@pytest.fixture(scope="module")
def containers(engine: Engine, image: str, client_key: Path) -> Iterator[TrackedContainers]:
    tracked = TrackedContainers(engine, image, client_key)
    try:
        yield tracked
    finally:
        tracked.cleanup()
