"""The pod's health: supervisord's programs over its unix socket (XML-RPC, with a timeout), the
inference API's /healthz, FATAL revivals and the last boot's phases, as one Report.

Side effects come through `rpc_factory` and `http_get`, so tests need no supervisord.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
import xmlrpc.client
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from appliance.atomic import read_json
from appliance.runtime.config import BOOT_SOURCE

# Each request to supervisord or the inference API, unless told otherwise.
TIMEOUT_S = 3.0
# Programs that may end by themselves: EXITED with exit status 0 is healthy.
MAY_EXIT = frozenset({"idle-watchdog"})


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self._path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


class UnixTransport(xmlrpc.client.Transport):
    """XML-RPC over a unix socket; a new connection per call (so thread-safe) with a timeout,
    which supervisor's own transport lacks."""

    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__()
        self._path = path
        self._timeout = timeout

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        return _UnixHTTPConnection(self._path, self._timeout)


def supervisor_proxy(sock: Path, timeout: float = TIMEOUT_S) -> xmlrpc.client.ServerProxy:
    return xmlrpc.client.ServerProxy("http://localhost/RPC2",
                                     transport=UnixTransport(sock, timeout))


@dataclass
class ProgramHealth:
    name: str
    state: str
    ok: bool
    uptime_s: int | None = None
    pid: int | None = None
    detail: str = ""


@dataclass
class Report:
    supervisord: str
    programs: list[ProgramHealth] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    left_out: dict[str, str] = field(default_factory=dict)
    revivals: dict[str, dict[str, Any]] = field(default_factory=dict)
    inference: dict[str, Any] | None = None
    last_boot: dict[str, Any] | None = None

    @property
    def reachable(self) -> bool:
        return self.supervisord == "RUNNING"

    @property
    def ok(self) -> bool:
        return self.reachable and not self.missing and all(p.ok for p in self.programs)

    def problems(self) -> list[str]:
        if not self.reachable:
            return [f"supervisord: {self.supervisord}"]
        out = [f"{p.name} is {p.state}" + (f" ({p.detail})" if p.detail else "")
               for p in self.programs if not p.ok]
        out += [f"{name} is enabled but not configured in supervisord" for name in self.missing]
        return out

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        data["problems"] = self.problems()
        return data


def program_health(info: dict[str, Any]) -> ProgramHealth:
    name, state = str(info.get("name")), str(info.get("statename"))
    running = state == "RUNNING"
    ok = running or (name in MAY_EXIT and state == "EXITED" and info.get("exitstatus") == 0)
    uptime = int(info["now"] - info["start"]) if running and info.get("start") else None
    detail = "" if running else str(info.get("spawnerr") or info.get("description") or "")
    return ProgramHealth(name, state, ok, uptime, int(info.get("pid") or 0) or None, detail)


def read_revivals(records: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for path in sorted(records.glob("*.json")) if records.is_dir() else []:
        data = read_json(path)
        if data is not None:
            out[path.stem] = data
    return out


def last_boot(timing_log: Path, source: str = BOOT_SOURCE, tail_bytes: int = 262_144
              ) -> dict[str, Any] | None:
    """The phases of the newest run of `source` in the phase-timing log."""
    try:
        with timing_log.open("rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - tail_bytes))
            lines = fh.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    records = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("source") == source:
            records.append(rec)
    if not records:
        return None
    run_id = records[-1].get("run_id")
    phases = [r for r in records if r.get("run_id") == run_id]
    return {
        "run_id": run_id,
        "ok": all(r.get("status") == "ok" for r in phases),
        "elapsed_ms": sum(int(r.get("elapsed_ms", 0)) for r in phases),
        "ended_ms": phases[-1].get("ts_epoch_ms"),
        "phases": [{k: r.get(k) for k in ("phase", "status", "elapsed_ms")} for r in phases],
    }


def inference_health(url: str, http_get: Callable[..., httpx.Response],
                     timeout: float) -> dict[str, Any]:
    try:
        resp = http_get(url, timeout=timeout)
    except httpx.HTTPError as exc:
        return {"url": url, "ok": False, "status": None, "detail": type(exc).__name__}
    body = resp.text.strip().replace("\n", " ")
    return {"url": url, "ok": resp.status_code == 200, "status": resp.status_code,
            "detail": body[:200]}


def local_url(bind_host: str, port: int, path: str) -> str:
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(bind_host, bind_host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}{path}"


def gather(*, socket_path: Path, expected: list[str] | None, left_out: dict[str, str],
           records: Path, timing_log: Path, inference_url: str | None,
           rpc_factory: Callable[[Path, float], Any] = supervisor_proxy,
           http_get: Callable[..., httpx.Response] = httpx.get,
           timeout: float = TIMEOUT_S) -> Report:
    """`expected`: the programs the bootstrap configured (None: whatever supervisord has)."""
    report = Report("unknown", left_out=dict(left_out), revivals=read_revivals(records),
                    last_boot=last_boot(timing_log))
    try:
        rpc = rpc_factory(socket_path, timeout)
        state = rpc.supervisor.getState()
        infos = rpc.supervisor.getAllProcessInfo()
    except (OSError, xmlrpc.client.Error, http.client.HTTPException) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        report.supervisord = f"unreachable at {socket_path}: {why}"
        return report
    report.supervisord = str(state.get("statename"))
    report.programs = [program_health(i) for i in infos]
    names = {p.name for p in report.programs}
    report.missing = [n for n in expected or [] if n not in names]
    inference = next((p for p in report.programs if p.name == "inference"), None)
    if inference_url and inference is not None and inference.state == "RUNNING":
        report.inference = inference_health(inference_url, http_get, timeout)
    return report


def _duration(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}"


def render_table(report: Report) -> str:
    lines = [f"supervisord: {report.supervisord}"]
    if report.programs:
        lines.append(f"{'program':<15} {'state':<9} {'uptime':>9} {'pid':>7}  detail")
        for p in report.programs:
            lines.append(f"{p.name:<15} {p.state:<9} {_duration(p.uptime_s):>9} "
                         f"{p.pid or '-':>7}  {p.detail}".rstrip())
    for name in report.missing:
        lines.append(f"{name:<15} {'MISSING':<9} {'-':>9} {'-':>7}  enabled, not in supervisord")
    for name, why in report.left_out.items():
        lines.append(f"left out: {name}: {why}")
    for name, rec in report.revivals.items():
        lines.append(f"revivals: {name}: FATAL {rec.get('fatal_count')} time(s), revived "
                     f"{rec.get('revives_total')} time(s), now {rec.get('state')}")
    if report.inference is not None:
        inf = report.inference
        lines.append(f"inference API: {inf['url']} -> {inf['status'] or 'no answer'} "
                     f"{inf['detail']}".rstrip())
    boot = report.last_boot
    if boot is not None:
        ended = time.strftime("%Y-%m-%d %H:%M:%S",
                              time.localtime((boot.get("ended_ms") or 0) / 1000))
        failed = [p["phase"] for p in boot["phases"] if p["status"] != "ok"]
        lines.append(f"last boot: run {boot['run_id']}, {len(boot['phases'])} phases in "
                     f"{boot['elapsed_ms'] / 1000:.1f} s, ended {ended}"
                     + (f", failed: {', '.join(failed)}" if failed else ", all ok"))
    problems = report.problems()
    lines.append("overall: OK" if report.ok else "overall: NOT OK: " + "; ".join(problems))
    return "\n".join(lines)
