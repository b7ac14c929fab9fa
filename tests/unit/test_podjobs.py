"""`provision.py cycle` and `provision.py smoke` (host_tools/podjobs.py) against localpod in
records-only mode, with a fake `ssh` (Env.remote) that answers like the pod would and a fake
HTTP client for the public /healthz: phases, cleanup on each kind of failure, bad input, unsafe
tars from the pod, the smoke table, and a canary API key that never shows.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from host_tools.emulators.localpod import Fault, LocalPodServer, RecordsBackend
from host_tools.podjobs import PRESET
from host_tools.provision import main
from tests.utils.localpod import CANARY, CliEnv, make_cli_env

pytestmark = pytest.mark.timeout(60)

GPU = ["--template-name", "chessbot-appliance", "--gpu-type-id", "NVIDIA RTX A4000"]
POD_TIMING = {"ts_epoch_ms": 1, "source": "runpod_train_preset", "run_id": "r1", "phase": "train",
              "status": "ok", "elapsed_ms": 4321}
THEN_TEXT = {
    "stop": "stopped, /workspace kept (`provision.py start {id}` resumes, `provision.py "
            "terminate {id}` deletes it)",
    "terminate": "terminated, nothing left billing",
    "keep": "still RUNNING and billing: `provision.py ssh {id}`, then stop or terminate it",
}
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


def _tar(path: Path, files: list[tuple[str, bytes]], links: list[tuple[str, str]]) -> None:
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
            if self.train_raises is not None:
                raise self.train_raises
            return self.train_code
        if "tar -cf -" in command:
            assert stdout is not None
            if self.fetch_code == 0:
                _tar(stdout, self.files, self.links)
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


# -- cycle: success -------------------------------------------------------------------------------


@pytest.mark.parametrize("then", ["stop", "terminate", "keep"])
def test_cycle_trains_fetches_and_then(h: Harness, then: str) -> None:
    dataset = make_dataset(h.tmp / "ds", "train.jsonl", "val.jsonl")
    out = h.tmp / "out"
    code, cli = cycle(h, "--dataset", str(dataset), "--train-env", "TRAIN_EPOCHS=5",
                      "--train-env", "TRAIN_EXTRA_ARGS=--embed-dim 32", "--then", then)
    assert code == 0, cli.err
    pod = h.only_pod()
    assert pod.status == POD_STATUS[then]
    assert pod.name == "chessbot-r1"
    remote = "/workspace/cycle/r1"

    # What ran in the pod, in order, each through batch-mode ssh pinned to the pod's host key.
    assert h.pod.commands == [
        f"mkdir -p {remote}/dataset && tar -xf - -C {remote}/dataset",
        f"mkdir -p {remote} && cd {remote} && env RUN_ID=r1 TRAIN_DATASET_DIR={remote}/dataset "
        f"TRAIN_OUTPUT_DIR={remote}/artifacts RUNPOD_PHASE_TIMING_LOG={remote}/timings.jsonl "
        f"TRAIN_EPOCHS=5 TRAIN_EXTRA_ARGS='--embed-dim 32' {PRESET}",
        f"cd {remote} && tar -cf - artifacts $(test -f timings.jsonl && echo timings.jsonl)",
    ]
    for argv, _, _ in h.pod.calls:
        assert argv[:-1] == ssh_prefix(h, pod.id)
    assert h.pod.uploaded == {"train.jsonl": (dataset / "train.jsonl").read_bytes(),
                              "val.jsonl": (dataset / "val.jsonl").read_bytes()}

    # The artifacts are in --out.
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "artifacts/metrics.json", "artifacts/model_best.pt", "timings.jsonl"]
    assert (out / "artifacts" / "model_best.pt").read_bytes() == b"weights"

    # One timing log: the host's phases in order, and the pod's preset phases merged in.
    records = h.records()
    assert [(r["source"], r["phase"], r["status"]) for r in records] == [
        ("host_cycle", "provision", "ok"), ("host_cycle", "wait_ssh", "ok"),
        ("host_cycle", "upload_dataset", "ok"), ("host_cycle", "train", "ok"),
        ("host_cycle", "fetch_artifacts", "ok"), ("runpod_train_preset", "train", "ok"),
        ("host_cycle", f"then_{then}", "ok")]
    assert {r["run_id"] for r in records} == {"r1"}
    assert records[5] == POD_TIMING
    assert all(isinstance(r["elapsed_ms"], int) and r["elapsed_ms"] >= 0 for r in records)

    # The text summary.
    text = THEN_TEXT[then].format(id=pod.id)
    assert cli.out.splitlines()[-1] == (
        f"cycle r1: pod {pod.id} {text}; artifacts in {out} (3 files); timings in {h.log}")
    rows = table_rows(cli.out, "PHASE")
    assert [r[:2] for r in rows] == [["provision", "ok"], ["wait_ssh", "ok"],
                                     ["upload_dataset", "ok"], ["train", "ok"],
                                     ["fetch_artifacts", "ok"], [f"then_{then}", "ok"]]
    assert all(re.fullmatch(r"\d+\.\d s", r[2]) for r in rows)
    assert f"train: {PRESET} in pod {pod.id}" in cli.err
    assert f"upload_dataset: {dataset}" in cli.err
    assert f"fetch_artifacts: {out}" in cli.err
    assert re.search(rf"\n  \d+\.\d MB to {pod.id}:/workspace/cycle/r1/dataset\n", cli.err)
    assert re.search(rf"\n  \d+\.\d MB from {pod.id}:/workspace/cycle/r1\n", cli.err)
    expected_events = {"stop": [("start", pod.id), ("stop", pod.id)],
                       "terminate": [("start", pod.id), ("remove", pod.id)],
                       "keep": [("start", pod.id)]}[then]
    assert h.backend.events == expected_events
    h.assert_no_canary()


def test_cycle_json_summary_and_sample_dataset(h: Harness) -> None:
    code, cli = cycle(h, "--json", "--then", "terminate")
    assert code == 0, cli.err
    pod = h.only_pod()
    summary = json.loads(cli.out)
    host = [r for r in h.records() if r["source"] == "host_cycle"]
    assert summary == {"run_id": "r1", "pod": pod.id, "then": "terminate",
                       "out": str(h.tmp / "out"),
                       "files": ["artifacts/metrics.json", "artifacts/model_best.pt",
                                 "timings.jsonl"],
                       "phases": host, "timing_log": str(h.log)}
    # Without --dataset: no upload, the image's sample data.
    assert [p["phase"] for p in summary["phases"]] == [
        "provision", "wait_ssh", "train", "fetch_artifacts", "then_terminate"]
    assert len(h.pod.calls) == 2
    assert "TRAIN_DATASET_DIR=/opt/chessbot/data/sample " in h.pod.commands[0]
    h.assert_no_canary()


def test_cycle_defaults_run_id_out_and_remote_root(h: Harness) -> None:
    code, cli = h.run("cycle", *GPU, "--json", "--poll-interval", "0.5", "--remote-root",
                      "/workspace/runs/", "--pod-repo-dir", "/srv/chessbot", "--then", "keep")
    assert code == 0, cli.err
    summary = json.loads(cli.out)
    run_id = summary["run_id"]
    assert re.fullmatch(r"cycle-\d{8}T\d{6}Z", run_id)
    assert summary["out"] == str(h.tmp / "repo" / "artifacts" / "cycle" / run_id)
    assert (Path(summary["out"]) / "artifacts" / "model_best.pt").is_file()
    assert h.only_pod().name == f"chessbot-{run_id}"
    assert h.pod.commands[0] == (
        f"mkdir -p /workspace/runs/{run_id} && cd /workspace/runs/{run_id} && env "
        f"RUN_ID={run_id} TRAIN_DATASET_DIR=/srv/chessbot/data/sample "
        f"TRAIN_OUTPUT_DIR=/workspace/runs/{run_id}/artifacts "
        f"RUNPOD_PHASE_TIMING_LOG=/workspace/runs/{run_id}/timings.jsonl {PRESET}")
    assert {r["run_id"] for r in h.records() if r["source"] == "host_cycle"} == {run_id}


def test_cycle_out_may_exist_when_empty(h: Harness) -> None:
    out = h.tmp / "empty"
    out.mkdir()
    code, cli = cycle(h, out=out)
    assert code == 0, cli.err
    assert (out / "artifacts" / "metrics.json").read_bytes() == b'{"val_loss": 1.5}'


def test_cycle_without_pod_timings_still_succeeds(h: Harness) -> None:
    h.pod.files = [("artifacts/model_best.pt", b"w")]
    code, cli = cycle(h)
    assert code == 0, cli.err
    assert [r["source"] for r in h.records()] == ["host_cycle"] * 5
    assert cli.out.splitlines()[-1].endswith(f"artifacts in {h.tmp / 'out'} (1 files); "
                                             f"timings in {h.log}")


# -- cycle: failures and cleanup ------------------------------------------------------------------


def test_cycle_training_failure_only_stops_the_pod(h: Harness) -> None:
    h.pod.train_code = 3
    out = h.tmp / "out"
    # Even with --then terminate: the volume may hold artifacts that were not copied back.
    code, cli = cycle(h, "--then", "terminate")
    pod = h.only_pod()
    assert code == 1
    assert cli.err.splitlines()[-1] == (
        f"error: the training preset in pod {pod.id} failed (exit 3); its output is above, its "
        "files under /workspace/cycle/r1")
    assert pod.status == "EXITED"
    assert h.phases() == [("provision", "ok"), ("wait_ssh", "ok"), ("train", "error"),
                          ("cleanup_stop", "ok")]
    assert ("cleanup_stop: only stopped: /workspace/cycle/... on its volume may hold artifacts "
            "not copied back") in cli.err
    assert (f"cleanup: pod {pod.id} stopped, /workspace kept (`provision.py start {pod.id}` "
            f"resumes, `provision.py terminate {pod.id}` deletes it)") in cli.err
    assert cli.out == ""
    assert not out.exists()
    assert len(h.pod.calls) == 1  # nothing fetched
    h.assert_no_canary()


@pytest.mark.parametrize("then", ["terminate", "keep"])
def test_cycle_upload_failure_terminates_the_pod(h: Harness, then: str) -> None:
    dataset = make_dataset(h.tmp / "ds", "train.jsonl", "val.jsonl")
    h.pod.upload_code = 2
    code, cli = cycle(h, "--dataset", str(dataset), "--then", then)
    pod = h.only_pod()
    assert code == 1
    assert cli.err.splitlines()[-1] == f"error: uploading {dataset} to the pod failed"
    assert pod.status == "TERMINATED"
    assert h.phases() == [("provision", "ok"), ("wait_ssh", "ok"), ("upload_dataset", "error"),
                          ("cleanup_terminate", "ok")]
    assert f"cleanup: pod {pod.id} terminated, nothing left billing" in cli.err
    assert len(h.pod.calls) == 1  # no training after a failed upload
    h.assert_no_canary()


def test_cycle_upload_failure_with_default_then_terminates_the_pod(h: Harness) -> None:
    dataset = make_dataset(h.tmp / "ds", "train.jsonl", "val.jsonl")
    h.pod.upload_code = 2
    code, cli = cycle(h, "--dataset", str(dataset))
    assert code == 1
    assert h.phases()[-1] == ("cleanup_terminate", "ok")
    assert h.only_pod().status == "TERMINATED"


def test_cycle_fetch_failure_stops_the_pod(h: Harness) -> None:
    h.pod.fetch_code = 2
    code, cli = cycle(h, "--then", "terminate")
    pod = h.only_pod()
    assert code == 1
    assert cli.err.splitlines()[-1] == (
        f"error: copying /workspace/cycle/r1/artifacts from pod {pod.id} failed")
    assert pod.status == "EXITED"
    assert h.phases()[-2:] == [("fetch_artifacts", "error"), ("cleanup_stop", "ok")]


def test_cycle_keep_on_failure_leaves_the_pod_running(h: Harness) -> None:
    h.pod.train_code = 3
    code, cli = cycle(h, "--keep-on-failure")
    pod = h.only_pod()
    assert code == 1
    assert pod.status == "RUNNING"
    assert h.phases() == [("provision", "ok"), ("wait_ssh", "ok"), ("train", "error"),
                          ("keep_on_failure", "ok")]
    assert h.records()[-1]["elapsed_ms"] == 0
    assert (f"--keep-on-failure: pod {pod.id} is still there and billing:\n"
            f"pod {pod.id} (chessbot-r1): RUNNING") in cli.err
    assert "cleanup" not in cli.err
    assert h.backend.events == [("start", pod.id)]


def test_cycle_wait_timeout_terminates_the_pod(h: Harness) -> None:
    del h.backend.port_map[22]  # nothing greets on the pod's SSH port
    code, cli = cycle(h, "--then", "keep", "--wait-timeout", "2", "--poll-interval", "1")
    pod = h.only_pod()
    assert code == 1
    assert pod.status == "TERMINATED"
    assert h.phases() == [("provision", "ok"), ("wait_ssh", "error"),
                          ("cleanup_terminate", "ok")]
    assert f"cleanup: pod {pod.id} terminated, nothing left billing" in cli.err
    # The cleanup has terminated it: the error does not say it is still billing.
    assert cli.err.splitlines()[-1] == (
        f"error: pod {pod.id} was not ready after 2 s (RUNNING, waiting for sshd)")
    assert h.pod.calls == []
    h.assert_no_canary()


def test_cycle_interrupt_cleans_up_and_exits_130(h: Harness) -> None:
    h.pod.train_raises = KeyboardInterrupt()
    code, cli = cycle(h, "--then", "terminate")
    assert code == 130
    assert cli.err.splitlines()[-1] == "error: interrupted"
    assert h.only_pod().status == "EXITED"
    assert h.phases()[-2:] == [("train", "error"), ("cleanup_stop", "ok")]


def test_cycle_cleanup_failure_keeps_the_original_error(h: Harness) -> None:
    h.pod.train_code = 3
    h.server.account.faults.append(Fault(r"^POST /v2/pods/[a-z0-9]+/action$", status=400,
                                         message="stop refused"))
    code, cli = cycle(h)
    pod = h.only_pod()
    assert code == 1
    assert cli.err.splitlines()[-1].startswith(
        f"error: the training preset in pod {pod.id} failed (exit 3)")
    cleanup = [line for line in cli.err.splitlines() if line.startswith("cleanup failed: ")]
    assert len(cleanup) == 1
    assert "stop refused" in cleanup[0]
    assert cleanup[0].endswith(f"; pod {pod.id} may still bill: `provision.py stop {pod.id}`")
    assert pod.status == "RUNNING"
    assert h.phases()[-1] == ("cleanup_stop", "error")


# -- cycle: bad input -----------------------------------------------------------------------------


def test_cycle_refuses_a_non_empty_out_before_anything_bills(h: Harness) -> None:
    out = h.tmp / "out"
    out.mkdir()
    (out / "old.pt").write_bytes(b"old")
    code, cli = cycle(h, out=out)
    assert (code, cli.out, cli.err) == (
        2, "", f"error: --out {out} is not empty; choose another --out or --run-id\n")
    assert h.server.account.pods == {}
    assert h.server.account.requests == []
    assert not h.log.exists()
    assert (out / "old.pt").read_bytes() == b"old"


@pytest.mark.parametrize(("extra", "message"), [
    (["--run-id", "a/b"], "error: --run-id 'a/b': letters, digits, '-' and '_' only\n"),
    (["--run-id", ".."], "error: --run-id '..': letters, digits, '-' and '_' only\n"),
    (["--run-id", "x y"], "error: --run-id 'x y': letters, digits, '-' and '_' only\n"),
    (["--train-env", "HF_TOKEN=x"],
     "error: --train-env HF_TOKEN: secrets would show on the pod's command line; give them to "
     "the pod with --env or --env-file instead\n"),
    (["--train-env", f"RUNPOD_API_KEY={CANARY}"],
     "error: --train-env RUNPOD_API_KEY: secrets would show on the pod's command line; give "
     "them to the pod with --env or --env-file instead\n"),
    (["--train-env", "WANDB_PASSWORD=x"],
     "error: --train-env WANDB_PASSWORD: secrets would show on the pod's command line; give "
     "them to the pod with --env or --env-file instead\n"),
    (["--train-env", "TRAIN_OUTPUT_DIR=/tmp/x"],
     "error: --train-env TRAIN_OUTPUT_DIR: cycle sets it (use --run-id or --dataset)\n"),
    (["--train-env", "RUN_ID=x"],
     "error: --train-env RUN_ID: cycle sets it (use --run-id or --dataset)\n"),
])
def test_cycle_bad_input_is_a_usage_error(h: Harness, extra: list[str], message: str) -> None:
    code, cli = h.run("cycle", *GPU, "--out", str(h.tmp / "out"), *extra)
    assert (code, cli.out, cli.err) == (2, "", message)
    assert h.server.account.pods == {}
    assert not (h.tmp / "out").exists()
    h.assert_no_canary()


@pytest.mark.parametrize("names", [("train.jsonl",), ("val.jsonl",), ()])
def test_cycle_dataset_needs_both_splits(h: Harness, names: tuple[str, ...]) -> None:
    dataset = make_dataset(h.tmp / "ds", *names)
    code, cli = cycle(h, "--dataset", str(dataset))
    assert (code, cli.err) == (2, f"error: --dataset {dataset}: needs train.jsonl and "
                                  "val.jsonl\n")
    assert h.server.account.pods == {}


def test_cycle_missing_dataset_dir(h: Harness) -> None:
    code, cli = cycle(h, "--dataset", str(h.tmp / "nope"))
    assert (code, cli.err) == (2, f"error: --dataset {h.tmp / 'nope'}: needs train.jsonl and "
                                  "val.jsonl\n")


def test_cycle_bad_known_hosts_fails_before_anything_bills(
        h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNPOD_SSH_KNOWN_HOSTS_FILE", "/dev/null")
    code, cli = cycle(h)
    assert code == 2
    assert cli.err.startswith("error: bad environment: RUNPOD_SSH_KNOWN_HOSTS_FILE='/dev/null'")
    assert h.server.account.pods == {}


def test_cycle_without_image_or_template(h: Harness) -> None:
    code, cli = h.run("cycle", "--gpu-type-id", "NVIDIA RTX A4000", "--out",
                      str(h.tmp / "out"), "--run-id", "r1")
    assert (code, cli.err.splitlines()[-1]) == (
        2, "error: give --template-id, --template-name or --image")
    assert h.server.account.pods == {}
    assert h.phases() == [("provision", "error")]


def test_cycle_bad_train_env_names_its_flag(h: Harness) -> None:
    code, cli = cycle(h, "--train-env", "NOEQ")
    assert code == 2
    assert cli.err == ("error: --train-env: 'NOEQ' is not KEY=VALUE with a variable name of "
                       "letters, digits and _\n")


# -- cycle: what comes back from the pod is not trusted ------------------------------------------


def test_cycle_tar_escaping_out_is_refused(h: Harness) -> None:
    out = h.tmp / "out"
    h.pod.files = [*pod_files(), ("../evil", b"x")]
    code, cli = cycle(h, "--then", "terminate")
    pod = h.only_pod()
    assert code == 1
    target = os.path.realpath(h.tmp / "evil")
    assert cli.err.splitlines()[-1] == (
        f"error: the artifacts from pod {pod.id} could not be unpacked into {out}: '../evil' "
        f"would be extracted to '{target}', which is outside the destination")
    assert not (h.tmp / "evil").exists()
    # The artifacts were not saved, so the pod is only stopped.
    assert pod.status == "EXITED"
    assert h.phases()[-2:] == [("fetch_artifacts", "error"), ("cleanup_stop", "ok")]


@pytest.mark.parametrize("absolute", [True, False])
def test_cycle_tar_link_out_of_out_is_refused(h: Harness, absolute: bool) -> None:
    out = h.tmp / "out"
    secret = h.tmp / "secret.txt"
    secret.write_text("private")
    h.pod.links = [("artifacts/link", str(secret) if absolute else "../../secret.txt")]
    code, cli = cycle(h)
    pod = h.only_pod()
    assert code == 1
    why = ("is a link to an absolute path" if absolute else
           f"would link to '{os.path.realpath(secret)}', which is outside the destination")
    assert cli.err.splitlines()[-1] == (
        f"error: the artifacts from pod {pod.id} could not be unpacked into {out}: "
        f"'artifacts/link' {why}")
    assert not (out / "artifacts" / "link").is_symlink()
    assert pod.status == "EXITED"


def test_cycle_tar_absolute_member_is_refused_before_anything_is_written(h: Harness) -> None:
    out = h.tmp / "out"
    absolute = h.tmp / "abs_evil"
    h.pod.files = [*pod_files(), (str(absolute), b"x")]
    code, cli = cycle(h)
    pod = h.only_pod()
    assert code == 1
    assert cli.err.splitlines()[-1] == (
        f"error: the artifacts from pod {pod.id} could not be unpacked into {out}: "
        f"{str(absolute)!r} is an absolute path")
    assert not absolute.exists() and list(out.iterdir()) == []  # nothing half-unpacked
    assert pod.status == "EXITED"


# -- smoke ----------------------------------------------------------------------------------------


def existing_pod(h: Harness, *extra: str) -> str:
    code, cli = h.run("provision", "--json", *GPU, "--name", "s1", *extra)
    assert code == 0, cli.err
    return str(json.loads(cli.out)["id"])


def test_smoke_existing_pod_passes(h: Harness) -> None:
    pod_id = existing_pod(h)
    code, cli = h.run("smoke", pod_id)
    assert code == 0, cli.err
    pod = h.server.account.pods[pod_id]
    port, http_port = pod.mappings[22], pod.mappings[8000]
    rows = table_rows(cli.out, "CHECK")
    assert [(r[0], r[1], r[3]) for r in rows] == [
        ("ssh", "PASS", f"runner@127.0.0.1:{port}, host key pinned as runpod-{pod_id}"),
        *[(c["check"], c["status"], c["detail"]) for c in CHECKS_OK],
        ("healthz_public", "PASS", f"http://127.0.0.1:{http_port}/healthz answered 503 "
                                   "(no_model)")]
    assert [r[2] for r in rows[1:7]] == ["0.1 s", "0.0 s", "0.0 s", "20.5 s", "3.0 s", "0.0 s"]
    assert cli.out.splitlines()[-1] == "smoke: PASS"
    assert h.pod.commands == ["id -un", "python -m appliance.runtime.podcheck"]
    for argv, stdin, stdout in h.pod.calls:
        assert argv[-2].endswith("runner@127.0.0.1")
        assert "BatchMode=yes" in argv and f"HostKeyAlias=runpod-{pod_id}" in argv
        assert stdin is None and stdout is not None
    assert h.urls == [f"http://127.0.0.1:{http_port}/healthz"]
    assert pod.status == "RUNNING"  # an existing pod is left alone
    assert f"smoke: checks in pod {pod_id} (the training epoch takes a while)" in cli.err

    records = h.records()
    assert [(r["phase"], r["status"]) for r in records] == [
        ("ssh", "ok"), *[(c["check"], "ok") for c in CHECKS_OK], ("healthz_public", "ok")]
    assert {r["source"] for r in records} == {"host_smoke"}
    (run_id,) = {r["run_id"] for r in records}
    assert re.fullmatch(r"smoke-\d{8}T\d{6}Z", run_id)
    assert [r["elapsed_ms"] for r in records[1:7]] == [c["elapsed_ms"] for c in CHECKS_OK]
    h.assert_no_canary()


def test_smoke_json(h: Harness) -> None:
    pod_id = existing_pod(h)
    code, cli = h.run("smoke", "--json", pod_id)
    assert code == 0
    data = json.loads(cli.out)
    assert data["pod"] == pod_id and data["ok"] is True
    assert [c["check"] for c in data["checks"]] == [
        "ssh", *[c["check"] for c in CHECKS_OK], "healthz_public"]
    assert data["checks"][1:7] == CHECKS_OK
    assert set(data["checks"][0]) == {"check", "status", "detail", "elapsed_ms"}


def test_smoke_fail_rows_fail_the_smoke(h: Harness) -> None:
    pod_id = existing_pod(h)
    infer = {"check": "infer", "status": "FAIL", "detail": "POST /infer answered 401: no",
             "elapsed_ms": 7}
    h.pod.checks = "".join(json.dumps(c) + "\n" for c in [*CHECKS_OK[:4], infer, CHECKS_OK[5]])
    h.pod.checks_code = 1
    h.healthz = [lambda url: httpx.Response(502, text="bad gateway",
                                            request=httpx.Request("GET", url))]
    code, cli = h.run("smoke", pod_id)
    assert code == 1
    assert cli.out.splitlines()[-1] == "smoke: FAIL (infer, healthz_public)"
    rows = {r[0]: r for r in table_rows(cli.out, "CHECK")}
    assert rows["infer"][1:] == ["FAIL", "0.0 s", "POST /infer answered 401: no"]
    http_port = h.server.account.pods[pod_id].mappings[8000]
    assert rows["healthz_public"][1] == "FAIL"
    assert rows["healthz_public"][3] == (f"http://127.0.0.1:{http_port}/healthz answered 502 "
                                         "(10 tries)")
    assert len(h.urls) == 10
    assert h.clis[-1].sleeps == [2.0] * 9
    statuses = {r["phase"]: r["status"] for r in h.records()}
    assert statuses["infer"] == "error" and statuses["healthz_public"] == "error"
    assert statuses["supervisorctl"] == "ok"


def test_smoke_skip_rows_pass(h: Harness) -> None:
    pod_id = existing_pod(h)
    skip = {"check": "jupyter_api", "status": "SKIP", "detail": "no jupyter program in this pod",
            "elapsed_ms": 0}
    h.pod.checks = "".join(json.dumps(c) + "\n" for c in [CHECKS_OK[0], skip])
    code, cli = h.run("smoke", pod_id)
    assert code == 0
    assert cli.out.splitlines()[-1] == "smoke: PASS"
    assert ("jupyter_api", "skipped") in [(r["phase"], r["status"]) for r in h.records()]


@pytest.mark.parametrize("output", ["", "Traceback (most recent call last):\nboom\n",
                                    '{"check": "x"}\n[1, 2]\n{"check": "y", "status": "PASS", '
                                    '"detail": "d", "elapsed_ms": "soon"}\n'])
def test_smoke_podcheck_without_results_is_a_fail_row(h: Harness, output: str) -> None:
    pod_id = existing_pod(h)
    h.pod.checks, h.pod.checks_code = output, 1
    code, cli = h.run("smoke", pod_id)
    assert code == 1
    rows = table_rows(cli.out, "CHECK")
    assert [r[0] for r in rows] == ["ssh", "podcheck", "healthz_public"]
    assert rows[1][1] == "FAIL"
    assert rows[1][3] == ("python -m appliance.runtime.podcheck exit 1 gave no results; is the pod "
                          "running this project's image?")
    assert cli.out.splitlines()[-1] == "smoke: FAIL (podcheck)"


def test_smoke_podcheck_lines_among_other_output(h: Harness) -> None:
    pod_id = existing_pod(h)
    h.pod.checks = "warming up\n" + json.dumps(CHECKS_OK[0]) + "\nnot json\n"
    code, cli = h.run("smoke", pod_id)
    assert code == 0
    assert [r[0] for r in table_rows(cli.out, "CHECK")] == ["ssh", "supervisorctl",
                                                            "healthz_public"]


def test_smoke_ssh_failure_skips_podcheck(h: Harness) -> None:
    pod_id = existing_pod(h)
    h.pod.ssh_code = 255
    code, cli = h.run("smoke", pod_id)
    assert code == 1
    rows = table_rows(cli.out, "CHECK")
    assert [(r[0], r[1], r[3]) for r in rows[:2]] == [
        ("ssh", "FAIL", f"ssh exit 255, user -: `provision.py ssh {pod_id}` shows why"),
        ("podcheck", "SKIP", "needs SSH")]
    assert rows[2][:2] == ["healthz_public", "PASS"]
    assert cli.out.splitlines()[-1] == "smoke: FAIL (ssh)"
    assert h.pod.commands == ["id -un"]
    assert [(r["phase"], r["status"]) for r in h.records()] == [
        ("ssh", "error"), ("podcheck", "skipped"), ("healthz_public", "ok")]
    h.assert_no_canary()


def test_smoke_ssh_as_another_user_fails(h: Harness) -> None:
    pod_id = existing_pod(h)
    h.pod.user = "root"
    code, cli = h.run("smoke", pod_id)
    assert code == 1
    assert table_rows(cli.out, "CHECK")[0][3] == (
        f"ssh exit 0, user root: `provision.py ssh {pod_id}` shows why")


def test_smoke_passes_the_dataset_to_podcheck(h: Harness) -> None:
    pod_id = existing_pod(h)
    code, cli = h.run("smoke", pod_id, "--dataset", "/workspace/my data")
    assert code == 0, cli.err
    assert h.pod.commands[1] == ("python -m appliance.runtime.podcheck "
                                 "--dataset '/workspace/my data'")


def test_smoke_public_healthz_retries_then_passes(h: Harness) -> None:
    pod_id = existing_pod(h)

    def refused(url: str) -> httpx.Response:
        raise httpx.ConnectError("refused", request=httpx.Request("GET", url))

    h.healthz = [refused,
                 lambda url: httpx.Response(200, text="<html>proxy</html>",
                                            request=httpx.Request("GET", url)),
                 lambda url: httpx.Response(200, json={"status": "ok"},
                                            request=httpx.Request("GET", url))]
    code, cli = h.run("smoke", pod_id)
    assert code == 0, cli.out
    http_port = h.server.account.pods[pod_id].mappings[8000]
    assert table_rows(cli.out, "CHECK")[-1][3] == (
        f"http://127.0.0.1:{http_port}/healthz answered 200 (ok)")
    assert len(h.urls) == 3 and h.clis[-1].sleeps == [2.0, 2.0]


def test_smoke_public_healthz_never_answering(h: Harness) -> None:
    pod_id = existing_pod(h)

    def refused(url: str) -> httpx.Response:
        raise httpx.ConnectError("refused", request=httpx.Request("GET", url))

    h.healthz = [refused]
    code, cli = h.run("smoke", pod_id)
    assert code == 1
    http_port = h.server.account.pods[pod_id].mappings[8000]
    row = table_rows(cli.out, "CHECK")[-1]
    assert (row[1], row[3]) == (
        "FAIL", f"http://127.0.0.1:{http_port}/healthz ConnectError (10 tries)")
    assert cli.out.splitlines()[-1] == "smoke: FAIL (healthz_public)"


def test_smoke_pod_without_port_8000_skips_public_healthz(h: Harness) -> None:
    pod_id = existing_pod(h, "--ports", "22/tcp,8888/http")
    code, cli = h.run("smoke", pod_id)
    assert code == 0
    assert table_rows(cli.out, "CHECK")[-1] == ["healthz_public", "SKIP", "0.0 s",
                                                "the pod publishes no port 8000"]
    assert h.urls == []


def test_smoke_stopped_pod(h: Harness) -> None:
    pod_id = existing_pod(h)
    h.run("stop", "--yes", pod_id)
    code, cli = h.run("smoke", pod_id)
    assert (code, cli.err) == (1, f"error: pod {pod_id} has no SSH endpoint (status EXITED); it "
                                  "needs 22/tcp in its ports and must be RUNNING: `provision.py "
                                  f"status {pod_id}`\n")
    assert h.pod.calls == []


def test_smoke_without_pod_or_image_is_a_usage_error(h: Harness) -> None:
    code, cli = h.run("smoke")
    assert (code, cli.out, cli.err) == (
        2, "", "error: give a POD, or --image/--template-id/--template-name for a throwaway "
               "pod\n")
    assert h.server.account.pods == {}


@pytest.mark.parametrize("fail", [False, True])
def test_smoke_throwaway_pod_is_always_terminated(h: Harness, fail: bool) -> None:
    if fail:
        train = {**CHECKS_OK[3], "status": "FAIL", "detail": "training preset exit 2: error"}
        h.pod.checks = "".join(json.dumps(c) + "\n" for c in [*CHECKS_OK[:3], train])
    code, cli = h.run("smoke", *GPU, "--poll-interval", "0.5")
    pod = h.only_pod()
    assert code == (1 if fail else 0), cli.err
    assert pod.status == "TERMINATED"
    assert re.fullmatch(r"chessbot-smoke-\d{8}T\d{6}Z", pod.name)
    rows = table_rows(cli.out, "CHECK")
    assert (rows[0][0], rows[0][1], rows[0][3]) == ("provision", "PASS", f"pod {pod.id} ready")
    assert (rows[-1][0], rows[-1][1], rows[-1][3]) == (
        "terminate", "PASS", f"throwaway pod {pod.id} terminated")
    assert rows[1][:2] == ["ssh", "PASS"]
    assert cli.out.splitlines()[-1] == ("smoke: FAIL (train_epoch)" if fail else "smoke: PASS")
    phases = [r["phase"] for r in h.records()]
    assert phases[0] == "provision" and phases[-1] == "terminate"
    assert h.backend.events == [("start", pod.id), ("remove", pod.id)]
    h.assert_no_canary()


def test_smoke_throwaway_pod_terminated_when_never_ready(h: Harness) -> None:
    del h.backend.port_map[22]
    code, cli = h.run("smoke", *GPU, "--wait-timeout", "2", "--poll-interval", "1")
    pod = h.only_pod()
    assert code == 1
    assert pod.status == "TERMINATED"
    assert cli.err.splitlines()[-1] == (
        f"error: pod {pod.id} was not ready after 2 s (RUNNING, waiting for sshd)")
    assert cli.out == ""
    assert h.pod.calls == []
