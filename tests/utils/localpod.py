"""Plugin for tests against localpod in records-only mode: the `localpod` fixture (a server per
test, a canary API key), `banner_port` (a loopback sshd stand-in), and a CLI environment that
never sleeps and never reads the real keyring.
"""

from __future__ import annotations

import io
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from appliance.runpod import RunpodClient
from host_tools.cli import Env
from host_tools.emulators.localpod import Account, LocalPodServer, RecordsBackend

CANARY = "rpk_CANARY_5e1f0c9a7d3b2846"


@pytest.fixture
def localpod(monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalPodServer]:
    server = LocalPodServer(Account(RecordsBackend(), {CANARY}, boot_polls=1))
    server.start()
    monkeypatch.setenv("RUNPOD_API_KEY", CANARY)
    monkeypatch.setenv("RUNPOD_REST_URL", server.rest_url)
    monkeypatch.setenv("RUNPOD_GRAPHQL_URL", server.graphql_url)
    try:
        yield server
    finally:
        server.stop()


@dataclass
class CliEnv:
    env: Env
    sleeps: list[float] = field(default_factory=list)
    ran: list[list[str]] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)

    @property
    def out(self) -> str:
        assert isinstance(self.env.out, io.StringIO)
        return self.env.out.getvalue()

    @property
    def err(self) -> str:
        assert isinstance(self.env.err, io.StringIO)
        return self.env.err.getvalue()


def make_cli_env(tty: bool = False, answers: list[str] | None = None) -> CliEnv:
    holder = CliEnv(Env(out=io.StringIO(), err=io.StringIO()), answers=list(answers or []))
    clock = [0.0]

    def sleep(seconds: float) -> None:
        holder.sleeps.append(seconds)
        clock[0] += seconds

    def run(argv: object) -> int:
        holder.ran.append(list(argv))  # type: ignore[call-overload]
        return 0

    holder.env.client_factory = lambda: RunpodClient(sleep=sleep, keyring_lookup=lambda: None)
    holder.env.sleep = sleep
    holder.env.monotonic = lambda: clock[0]
    holder.env.run = run
    holder.env.is_tty = lambda: tty
    holder.env.ask = lambda prompt: holder.answers.pop(0)
    return holder


@pytest.fixture
def banner_port() -> Iterator[int]:
    """A loopback server that greets like sshd, so waiting for SSH succeeds."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"SSH-2.0-fake\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(timeout=2)
    listener.close()
