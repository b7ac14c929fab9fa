"""The real image, built and run: SSH, supervisord programs, inference, Jupyter, env toggles,
restarts, training in the container, and a push to a loopback registry.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from host_tools.engine import Engine, push_flags
from host_tools.image import ROOT
from tests.utils import free_port, wait_until
from tests.utils.containers import Pod, TrackedContainers

API_TOKEN = "api-" + uuid.uuid4().hex
JUPYTER_TOKEN = "jt-" + uuid.uuid4().hex
# The sample data is in the code baked in the image; the model goes to the state root.
TINY_TRAIN = ("TRAIN_DATASET_DIR=/opt/chessbot/data/sample TRAIN_EPOCHS=1 TRAIN_BATCH_SIZE=64 "
              "TRAIN_OUTPUT_DIR=/workspace/chess-bot/artifacts/ct "
              "TRAIN_RUNTIME_MAX_SAMPLES_PER_GAME=4 "
              "TRAIN_EXTRA_ARGS='--embed-dim 32 --hidden-dim 64 --num-layers 1 "
              "--max-steps-per-epoch 10'")


def http(url: str, body: dict | None = None, headers: dict[str, str] | None = None,
         method: str | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw or b"{}")
        except json.JSONDecodeError:
            return exc.code, {"raw": raw.decode(errors="replace")}
    except (OSError, urllib.error.URLError):
        return 0, {}


@pytest.fixture(scope="module")
def pod(containers: TrackedContainers) -> Pod:
    return containers.run({"INFERENCE_API_TOKEN": API_TOKEN, "JUPYTER_TOKEN": JUPYTER_TOKEN})


@pytest.fixture(scope="module")
def trained(pod: Pod) -> dict:
    """The preset trains over SSH as runner; `supervisorctl restart inference` picks it up."""
    # RUNNING means up for startsecs; uvicorn may still be importing torch on a busy host.
    wait_until(lambda: http(pod.url(8000, "/healthz"))[0] != 0, 120, 0.5, what="API answers")
    status, body = http(pod.url(8000, "/healthz"))
    assert status == 503 and body["status"] == "no_model", body
    proc = pod.ssh(f"{TINY_TRAIN} python -m appliance.training.preset", timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert pod.ssh("ls /workspace/chess-bot/artifacts/ct/model_best.pt").returncode == 0
    proc = pod.ssh("supervisorctl restart inference")
    assert "inference: started" in proc.stdout, proc.stdout + proc.stderr
    wait_until(lambda: http(pod.url(8000, "/healthz"))[0] == 200, 120, 0.5)
    return http(pod.url(8000, "/healthz"))[1]


def test_the_image_holds_every_declared_dependency(pod: Pod) -> None:
    """The image's venv satisfies every requirement of the project it holds: a dependency added
    to pyproject.toml is installed, not left out by a layer the engine took from its cache."""
    proc = pod.exec("/opt/venvs/chessbot/bin/pip", "check", check=False)
    assert (proc.returncode, proc.stdout.strip()) == (0, "No broken requirements found.")


def test_dockerfile_is_hadolint_clean() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    proc = subprocess.run([hadolint, str(ROOT / "image" / "Dockerfile")], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ssh_as_runner_and_every_program_running(pod: Pod) -> None:
    proc = pod.ssh("id -un; supervisorctl status")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "runner"
    states = {line.split()[0]: line.split()[1] for line in lines[1:]}
    for program in ("sshd", "jupyter", "inference", "fatal-reviver"):
        assert states.get(program) == "RUNNING", proc.stdout
    status = pod.ssh("python -m appliance.runtime.status --json")
    assert status.returncode == 0, status.stdout + status.stderr
    report = json.loads(status.stdout)
    assert "sshd" in json.dumps(report) and "RUNNING" in json.dumps(report)


def test_root_and_password_logins_fail(pod: Pod) -> None:
    root = pod.ssh("true", "root")
    assert root.returncode == 255 and "Permission denied" in root.stderr, root.stderr
    pw = pod.ssh("true", "runner", 30, "-o", "PubkeyAuthentication=no", "-o",
                 "PreferredAuthentications=password,keyboard-interactive")
    assert pw.returncode == 255 and "Permission denied" in pw.stderr, pw.stderr
    effective = pod.exec("/usr/sbin/sshd", "-T").stdout.lower()
    assert "permitrootlogin no" in effective and "passwordauthentication no" in effective


def test_healthz_and_infer_through_published_port(pod: Pod, trained: dict) -> None:
    assert trained["status"] == "ok"
    assert trained["model_path"] == "/workspace/chess-bot/artifacts/ct/model_best.pt"
    body = {"moves": ["e2e4", "e7e5"], "topk": 3}
    status, out = http(pod.url(8000, "/infer"), body,
                       {"Authorization": f"Bearer {API_TOKEN}"})
    assert status == 200, out
    assert len(out["topk"]) == 3 and out["side_to_move"] == "white"
    # API traffic reaches the idle watchdog through the heartbeat file runner can write
    stat = pod.exec("stat", "-c", "%U", "/run/appliance/heartbeat/inference")
    assert stat.stdout.strip() == "runner"
    status, out = http(pod.url(8000, "/infer"), body)
    assert status == 401 and out == {"error": "missing bearer token"}
    status, out = http(pod.url(8000, "/infer"), body, {"Authorization": "Bearer wrong"})
    assert status == 401 and out == {"error": "invalid bearer token"}


def test_jupyter_api_token_and_kernel_executes(pod: Pod) -> None:
    import websocket  # jupyter_server's own dependency

    auth = {"Authorization": f"token {JUPYTER_TOKEN}"}
    wait_until(lambda: http(pod.url(8888, "/api/status"), headers=auth)[0] == 200, 60, 0.5)
    assert http(pod.url(8888, "/api/status"))[0] == 403
    assert http(pod.url(8888, "/api/status"), headers={"Authorization": "token no"})[0] == 403
    status, kernel = http(pod.url(8888, "/api/kernels"), {"name": "python3"}, auth, "POST")
    assert status == 201, kernel
    ws = websocket.create_connection(
        f"ws://127.0.0.1:{pod.ports[8888]}/api/kernels/{kernel['id']}/channels",
        header=[f"Authorization: token {JUPYTER_TOKEN}"], timeout=60)
    try:
        msg_id = uuid.uuid4().hex
        ws.send(json.dumps({
            "header": {"msg_id": msg_id, "username": "t", "session": uuid.uuid4().hex,
                       "msg_type": "execute_request", "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell",
            "content": {"code": "print(6 * 7)", "silent": False, "store_history": False,
                        "user_expressions": {}, "allow_stdin": False}}))
        deadline = time.monotonic() + 60
        text = ""
        while time.monotonic() < deadline and "42" not in text:
            msg = json.loads(ws.recv())
            if (msg.get("parent_header", {}).get("msg_id") == msg_id
                    and msg["msg_type"] == "stream"):
                text += msg["content"]["text"]
        assert text.strip() == "42"
    finally:
        ws.close()
        http(pod.url(8888, f"/api/kernels/{kernel['id']}"), None, auth, "DELETE")


def test_killing_a_program_keeps_the_ssh_session(pod: Pod) -> None:
    session = subprocess.Popen([*pod.ssh_argv(), "-T", "cat"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True, bufsize=1)
    try:
        assert session.stdin is not None and session.stdout is not None
        session.stdin.write("before\n")
        assert session.stdout.readline() == "before\n"
        pod.exec("supervisorctl", "signal", "KILL", "inference", "jupyter")
        wait_until(lambda: pod.supervisor_status().get("jupyter") == "RUNNING"
                   and pod.supervisor_status().get("inference") == "RUNNING", 60, 0.5)
        session.stdin.write("after\n")
        assert session.stdout.readline() == "after\n"
        assert session.poll() is None
    finally:
        session.kill()
        session.wait()


@pytest.mark.parametrize(("env", "absent", "present"), [
    ({"START_JUPYTER": "0"}, "jupyter", "inference"),
    ({"START_INFERENCE_API": "0"}, "inference", "jupyter"),
])
def test_env_toggles_leave_programs_out(containers: TrackedContainers, env: dict[str, str],
                                        absent: str, present: str) -> None:
    pod = containers.run(env)
    wait_until(lambda: pod.supervisor_status().get(present) == "RUNNING", 60, 0.5)
    states = pod.supervisor_status()
    assert absent not in states and states["sshd"] == "RUNNING", states


def test_bad_env_value_stops_the_container_naming_it(containers: TrackedContainers) -> None:
    pod = containers.run({"START_JUPYTER": "maybe"}, wait=False)
    wait_until(lambda: not pod.running(), 60, 0.5)
    logs = pod.logs()
    assert "START_JUPYTER" in logs and "maybe" in logs, logs[-2000:]
    code = subprocess.run(pod.engine.cmd("inspect", "-f", "{{.State.ExitCode}}", pod.name),
                          capture_output=True, text=True, check=True).stdout.strip()
    assert code == "2"


def test_restart_keeps_host_key_and_skips_requirements(containers: TrackedContainers,
                                                       engine: Engine, image: str) -> None:
    volume = f"chessbot-test-{uuid.uuid4().hex[:8]}-ws"
    containers.made.append(("", volume))
    # A checkout on the volume with a requirements.txt the image already satisfies.
    subprocess.run(engine.cmd("run", "--rm", *engine.run_flags, "-v", f"{volume}:/workspace",
                              "--entrypoint", "/bin/sh", image, "-c",
                              "mkdir -p /workspace/repo && echo chess > "
                              "/workspace/repo/requirements.txt"), check=True,
                   capture_output=True)
    pod = containers.run({"REPO_DIR": "/workspace/repo"}, volume=volume)

    def host_key() -> str:
        return subprocess.run(["ssh-keyscan", "-t", "ed25519", "-p", str(pod.ports[22]),
                               "127.0.0.1"], capture_output=True, text=True,
                              check=False).stdout.split()[-1]

    def requirement_rows() -> list[dict]:
        log = pod.exec("cat", "/workspace/repo/artifacts/timings/runpod_phase_times.jsonl")
        rows = [json.loads(line) for line in log.stdout.splitlines()]
        return [r for r in rows if r["phase"] == "requirements_sync"]

    before = host_key()
    first = requirement_rows()
    assert len(first) == 1 and first[0].get("exit_code") == 0, first
    subprocess.run(engine.cmd("restart", "-t", "5", pod.name), check=True, capture_output=True)
    pod.wait_ssh()
    pod.wait_all_running()
    assert host_key() == before
    rows = requirement_rows()
    assert len(rows) == 2 and "exit_code" not in rows[1], rows
    bootlog = pod.exec("cat", "/workspace/.appliance/logs/bootstrap.log").stdout
    assert re.search(r"requirements_sync: skipped: requirements.txt unchanged", bootlog) or \
        "requirements.txt unchanged" in bootlog, bootlog[-2000:]


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[str]:
    exe = shutil.which("docker-registry")
    if exe is None:
        if os.environ.get("CI") == "true":
            pytest.fail("docker-registry missing under CI=true (apt-get install docker-registry)")
        pytest.skip("docker-registry not installed")
    port = free_port()
    config = tmp_path / "registry.yml"
    config.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: "
                      f"{tmp_path / 'data'}\nhttp:\n  addr: 127.0.0.1:{port}\n")
    proc = subprocess.Popen([exe, "serve", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: http(f"http://127.0.0.1:{port}/v2/")[0] == 200, 30, 0.2)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def test_make_push_to_loopback_registry_and_pull_back(engine: Engine, image: str,
                                                      registry: str) -> None:
    repo = f"{registry}/Chess-Test/Appliance"
    lower = repo.lower()
    tag = "t" + uuid.uuid4().hex[:8]
    refs = [f"{lower}:{tag}", f"{lower}:latest"]
    env = {**os.environ, "IMAGE_REPO": repo, "IMAGE_TAG": tag}
    image_id = subprocess.run(engine.cmd("image", "inspect", "-f", "{{.Id}}", image),
                              capture_output=True, text=True, check=True).stdout.strip()
    try:
        dry = subprocess.run(["make", "-s", "push", "DRY_RUN=1"], cwd=ROOT, env=env,
                             capture_output=True, text=True, check=False)
        assert dry.returncode == 0, dry.stderr
        assert [line.split()[-1] for line in dry.stdout.splitlines()
                if line.startswith("would run:")] == refs
        for ref in refs:
            subprocess.run(engine.cmd("tag", image, ref), check=True)
        extra = ["--tls-verify", "false"] if engine.name == "podman" else []
        pushed = subprocess.run([sys.executable, "-m", "host_tools.image", "push", *extra],
                                cwd=ROOT, env=env, capture_output=True, text=True,
                                check=False)
        assert pushed.returncode == 0, pushed.stderr[-2000:]
        status, tags_body = http(f"http://{registry}/v2/chess-test/appliance/tags/list")
        assert status == 200 and sorted(tags_body["tags"]) == sorted([tag, "latest"])
        subprocess.run(engine.cmd("rmi", *refs), check=True, capture_output=True)
        pull = engine.cmd("pull", *push_flags(engine.name, tls_verify=False), refs[0])
        subprocess.run(pull, check=True, capture_output=True)
        pulled = subprocess.run(engine.cmd("image", "inspect", "-f", "{{.Id}}", refs[0]),
                                capture_output=True, text=True, check=True).stdout.strip()
        assert pulled == image_id
    finally:
        subprocess.run(engine.cmd("rmi", *refs), capture_output=True, check=False)
