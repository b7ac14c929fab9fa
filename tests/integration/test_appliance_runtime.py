"""The pod runtime for real: bootstrap -> supervisord with sshd, Jupyter and the inference API on
loopback ports in a temporary root; SSH as runner; kill -9 of children; FATAL revival; secrets.

Secrets are canary values that must never show up in process arguments, logs, configs or the
services' environment.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.utils import wait_until
from tests.utils.appliance import (
    PYTHON,
    USER,
    Appliance,
    base_env,
    ensure_runner,
    make_client_key,
    make_root,
    remove_root,
)

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root: sshd and supervisord")]

CANARIES = {
    "JUPYTER_TOKEN": "canary-jupyter-7f3a",
    "INFERENCE_API_TOKEN": "canary-inference-91bc",
    "HF_TOKEN": "canary-hf-55d2",
    "RUNPOD_API_KEY": "canary-runpod-c0de",
}
PROGRAMS = ["fatal-reviver", "sshd", "inference", "jupyter"]
PHASES = ["validate_settings", "prepare_dirs", "runner_account", "sshd_setup", "repo_sync",
          "requirements_sync", "torch_check", "render_supervisor", "login_env",
          "exec_supervisord"]


def _pub(key: Path) -> str:
    return key.with_name(key.name + ".pub").read_text().strip()


@pytest.fixture(scope="module")
def pod() -> Iterator[Appliance]:
    ensure_runner()
    root = make_root("pod-")
    key1 = make_client_key(root / "key1")
    key2 = make_client_key(root / "key2")
    kind, data, _ = _pub(key2).split()
    authorized = "\n".join([
        "not a key at all",
        _pub(key2),
        f"{kind} {data[:40]} truncated",
    ])
    env = base_env(root, PUBLIC_KEY=_pub(key1), AUTHORIZED_KEYS=authorized,
                   RUNPOD_POD_ID="pod-test-1", **CANARIES)
    (root / "repo").mkdir()
    app = Appliance(root, env, key1)
    app.start()
    try:
        app.wait_running(PROGRAMS, timeout=180)
        app.wait_listening()
        app.trust_host_keys()
        app.wait_login()
        yield app
    finally:
        app.stop()
        if not os.environ.get("APPLIANCE_KEEP_TEST_ROOT"):
            remove_root(root)


def _status(pod: Appliance, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(PYTHON), "-m", "appliance.runtime.status", *args], env=pod.env,
                          capture_output=True, text=True, timeout=60)


def test_every_program_runs_and_status_says_so(pod: Appliance):
    proc = _status(pod, "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] is True and report["problems"] == []
    assert sorted(p["name"] for p in report["programs"]) == sorted(PROGRAMS)
    assert all(p["state"] == "RUNNING" and p["uptime_s"] >= 0 for p in report["programs"])
    # No model is there to serve: the API answers 503 with the reason, the program runs.
    assert report["inference"]["status"] == 503
    assert "no model found" in report["inference"]["detail"]
    assert [p["phase"] for p in report["last_boot"]["phases"]] == PHASES


def test_status_and_supervisorctl_over_ssh_as_runner(pod: Appliance):
    proc = pod.ssh("supervisorctl status")
    assert proc.returncode == 0, proc.stderr
    states = dict(line.split()[:2] for line in proc.stdout.splitlines())
    assert states == dict.fromkeys(PROGRAMS, "RUNNING")
    proc = pod.ssh("python -m appliance.runtime.status")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1] == "overall: OK"
    # Logs are files, so tail works (it cannot on /dev/stdout).
    tail = pod.ssh("supervisorctl tail jupyter")
    assert tail.returncode == 0 and "Jupyter Server" in tail.stdout


def test_bootstrap_execs_supervisord_in_place(pod: Appliance):
    assert pod.proc is not None
    pidfile = Path(pod.env["APPLIANCE_RUN_DIR"]) / "supervisord.pid"
    assert int(pidfile.read_text()) == pod.proc.pid
    conf = Path(pod.env["APPLIANCE_ETC_DIR"]) / "supervisor" / "supervisord.conf"
    assert (f"appliance-bootstrap: exec {PYTHON} -m supervisor.supervisord -n -c {conf} "
            "(bootstrap took ") in pod.boot_output.read_text()


def test_a_stopped_program_makes_status_fail(pod: Appliance):
    rpc = pod.rpc()
    rpc.supervisor.stopProcess("jupyter", False)
    try:
        wait_until(lambda: pod.infos()["jupyter"]["statename"] == "STOPPED", 20,
                   what="jupyter STOPPED")
        proc = _status(pod)
        assert proc.returncode == 1
        assert proc.stdout.splitlines()[-1].startswith("overall: NOT OK: jupyter is STOPPED")
        assert pod.ssh("supervisorctl status").returncode == 3
    finally:
        rpc.supervisor.startProcess("jupyter", False)
    pod.wait_running(["jupyter"])


def test_key_logins_and_refusals(pod: Appliance):
    assert pod.ssh("whoami").stdout.strip() == USER
    assert pod.ssh("whoami", USER, pod.root / "key2").stdout.strip() == USER
    for user in ("root", "nobody"):
        proc = pod.ssh("true", user)
        assert proc.returncode == 255
        assert "Permission denied (publickey)." in proc.stderr
    # The server offers no password or keyboard-interactive method at all.
    proc = pod.ssh("true", USER, None, "-o", "PubkeyAuthentication=no",
                   "-o", "PreferredAuthentications=password,keyboard-interactive")
    assert proc.returncode == 255
    assert "Permission denied (publickey)." in proc.stderr
    boot = pod.boot_output.read_text()
    assert ("authorized keys: AUTHORIZED_KEYS line 1: not a public key: expected '<type> "
            "<base64 data> [comment]' with a type such as ssh-ed25519, ssh-rsa or "
            "ecdsa-sha2-nistp256; skipped") in boot
    assert ("authorized keys: AUTHORIZED_KEYS line 3: key data is not a complete ssh-ed25519 "
            "key (truncated or pasted wrongly?); skipped") in boot
    assert "2 authorized key(s)" in boot and "2 malformed key line(s) skipped" in boot


def test_ssh_sessions_see_the_pod_environment_without_secrets(pod: Appliance):
    env_file = Path(pod.env["APPLIANCE_ETC_DIR"]) / "profile.d" / "appliance-env.sh"
    plain = pod.ssh("env").stdout
    login = pod.ssh(f". {env_file} && env").stdout
    for out in (plain, login):
        assert "RUNPOD_POD_ID=pod-test-1" in out
        assert f"HF_HOME={pod.env['WORKSPACE_DIR']}/.cache/huggingface" in out
        for canary in CANARIES.values():
            assert canary not in out
    assert pod.ssh("command -v python").stdout.strip() == str(PYTHON.parent / "python")


def test_tokens_reach_jupyter_and_the_api_through_files(pod: Appliance):
    with httpx.Client(trust_env=False, timeout=10) as http:
        jupyter = f"http://127.0.0.1:{pod.env['JUPYTER_PORT']}/api/status"
        assert http.get(jupyter).status_code == 403
        ok = http.get(jupyter, headers={"Authorization": f"token {CANARIES['JUPYTER_TOKEN']}"})
        assert ok.status_code == 200
        metrics = f"http://127.0.0.1:{pod.env['INFERENCE_PORT']}/metrics"
        assert http.get(metrics).status_code == 401
        bearer = {"Authorization": f"Bearer {CANARIES['INFERENCE_API_TOKEN']}"}
        assert http.get(metrics, headers=bearer).status_code == 200
    jupyter_log = (pod.log_dir / "jupyter.log").read_text()
    assert "/lab?token=..." in jupyter_log


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_secrets_never_leak(pod: Appliance):
    canaries = list(CANARIES.values())
    leaks = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            cmd = _cmdline(int(entry.name))
            leaks += [f"pid {entry.name} command line" for c in canaries if c in cmd]
    secrets_dir = Path(pod.env["APPLIANCE_RUN_DIR"]) / "appliance" / "secrets"
    # Jupyter's own server-info and redirect files hold its token, in a dir only runner reads.
    jupyter_runtime = (Path(pod.env["APPLIANCE_USER_HOME"]) / ".local" / "share" / "jupyter"
                       / "runtime")
    for path in pod.root.rglob("*"):
        if not path.is_file() or secrets_dir in path.parents:
            continue
        text = path.read_bytes()
        for c in canaries:
            if c.encode() in text:
                if path.parent == jupyter_runtime and jupyter_runtime.stat().st_mode & 0o077 == 0:
                    continue
                leaks.append(f"{path.relative_to(pod.root)}")
    for name, info in pod.infos().items():
        environ = Path(f"/proc/{info['pid']}/environ").read_bytes()
        leaks += [f"{name}'s environment" for c in canaries if c.encode() in environ]
    config = json.dumps(pod.rpc().supervisor.getAllConfigInfo())
    leaks += ["supervisor.getAllConfigInfo()" for c in canaries if c in config]
    assert leaks == []
    for name, value in CANARIES.items():
        secret = secrets_dir / name
        assert secret.read_text() == value
        assert oct(secret.stat().st_mode & 0o777) == "0o440"


def test_phase_timing_records_are_json_lines_with_the_documented_fields(pod: Appliance):
    lines = Path(pod.env["RUNPOD_PHASE_TIMING_LOG"]).read_text().splitlines()
    records = [r for r in map(json.loads, lines) if r["source"] != "runpod_services"]
    assert [r["phase"] for r in records] == PHASES
    for r in records:
        assert set(r) - {"exit_code"} == {"ts_epoch_ms", "source", "run_id", "phase", "status",
                                          "elapsed_ms"}
        assert r["source"] == "runpod_entrypoint" and r["status"] == "ok"
        assert isinstance(r["ts_epoch_ms"], int) and r["ts_epoch_ms"] > 1.7e12
        assert isinstance(r["elapsed_ms"], int) and r["elapsed_ms"] >= 0
    assert len({r["run_id"] for r in records}) == 1


def test_each_program_start_is_timed_once_since_the_bootstrap_began(pod: Appliance):
    boot = json.loads((Path(pod.env["APPLIANCE_RUN_DIR"]) / "appliance" /
                       "bootstrap.json").read_text())
    log = Path(pod.env["RUNPOD_PHASE_TIMING_LOG"])
    assert boot["timing_log"] == str(log)

    def starts() -> list[dict]:
        rows = [json.loads(line) for line in log.read_text().splitlines()]
        return [r for r in rows if r["source"] == "runpod_services"]

    wanted = set(PROGRAMS)  # the listener's own RUNNING reaches it too, buffered
    rows = wait_until(lambda: starts() if wanted <= {r["program"] for r in starts()} else [],
                      30, 0.2, what="service_start records")
    assert sorted(r["program"] for r in rows) == sorted(wanted)
    exec_at = next(json.loads(line) for line in log.read_text().splitlines()
                   if json.loads(line)["phase"] == "exec_supervisord")["ts_epoch_ms"]
    for r in rows:
        assert set(r) == {"ts_epoch_ms", "source", "run_id", "phase", "status", "elapsed_ms",
                          "program"}
        assert (r["phase"], r["status"], r["run_id"]) == ("service_start", "ok", boot["run_id"])
        # elapsed counts from the bootstrap's start: past its own end, and it matches the clock
        assert r["elapsed_ms"] >= exec_at - boot["started_epoch_ms"]
        assert 0 <= r["ts_epoch_ms"] - boot["started_epoch_ms"] - r["elapsed_ms"] <= 50
    # a program that ends and is started again is no second start
    pid = pod.infos()["sshd"]["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: pod.infos().get("sshd", {}).get("pid") not in (None, 0, pid)
               and pod.infos()["sshd"]["statename"] == "RUNNING", 60, 0.2, what="sshd back")
    assert [r["program"] for r in starts()].count("sshd") == 1


def _echo(session: subprocess.Popen[str], text: str, timeout: float = 10) -> str:
    assert session.stdin is not None and session.stdout is not None
    session.stdin.write(text + "\n")
    session.stdin.flush()
    ready, _, _ = select.select([session.stdout], [], [], timeout)
    return session.stdout.readline().strip() if ready else ""


def test_restarting_sshd_keeps_an_open_session(pod: Appliance):
    session = subprocess.Popen([*pod.ssh_args(), "cat"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert _echo(session, "before") == "before"
        rpc = pod.rpc()
        rpc.supervisor.stopProcess("sshd", False)
        wait_until(lambda: pod.infos()["sshd"]["statename"] == "STOPPED", 20, what="sshd STOPPED")
        rpc.supervisor.startProcess("sshd", False)
        pod.wait_running(["sshd"])
        assert _echo(session, "after") == "after"
        pod.wait_login()
    finally:
        session.kill()
        session.wait(10)


def test_kill_9_of_children_never_takes_sshd_down(pod: Appliance):
    rounds = int(os.environ.get("APPLIANCE_KILL_ROUNDS", "20"))
    children = ("jupyter", "inference")
    sshd_pid = pod.infos()["sshd"]["pid"]
    session = subprocess.Popen([*pod.ssh_args(), "cat"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    respawn, running = [], []
    try:
        assert _echo(session, "hello") == "hello"
        for i in range(rounds):
            infos = pod.infos()
            old = {n: infos[n]["pid"] for n in children}
            t0 = time.monotonic()
            for pid in old.values():
                os.kill(pid, signal.SIGKILL)

            def new_pids(old: dict[str, int] = old) -> bool:
                infos = pod.infos()
                return all(infos[n]["pid"] not in (0, old[n]) for n in children)

            wait_until(new_pids, 10, interval=0.05, what=f"round {i}: new processes")
            respawn.append(time.monotonic() - t0)
            pod.wait_running(list(children), timeout=30)
            running.append(time.monotonic() - t0)
            assert _echo(session, f"round {i}") == f"round {i}", f"session lost in round {i}"
            login = pod.ssh("true")
            assert login.returncode == 0, f"round {i}: new login failed: {login.stderr}"
    finally:
        session.kill()
        session.wait(10)
    assert pod.infos()["sshd"]["pid"] == sshd_pid
    assert len(running) == rounds
    print(f"\nkill -9 x{rounds}: respawn max {max(respawn):.2f} s, RUNNING again max "
          f"{max(running):.2f} s (startsecs 5)")
    assert max(respawn) < 3
    assert max(running) < 15


# -- separate pods -------------------------------------------------------------------------------

@pytest.fixture
def fresh_root() -> Iterator[Path]:
    ensure_runner()
    root = make_root("pod-")
    yield root
    if not os.environ.get("APPLIANCE_KEEP_TEST_ROOT"):
        remove_root(root)


def test_host_key_is_the_same_after_a_restart(fresh_root: Path):
    key = make_client_key(fresh_root / "key")
    env = base_env(fresh_root, PUBLIC_KEY=_pub(key), START_JUPYTER="0", START_INFERENCE_API="0")
    app = Appliance(fresh_root, env, key)
    pubs = sorted((fresh_root / "etc" / "ssh").glob("*.pub"))
    try:
        app.start()
        app.wait_running(["sshd"])
        app.trust_host_keys()
        app.wait_login()
        pubs = sorted((fresh_root / "etc" / "ssh").glob("*.pub"))
        first = [p.read_text() for p in pubs]
        app.stop()
        app.start()
        app.wait_running(["sshd"])
        # known_hosts from the first boot, strict checking: a new key would fail the login.
        app.wait_login()
        assert [p.read_text() for p in pubs] == first
    finally:
        app.stop()
    boot = app.boot_output.read_text()
    assert boot.count("sshd_setup: host keys generated now: ed25519, ecdsa;") == 1
    assert boot.count(f"sshd_setup: host keys kept from {fresh_root}/workspace/.appliance/ssh")\
        == 1


def _program(name: str, code: str, startsecs: int) -> str:
    return (f"[program:{name}]\ncommand={PYTHON} -c \"{code}\"\nautorestart=true\n"
            f"startsecs={startsecs}\nstartretries=0\nredirect_stderr=true\n"
            f"stdout_logfile=NONE\n")


def test_a_crashing_program_ends_fatal_is_recorded_and_revived(fresh_root: Path):
    key = make_client_key(fresh_root / "key")
    extra = fresh_root / "extra"
    extra.mkdir()
    flag = fresh_root / "flag"
    (extra / "flaky.conf").write_text(_program(
        "flaky", f"import os,sys,time; os.path.exists('{flag}') or sys.exit(3); time.sleep(600)",
        2))
    (extra / "broken.conf").write_text(_program("broken", "import sys; sys.exit(3)", 1))
    env = base_env(fresh_root, PUBLIC_KEY=_pub(key), START_JUPYTER="0", START_INFERENCE_API="0",
                   APPLIANCE_EXTRA_CONF_DIR=str(extra), APPLIANCE_FATAL_COOLDOWN_SECONDS="2",
                   APPLIANCE_FATAL_MAX_REVIVES="2")
    records = fresh_root / "run" / "appliance" / "fatal"
    app = Appliance(fresh_root, env, key)

    def record(name: str) -> dict:
        try:
            return json.loads((records / f"{name}.json").read_text())
        except (OSError, ValueError):
            return {}

    try:
        app.start()
        sshd_pid = app.wait_running(["sshd", "fatal-reviver"])["sshd"]["pid"]
        wait_until(lambda: record("flaky").get("fatal_count", 0) >= 1, 30, what="flaky FATAL")
        flag.write_text("go\n")
        status = subprocess.run([str(PYTHON), "-m", "appliance.runtime.status"], env=env,
                                capture_output=True, text=True, timeout=60)
        assert status.returncode == 1 and "broken is " in status.stdout
        app.wait_running(["flaky"], timeout=30)
        wait_until(lambda: record("flaky").get("state") == "running", 10, what="flaky recorded")
        assert record("flaky")["revives_total"] >= 1
        wait_until(lambda: record("broken").get("state") == "given_up", 60,
                   what="broken given up")
        broken = record("broken")
        assert (broken["fatal_count"], broken["revives_total"]) == (3, 2)
        assert app.infos()["broken"]["statename"] == "FATAL"
        assert app.infos()["sshd"]["pid"] == sshd_pid
        app.trust_host_keys()
        app.wait_login()
    finally:
        app.stop()
    log = (app.log_dir / "fatal-reviver.log").read_text()
    assert "fatal-reviver: flaky is FATAL (from BACKOFF; FATAL 1 time(s)); starting it again in" \
        " 2 s" in log
    assert "fatal-reviver: flaky is RUNNING again" in log
    assert ("fatal-reviver: broken stays FATAL: 2 revival(s) in a row did not last; start it by "
            "hand (supervisorctl start broken)") in log


@pytest.mark.parametrize("extra,failure", [
    ({"APPLIANCE_BIND_HOST": "300.1.1.1"},
     "sshd_setup: FAILED ({ms} ms): sshd -t rejects {root}/etc/ssh/sshd_config: bad addr or host: "
     "300.1.1.1 (Name or service not known)"),
    ({"APPLIANCE_SSHD": "/nonexistent/sshd"},
     "sshd_setup: FAILED ({ms} ms): APPLIANCE_SSHD=/nonexistent/sshd not found: install "
     "openssh-server or set START_SSHD=0"),
])
def test_sshd_config_that_fails_sshd_t_stops_the_bootstrap(fresh_root: Path, extra, failure):
    env = base_env(fresh_root, START_JUPYTER="0", START_INFERENCE_API="0", RUN_ID="bad", **extra)
    proc = subprocess.run([str(PYTHON), "-m", "appliance.runtime.bootstrap", "--no-exec"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    line = next(line for line in proc.stdout.splitlines() if "sshd_setup: FAILED" in line)
    ms = line.split("FAILED (", 1)[1].split(" ms)", 1)[0]
    assert line.endswith(failure.format(ms=ms, root=fresh_root))
    assert "render_supervisor" not in proc.stdout
    records = [json.loads(x) for x in Path(env["RUNPOD_PHASE_TIMING_LOG"]).read_text().splitlines()]
    assert [(r["phase"], r["status"]) for r in records][-1] == ("sshd_setup", "error")
