"""`provision.py watch`: following the progress file over a fake ssh (growing, dropped mid-line,
resumed at the right line), checkpoint copies at epoch boundaries, the stall actions against
records-only localpod, --json lines, and healthchecks pings to a loopback HTTP server."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.unit.podjobs_harness import GPU, Harness

REMOTE = "/workspace/cycle/r1"
HC_CANARY = "hc-CANARY-0b9e7d41c2a6f358"
TAIL = re.compile(r"^tail -n \+(\d+) -F (\S+)$")
CAT = re.compile(r"^if \[ -f (\S+) \]; then cat \1; else exit 3; fi$")


def events(epochs: int = 3, done: bool = True) -> list[dict[str, Any]]:
    recs: list[dict[str, Any]] = [{"event": "start", "ts": 1000.0, "parameters": 1234,
                                   "device": "cuda:0", "world_size": 1, "train_targets": 500,
                                   "val_targets": 100, "start_epoch": 1, "epochs": epochs}]
    for e in range(1, epochs + 1):
        recs.append({"event": "step", "ts": 1000.0 + 10 * e - 5, "epoch": e, "step": 50,
                     "steps": 100, "loss": 3.0 - e / 10})
        recs.append({"event": "epoch", "ts": 1000.0 + 10 * e, "epoch": e, "lr": 0.001,
                     "train_loss": 2.5 - e / 10, "train_targets": 500.0,
                     "targets_per_s": 1234.0, "train_seconds": 9.0, "val_loss": 2.4 - e / 10,
                     "val_top1": 0.1, "best_epoch": e})
    if done:
        recs.append({"event": "done", "ts": 1000.0 + 10 * epochs + 1, "best_epoch": epochs})
    return recs


@dataclass
class FakeStream:
    """One `ssh ... tail -n +K -F` connection: serves the pod's lines from K; a session can end
    with half a line (the drop), or wait (the stall) until closed or `resume_after` seconds."""

    pod: FakeRunPod
    start: int
    count: int | None
    cut: bool
    closed: threading.Event = field(default_factory=threading.Event)

    def __iter__(self) -> Iterator[str]:
        lines = self.pod.lines
        end = len(lines) if self.count is None else self.start - 1 + self.count
        for i in range(self.start - 1, min(end, len(lines))):
            if i == self.pod.pause_at:
                self.pod.quiet.set()
                closed = self.closed.wait(self.pod.pause_s)
                self.pod.quiet.clear()
                if closed:
                    return
            if self.closed.is_set():
                return
            yield lines[i]
            if '"event": "epoch"' in lines[i]:
                self.pod.served_epoch = json.loads(lines[i])["epoch"]
                # The next line waits for the copy of this epoch's checkpoints.
                self.pod.copied_epoch.wait_for(self.pod.served_epoch)
        if self.cut and end < len(lines):
            yield lines[end][:12]  # half a line, then the connection drops
            return
        if self.count is None:
            self.closed.wait(30)

    def close(self) -> None:
        self.closed.set()


class EpochGate:
    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.epoch = 0

    def wait_for(self, epoch: int) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.epoch >= epoch, timeout=5)

    def set(self, epoch: int) -> None:
        with self.cond:
            self.epoch = max(self.epoch, epoch)
            self.cond.notify_all()


@dataclass
class FakeRunPod:
    """The pod's side of ssh: the progress file, its checkpoints (bytes named after the newest
    epoch served), nvidia-smi, and the newest run dir."""

    lines: list[str]
    sessions: list[tuple[int, bool]] = field(default_factory=list)  # (lines, cut) per connection
    pause_at: int = -1
    pause_s: float = 0.0
    has_best: bool = True
    runs: str = "r1/artifacts/progress.jsonl\n"
    served_epoch: int = 0
    quiet: threading.Event = field(default_factory=threading.Event)  # in the pause
    copied_epoch: EpochGate = field(default_factory=EpochGate)
    streams: list[str] = field(default_factory=list)
    copies: list[tuple[str, bytes]] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)

    def stream(self, argv: list[str]) -> FakeStream:
        match = TAIL.match(argv[-1])
        assert match is not None, argv
        assert match.group(2) == f"{REMOTE}/artifacts/progress.jsonl"
        self.streams.append(argv[-1])
        count, cut = self.sessions.pop(0) if self.sessions else (None, False)
        return FakeStream(self, int(match.group(1)), count, cut)

    def remote(self, argv: list[str], stdin: Path | None, stdout: Path | None) -> int:
        command = argv[-1]
        self.commands.append(command)
        assert stdin is None and stdout is not None
        if command.startswith("nvidia-smi"):
            stdout.write_text("87\n")
            return 0
        if command.startswith("cd /workspace/cycle && ls -1t"):
            stdout.write_text(self.runs)
            return 0 if self.runs else 2
        match = CAT.match(command)
        assert match is not None, command
        name = Path(match.group(1)).name
        assert match.group(1) == f"{REMOTE}/artifacts/{name}"
        if name == "model_best.pt" and not self.has_best:
            return 3
        data = f"{name}@epoch{self.served_epoch}".encode()
        stdout.write_bytes(data)
        self.copies.append((name, data))
        if name == "checkpoint_last.pt":
            self.copied_epoch.set(self.served_epoch)
        return 0


def jsonl(recs: list[dict[str, Any]]) -> list[str]:
    return [json.dumps(r) + "\n" for r in recs]


def pods(h: Harness, n: int = 2) -> list[str]:
    ids = []
    for _ in range(n):
        code, cli = h.run("provision", *GPU, "--wait", "--json")
        assert code == 0, cli.err
        ids.append(json.loads(cli.out)["id"])
    return ids


def watch(h: Harness, fake: FakeRunPod, *args: str, monotonic: Any = None
          ) -> tuple[int, Any]:
    from host_tools.provision import main
    from tests.utils.localpod import make_cli_env
    cli = make_cli_env()
    cli.env.remote = fake.remote
    cli.env.stream = fake.stream
    if monotonic is not None:
        cli.env.monotonic = monotonic
    h.clis.append(cli)
    return main(["watch", *args, "--tick", "0.01"], cli.env), cli


def test_follows_resumes_after_drops_and_copies_each_epoch(h: Harness) -> None:
    pod_id, _ = pods(h)
    recs = events(3)
    fake = FakeRunPod(jsonl(recs), sessions=[(3, True), (0, True), (2, False)])
    out = h.tmp / "run"
    code, cli = watch(h, fake, pod_id, "--run-id", "r1", "--out", str(out), "--json")
    assert code == 0, cli.err
    # Each reconnect starts at the first line not yet read whole: no event twice, none lost.
    assert fake.streams == [f"tail -n +{k} -F {REMOTE}/artifacts/progress.jsonl"
                            for k in (1, 4, 4, 6)]
    got = [json.loads(line) for line in cli.out.splitlines()]
    assert [r for r in got if r["event"] != "watch"] == recs
    watch_recs = [r for r in got if r["event"] == "watch"]
    assert [r["what"] for r in watch_recs] == [
        "following", "copied", "reconnect", "reconnect", "copied", "reconnect", "copied",
        "copied", "done"]
    assert [r["line"] for r in watch_recs if r["what"] == "reconnect"] == [4, 4, 6]
    assert cli.sleeps == [1.0, 2.0, 4.0]  # appliance.retry's backoff
    # Per epoch (and at done) both checkpoints, the bytes the pod had then.
    assert fake.copies == [(n, f"{n}@epoch{e}".encode()) for e in (1, 2, 3, 3)
                           for n in ("model_best.pt", "checkpoint_last.pt")]
    assert (out / "artifacts" / "model_best.pt").read_bytes() == b"model_best.pt@epoch3"
    assert (out / "artifacts" / "checkpoint_last.pt").read_bytes() == \
        b"checkpoint_last.pt@epoch3"
    assert sorted(p.name for p in (out / "artifacts").iterdir()) == [
        "checkpoint_last.pt", "model_best.pt"]  # no temp file left
    assert fake.commands.count(
        "nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits 2>/dev/null") == 1
    h.assert_no_canary()


def test_text_view_newest_run_and_missing_best(h: Harness, monkeypatch: pytest.MonkeyPatch
                                               ) -> None:
    monkeypatch.setenv("REPO_DIR", str(h.tmp / "repo"))
    pod_id, _ = pods(h)
    fake = FakeRunPod(jsonl(events(2)), has_best=False)
    code, cli = watch(h, fake, pod_id)
    assert code == 0, cli.err
    assert fake.commands[0] == ("cd /workspace/cycle && ls -1t -- */artifacts/progress.jsonl "
                                "| head -n 1")
    lines = cli.out.splitlines()
    out = h.tmp / "repo" / "artifacts" / "cycle" / "r1"
    assert lines[0] == (f"watch: following {REMOTE}/artifacts/progress.jsonl in pod {pod_id}; "
                        f"checkpoints go to {out / 'artifacts'}")
    views = [line.split("  elapsed ")[0] for line in lines if line.startswith("epoch ")]
    assert views == [
        "epoch -/2  step -  train -  val -  - targets/s  ETA -",
        "epoch 1/2  step 50/100  train 2.9000  val -  - targets/s  ETA -",
        "epoch 1/2  step -  train 2.4000  val 2.3000  1,234 targets/s  ETA 0:00:10",
        "epoch 2/2  step 50/100  train 2.8000  val 2.3000  1,234 targets/s  ETA 0:00:10",
        "epoch 2/2  step -  train 2.3000  val 2.2000  1,234 targets/s  ETA 0:00:00",
        "epoch 2/2  step -  train 2.3000  val 2.2000  1,234 targets/s  ETA 0:00:00",
    ]
    assert all(re.search(r"  cost \$\d+\.\d\d  GPU 87%$", line)
               for line in lines if line.startswith("epoch "))
    assert lines[4] == f"watch: copied checkpoint_last.pt to {out / 'artifacts'}"
    assert re.fullmatch(rf"watch: run r1 done; pod {pod_id} has cost \$\d+\.\d\d so far",
                        lines[-1])
    assert not (out / "artifacts" / "model_best.pt").exists()
    assert (out / "artifacts" / "checkpoint_last.pt").read_bytes() == \
        b"checkpoint_last.pt@epoch2"


def ticking(fake: FakeRunPod, step: float = 10.0) -> Any:
    """A clock that runs `step` seconds a reading while the pod's file is quiet, else stands."""
    now = [0.0]

    def monotonic() -> float:
        if fake.quiet.is_set():
            now[0] += step
        return now[0]
    return monotonic


@pytest.mark.parametrize("action", ["none", "collect", "stop", "terminate"])
def test_stall_actions(h: Harness, action: str) -> None:
    watched, other = pods(h)
    recs = events(2)
    # After epoch 1 the file stays quiet (the fake clock runs 10 s a reading); with none the watch
    # goes on and the run comes back.
    fake = FakeRunPod(jsonl(recs), pause_at=3, pause_s=3.0)
    out = h.tmp / "run"
    code, cli = watch(h, fake, watched, "--run-id", "r1", "--out", str(out), "--stall-minutes",
                      "1", "--on-stall", action, monotonic=ticking(fake))
    states = {p.id: p.status for p in h.server.account.pods.values()}
    stalled = [line for line in cli.out.splitlines() if "stalled" in line]
    assert len(stalled) == 1, cli.out
    if action == "none":
        assert code == 0
        assert re.fullmatch(r"watch: stalled: no progress event for \d+ min \(--on-stall none: "
                            r"still watching\)", stalled[0])
        assert "watch: progress events again" in cli.out
        assert states == {watched: "RUNNING", other: "RUNNING"}
        return
    assert code == 1
    then = {"collect": f"pod {watched} left as it is",
            "stop": f"pod {watched} stopped (`provision.py start {watched}` resumes it)",
            "terminate": f"pod {watched} terminated"}[action]
    assert re.fullmatch(rf"watch: stalled: no progress event for \d+ min; collected 3 "
                        rf"file\(s\) to {re.escape(str(out / 'artifacts'))}; "
                        rf"{re.escape(then)}", stalled[0])
    assert (out / "artifacts" / "model_best.pt").read_bytes() == b"model_best.pt@epoch1"
    assert (out / "artifacts" / "progress.jsonl").read_bytes() == b"progress.jsonl@epoch1"
    assert states == {watched: {"collect": "RUNNING", "stop": "EXITED",
                                "terminate": "TERMINATED"}[action], other: "RUNNING"}
    changed = [r["path"] for r in h.server.account.requests
               if r["method"] in ("POST", "DELETE")]
    assert all(other not in target for target in changed)


class PingServer:
    def __init__(self, status: int = 200) -> None:
        self.got: list[tuple[str, str, bytes]] = []
        got, answer = self.got, status

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                got.append(("POST", self.path, body))
                self.send_response(answer)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/ping/{HC_CANARY}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def assert_no_hc_canary(cli: Any, fake: FakeRunPod) -> None:
    assert HC_CANARY not in cli.out and HC_CANARY not in cli.err
    assert all(HC_CANARY not in c for c in fake.commands + fake.streams)


def test_healthchecks_pings(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    server = PingServer()
    monkeypatch.setenv("RUNPOD_HEALTHCHECKS_URL", server.url)
    try:
        pod_id, = pods(h, 1)
        lines = jsonl(events(2))
        fake = FakeRunPod(lines)
        code, cli = watch(h, fake, pod_id, "--run-id", "r1", "--out", str(h.tmp / "o"))
    finally:
        server.close()
    assert code == 0, cli.err
    base = f"/ping/{HC_CANARY}"
    assert server.got == [
        ("POST", f"{base}/start", b""),
        ("POST", f"{base}/log", "".join(lines[:3]).encode()),
        ("POST", f"{base}/log", "".join(lines[:5]).encode()),
        ("POST", base, "".join(lines).encode()),
    ]
    assert cli.err == ""
    assert_no_hc_canary(cli, fake)


def test_healthchecks_stall_fail_ping(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    server = PingServer()
    monkeypatch.setenv("RUNPOD_HEALTHCHECKS_URL", server.url + "/")
    try:
        pod_id, = pods(h, 1)
        lines = jsonl(events(2))
        fake = FakeRunPod(lines, pause_at=3, pause_s=5.0)
        code, cli = watch(h, fake, pod_id, "--run-id", "r1", "--out", str(h.tmp / "o"),
                          "--stall-minutes", "1", monotonic=ticking(fake))
    finally:
        server.close()
    assert code == 1
    (kind, path, body), = [g for g in server.got if g[1].endswith("/fail")]
    assert path == f"/ping/{HC_CANARY}/fail"
    text = body.decode()
    assert text.startswith("".join(lines[:3]))
    assert re.fullmatch(r"watch: no progress event for \d+ min\n", text[len("".join(lines[:3])):])
    assert_no_hc_canary(cli, fake)


@pytest.mark.parametrize("status", [404, None])
def test_failed_pings_warn_redacted(h: Harness, monkeypatch: pytest.MonkeyPatch,
                                    status: int | None) -> None:
    server = PingServer(status or 200)
    url = server.url
    if status is None:
        server.close()  # nothing listens: the connection is refused
    monkeypatch.setenv("RUNPOD_HEALTHCHECKS_URL", url)
    try:
        pod_id, = pods(h, 1)
        fake = FakeRunPod(jsonl(events(1)))
        code, cli = watch(h, fake, pod_id, "--run-id", "r1", "--out", str(h.tmp / "o"))
    finally:
        if status is not None:
            server.close()
    assert code == 0  # the watch goes on
    why = "HTTP 404" if status else "ConnectError"
    assert cli.err.splitlines() == [
        f"watch: warning: healthchecks ping {kind} to http://127.0.0.1/<redacted> failed ({why})"
        for kind in ("start", "log", "success")]
    assert_no_hc_canary(cli, fake)


@pytest.mark.parametrize(("args", "message"), [
    (["--run-id", "../x"], "error: --run-id '../x': letters, digits, '-' and '_' only\n"),
    (["--run-id", "r1", "--stall-minutes", "0"], "error: --stall-minutes 0.0: must be above 0\n"),
])
def test_bad_options(h: Harness, args: list[str], message: str) -> None:
    pod_id, = pods(h, 1)
    fake = FakeRunPod([])
    code, cli = watch(h, fake, pod_id, *args)
    assert (code, cli.err) == (2, message)
    assert fake.streams == []


def test_cycle_watch_copies_checkpoints_and_fetches(h: Harness) -> None:
    from host_tools.podjobs import PRESET
    from host_tools.provision import main
    from tests.utils.localpod import make_cli_env
    fake = FakeRunPod(jsonl(events(2)))

    def remote(argv: list[str], stdin: Path | None, stdout: Path | None) -> int:
        if argv[-1].endswith(PRESET):  # the preset runs until the watcher has seen it done
            assert stdout is not None and stdin is None
            assert argv[-1].startswith("exec 2>&1; mkdir -p ")  # its stderr into train.log too
            stdout.write_text("epoch 1/2 ...\n")
            fake.copied_epoch.wait_for(2)
            return 0
        if CAT.match(argv[-1]) or argv[-1].startswith("nvidia-smi"):
            return fake.remote(argv, stdin, stdout)
        return h.pod(argv, stdin, stdout)

    cli = make_cli_env()
    cli.env.remote = remote
    cli.env.stream = fake.stream
    h.clis.append(cli)
    out = h.tmp / "out"
    code = main(["cycle", *GPU, "--run-id", "r1", "--out", str(out), "--poll-interval", "0.5",
                 "--watch", "--tick", "0.01"], cli.env)
    assert code == 0, cli.err
    assert fake.streams == [f"tail -n +1 -F {REMOTE}/artifacts/progress.jsonl"]
    assert fake.copies == [(n, f"{n}@epoch{e}".encode()) for e in (1, 2, 2)
                           for n in ("model_best.pt", "checkpoint_last.pt")]
    assert (out / "train.log").read_text() == "epoch 1/2 ...\n"
    assert "watch: run r1 done" in cli.out
    # The fetch at the end replaces the copies with the pod's final files.
    assert (out / "artifacts" / "model_best.pt").read_bytes() == b"weights"
    assert (out / "artifacts" / "checkpoint_last.pt").read_bytes() == \
        b"checkpoint_last.pt@epoch2"
    assert h.phases() == [("provision", "ok"), ("wait_ssh", "ok"), ("train", "ok"),
                          ("fetch_artifacts", "ok"), ("then_stop", "ok")]
    h.assert_no_canary()


def test_cycle_watch_stall_fails_the_run_and_cleanup_stops_the_pod(h: Harness) -> None:
    from host_tools.podjobs import PRESET
    from host_tools.provision import main
    from tests.utils.localpod import make_cli_env
    fake = FakeRunPod(jsonl(events(2)), pause_at=3, pause_s=30.0)
    released = threading.Event()

    def remote(argv: list[str], stdin: Path | None, stdout: Path | None) -> int:
        if argv[-1].endswith(PRESET):  # hung: ssh returns only when the pod stops
            released.wait(10)
            return 255
        if CAT.match(argv[-1]) or argv[-1].startswith("nvidia-smi"):
            return fake.remote(argv, stdin, stdout)
        return h.pod(argv, stdin, stdout)

    cli = make_cli_env()
    cli.env.remote = remote
    cli.env.stream = fake.stream
    cli.env.monotonic = ticking(fake)
    h.clis.append(cli)
    out = h.tmp / "out"
    try:
        code = main(["cycle", *GPU, "--run-id", "r1", "--out", str(out), "--poll-interval",
                     "0.5", "--watch", "--stall-minutes", "1", "--tick", "0.01"], cli.env)
    finally:
        released.set()
    assert code == 1
    assert (f"error: the training in pod {h.only_pod().id} stalled (no progress event for 1 "
            f"min); its log: {out / 'train.log'}\n") in cli.err
    assert (out / "artifacts" / "checkpoint_last.pt").read_bytes() == \
        b"checkpoint_last.pt@epoch1"
    assert h.only_pod().status == "EXITED"  # stopped: its volume may hold more
    assert h.phases() == [("provision", "ok"), ("wait_ssh", "ok"), ("train", "error"),
                          ("cleanup_stop", "ok")]
    h.assert_no_canary()


def test_process_lines_reads_while_running_and_close_ends_it(tmp_path: Path) -> None:
    from host_tools.cli import ProcessLines
    stream = ProcessLines(["bash", "-c", "printf 'a\\nb\\n'; exec sleep 30"])
    got = []
    for line in stream:
        got.append(line)
        if len(got) == 2:
            break
    stream.close()
    assert got == ["a\n", "b\n"]
    assert stream.proc.returncode == -9
    ended = ProcessLines(["printf", "x\\ny"])
    assert list(ended) == ["x\n", "y"]  # the last line without its newline, as it came
    assert ended.proc.wait(10) == 0
    ended.close()  # an ended command is left as it ended
    assert ended.proc.returncode == 0


def test_no_run_in_the_pod(h: Harness) -> None:
    pod_id, = pods(h, 1)
    fake = FakeRunPod([], runs="")
    code, cli = watch(h, fake, pod_id, "--remote-root", "/workspace/cycle")
    assert (code, cli.err) == (1, "error: no run with an artifacts/progress.jsonl under "
                               f"/workspace/cycle in pod {pod_id}; give --run-id "
                               "(or --remote-root)\n")
    assert fake.streams == []


def test_terminal_rewrites_the_step_line_in_place(h: Harness) -> None:
    import io

    from host_tools.provision import main
    from tests.utils.localpod import make_cli_env

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    pod_id, = pods(h, 1)
    fake = FakeRunPod(jsonl(events(1)))
    cli = make_cli_env()
    cli.env.out, cli.env.remote, cli.env.stream = Terminal(), fake.remote, fake.stream
    code = main(["watch", pod_id, "--run-id", "r1", "--out", str(h.tmp / "o"), "--tick", "0.01"],
                cli.env)
    assert code == 0
    text = cli.env.out.getvalue()
    chunks = text.split("\r\x1b[K")
    assert chunks[0] == ""
    assert [c.split("  ")[:2] for c in chunks[1:] if c.startswith("epoch ")] == [
        ["epoch -/1", "step -"], ["epoch 1/1", "step 50/100"], ["epoch 1/1", "step -"],
        ["epoch 1/1", "step -"]]
    step = next(c for c in chunks if "step 50/100" in c)
    assert not step.endswith("\n")  # the next line overwrites it
    assert all(c.endswith("\n") for c in chunks[1:] if "step 50/100" not in c)
