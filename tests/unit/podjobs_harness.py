"""The harness of the `provision.py cycle` and `smoke` tests (test_podjobs_cycle.py,
test_podjobs_smoke.py): localpod in records-only mode, a fake `ssh` (Env.remote) that answers like
the pod would, a fake HTTP client for the public /healthz, and a canary API key that never shows.
Loaded as a pytest plugin by tests/conftest.py: a test takes the harness as the fixture `h`.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from host_tools.emulators.localpod import LocalPodServer, RecordsBackend
from host_tools.podjobs import PRESET
from host_tools.provision import main
from tests.utils.localpod import CANARY, CliEnv, make_cli_env

GPU = ["--template-name", "chessbot-appliance", "--gpu-type-id", "NVIDIA RTX A4000"]
POD_TIMING = {"ts_epoch_ms": 1, "source": "runpod_train_preset", "run_id": "r1", "phase": "train",
              "status": "ok", "elapsed_ms": 4321}
THEN_TEXT = {
    "stop": "stopped, /workspace kept (`provision.py start {id}` resumes, `provision.py "
            "terminate {id}` deletes it)",
    "terminate": "terminated, nothing left billing",
    "keep": "still RUNNING and billing: `provision.py ssh {id}`, then stop or terminate it",
}
START_EPOCH = 1_780_315_200.0  # 2026-06-01T12:00:00Z
POD_STATUS = {"stop": "EXITED", "terminate": "TERMINATED", "keep": "RUNNING"}
CHECKS_OK = [
    {"check": "supervisorctl", "status": "PASS", "detail": "RUNNING: inference jupyter sshd",
     "elapsed_ms": 120},
    {"check": "healthz", "status": "PASS",
     "detail": "503 no_model (the smoke trains one for /infer)", "elapsed_ms": 5},
    {"check": "jupyter_api", "status": "PASS",
     "detail": "200 with the token, 403 without; kernels 0", "elapsed_ms": 8},
    {"check": "train_epoch", "status": "PASS",
     "detail": "1 epoch on /opt/chessbot/data/sample in 20.5 s", "elapsed_ms": 20500},
    {"check": "infer", "status": "PASS",
     "detail": "best_legal b8c6 after e2e4 e7e5 g1f3 (smoke model model_best.pt)",
     "elapsed_ms": 3000},
    {"check": "cleanup", "status": "PASS", "detail": "removed /opt/chessbot/artifacts/.smoke-1",
     "elapsed_ms": 10},
]


def tar_files(path: Path, files: list[tuple[str, bytes]], links: list[tuple[str, str]]) -> None:
    with tarfile.open(path, "w") as tar:
        dirs = sorted({n.split("/")[0] for n, _ in files if n.startswith("artifacts/")})
        for name in dirs:
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in links:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)


def pod_files() -> list[tuple[str, bytes]]:
    return [("artifacts/model_best.pt", b"weights"),
            ("artifacts/metrics.json", b'{"val_loss": 1.5}'),
            ("timings.jsonl", json.dumps(POD_TIMING).encode() + b"\n")]


@dataclass
class FakePod:
    """Env.remote: answers each remote command the way the pod would."""

    upload_code: int = 0
    train_code: int = 0
    train_raises: BaseException | None = None
    fetch_code: int = 0
    files: list[tuple[str, bytes]] = field(default_factory=pod_files)
    links: list[tuple[str, str]] = field(default_factory=list)
    ssh_code: int = 0
    user: str = "runner"
    checks: str = "".join(json.dumps(c) + "\n" for c in CHECKS_OK)
    checks_code: int = 0
    calls: list[tuple[list[str], Path | None, Path | None]] = field(default_factory=list)
    uploaded: dict[str, bytes] = field(default_factory=dict)
    clock: list[float] = field(default_factory=lambda: [START_EPOCH])  # the CLI's wall clock
    train_s: float = 5400.0  # how far the preset moves the clock

    @property
    def commands(self) -> list[str]:
        return [argv[-1] for argv, _, _ in self.calls]

    def __call__(self, argv: list[str], stdin: Path | None, stdout: Path | None) -> int:
        self.calls.append((list(argv), stdin, stdout))
        command = argv[-1]
        if "tar -xf -" in command:
            assert stdin is not None and stdout is None
            with tarfile.open(stdin) as tar:
                for member in tar.getmembers():
                    got = tar.extractfile(member)
                    if got is not None:
                        self.uploaded[member.name] = got.read()
            return self.upload_code
        if command.endswith(PRESET):
            assert stdin is None and stdout is None  # its output goes to the terminal
            self.clock[0] += self.train_s
            if self.train_raises is not None:
                raise self.train_raises
            return self.train_code
        if "tar -cf -" in command:
            assert stdout is not None
            if self.fetch_code == 0:
                tar_files(stdout, self.files, self.links)
            return self.fetch_code
        if command == "id -un":
            assert stdout is not None
            stdout.write_text(f"{self.user}\n" if self.ssh_code == 0 else "")
            return self.ssh_code
        if command.startswith("python -m appliance.runtime.podcheck"):
            assert stdout is not None
            stdout.write_text(self.checks)
            return self.checks_code
        raise AssertionError(f"unexpected remote command {command!r}")


@dataclass
class Harness:
    server: LocalPodServer
    tmp: Path
    log: Path
    known_hosts: Path
    banner_port: int
    pod: FakePod = field(default_factory=FakePod)
    healthz: list[Callable[[str], httpx.Response]] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    clis: list[CliEnv] = field(default_factory=list)

    @property
    def backend(self) -> RecordsBackend:
        return cast(RecordsBackend, self.server.account.backend)

    def http_get(self, url: str) -> httpx.Response:
        self.urls.append(url)
        if self.healthz:
            answer = self.healthz.pop(0) if len(self.healthz) > 1 else self.healthz[0]
            return answer(url)
        return httpx.Response(503, json={"status": "no_model", "model_path": None},
                              request=httpx.Request("GET", url))

    def run(self, *args: str) -> tuple[int, CliEnv]:
        cli = make_cli_env()
        cli.env.remote = self.pod
        cli.env.http_get = self.http_get
        cli.env.clock = lambda: self.pod.clock[0]
        self.clis.append(cli)
        return main(list(args), cli.env), cli

    def only_pod(self) -> Any:
        (pod,) = self.server.account.pods.values()
        return pod

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def phases(self, source: str = "host_cycle") -> list[tuple[str, str]]:
        return [(r["phase"], r["status"]) for r in self.records() if r["source"] == source]

    def assert_no_canary(self) -> None:
        for cli in self.clis:
            assert CANARY not in cli.out and CANARY not in cli.err
            assert all(CANARY not in " ".join(argv) for argv in cli.ran)
        assert all(CANARY not in " ".join(argv) for argv, _, _ in self.pod.calls)
        assert all(CANARY not in url for url in self.urls)
        assert all(CANARY not in r["target"] for r in self.server.account.requests)
        if self.log.exists():
            assert CANARY not in self.log.read_text()


@pytest.fixture
def h(localpod: LocalPodServer, banner_port: int, tmp_path: Path,
      monkeypatch: pytest.MonkeyPatch) -> Harness:
    harness = Harness(localpod, tmp_path, tmp_path / "timings" / "phases.jsonl",
                      tmp_path / "kh" / "known_hosts", banner_port)
    harness.backend.port_map[22] = banner_port
    monkeypatch.setenv("RUNPOD_PHASE_TIMING_LOG", str(harness.log))
    monkeypatch.setenv("RUNPOD_SSH_KNOWN_HOSTS_FILE", str(harness.known_hosts))
    monkeypatch.setenv("REPO_DIR", str(tmp_path / "repo"))
    for name in ("RUNPOD_SSH_IDENTITY_FILE", "RUNPOD_SSH_HOST_KEY_CHECKING",
                 "APPLIANCE_SECRETS_DIR", "RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    return harness


def make_dataset(root: Path, *names: str) -> Path:
    root.mkdir(parents=True)
    for name in names:
        (root / name).write_text(f'{{"moves": "e2e4", "split": "{name}"}}\n')
    return root


def ssh_prefix(h: Harness, pod_id: str) -> list[str]:
    return ["ssh", "-p", str(h.banner_port), "-o", "StrictHostKeyChecking=accept-new",
            "-o", f"UserKnownHostsFile={h.known_hosts}", "-o", f"HostKeyAlias=runpod-{pod_id}",
            "-o", "BatchMode=yes", "-o", "ConnectTimeout=15", "-o", "ServerAliveInterval=30",
            "-o", "LogLevel=ERROR", "runner@127.0.0.1"]


def cycle(h: Harness, *extra: str, out: Path | None = None) -> tuple[int, CliEnv]:
    return h.run("cycle", *GPU, "--run-id", "r1", "--out", str(out or h.tmp / "out"),
                 "--poll-interval", "0.5", *extra)


def table_rows(text: str, header: str) -> list[list[str]]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 1:]:
        if not line.strip() or line.startswith("smoke: "):
            break
        rows.append(re.split(r"\s{2,}", line))
    return rows
