"""host_tools.localup (`make up`/`down`/`smoke`) without a container engine: ports, keys,
tokens, the env file, the local pod's engine commands, up/down, the smoke run and its command
line. Every process goes through tests/unit/process_fakes.py.
"""

from __future__ import annotations

import http.server
import json
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from host_tools import localup
from host_tools.engine import Engine
from host_tools.localup import LocalPod, SshKey, UpError
from host_tools.settings import SettingsError
from tests.unit.process_fakes import (
    DOCKER,
    PODMAN,
    PODMAN_FLAGS,
    FakeRun,
    Response,
    engine_spy,
    file_mode,
    logged,
    unexpected,
    which_finds,
)

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("no_real_processes")]


# -- ports and polling ------------------------------------------------------------------------
def test_port_free_and_pick_port() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert localup.port_free(port) is False
        other = localup.pick_port(port)
        assert other != port and 0 < other < 65536
    free = localup.free_port()
    assert 0 < free < 65536
    assert localup.port_free(free) is True
    assert localup.pick_port(free) == free


def test_wait_for() -> None:
    assert 0 <= localup.wait_for(lambda: True, 5, "x") < 1
    answers = iter([False, False, True])
    assert localup.wait_for(lambda: next(answers), 5, "x", interval=0) >= 0
    with pytest.raises(UpError) as exc:
        localup.wait_for(lambda: False, 0.05, "the inference API", interval=0.01)
    assert str(exc.value) == "the inference API not ready within 0 s"


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        ok = self.path == "/healthz" and self.headers.get("Authorization") in (None, "Bearer t")
        self.send_response(200 if ok else 401)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def health_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_http_status(health_server: int) -> None:
    base = f"http://127.0.0.1:{health_server}"
    assert localup.http_status(f"{base}/healthz") == 200
    assert localup.http_status(f"{base}/healthz", {"Authorization": "Bearer t"}) == 200
    assert localup.http_status(f"{base}/healthz", {"Authorization": "Bearer x"}) == 401
    assert localup.http_status(f"{base}/other") == 401
    assert localup.http_status(f"http://127.0.0.1:{localup.free_port()}/healthz") == 0


# -- the user's side: keys, tokens, env file ----------------------------------------------------
def _keypair(home: Path, name: str, public: str) -> None:
    (home / ".ssh").mkdir(parents=True, exist_ok=True)
    (home / ".ssh" / name).write_text("PRIVATE\n")
    (home / ".ssh" / f"{name}.pub").write_text(f"{public}\n")


def test_ssh_key_uses_the_users_own_key(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _keypair(home, "id_rsa", "ssh-rsa AAAArsa me@host")
    _keypair(home, "id_ecdsa", "ecdsa-sha2-nistp256 AAAAec me@host")
    (home / ".ssh" / "id_ed25519.pub").write_text("ssh-ed25519 AAAAorphan\n")  # no private
    key = localup.ssh_key(tmp_path / "cfg", home)
    assert key == SshKey(home / ".ssh" / "id_ecdsa", "ecdsa-sha2-nistp256 AAAAec me@host")
    _keypair(home, "id_ed25519", "ssh-ed25519 AAAAed me@host")
    assert localup.ssh_key(tmp_path / "cfg", home).private == home / ".ssh" / "id_ed25519"
    assert not (tmp_path / "cfg").exists()


def test_ssh_key_created_once_in_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        real_processes: None,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(localup, "ROOT", tmp_path)
    config = tmp_path / "config" / "local-pod"
    home = tmp_path / "home"
    home.mkdir()
    key = localup.ssh_key(config, home)
    assert key.private == config / "id_ed25519"
    assert key.public_text.startswith("ssh-ed25519 ")
    assert key.public_text.endswith(" chessbot-local-pod")
    assert file_mode(key.private) == 0o600
    assert file_mode(config) == 0o700
    assert capsys.readouterr().err == (f"up: no SSH key in {home / '.ssh'}: created "
                                       "config/local-pod/id_ed25519\n")
    monkeypatch.setattr(subprocess, "run", unexpected)  # reused: ssh-keygen not run again
    assert localup.ssh_key(config, home) == key
    assert capsys.readouterr().err == ""


def test_ssh_key_without_ssh_keygen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    which_finds(monkeypatch, set())
    with pytest.raises(UpError) as exc:
        localup.ssh_key(tmp_path / "cfg", tmp_path / "home")
    assert str(exc.value) == ("no SSH key in ~/.ssh and no ssh-keygen to make one: install "
                              "openssh-client")


def test_ssh_key_in_a_config_outside_the_repo(tmp_path: Path, real_processes: None) -> None:
    (tmp_path / "home").mkdir()
    key = localup.ssh_key(tmp_path / "cfg", tmp_path / "home")
    assert key.private == tmp_path / "cfg" / "id_ed25519"


def test_token_generated_once_and_private(tmp_path: Path) -> None:
    config = tmp_path / "cfg"
    first = localup.token(config, "JUPYTER_TOKEN")
    path = config / "secrets" / "JUPYTER_TOKEN"
    assert len(first) == 32 and set(first) <= set(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert path.read_text() == first
    assert file_mode(path) == 0o600 and file_mode(path.parent) == 0o700
    assert localup.token(config, "JUPYTER_TOKEN") == first
    other = localup.token(config, "INFERENCE_API_TOKEN")
    assert other != first and len(other) == 32
    path.write_text("  kept-by-hand \n")
    assert localup.token(config, "JUPYTER_TOKEN") == "kept-by-hand"
    path.write_text("\n")  # empty: a new one replaces it
    fresh = localup.token(config, "JUPYTER_TOKEN")
    assert len(fresh) == 32 and path.read_text() == fresh


def test_env_file_contents_andfile_mode(tmp_path: Path) -> None:
    config = tmp_path / "cfg"
    config.mkdir(mode=0o755)
    stale = config / "pod.env"
    stale.write_text("OLD=1\n")
    stale.chmod(0o644)
    path = localup.env_file(config, {"PUBLIC_KEY": "ssh-ed25519 AAAA me", "EMPTY": "",
                                     "TOKEN": "a=b c"})
    assert path == stale
    assert path.read_text() == "PUBLIC_KEY=ssh-ed25519 AAAA me\nEMPTY=\nTOKEN=a=b c\n"
    assert file_mode(path) == 0o600 and file_mode(config) == 0o700
    with pytest.raises(UpError) as exc:
        localup.env_file(tmp_path / "other", {"OK": "1", "BAD": "two\nlines"})
    assert str(exc.value) == "BAD holds a newline; an env file cannot carry it"
    assert not (tmp_path / "other").exists()


def test_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "cfg"
    key = SshKey(Path("/keys/id_ed25519"), "ssh-ed25519 AAAA")
    lines = localup.summary({"ssh": 2222, "jupyter": 8890, "api": 8001}, key, config)
    jupyter = (config / "secrets" / "JUPYTER_TOKEN").read_text()
    rel = "cfg/secrets/INFERENCE_API_TOKEN"
    assert lines == [
        "local pod is up:",
        "  SSH      ssh -i /keys/id_ed25519 -p 2222 runner@127.0.0.1",
        f"  Jupyter  http://127.0.0.1:8890/lab?token={jupyter}",
        f"  API      http://127.0.0.1:8001  (token in {rel})",
        "  try      curl -s http://127.0.0.1:8001/infer "
        f"-H \"Authorization: Bearer $(cat {rel})\" -d '{{\"moves\": [\"e2e4\", \"e7e5\"], "
        "\"topk\": 3}'",
        "  stop     make down   (the /workspace volume is kept)",
    ]
    assert localup.summary({"ssh": 1, "jupyter": 2, "api": 3}, key, config)[2] == (
        f"  Jupyter  http://127.0.0.1:2/lab?token={jupyter}")  # the same token next time


# -- the engine side --------------------------------------------------------------------------
def test_run_wraps_failures(fake_run: FakeRun) -> None:
    fake_run.respond = lambda argv: (0, "true\n", "")
    proc = localup.run_command(["docker", "inspect", "-f", "x", "name"], timeout=7)
    assert proc.stdout == "true\n"
    assert fake_run.kwargs[0] == {"capture_output": True, "text": True, "timeout": 7,
                                  "check": False}
    fake_run.respond = lambda argv: (3, "", "x" * 700 + "boom\n")
    with pytest.raises(UpError) as exc:
        localup.run_command(["docker", "inspect", "-f", "x", "name"])
    assert str(exc.value) == "docker inspect -f ... failed (3): " + "x" * 596 + "boom"
    assert localup.run_command(["docker", "ps"], check=False).returncode == 3


def test_running_and_published(fake_run: FakeRun) -> None:
    answers = {"true\n": 0, "false\n": 0, "": 1}
    for out, rc in answers.items():
        fake_run.respond = lambda argv, out=out, rc=rc: (rc, out, "")  # type: ignore[misc]
        assert localup.running(DOCKER, "pod") is (out == "true\n")
    assert fake_run.calls[0] == ["docker", "inspect", "-f", "{{.State.Running}}", "pod"]
    fake_run.respond = lambda argv: (0, "127.0.0.1:4022\n[::1]:4022\n", "")
    assert localup.published(PODMAN, "pod", 22) == 4022
    assert fake_run.calls[-1] == ["podman", "port", "pod", "22/tcp"]
    fake_run.respond = lambda argv: (1, "", "Error: no such container")
    with pytest.raises(UpError, match=r"^podman port pod \.\.\. failed \(1\): Error: no such"):
        localup.published(PODMAN, "pod", 22)


def test_ensure_image(monkeypatch: pytest.MonkeyPatch,
                     capsys: pytest.CaptureFixture[str]) -> None:
    exists: dict[str, bool] = {}
    builds: list[tuple[Engine, dict[str, Any]]] = []
    monkeypatch.setattr(localup, "image_exists", lambda engine, ref: exists.get(ref, False))
    monkeypatch.setattr(localup, "build", lambda engine, **kw: logged(builds, (engine, kw), []))
    monkeypatch.setenv("IMAGE_REPO", "ghcr.io/o/r")
    monkeypatch.setenv("IMAGE_TAG", "t")
    exists["ghcr.io/o/r:latest"] = True
    assert localup.ensure_image(DOCKER) == "ghcr.io/o/r:latest"
    assert builds == []
    monkeypatch.setenv("LOCAL_POD_IMAGE", "mine:2")
    assert localup.ensure_image(PODMAN) == "mine:2"
    assert builds == [(PODMAN, {"quiet": True})]
    assert capsys.readouterr().err == ("up: mine:2 not built yet: building it (first time: a few "
                                       "minutes)\n")


def test_local_pod_exec_passes_env_by_name(fake_run: FakeRun) -> None:
    pod = LocalPod(PODMAN)
    assert pod.volume == "chessbot-local-workspace"
    fake_run.respond = lambda argv: (0, "ok", "")
    assert pod.exec("ls", "-l", user="runner", env={"SECRET": "s3cr3t"}).stdout == "ok"
    assert fake_run.calls == [["podman", "exec", "-u", "runner", "-e", "SECRET",
                               "chessbot-local", "ls", "-l"]]
    assert fake_run.kwargs[0]["env"]["SECRET"] == "s3cr3t"
    assert fake_run.kwargs[0]["timeout"] == 600
    fake_run.respond = lambda argv: (1, "stdout tail", "")
    with pytest.raises(UpError) as exc:
        pod.exec("python", "-m", "appliance.training.preset", "--x")
    assert str(exc.value) == ("python -m appliance.training.preset in chessbot-local failed (1): "
                              "stdout tail")
    fake_run.respond = lambda argv: (1, "out", "err text\n")
    with pytest.raises(UpError, match=r"failed \(1\): err text$"):
        pod.exec("true")
    assert pod.exec("false", check=False).returncode == 1


def test_local_pod_probes_and_tiny_training(fake_run: FakeRun) -> None:
    pod = LocalPod(DOCKER, "p1")
    for rc, up in ((0, True), (1, True), (3, False), (126, False)):
        fake_run.respond = lambda argv, rc=rc: (rc, "", "")  # type: ignore[misc]
        assert pod.supervisor_up() is up
    assert fake_run.calls[0] == ["docker", "exec", "p1", "python", "-m", "appliance.runtime.status",
                                 "--json"]
    assert fake_run.kwargs[0]["timeout"] == 30
    fake_run.respond = lambda argv: (0, "", "")
    assert pod.has_model() is True
    assert fake_run.calls[-1] == ["docker", "exec", "p1", "test", "-f",
                                  "/workspace/chess-bot/artifacts/local-up/model_best.pt"]
    fake_run.respond = lambda argv: (1, "", "")
    assert pod.has_model() is False
    fake_run.calls.clear()
    fake_run.kwargs.clear()
    fake_run.respond = lambda argv: (1 if "supervisorctl" in argv else 0, "", "")
    pod.train_tiny()  # a failing restart is tolerated
    names = [a for k, v in localup.TINY_TRAIN_ENV.items() for a in ("-e", k)]
    assert fake_run.calls == [
        ["docker", "exec", "-u", "runner", *names, "p1", "python", "-m",
         "appliance.training.preset"],
        ["docker", "exec", "p1", "supervisorctl", "restart", "inference"]]
    assert fake_run.kwargs[0]["timeout"] == 900 and fake_run.kwargs[1]["timeout"] == 60
    assert fake_run.kwargs[0]["env"]["TRAIN_EPOCHS"] == "1"


def test_local_pod_start_keeps_secrets_out_of_argv(tmp_path: Path, fake_run: FakeRun,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(localup, "pick_port", lambda preferred: preferred + 1)
    fake_run.respond = lambda argv: (1 if argv[1:3] == ["volume", "inspect"] else 0, "", "")
    config = tmp_path / "cfg"
    key = SshKey(tmp_path / "id", "ssh-ed25519 AAAA me")
    pod = LocalPod(PODMAN, "pod1", config)
    ports = pod.start("img:latest", key)
    assert ports == {"ssh": 2223, "jupyter": 8889, "api": 8001}
    env = config / "pod.env"
    assert fake_run.calls == [
        ["podman", "rm", "-f", "pod1"],
        ["podman", "volume", "inspect", "pod1-workspace"],
        ["podman", "volume", "create", "pod1-workspace"],
        ["podman", "run", "-d", "--name", "pod1", "--hostname", "pod1",
         "-v", "pod1-workspace:/workspace", "--env-file", str(env), *PODMAN_FLAGS,
         "-p", "127.0.0.1:2223:22", "-p", "127.0.0.1:8889:8888", "-p", "127.0.0.1:8001:8000",
         "img:latest"]]
    jupyter = localup.token(config, "JUPYTER_TOKEN")
    api = localup.token(config, "INFERENCE_API_TOKEN")
    assert env.read_text().splitlines() == [
        "PUBLIC_KEY=ssh-ed25519 AAAA me", f"JUPYTER_TOKEN={jupyter}",
        f"INFERENCE_API_TOKEN={api}",
        "INFERENCE_MODEL_PATH=/workspace/chess-bot/artifacts/local-up/model_best.pt",
        "INFERENCE_MODEL_RESCAN_SECONDS=2"]
    assert file_mode(env) == 0o600
    argv_text = " ".join(" ".join(c) for c in fake_run.calls)
    assert jupyter not in argv_text and api not in argv_text
    # An existing volume is reused; a failing run is reported.
    fake_run.calls.clear()
    fake_run.respond = lambda argv: (125 if argv[1] == "run" else 0, "", "Error: port taken")
    with pytest.raises(UpError, match=r"^podman run -d \.\.\. failed \(125\): Error: port taken$"):
        pod.start("img:latest", key)
    assert [c[1:3] for c in fake_run.calls] == [["rm", "-f"], ["volume", "inspect"],
                                                ["run", "-d"]]
    assert localup.token(config, "JUPYTER_TOKEN") == jupyter  # tokens survive a restart


def test_local_pod_ports(fake_run: FakeRun) -> None:
    mapping = {"22/tcp": 4022, "8888/tcp": 4888, "8000/tcp": 4800}
    fake_run.respond = lambda argv: (0, f"127.0.0.1:{mapping[argv[3]]}\n", "")
    assert LocalPod(DOCKER).ports() == {"ssh": 4022, "jupyter": 4888, "api": 4800}


@pytest.fixture
def up_seams(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    state: dict[str, Any] = {"events": [], "urls": [], "running": False, "model": False,
                             "key": SshKey(tmp_path / "id", "ssh-ed25519 AAAA me"),
                             "ports": {"ssh": 2301, "jupyter": 2302, "api": 2303}}
    events = state["events"]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(localup, "ssh_key", lambda config: state["key"])
    monkeypatch.setattr(localup, "running", lambda engine, name: state["running"])
    monkeypatch.setattr(localup, "ensure_image",
                        lambda engine: logged(events, "ensure_image", "img:latest"))
    monkeypatch.setattr(LocalPod, "start", lambda self, image, key: logged(
        events, ("start", self.name, image, key), state["ports"]))
    monkeypatch.setattr(LocalPod, "ports", lambda self: logged(events, "ports", state["ports"]))
    monkeypatch.setattr(LocalPod, "supervisor_up", lambda self: True)
    monkeypatch.setattr(LocalPod, "has_model", lambda self: state["model"])
    monkeypatch.setattr(LocalPod, "train_tiny", lambda self: events.append("train"))
    monkeypatch.setattr(localup, "http_status",
                        lambda url, headers=None, timeout=3: logged(state["urls"], url, 200))
    return state


def test_up_starts_trains_and_prints_the_summary(up_seams: dict[str, Any], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "cfg"
    assert localup.up(PODMAN, config, "pod1") == up_seams["ports"]
    assert up_seams["events"] == ["ensure_image", ("start", "pod1", "img:latest",
                                                   up_seams["key"]), "train"]
    assert up_seams["urls"] == ["http://127.0.0.1:2303/healthz"]
    out, err = capsys.readouterr()
    assert out.splitlines() == localup.summary(up_seams["ports"], up_seams["key"], config)
    assert err == ("up: started pod1 from img:latest; waiting for supervisord\n"
                   "up: no model on the volume yet: training a tiny one on data/sample "
                   "(seconds)\n")


def test_up_when_already_running(up_seams: dict[str, Any], tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    up_seams["running"] = True
    up_seams["model"] = True
    assert localup.up(DOCKER, tmp_path / "cfg") == up_seams["ports"]
    assert up_seams["events"] == ["ports"]
    assert capsys.readouterr().err == "up: chessbot-local is already running\n"


def test_down(fake_run: FakeRun, capsys: pytest.CaptureFixture[str]) -> None:
    fake_run.respond = lambda argv: (1, "", "Error: no container with name or ID")
    assert localup.down(PODMAN) is False
    assert fake_run.calls == [["podman", "rm", "-f", "-t", "10", "chessbot-local"]]
    assert capsys.readouterr().err == "up: chessbot-local is not running\n"
    fake_run.respond = lambda argv: (0, "", "")  # podman rm -f of nothing: no output
    assert localup.down(PODMAN, "p2") is False
    assert capsys.readouterr().err == "up: p2 is not running\n"
    fake_run.respond = lambda argv: (0, "p2\n", "")
    assert localup.down(PODMAN, "p2") is True
    assert capsys.readouterr().err == ("up: p2 stopped; volume p2-workspace kept (podman volume "
                                       "rm p2-workspace deletes it)\n")


def test_down_with_docker(fake_run: FakeRun) -> None:
    known = {"rm": {"-f", "--force", "-v", "--volumes", "-l", "--link"},
             "stop": {"-t", "--time", "--timeout", "-s", "--signal"}}

    def docker_cli(argv: list[str]) -> Response:  # docker 28's option sets for rm and stop
        flags = {a for a in argv[2:] if a.startswith("-")}
        if not flags <= known.get(argv[1], flags):
            return 125, "", f"unknown shorthand flag: {sorted(flags)[0]!r}"
        return 0, f"{argv[-1]}\n", ""

    fake_run.respond = docker_cli
    assert localup.down(DOCKER) is True


# -- make smoke -------------------------------------------------------------------------------
def _sample(tmp_path: Path, train: int, val: int) -> Path:
    sample = tmp_path / "sample"
    sample.mkdir()
    for name, rows in (("train", train), ("val", val)):
        (sample / f"{name}.jsonl").write_text(
            "".join(json.dumps({"name": name, "i": i}) + "\n" for i in range(rows)))
    return sample


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_smoke_checks_settings_and_sample_first(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(localup, "ensure_image", unexpected)
    monkeypatch.setenv("RUN_ID", "r1")
    monkeypatch.setenv("SMOKE_BATCH_SIZE", "0")
    with pytest.raises(SettingsError, match=r"^bad environment: SMOKE_BATCH_SIZE='0': Input "
                       r"should be greater than 0 \(Batch size of `make smoke`\.\)$"):
        localup.smoke(DOCKER, tmp_path / "out", _sample(tmp_path, 3, 2))
    assert not (tmp_path / "out").exists()
    monkeypatch.delenv("SMOKE_BATCH_SIZE")
    monkeypatch.setenv("SMOKE_TRAIN_ROWS", "5")
    with pytest.raises(UpError) as exc:
        localup.smoke(DOCKER, tmp_path / "out", tmp_path / "sample")
    src = tmp_path / "sample" / "train.jsonl"
    assert str(exc.value) == f"SMOKE_TRAIN_ROWS=5: {src} has only 3"
    [rec] = _records(tmp_path / "out" / "r1" / "runpod_phase_times.jsonl")
    assert (rec["phase"], rec["status"], rec["source"], rec["run_id"]) == (
        "prepare_smoke_dataset", "error", "local_runpod_smoke", "r1")


@pytest.fixture
def smoke_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_run: FakeRun
              ) -> dict[str, Any]:
    state: dict[str, Any] = {"start_rc": 0, "copy_out": True}
    monkeypatch.setattr(localup, "ensure_image", lambda engine: "img:latest")
    monkeypatch.setenv("RUN_ID", "Smoke-T1")
    monkeypatch.setenv("SMOKE_TRAIN_ROWS", "4")
    monkeypatch.setenv("SMOKE_VAL_ROWS", "2")
    monkeypatch.setenv("SMOKE_EPOCHS", "3")

    def respond(argv: list[str]) -> Response:
        if argv[1] == "start":
            return state["start_rc"], "", ""
        if argv[1] == "cp" and argv[2].startswith("chessbot-smoke-"):
            if not state["copy_out"]:
                return 1, "", "no such file"
            fname = Path(argv[3]).name
            text = ('{"source":"runpod_entrypoint","phase":"bootstrap"}\n'
                    if fname == "timings.jsonl" else '{"step":1}\n')
            Path(argv[3]).write_text(text)
        return 0, "", ""

    fake_run.respond = respond
    return state


def test_smoke_runs_the_preset_and_merges_the_logs(
        smoke_env: dict[str, Any], fake_run: FakeRun, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    progress = tmp_path / "progress" / "deep" / "p.jsonl"
    monkeypatch.setenv("SMOKE_PROGRESS_JSONL_OUT", str(progress))
    sample = _sample(tmp_path, 10, 5)
    log_path = localup.smoke(PODMAN, tmp_path / "out", sample)
    out = tmp_path / "out" / "Smoke-T1"
    assert log_path == out / "runpod_phase_times.jsonl"
    dataset = out / "dataset"
    assert (dataset / "train.jsonl").read_text().splitlines() == (
        (sample / "train.jsonl").read_text().splitlines()[:4])
    assert len((dataset / "val.jsonl").read_text().splitlines()) == 2
    assert json.loads((dataset / "stats.json").read_text()) == {
        "dataset_format": "game_jsonl_runtime_splice_v1", "train_rows": 4, "val_rows": 2,
        "created_by": {"tool": "host_tools.localup smoke", "source": str(sample)}}
    name = "chessbot-smoke-smoke-t1"
    env_names = ["RUN_ID", "RUNPOD_PHASE_TIMING_LOG", "TRAIN_DATASET_DIR", "TRAIN_OUTPUT_DIR",
                 "TRAIN_EPOCHS", "TRAIN_BATCH_SIZE", "TRAIN_PROGRESS_JSONL_OUT", "START_SSHD",
                 "START_JUPYTER", "START_INFERENCE_API"]
    calls = fake_run.calls
    assert calls[0] == ["podman", "rm", "-f", "-v", name]
    assert calls[1] == ["podman", "create", "--name", name, *PODMAN_FLAGS,
                        *[a for k in env_names for a in ("-e", k)],
                        "--entrypoint", "/usr/bin/tini", "img:latest", "--", "/bin/sh", "-c",
                        "python -m appliance.runtime.bootstrap --no-exec && "
                        "exec python -m appliance.training.preset"]
    create_env = fake_run.kwargs[1]["env"]
    assert {k: create_env[k] for k in ("RUN_ID", "TRAIN_EPOCHS", "TRAIN_BATCH_SIZE",
                                       "TRAIN_DATASET_DIR", "START_SSHD")} == {
        "RUN_ID": "Smoke-T1", "TRAIN_EPOCHS": "3", "TRAIN_BATCH_SIZE": "16",
        "TRAIN_DATASET_DIR": "/tmp/smoke", "START_SSHD": "0"}
    assert fake_run.kwargs[1]["check"] is True
    assert calls[2] == ["podman", "cp", str(dataset), f"{name}:/tmp/smoke"]
    assert calls[3] == ["podman", "start", "-a", name]
    assert [c[:3] + [c[3].rsplit("/", 1)[1]] for c in calls[4:6]] == [
        ["podman", "cp", f"{name}:/tmp/smoke/timings.jsonl", "timings.jsonl"],
        ["podman", "cp", f"{name}:/tmp/smoke/progress.jsonl", "progress.jsonl"]]
    assert calls[6:] == [["podman", "rm", "-f", "-v", name]]
    assert progress.read_text() == '{"step":1}\n'
    records = _records(log_path)
    assert [(r["phase"], r.get("status")) for r in records] == [
        ("prepare_smoke_dataset", "ok"), ("prepare_timing_log_file", "ok"),
        ("bootstrap", None), ("docker_run_smoke_training", "ok")]
    assert records[2]["source"] == "runpod_entrypoint" and records[3]["exit_code"] == 0
    assert capsys.readouterr().out == f"smoke run Smoke-T1: exit 0; timing log {log_path}\n"


def test_smoke_failing_preset(smoke_env: dict[str, Any], fake_run: FakeRun,
                              tmp_path: Path) -> None:
    smoke_env["start_rc"] = 2
    smoke_env["copy_out"] = False
    with pytest.raises(UpError) as exc:
        localup.smoke(DOCKER, tmp_path / "out", _sample(tmp_path, 4, 2))
    log_path = tmp_path / "out" / "Smoke-T1" / "runpod_phase_times.jsonl"
    assert str(exc.value) == ("the training preset in the container failed (exit 2); see "
                              f"{log_path}")
    assert fake_run.calls[-1] == ["docker", "rm", "-f", "-v", "chessbot-smoke-smoke-t1"]
    last = _records(log_path)[-1]
    assert (last["phase"], last["status"], last["exit_code"]) == (
        "docker_run_smoke_training", "error", 2)
    assert len(_records(log_path)) == 3  # nothing copied out of the container


# -- localup main -----------------------------------------------------------------------------
def test_localup_main_engine_errors(monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CONTAINER_ENGINE", "lxc")
    assert localup.main(["down"]) == 1
    assert capsys.readouterr().err == (
        "down: error: bad environment: CONTAINER_ENGINE='lxc': Input should be 'docker' or "
        "'podman' (Container engine for image builds, the local pod and the container tests; "
        "default Docker when its daemon answers, else podman.)\n")
    for argv in (["--engine", "lxc", "up"], [], ["sideways"]):
        with pytest.raises(SystemExit) as exc:
            localup.main(argv)
        assert exc.value.code == 2


def test_localup_main_up_error(monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    detect = engine_spy(monkeypatch, localup, DOCKER)
    calls: list[tuple[Engine, str]] = []

    def up(engine: Engine, name: str) -> dict[str, int]:
        calls.append((engine, name))
        raise UpError("supervisord in the container not ready within 120 s")

    monkeypatch.setattr(localup, "up", up)
    assert localup.main(["--engine", "docker", "--name", "mine", "up"]) == 1
    assert (detect, calls) == ([("docker", True)], [(DOCKER, "mine")])
    assert capsys.readouterr().err == ("up: error: supervisord in the container not ready "
                                       "within 120 s\n")


def test_localup_main_down_and_smoke(monkeypatch: pytest.MonkeyPatch, fake_run: FakeRun,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    engine_spy(monkeypatch, localup, PODMAN)
    monkeypatch.setenv("LOCAL_POD_NAME", "from-env")
    fake_run.respond = lambda argv: (1, "", "no such container")
    assert localup.main(["down"]) == 0  # nothing to stop is not an error
    assert fake_run.calls == [["podman", "rm", "-f", "-t", "10", "from-env"]]
    assert capsys.readouterr().err == "up: from-env is not running\n"
    monkeypatch.setenv("SMOKE_EPOCHS", "abc")
    assert localup.main(["smoke"]) == 1
    assert capsys.readouterr().err == (
        "smoke: error: bad environment: SMOKE_EPOCHS='abc': Input should be a valid integer, "
        "unable to parse string as an integer (Epochs of the `make smoke` training.)\n")
    assert len(fake_run.calls) == 1
