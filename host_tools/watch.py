"""`provision.py watch POD` (and `cycle --watch`): a live view of a training run in a pod, its
checkpoints copied home at each epoch, stall detection and healthchecks pings.

The trainer appends JSON-lines events (start, step, epoch, done: appliance.training.progress) to
RUN_DIR/artifacts/progress.jsonl in the pod; the watcher follows that file over SSH with `tail -n
+K -F`, counting the lines it has read so that after a dropped connection it resumes at the next
one (backoff from appliance.retry): no event shown twice or lost. After each epoch event it copies
model_best.pt and checkpoint_last.pt (`cat` over SSH, written atomically) to OUT/artifacts/, the
layout cycle's final fetch uses, so a lost pod loses at most one epoch. No event for --stall-
minutes: it collects what there is and does --on-stall (none: warn and keep watching; collect; stop
or terminate the watched pod and nothing else). RUNPOD_HEALTHCHECKS_URL, a secret, gets start / log
/ success / fail pings; a failed ping is a warning that shows the URL redacted.
The status line and the pings are host_tools/watch_report.py's.
"""

from __future__ import annotations

import argparse
import json
import queue
import shlex
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any

from appliance import settings
from appliance.atomic import atomic_write
from appliance.model import BEST_MODEL, LAST_CHECKPOINT
from appliance.retry import backoff_delay
from appliance.runpod import Pod, RunpodClient, RunpodError, epoch_seconds
from host_tools.cli import CliError, Env, LineStream, load_settings
from host_tools.pods import SSH_USER, ssh_argv, ssh_settings
from host_tools.settings import WatchSettings
from host_tools.watch_report import Healthchecks, RunView

PROGRESS_FILE = "artifacts/progress.jsonl"  # next to the checkpoints, so cycle fetches it
REMOTE_ROOT = "/workspace/cycle"
ON_STALL = ("none", "collect", "stop", "terminate")
CHECKPOINTS = (BEST_MODEL, LAST_CHECKPOINT)
# On a stall the events too, so `provision.py report RUN_ID` draws the run from OUT.
COLLECTED = (*CHECKPOINTS, Path(PROGRESS_FILE).name)
# stderr dropped: a pod without nvidia-smi must not print "command not found" once a minute
GPU_QUERY = ("nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits "
             "2>/dev/null")
LOG_LINES = 20
CLEAR_LINE = "\r\x1b[K"  # back to the start of the terminal's line, erase it
_ABSENT = 3  # the copy command's exit status for "no such file in the pod"


def _copy_from(path: Path, fh: IO[bytes]) -> None:
    with path.open("rb") as src:
        shutil.copyfileobj(src, fh, 1 << 20)


def check_run_id(run_id: str) -> str:
    if not run_id or not run_id.replace("-", "").replace("_", "").isalnum():
        raise CliError(f"--run-id {run_id!r}: letters, digits, '-' and '_' only", 2)
    return run_id


@dataclass
class WatchOptions:
    run_id: str
    remote_dir: str
    out: Path
    stall_s: float
    on_stall: str
    as_json: bool
    user: str = SSH_USER
    tick_s: float = 0.5
    pod_poll_s: float = 60.0
    reconnect_cap_s: float = 30.0


@dataclass
class Watcher:
    """Follows one run in one pod until its done event, a stall action, or `should_end()`."""

    env: Env
    client: RunpodClient
    pod: Pod
    opts: WatchOptions
    should_end: Callable[[], bool] = lambda: False
    wall: Callable[[], float] = time.time
    view: RunView = field(default_factory=RunView)
    next_line: int = 1
    last: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_LINES))
    copy_due: bool = False
    stalled: bool = False

    def __post_init__(self) -> None:
        url = load_settings(WatchSettings).RUNPOD_HEALTHCHECKS_URL
        self.hc = Healthchecks(url.get_secret_value() if url else None, self.env.err)
        self.tty = self.env.out.isatty() and not self.opts.as_json
        self.last_event = self.env.monotonic()
        self.last_poll: float | None = None

    # -- output -----------------------------------------------------------------------------

    def note(self, what: str, text: str, **fields: Any) -> None:
        """A watcher event: a JSON line with --json, else a line of text."""
        if self.opts.as_json:
            print(json.dumps({"event": "watch", "what": what, **fields}, sort_keys=True),
                  file=self.env.out, flush=True)
        else:
            print(f"{CLEAR_LINE if self.tty else ''}watch: {text}", file=self.env.out,
                  flush=True)

    def show(self, rec: dict[str, Any]) -> None:
        if self.opts.as_json:
            print(json.dumps(rec, sort_keys=True), file=self.env.out, flush=True)
            return
        line = self.view.line(self.wall())
        if self.tty and rec.get("event") == "step":  # rewritten in place by the next line
            print(f"{CLEAR_LINE}{line}", end="", file=self.env.out, flush=True)
        else:
            print(f"{CLEAR_LINE if self.tty else ''}{line}", file=self.env.out, flush=True)

    # -- the pod ----------------------------------------------------------------------------

    def ssh(self, command: str) -> list[str]:
        return ssh_argv(self.pod, ssh_settings(), self.opts.user, [command], batch=True)

    def poll_pod(self, force: bool = False) -> None:
        """The pod's price and age for the cost, and its GPU utilisation, once a minute."""
        now = self.env.monotonic()
        if not force and self.last_poll is not None and now - self.last_poll < self.opts.pod_poll_s:
            return
        self.last_poll = now
        try:
            self.pod = self.client.get_pod(self.pod.id)
        except RunpodError as exc:
            self.note("pod_unknown", f"pod {self.pod.id}: {exc}", pod=self.pod.id)
            return
        self.view.cost_per_hr = self.pod.cost_per_hr or None
        self.view.created = epoch_seconds(self.pod.created_at)
        if self.pod.gpu_count and self.pod.ssh_endpoint() is not None:
            self.view.gpu_util = self._gpu_util()

    def _gpu_util(self) -> float | None:
        with tempfile.TemporaryDirectory() as tmp:
            got = Path(tmp) / "gpu"
            if self.env.remote(self.ssh(GPU_QUERY), None, got) != 0 or not got.exists():
                return None
            values = []
            for line in got.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    values.append(float(line.strip()))
                except ValueError:
                    continue
            return sum(values) / len(values) if values else None

    def copy_checkpoints(self, names: tuple[str, ...] = CHECKPOINTS) -> list[str]:
        """Each file that exists in the pod's RUN_DIR/artifacts, to OUT/artifacts atomically."""
        copied = []
        remote = f"{self.opts.remote_dir}/artifacts"
        with tempfile.TemporaryDirectory() as tmp:
            for name in names:
                part = Path(tmp) / name
                src = shlex.quote(f"{remote}/{name}")
                code = self.env.remote(
                    self.ssh(f"if [ -f {src} ]; then cat {src}; else exit {_ABSENT}; fi"),
                    None, part)
                if code == _ABSENT:
                    continue
                if code != 0 or not part.exists():
                    self.note("copy_failed", f"copying {remote}/{name} failed (exit {code}); "
                              "the next epoch tries again", file=name, code=code)
                    continue
                dest = self.opts.out / "artifacts" / name
                atomic_write(dest, partial(_copy_from, part))
                copied.append(str(dest))
        if copied:  # the epoch is the last one finished (a step of the next may be in already)
            self.note("copied", f"copied {', '.join(Path(c).name for c in copied)} to "
                      f"{self.opts.out / 'artifacts'}", files=copied,
                      epoch=self.view.finished_epoch)
        return copied

    # -- the loop ---------------------------------------------------------------------------

    def connect(self) -> tuple[LineStream, queue.Queue[tuple[str, str]]]:
        path = shlex.quote(f"{self.opts.remote_dir}/{PROGRESS_FILE}")
        stream = self.env.stream(self.ssh(f"tail -n +{self.next_line} -F {path}"))
        lines: queue.Queue[tuple[str, str]] = queue.Queue()

        def pump() -> None:
            try:
                for line in stream:
                    lines.put(("line", line))
            except (OSError, ValueError) as exc:
                lines.put(("error", type(exc).__name__))
            lines.put(("end", ""))

        threading.Thread(target=pump, name="watch-tail", daemon=True).start()
        return stream, lines

    def run(self) -> int:
        self.hc.ping("start")
        self.poll_pod(force=True)
        self.note("following", f"following {self.opts.remote_dir}/{PROGRESS_FILE} in pod "
                  f"{self.pod.id}; checkpoints go to {self.opts.out / 'artifacts'}",
                  pod=self.pod.id, run_id=self.opts.run_id)
        retry = 0
        while True:
            stream, lines = self.connect()
            try:
                result = self.follow(lines)
            finally:
                stream.close()
            if result is not None:
                return result
            wait = backoff_delay(retry, 1.0, self.opts.reconnect_cap_s)
            self.note("reconnect", f"connection to pod {self.pod.id} lost; reconnecting in "
                      f"{wait:.0f} s at line {self.next_line}", line=self.next_line, wait_s=wait)
            self.env.sleep(wait)
            retry += 1
            result = 0 if self.should_end() else self.check_stall()
            if result is not None:
                return result

    def follow(self, lines: queue.Queue[tuple[str, str]]) -> int | None:
        """Events until the stream ends (None: reconnect) or the watch ends (its exit code)."""
        while True:
            try:
                kind, text = lines.get(timeout=self.opts.tick_s)
            except queue.Empty:
                result = self.idle()
                if result is not None:
                    return result
                continue
            if kind != "line":
                return None
            if not text.endswith("\n"):
                continue  # cut off by the drop; read again whole after reconnecting
            self.next_line += 1
            result = self.event(text)
            if result is not None:
                return result
            if self.copy_due and lines.empty():  # a replay of old epochs copies once
                self.copy_due = False
                self.copy_checkpoints()

    def idle(self) -> int | None:
        if self.copy_due:
            self.copy_due = False
            self.copy_checkpoints()
        if self.should_end():
            return 0
        self.poll_pod()
        return self.check_stall()

    def event(self, text: str) -> int | None:
        self.last_event = self.env.monotonic()
        if self.stalled:
            self.stalled = False
            self.note("resumed", "progress events again", line=self.next_line - 1)
        try:
            rec = json.loads(text)
        except ValueError:
            return None
        if not isinstance(rec, dict):
            return None
        self.last.append(text.rstrip("\n"))
        self.view.update(rec)
        self.show(rec)
        kind = rec.get("event")
        if kind == "epoch":
            self.copy_due = True
            self.hc.ping("log", self.log_body())
        elif kind == "done":
            self.copy_due = False
            self.copy_checkpoints()
            self.hc.ping("success", self.log_body())
            cost = self.view.cost(self.wall())
            spent = "" if cost is None else f"; pod {self.pod.id} has cost ${cost:.2f} so far"
            self.note("done", f"run {self.opts.run_id} done{spent}", run_id=self.opts.run_id,
                      cost=cost)
            return 0
        return None

    def log_body(self) -> str:
        return "\n".join(self.last) + "\n" if self.last else ""

    def check_stall(self) -> int | None:
        quiet = self.env.monotonic() - self.last_event
        if self.stalled or quiet < self.opts.stall_s:
            return None
        self.stalled = True
        minutes = quiet / 60
        action = self.opts.on_stall
        body = self.log_body() + f"watch: no progress event for {minutes:.0f} min\n"
        if action == "none":
            self.hc.ping("fail", body)
            self.note("stalled", f"stalled: no progress event for {minutes:.0f} min "
                      "(--on-stall none: still watching)", minutes=minutes, action=action)
            return None
        copied = self.copy_checkpoints(COLLECTED)
        self.hc.ping("fail", body)
        done = {"collect": f"pod {self.pod.id} left as it is",
                "stop": f"pod {self.pod.id} stopped (`provision.py start {self.pod.id}` "
                        "resumes it)",
                "terminate": f"pod {self.pod.id} terminated"}[action]
        try:
            if action == "stop":
                self.client.stop_pod(self.pod.id)
            elif action == "terminate":
                self.client.terminate_pod(self.pod.id)
        except RunpodError as exc:
            done = f"{action} of pod {self.pod.id} failed: {exc}"
        self.note("stalled", f"stalled: no progress event for {minutes:.0f} min; collected "
                  f"{len(copied)} file(s) to {self.opts.out / 'artifacts'}; {done}",
                  minutes=minutes, action=action, files=copied, pod=self.pod.id)
        return 1


# -- the command ----------------------------------------------------------------------------------


def newest_run(env: Env, pod: Pod, root: str, user: str) -> str:
    """The run dir under `root` in the pod whose progress file changed last."""
    command = f"cd {shlex.quote(root)} && ls -1t -- */{PROGRESS_FILE} | head -n 1"
    with tempfile.TemporaryDirectory() as tmp:
        got = Path(tmp) / "ls"
        code = env.remote(ssh_argv(pod, ssh_settings(), user, [command], batch=True), None, got)
        text = got.read_text(encoding="utf-8", errors="replace").strip() if got.exists() else ""
    if code != 0 or "/" not in text:
        raise CliError(f"no run with an {PROGRESS_FILE} under {root} in pod {pod.id}; give "
                       "--run-id (or --remote-root)")
    return check_run_id(text.split("/")[0])


def options(args: argparse.Namespace, run_id: str, out: Path) -> WatchOptions:
    if args.stall_minutes <= 0:
        raise CliError(f"--stall-minutes {args.stall_minutes}: must be above 0", 2)
    return WatchOptions(run_id=run_id, remote_dir=f"{args.remote_root.rstrip('/')}/{run_id}",
                        out=out, stall_s=args.stall_minutes * 60,
                        on_stall=getattr(args, "on_stall", "collect"),
                        as_json=args.json, user=args.user, tick_s=args.tick)


def cmd_watch(env: Env, args: argparse.Namespace) -> int:
    repo_dir = load_settings(settings.PathSettings).REPO_DIR
    ssh_settings()
    load_settings(WatchSettings)
    with env.client_factory() as client:
        pod = client.get_pod(args.pod)
        if pod.ssh_endpoint() is None:
            raise CliError(f"pod {pod.id} has no SSH endpoint (status {pod.status}); watch needs "
                           "it RUNNING")
        run_id = (check_run_id(args.run_id) if args.run_id
                  else newest_run(env, pod, args.remote_root, args.user))
        out = args.out or repo_dir / "artifacts" / "cycle" / run_id
        return Watcher(env, client, pod, options(args, run_id, out)).run()


def add_watch_options(sp: argparse.ArgumentParser, on_stall: bool = True) -> None:
    """The options `watch` and `cycle --watch` share (cycle's own cleanup follows a stall)."""
    sp.add_argument("--stall-minutes", type=float, default=30.0,
                    help="no progress event for this long is a stall (default %(default)s; "
                    "fractions allowed: 0.5 = 30 s)")
    if on_stall:
        sp.add_argument("--on-stall", choices=ON_STALL, default="collect",
                        help="on a stall: none (warn, keep watching), collect the checkpoints "
                        "(default), or collect then stop / terminate the watched pod")
    sp.add_argument("--tick", type=float, default=0.5, help=argparse.SUPPRESS)


def add_command(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Adds watch through provision.py's `add(name, help, handler)` (its --json: JSON lines)."""
    sp = add("watch", "live view of a training run in a pod (progress, ETA, cost), checkpoints "
             "copied home at each epoch, stall detection", cmd_watch)
    sp.add_argument("pod", help="pod id")
    sp.add_argument("--run-id", help="the run under --remote-root (default: the newest)")
    sp.add_argument("--remote-root", default=REMOTE_ROOT,
                    help="runs live under REMOTE_ROOT/RUN_ID in the pod (default %(default)s)")
    sp.add_argument("--out", type=Path, metavar="DIR",
                    help="where checkpoints go (default artifacts/cycle/RUN_ID)")
    sp.add_argument("--user", default=SSH_USER, help=argparse.SUPPRESS)
    add_watch_options(sp)
