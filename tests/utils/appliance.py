"""Test and benchmark harness for the pod runtime: a temporary root, the runner account, an
appliance booted for real (bootstrap -> supervisord) on loopback ports, and SSH as runner.
(The git repositories, wheels and venvs such a pod installs from are in tests.utils.repos.)

Roots live under /var/lib/appliance-tests, not /tmp: sshd's StrictModes refuses an
authorized_keys file below a world-writable directory.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import xmlrpc.client
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.runtime.health import supervisor_proxy
from tests.utils import free_port, wait_until

ROOT_BASE = Path(os.environ.get("APPLIANCE_TEST_ROOT_BASE", "/var/lib/appliance-tests"))
USER = "runner"
PYTHON = Path(sys.executable)


def make_root(prefix: str = "root-") -> Path:
    ROOT_BASE.mkdir(parents=True, exist_ok=True)
    ROOT_BASE.chmod(0o755)
    root = Path(tempfile.mkdtemp(prefix=prefix, dir=ROOT_BASE))
    root.chmod(0o755)
    return root


def _runner_can_run(python: Path) -> bool:
    try:
        proc = subprocess.run([str(python), "-c", "import appliance"], user=USER,
                              capture_output=True, timeout=60, cwd="/")
    except PermissionError:
        return False
    return proc.returncode == 0


def ensure_runner() -> None:
    """The runner account exists and can run this venv's Python (tests run as root).

    Where the interpreter sits below a directory runner cannot enter (pyenv in /root), runner
    alone gets search (x) permission on it through an ACL; nothing else changes.
    """
    if os.geteuid() != 0:
        raise RuntimeError("the runtime tests run as root: they create the runner account, "
                           "start sshd and supervisord")
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", "--user-group", USER],
                       check=True, capture_output=True)
    if _runner_can_run(PYTHON):
        return
    uid = pwd.getpwnam(USER).pw_uid
    for target in (PYTHON.resolve(), Path(sys.prefix)):
        for d in reversed(target.parents):
            st = d.stat()
            if st.st_uid != uid and not st.st_mode & stat.S_IXOTH:
                subprocess.run(["setfacl", "-m", f"u:{USER}:x", str(d)], check=True,
                               capture_output=True)
    if not _runner_can_run(PYTHON):
        raise RuntimeError(f"{USER} cannot run {PYTHON} even after granting search permission")


def make_client_key(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f",
                    str(path)], check=True)
    return path


def base_env(root: Path, **extra: str) -> dict[str, str]:
    """The environment of a test pod: every path inside `root`, every port from the OS."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "OMP_NUM_THREADS": "1",
        "WORKSPACE_DIR": str(root / "workspace"),
        "REPO_DIR": str(root / "repo"),
        "RUNPOD_PHASE_TIMING_LOG": str(root / "timings.jsonl"),
        "APPLIANCE_ETC_DIR": str(root / "etc"),
        "APPLIANCE_RUN_DIR": str(root / "run"),
        "APPLIANCE_BIN_DIR": str(root / "bin"),
        "APPLIANCE_USER_HOME": str(root / "home" / USER),
        "APPLIANCE_BIND_HOST": "127.0.0.1",
        "APPLIANCE_REQUIREMENTS_STAMP": str(root / "requirements.sha256"),
        "SSH_PORT": str(free_port()),
        "JUPYTER_PORT": str(free_port()),
        "INFERENCE_PORT": str(free_port()),
        "APPLIANCE_FATAL_COOLDOWN_SECONDS": "2",
        "START_HF_SYNC": "0",
        "START_IDLE_WATCHDOG": "0",
    }
    # A worktree run with PYTHONPATH=<worktree> boots that tree's code, not the installed one.
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    env.update(extra)
    return env


def run_bootstrap(env: Mapping[str, str], *args: str, timeout: float = 300
                  ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(PYTHON), "-m", "appliance.runtime.bootstrap", *args], env=dict(env),
                          capture_output=True, text=True, timeout=timeout, cwd="/")


@dataclass
class Appliance:
    """One booted pod: bootstrap exec'd into supervisord, in its own session."""

    root: Path
    env: dict[str, str]
    key: Path
    proc: subprocess.Popen[bytes] | None = None
    known_hosts: Path = field(init=False)

    def __post_init__(self) -> None:
        self.known_hosts = self.root / "known_hosts"

    @property
    def socket(self) -> Path:
        return Path(self.env["APPLIANCE_RUN_DIR"]) / "supervisor" / "supervisor.sock"

    @property
    def log_dir(self) -> Path:
        return Path(self.env["WORKSPACE_DIR"]) / ".appliance" / "logs"

    @property
    def boot_output(self) -> Path:
        return self.root / "boot.out"

    def start(self) -> None:
        with self.boot_output.open("ab") as out:
            self.proc = subprocess.Popen([str(PYTHON), "-m", "appliance.runtime.bootstrap"],
                                         env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         cwd="/", start_new_session=True)

    def rpc(self) -> xmlrpc.client.ServerProxy:
        return supervisor_proxy(self.socket, timeout=5.0)

    def infos(self) -> dict[str, dict[str, Any]]:
        try:
            return {i["name"]: i for i in self.rpc().supervisor.getAllProcessInfo()}
        except (OSError, xmlrpc.client.Error):
            return {}

    def booted_or_died(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"bootstrap exited {self.proc.returncode}:\n"
                                 f"{self.boot_output.read_text(errors='replace')[-4000:]}")
        return self.socket.exists()

    def wait_running(self, names: list[str], timeout: float = 90) -> dict[str, dict[str, Any]]:
        wait_until(self.booted_or_died, timeout, 0.2, what="supervisord socket")

        def all_running() -> dict[str, dict[str, Any]]:
            infos = self.infos()
            ok = all(infos.get(n, {}).get("statename") == "RUNNING" for n in names)
            return infos if ok else {}

        return wait_until(all_running, timeout, 0.2, what=f"{', '.join(names)} RUNNING")

    def wait_listening(self, variables: tuple[str, ...] = ("JUPYTER_PORT", "INFERENCE_PORT"),
                       timeout: float = 90) -> None:
        """Wait until the programs behind these port variables accept connections: supervisord
        says RUNNING after `startsecs`, which a loaded machine can pass before the port is bound."""
        def listening() -> bool:
            for name in variables:
                try:
                    socket.create_connection(("127.0.0.1", int(self.env[name])), 1).close()
                except OSError:
                    return False
            return True

        wait_until(listening, timeout, 0.2, what=f"{', '.join(variables)} listening")

    def trust_host_keys(self) -> None:
        port = self.env["SSH_PORT"]
        lines = []
        for pub in sorted((Path(self.env["APPLIANCE_ETC_DIR"]) / "ssh").glob("*.pub")):
            kind, data = pub.read_text().split()[:2]
            lines.append(f"[127.0.0.1]:{port} {kind} {data}\n")
        self.known_hosts.write_text("".join(lines))

    def ssh_args(self, user: str = USER, key: Path | None = None, *opts: str) -> list[str]:
        return ["ssh", "-F", "/dev/null", "-p", self.env["SSH_PORT"],
                "-i", str(key or self.key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=10",
                "-o", "LogLevel=ERROR", *opts, f"{user}@127.0.0.1"]

    def ssh(self, command: str, user: str = USER, key: Path | None = None, *opts: str,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.ssh_args(user, key, *opts), command], capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def wait_login(self, timeout: float = 30) -> None:
        wait_until(lambda: self.ssh("true", timeout=15).returncode == 0, timeout, interval=0.3,
                   what="ssh login as runner")

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM supervisord (it stops every program), then make sure nothing is left."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        for pid in pids_mentioning(str(self.root)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc = None


def pids_mentioning(text: str) -> list[int]:
    """Processes whose command line contains `text` (the test root: what a pod started)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if text.encode() in cmdline:
            out.append(int(entry.name))
    return out


def remove_root(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
