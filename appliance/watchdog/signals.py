"""The idle watchdog's activity signals: gpu, ssh, jupyter, heartbeat, processes, sync, keepalive.

Each signal reads one thing through one injectable seam (NVML, psutil, HTTP, files) and returns a
Reading; a failure becomes an "error" reading with the reason, never an exception.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import httpx

from appliance.atomic import atomic_write_json
from appliance.sync.status import SyncStatus, read_status

State = Literal["active", "quiet", "unavailable", "error"]
KEEPALIVE_MAX_BYTES = 4096


@dataclass(frozen=True)
class Reading:
    name: str
    state: State
    detail: str
    # Epoch seconds of the newest activity this signal itself knows of (a file's mtime, Jupyter's
    # last_activity); None when it only knows "now or not".
    last_activity: float | None = None

    @property
    def active(self) -> bool:
        return self.state == "active"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Signal(Protocol):
    name: str

    def read(self, now: float) -> Reading: ...


def read_safely(signal: Signal, now: float) -> Reading:
    """A signal that raises is reported as an error; the watchdog must outlive any signal."""
    try:
        return signal.read(now)
    except Exception as exc:  # noqa: BLE001 (any failure of one signal is that signal's state)
        return Reading(signal.name, "error", f"{type(exc).__name__}: {exc}"[:200])


# -- gpu ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuSample:
    index: int
    util_percent: float
    mem_used_mb: float
    mem_total_mb: float


class NvmlUnavailable(Exception):
    """No NVML: the library, the driver or a GPU is missing."""


def nvml_samples() -> list[GpuSample]:
    """Per-GPU utilisation and memory through NVML; the library is imported only here."""
    try:
        import pynvml  # from nvidia-ml-py; lazy, so pods and tests without a GPU never load it
    except ImportError as exc:
        raise NvmlUnavailable(f"nvidia-ml-py is not installed ({exc.name})") from None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        raise NvmlUnavailable(f"NVML cannot start: {exc}") from None
    try:
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            util = pynvml.nvmlDeviceGetUtilizationRates(handle)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            out.append(GpuSample(i, float(util.gpu), mem.used / 2**20, mem.total / 2**20))
        return out
    finally:
        pynvml.nvmlShutdown()


class GpuSignal:
    """Active while any GPU's utilisation is above the threshold. Memory is shown but counts only
    with a memory threshold (AUTOSTOP_GPU_MEM_MB, the predecessor's IDLE_GPU_MEM_MB_THRESHOLD):
    an idle inference server keeps its weights resident for days."""

    name = "gpu"

    def __init__(self, threshold_percent: float,
                 sampler: Callable[[], list[GpuSample]] = nvml_samples,
                 mem_threshold_mb: float | None = None) -> None:
        self.threshold = threshold_percent
        self.mem_threshold = mem_threshold_mb
        self.sampler = sampler
        self.unavailable: str | None = None

    def read(self, now: float) -> Reading:
        if self.unavailable is not None:  # a missing driver does not appear later; ask once
            return Reading(self.name, "unavailable", self.unavailable)
        try:
            samples = self.sampler()
        except NvmlUnavailable as exc:
            self.unavailable = str(exc)
            return Reading(self.name, "unavailable", self.unavailable)
        if not samples:
            self.unavailable = "NVML reports no GPU"
            return Reading(self.name, "unavailable", self.unavailable)
        mem = self.mem_threshold
        busy = [s for s in samples if s.util_percent > self.threshold
                or (mem is not None and s.mem_used_mb >= mem)]
        detail = ", ".join(f"gpu{s.index} {s.util_percent:.0f}% {s.mem_used_mb:.0f}/"
                           f"{s.mem_total_mb:.0f} MiB" for s in samples)
        rule = f"busy above {self.threshold:g}%"
        if mem is not None:
            rule += f" or from {mem:g} MiB in use"
        return Reading(self.name, "active" if busy else "quiet", f"{detail} ({rule})")


# -- ssh ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Conn:
    local_port: int
    remote: str  # "ip:port", empty for a listening socket
    status: str


def psutil_connections() -> list[Conn]:
    import psutil

    out = []
    for c in psutil.net_connections(kind="tcp"):
        remote = f"{c.raddr.ip}:{c.raddr.port}" if c.raddr else ""
        out.append(Conn(c.laddr.port if c.laddr else 0, remote, c.status))
    return out


class SshSignal:
    """Active while a TCP connection to sshd's port is established (an open session)."""

    name = "ssh"

    def __init__(self, port: int, connections: Callable[[], list[Conn]] = psutil_connections
                 ) -> None:
        self.port = port
        self.connections = connections

    def read(self, now: float) -> Reading:
        open_ = [c for c in self.connections()
                 if c.local_port == self.port and c.remote and c.status == "ESTABLISHED"]
        if open_:
            return Reading(self.name, "active",
                           f"{len(open_)} established connection(s) to port {self.port}")
        return Reading(self.name, "quiet", f"no connection to port {self.port}")


# -- jupyter --------------------------------------------------------------------------------------


def parse_iso(value: object) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class JupyterSignal:
    """Active while a kernel is busy; Jupyter's own last_activity (API use, kernel messages)
    counts too. The token goes only into the Authorization header, never a URL or a message."""

    name = "jupyter"

    def __init__(self, base_url: str, token: Callable[[], str | None],
                 http_get: Callable[..., httpx.Response] | None = None,
                 timeout_s: float = 3.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        if http_get is None:
            # One client for the process: a new one per poll costs ~15 ms of CPU (TLS setup).
            http_get = httpx.Client(follow_redirects=False).get
        self.http_get = http_get
        self.timeout_s = timeout_s

    def _get(self, path: str) -> Any:
        token = self.token()
        headers = {"Authorization": f"token {token}"} if token else {}
        # no_track_activity: our own polling must not count as a user's activity.
        resp = self.http_get(f"{self.base_url}{path}", headers=headers,
                             params={"no_track_activity": "1"}, timeout=self.timeout_s)
        if resp.status_code in (401, 403):
            raise PermissionError(f"Jupyter refused the token (HTTP {resp.status_code} on {path})")
        if resp.status_code != 200:
            raise RuntimeError(f"Jupyter answered HTTP {resp.status_code} on {path}")
        return resp.json()

    def read(self, now: float) -> Reading:
        try:
            status = self._get("/api/status")
            kernels = self._get("/api/kernels")
        except httpx.ConnectError:
            return Reading(self.name, "unavailable", f"no Jupyter server at {self.base_url}")
        except httpx.HTTPError as exc:
            return Reading(self.name, "error", f"Jupyter at {self.base_url}: "
                           f"{type(exc).__name__}")
        except (PermissionError, RuntimeError, ValueError) as exc:
            return Reading(self.name, "error", str(exc)[:200])
        kernels = kernels if isinstance(kernels, list) else []
        busy = [k for k in kernels if isinstance(k, dict) and k.get("execution_state") == "busy"]
        times = [parse_iso(status.get("last_activity") if isinstance(status, dict) else None)]
        times += [parse_iso(k.get("last_activity")) for k in kernels if isinstance(k, dict)]
        last = max((t for t in times if t is not None), default=None)
        if last is not None:
            last = min(last, now)
        detail = f"{len(kernels)} kernel(s), {len(busy)} busy"
        return Reading(self.name, "active" if busy else "quiet", detail, last)


# -- files: inference heartbeat, keep-alive -------------------------------------------------------


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return None


class HeartbeatSignal:
    """The inference API touches this file on /infer traffic (not on health checks)."""

    name = "heartbeat"

    def __init__(self, path: Path | None, recent_s: float) -> None:
        self.path = path
        self.recent_s = recent_s

    def read(self, now: float) -> Reading:
        if self.path is None:
            return Reading(self.name, "unavailable", "INFERENCE_HEARTBEAT_FILE is not set")
        mtime = _mtime(self.path)
        if mtime is None:
            return Reading(self.name, "quiet", f"no request yet ({self.path} absent)")
        mtime = min(mtime, now)
        state: State = "active" if now - mtime <= self.recent_s else "quiet"
        return Reading(self.name, state, f"last /infer request at {clock_time(mtime)}", mtime)


def write_keepalive(path: Path, until_epoch: float, now: float) -> None:
    atomic_write_json(path, {"until_epoch": until_epoch, "set_epoch": now}, indent=None)


def clear_keepalive(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def keepalive_until(path: Path) -> float | None:
    """The expiry written by `keepalive DURATION`; None for a plainly touched file."""
    try:
        # Users write this file and root reads it: a FIFO or device must not block or flood us.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            raw = os.read(fd, KEEPALIVE_MAX_BYTES)
        finally:
            os.close(fd)
        data = json.loads(raw.decode("utf-8"))
        until = data.get("until_epoch") if isinstance(data, dict) else None
        return float(until) if isinstance(until, int | float) else None
    except (OSError, ValueError, UnicodeDecodeError):
        return None


class KeepaliveSignal:
    """Active until the expiry in the file; a file touched by hand counts when it was touched."""

    name = "keepalive"

    def __init__(self, path: Path, recent_s: float) -> None:
        self.path = path
        self.recent_s = recent_s

    def read(self, now: float) -> Reading:
        mtime = _mtime(self.path)
        if mtime is None:
            return Reading(self.name, "quiet", f"none ({self.path} absent)")
        until = keepalive_until(self.path)
        if until is not None:
            if until > now:
                return Reading(self.name, "active", f"until {clock_time(until)} "
                               f"({duration(until - now)} left)", now)
            return Reading(self.name, "quiet", f"expired at {clock_time(until)}", until)
        mtime = min(mtime, now)
        state: State = "active" if now - mtime <= self.recent_s else "quiet"
        return Reading(self.name, state, f"{self.path} touched at {clock_time(mtime)}", mtime)


# -- processes ------------------------------------------------------------------------------------


def psutil_cmdlines() -> list[tuple[int, str]]:
    import psutil

    out = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if cmdline:
            out.append((int(proc.info["pid"]), " ".join(cmdline)))
    return out


class ProcessSignal:
    """Active while a process's command line contains one of the patterns. Only pids and the
    pattern are reported: command lines may carry secrets."""

    name = "processes"

    def __init__(self, patterns: Sequence[str],
                 lister: Callable[[], list[tuple[int, str]]] = psutil_cmdlines,
                 own_pid: int | None = None) -> None:
        self.patterns = [p for p in patterns if p]
        self.lister = lister
        self.own_pid = own_pid if own_pid is not None else os.getpid()

    def read(self, now: float) -> Reading:
        if not self.patterns:
            return Reading(self.name, "unavailable", "AUTOSTOP_PROCESS_PATTERNS is empty")
        hits = []
        for pid, cmdline in self.lister():
            if pid == self.own_pid:
                continue
            pattern = next((p for p in self.patterns if p in cmdline), None)
            if pattern is not None:
                hits.append(f"pid {pid} ({pattern})")
        if hits:
            more = f" and {len(hits) - 3} more" if len(hits) > 3 else ""
            return Reading(self.name, "active", ", ".join(hits[:3]) + more)
        return Reading(self.name, "quiet", "no process matches " + ", ".join(
            repr(p) for p in self.patterns))


# -- artifact sync --------------------------------------------------------------------------------


def watcher_alive(status: SyncStatus) -> bool:
    """The watcher that wrote `status` still runs (its pid, with appliance.sync in its command
    line, so a reused pid does not count)."""
    import psutil

    if status.mode == "stopped":
        return False
    try:
        return "appliance.sync" in " ".join(psutil.Process(status.pid).cmdline())
    except (psutil.Error, ValueError):
        return False


class SyncSignal:
    """Active while a running watcher has uploads pending (or failing). A dead watcher's stale
    count does not keep the pod up forever: the stop's flush gate uploads those files first."""

    name = "sync"

    def __init__(self, state_dir: Path,
                 reader: Callable[[Path], SyncStatus | None] = read_status,
                 alive: Callable[[SyncStatus], bool] = watcher_alive) -> None:
        self.state_dir = state_dir
        self.reader = reader
        self.alive = alive

    def read(self, now: float) -> Reading:
        status = self.reader(self.state_dir)
        if status is None:
            return Reading(self.name, "quiet", "no sync watcher status")
        last = status.last_upload_epoch
        last = min(last, now) if last is not None else None
        error = f"; last error: {status.last_error[:120]}" if status.last_error else ""
        if status.pending == 0:
            return Reading(self.name, "quiet", "nothing pending" + error, last)
        if self.alive(status):
            return Reading(self.name, "active", f"{status.pending} file(s) pending upload"
                           + error, last)
        return Reading(self.name, "quiet", f"watcher pid {status.pid} not running; "
                       f"{status.pending} file(s) pending (uploaded before a stop)", last)


# -- formatting -----------------------------------------------------------------------------------


def clock_time(epoch: float) -> str:
    """Local wall-clock time of an epoch, HH:MM:SS, for messages."""
    return datetime.fromtimestamp(epoch).strftime("%H:%M:%S")


def duration(seconds: float) -> str:
    """A short human duration: 45s, 3m07s, 2h05m."""
    s = max(0, int(round(seconds)))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")
