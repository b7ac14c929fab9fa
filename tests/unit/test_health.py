"""Health report and `python -m appliance.runtime.status` against fake supervisord and HTTP
seams."""

from __future__ import annotations

import json
import xmlrpc.client
from pathlib import Path

import httpx
import pytest

from appliance.runtime import health, status
from appliance.runtime.health import gather, last_boot, local_url, render_table


def _info(name: str, state: str, pid: int = 0, **extra: object) -> dict:
    return {"name": name, "statename": state, "pid": pid, "start": 100, "now": 3825,
            "spawnerr": "", "description": "", "exitstatus": 0, **extra}


class FakeRpc:
    def __init__(self, infos: list[dict] | None = None, error: Exception | None = None) -> None:
        self.infos, self.error = infos or [], error
        self.supervisor = self

    def getState(self) -> dict:  # noqa: N802 - supervisord's method name
        if self.error:
            raise self.error
        return {"statename": "RUNNING", "statecode": 1}

    def getAllProcessInfo(self) -> list[dict]:  # noqa: N802
        return self.infos


def _gather(tmp_path: Path, rpc: FakeRpc, expected=None, http_get=None, **kw) -> health.Report:
    def get(url: str, timeout: float) -> httpx.Response:
        return httpx.Response(503, text='{"status":"no_model"}')

    return gather(socket_path=tmp_path / "s.sock", expected=expected, left_out={},
                  records=tmp_path / "fatal", timing_log=tmp_path / "t.jsonl",
                  inference_url="http://127.0.0.1:8000/healthz",
                  rpc_factory=lambda path, timeout: rpc, http_get=http_get or get, **kw)


def test_all_running_is_ok_with_uptime_and_inference_health(tmp_path):
    rpc = FakeRpc([_info("sshd", "RUNNING", 10), _info("inference", "RUNNING", 11)])
    report = _gather(tmp_path, rpc, expected=["sshd", "inference"])
    assert report.ok
    assert [(p.name, p.uptime_s, p.pid) for p in report.programs] == [
        ("sshd", 3725, 10), ("inference", 3725, 11)]
    assert report.inference == {"url": "http://127.0.0.1:8000/healthz", "ok": False,
                                "status": 503, "detail": '{"status":"no_model"}'}
    table = render_table(report)
    assert "sshd            RUNNING     1:02:05      10" in table
    assert table.splitlines()[-1] == "overall: OK"


def test_a_program_not_running_or_missing_is_not_ok(tmp_path):
    rpc = FakeRpc([_info("sshd", "RUNNING", 10),
                   _info("jupyter", "BACKOFF", spawnerr="Exited too quickly")])
    report = _gather(tmp_path, rpc, expected=["sshd", "jupyter", "inference"])
    assert not report.ok
    assert report.problems() == ["jupyter is BACKOFF (Exited too quickly)",
                                 "inference is enabled but not configured in supervisord"]


def test_the_watchdog_may_exit_cleanly(tmp_path):
    ok = _gather(tmp_path, FakeRpc([_info("idle-watchdog", "EXITED", exitstatus=0)]))
    bad = _gather(tmp_path, FakeRpc([_info("idle-watchdog", "EXITED", exitstatus=1),
                                     _info("jupyter", "EXITED", exitstatus=0)]))
    assert ok.ok
    assert [p.name for p in bad.programs if not p.ok] == ["idle-watchdog", "jupyter"]


def test_unreachable_supervisord(tmp_path):
    report = _gather(tmp_path, FakeRpc(error=FileNotFoundError(2, "No such file or directory")))
    assert not report.reachable and not report.ok
    assert report.problems() == [
        f"supervisord: unreachable at {tmp_path / 's.sock'}: No such file or directory"]


def test_revivals_and_last_boot_are_reported(tmp_path):
    (tmp_path / "fatal").mkdir()
    (tmp_path / "fatal" / "jupyter.json").write_text(json.dumps(
        {"state": "running", "fatal_count": 2, "revives_total": 2}))
    lines = [{"ts_epoch_ms": 1, "source": "runpod_entrypoint", "run_id": "old", "phase": "a",
              "status": "error", "elapsed_ms": 5},
             {"ts_epoch_ms": 2, "source": "runpod_train_preset", "run_id": "x", "phase": "t",
              "status": "ok", "elapsed_ms": 9},
             {"ts_epoch_ms": 3, "source": "runpod_entrypoint", "run_id": "new", "phase": "a",
              "status": "ok", "elapsed_ms": 1500},
             {"ts_epoch_ms": 4, "source": "runpod_entrypoint", "run_id": "new", "phase": "b",
              "status": "error", "elapsed_ms": 500, "exit_code": 1}]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + "junk\n")
    report = _gather(tmp_path, FakeRpc([_info("sshd", "RUNNING", 1)]))
    assert report.revivals == {"jupyter": {"state": "running", "fatal_count": 2,
                                           "revives_total": 2}}
    assert report.last_boot is not None
    assert (report.last_boot["run_id"], report.last_boot["ok"],
            report.last_boot["elapsed_ms"]) == ("new", False, 2000)
    table = render_table(report)
    assert "revivals: jupyter: FATAL 2 time(s), revived 2 time(s), now running" in table
    assert "last boot: run new, 2 phases in 2.0 s" in table and "failed: b" in table


def test_last_boot_without_a_log():
    assert last_boot(Path("/nonexistent/t.jsonl")) is None


@pytest.mark.parametrize("host,url", [("0.0.0.0", "http://127.0.0.1:8000/healthz"),
                                      ("127.0.0.1", "http://127.0.0.1:8000/healthz"),
                                      ("::", "http://[::1]:8000/healthz")])
def test_local_url(host, url):
    assert local_url(host, 8000, "/healthz") == url


def test_unix_transport_times_out_instead_of_hanging(tmp_path):
    import socket

    path = tmp_path / "silent.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    try:
        with pytest.raises(TimeoutError):
            health.supervisor_proxy(path, timeout=0.3).supervisor.getState()
    finally:
        server.close()


def test_status_exit_codes(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("APPLIANCE_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("RUNPOD_PHASE_TIMING_LOG", str(tmp_path / "t.jsonl"))
    assert status.main([]) == status.EXIT_UNREACHABLE
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == (f"overall: NOT OK: supervisord: unreachable at "
                                    f"{tmp_path}/run/supervisor/supervisor.sock: No such file "
                                    "or directory")
    monkeypatch.setenv("SSH_PORT", "70000")
    assert status.main(["--json"]) == status.EXIT_SETTINGS
    assert capsys.readouterr().err == ("error: bad environment: SSH_PORT='70000': expected a TCP "
                                       "port number 1..65535 (Port sshd listens on.)\n")


def test_xmlrpc_fault_counts_as_unreachable(tmp_path):
    report = _gather(tmp_path, FakeRpc(error=xmlrpc.client.Fault(6, "SHUTDOWN_STATE")))
    assert report.supervisord.endswith("<Fault 6: 'SHUTDOWN_STATE'>")
