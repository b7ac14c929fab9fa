"""What the lifecycle tests that drive provision.py share: localpod with real containers of our
image on the host network (`serve_localpod`, the CLI's variables pointing at it), provision.py
run in-process with any `ssh` / `scp` it starts run for real (`run_cli`), and `exists` for the
engine's containers and volumes. Only the OpenSSH client's key and known-hosts file are the
test's own.
"""

from __future__ import annotations

import io
import subprocess
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from host_tools.cli import Env
from host_tools.emulators.localpod import Account, LocalPodServer
from host_tools.emulators.localpod.containers import ContainerBackend
from host_tools.engine import Engine
from host_tools.provision import main

POD_ARGS = ["--template-name", "chessbot-appliance", "--gpu-type-id", "NVIDIA RTX A4000",
            "--poll-interval", "0.5", "--wait-timeout", "180"]


@contextmanager
def serve_localpod(engine: Engine, image: str, client_key: Path, tmp_path: Path,
                   monkeypatch: pytest.MonkeyPatch, account_key: str,
                   stop_delay_s: float = 0.0, host_network: bool = True,
                   env: dict[str, str] | None = None) -> Iterator[LocalPodServer]:
    """localpod with the container backend (`image`: the pods' default); every container, volume
    and cluster network its pods used is removed afterwards (network volumes too), also when the
    test failed. `env`: more variables for the CLI."""
    backend = ContainerBackend(engine.name, host_network=host_network, stop_delay_s=stop_delay_s)
    account = Account(backend, {account_key}, boot_polls=0, image=image,
                      public_key=client_key.with_suffix(".pub").read_text().strip())
    server = LocalPodServer(account)
    server.start()
    for name, value in {"RUNPOD_API_KEY": account_key, "RUNPOD_REST_URL": server.rest_url,
                        "RUNPOD_GRAPHQL_URL": server.graphql_url,
                        "RUNPOD_SSH_KNOWN_HOSTS_FILE": str(tmp_path / "known_hosts"),
                        "RUNPOD_SSH_IDENTITY_FILE": str(client_key),
                        "RUNPOD_PHASE_TIMING_LOG": str(tmp_path / "timings.jsonl"),
                        **(env or {})}.items():
        monkeypatch.setenv(name, value)
    try:
        yield server
    finally:
        names = [ContainerBackend.names(p) for p in account.pods.values()]
        networks = [c.network for c in account.clusters.values()]
        server.stop()  # removes what it knows; then whatever a failed test left behind
        for container, volume in names:
            for argv in engine.remove(container, 0):
                subprocess.run(argv, capture_output=True, check=False)
            subprocess.run(engine.cmd("volume", "rm", "-f", volume), capture_output=True,
                           check=False)
        for network in networks:
            subprocess.run(engine.cmd("network", "rm", network), capture_output=True,
                           check=False)


@dataclass
class CliResult:
    code: int
    out: str
    err: str
    ran: list[str] = field(default_factory=list)  # the stdout of each command `run` started


def run_cli(argv: Sequence[str], secrets: Iterable[str],
            remote_spy: Callable[[list[str], Path | None], None] | None = None) -> CliResult:
    """provision.py in-process; the commands it hands to `env.run` (ssh, scp, rsync) run for
    real with their output kept. `remote_spy(argv, stdout_file)` sees each finished
    `env.remote` call. No secret may show in anything printed."""
    ran: list[str] = []
    env = Env(out=io.StringIO(), err=io.StringIO(), is_tty=lambda: False)

    def run(args: Sequence[str]) -> int:
        proc = subprocess.run(list(args), capture_output=True, text=True, timeout=120,
                              check=False)
        ran.append(proc.stdout)
        env.err.write(proc.stderr)
        return proc.returncode

    env.run = run
    if remote_spy is not None:
        real_remote, spy = env.remote, remote_spy

        def remote(args: list[str], stdin: Path | None, stdout: Path | None) -> int:
            code = real_remote(args, stdin, stdout)
            spy(args, stdout)
            return code

        env.remote = remote
    code = main(list(argv), env)
    out, err = env.out.getvalue(), env.err.getvalue()  # type: ignore[attr-defined]
    for secret in secrets:
        assert secret not in out + err + "".join(ran)
    return CliResult(code, out, err, ran)


def exists(engine: Engine, kind: str, name: str) -> bool:
    return subprocess.run(engine.cmd(kind, "inspect", name), capture_output=True,
                          check=False).returncode == 0
