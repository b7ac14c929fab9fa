"""provision.py logs, cp and ssh-config against localpod in records-only mode, with fake runners for
ssh/rsync/scp (Env.run, Env.remote, Env.which): exact argv with the pinned host key, the REST ->
SSH fallback of logs, the rsync -> scp fallback of cp, and the ssh-config file's content,
idempotence, removal of gone pods and foreign lines left alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from host_tools.emulators.localpod import Fault, LocalPodServer
from host_tools.podfiles import Side, all_programs_command, parse_side
from host_tools.provision import main
from tests.utils.localpod import CANARY, CliEnv, make_cli_env

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def kh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    known = tmp_path / "kh" / "known_hosts"
    monkeypatch.setenv("RUNPOD_SSH_KNOWN_HOSTS_FILE", str(known))
    for name in ("RUNPOD_SSH_IDENTITY_FILE", "RUNPOD_SSH_HOST_KEY_CHECKING"):
        monkeypatch.delenv(name, raising=False)
    return known


def run(args: list[str], rsync_here: bool = True, rsync_in_pod: bool = True,
        copy_code: int = 0) -> tuple[int, CliEnv, list[list[str]]]:
    cli = make_cli_env()
    probes: list[list[str]] = []

    def remote(argv: list[str], stdin: Any, stdout: Any) -> int:
        probes.append(argv)
        return 0 if rsync_in_pod else 1

    cli.env.remote = remote
    cli.env.which = lambda name: "/usr/bin/rsync" if name == "rsync" and rsync_here else None
    cli.env.run = lambda argv: cli.ran.append(list(argv)) or copy_code  # type: ignore[func-returns-value]
    return main(args, cli.env), cli, probes


def running_pod(server: LocalPodServer, name: str = "t1") -> str:
    code, cli, _ = run(["provision", "--json", "--template-name", "chessbot-appliance",
                        "--gpu-type-id", "NVIDIA RTX A4000", "--name", name])
    assert code == 0, cli.err
    pod_id = str(json.loads(cli.out)["id"])
    while server.account.pods[pod_id].status != "RUNNING":
        run(["status", pod_id])
    return pod_id


def pinned(kh: Path, pod_id: str, port: int) -> list[str]:
    return ["-o", "StrictHostKeyChecking=accept-new", "-o", f"UserKnownHostsFile={kh}",
            "-o", f"HostKeyAlias=runpod-{pod_id}"]


# -- logs -----------------------------------------------------------------------------------------


def test_logs_reads_the_container_output_through_rest(localpod: LocalPodServer, kh: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    pod_id = running_pod(localpod)
    tails: list[int] = []

    def logs(pod: Any, tail: int) -> list[str]:
        tails.append(tail)
        return ["bootstrap: prepare_dirs ok", "supervisord started with pid 7"]

    monkeypatch.setattr(localpod.account.backend, "logs", logs)
    code, cli, _ = run(["logs", pod_id, "--tail", "50"])
    assert (code, cli.out) == (0, "bootstrap: prepare_dirs ok\nsupervisord started with pid 7\n")
    assert cli.err == (f"container output of pod {pod_id} (REST v2, last 50 lines; a program's "
                       "own log: `provision.py logs POD PROGRAM`)\n")
    assert tails == [50] and cli.ran == []
    assert localpod.account.requests[-1]["target"] == (
        f"/v2/pods/{pod_id}/logs?source=container&tail=50")
    assert CANARY not in cli.out + cli.err


def test_logs_falls_back_to_ssh_when_rest_has_no_logs_route(localpod: LocalPodServer,
                                                            kh: Path) -> None:
    pod_id = running_pod(localpod)
    port = localpod.account.pods[pod_id].mappings[22]
    localpod.account.faults.append(Fault(r"^GET /v2/pods/[^/]+/logs$", status=404,
                                         message="Not Found"))
    code, cli, _ = run(["logs", pod_id])
    assert code == 0
    assert cli.err == (f"REST v2 pod logs unavailable (pod logs {pod_id} (GET /v2/pods/{pod_id}/"
                       "logs): Not Found); reading the programs' logs over SSH\n")
    assert cli.ran == [["ssh", "-p", str(port), *pinned(kh, pod_id, port),
                        "runner@127.0.0.1", all_programs_command(False)]]
    assert all_programs_command(False) == (
        "for p in $(supervisorctl avail | awk '{print $1}'); do supervisorctl tail \"$p\" | "
        "sed \"s/^/$p | /\"; done")


def test_logs_of_a_program_and_following_go_over_ssh(localpod: LocalPodServer, kh: Path) -> None:
    pod_id = running_pod(localpod)
    port = localpod.account.pods[pod_id].mappings[22]
    before = len(localpod.account.requests)
    code, cli, _ = run(["logs", pod_id, "inference", "-f"])
    assert code == 0
    assert cli.ran == [["ssh", "-p", str(port), *pinned(kh, pod_id, port), "runner@127.0.0.1",
                        "supervisorctl tail -f inference"]]
    assert [r["target"] for r in localpod.account.requests[before:]] == [f"/v2/pods/{pod_id}"]
    code, cli, _ = run(["logs", pod_id, "-f"])
    assert cli.ran[0][-1] == all_programs_command(True) == (
        "for p in $(supervisorctl avail | awk '{print $1}'); do supervisorctl tail -f \"$p\" | "
        "sed -u \"s/^/$p | /\" & done; wait")
    code, cli, _ = run(["logs", pod_id, "x;reboot"])
    assert (code, cli.err, cli.ran) == (2, "error: PROGRAM 'x;reboot': a supervisord program "
                                        "name (letters, digits, '.', '_', '-')\n", [])


def test_logs_of_a_stopped_pod_over_ssh_says_why(localpod: LocalPodServer, kh: Path) -> None:
    pod_id = running_pod(localpod)
    run(["stop", pod_id])
    code, cli, _ = run(["logs", pod_id, "sshd"])
    assert (code, cli.err) == (1, f"error: pod {pod_id} has no SSH endpoint (status EXITED); it "
                               "needs 22/tcp in its ports and must be RUNNING: `provision.py "
                               f"status {pod_id}`\n")


# -- cp -------------------------------------------------------------------------------------------


def test_sides_of_a_copy() -> None:
    assert parse_side("abc123:/workspace/x") == Side("/workspace/x", "abc123")
    assert parse_side("abc123:") == Side(".", "abc123")
    assert parse_side("./a:b") == Side("./a:b")
    assert parse_side("/tmp/a:b") == Side("/tmp/a:b")
    assert parse_side("local.txt") == Side("local.txt")


def test_cp_upload_with_rsync_and_the_pinned_key(localpod: LocalPodServer, kh: Path,
                                                 tmp_path: Path) -> None:
    pod_id = running_pod(localpod)
    port = localpod.account.pods[pod_id].mappings[22]
    src = tmp_path / "data"
    src.mkdir()
    code, cli, probes = run(["cp", str(src), f"{pod_id}:/workspace/data"])
    assert (code, cli.err) == (0, "")
    shell = (f"ssh -p {port} -o StrictHostKeyChecking=accept-new -o UserKnownHostsFile={kh} "
             f"-o HostKeyAlias=runpod-{pod_id}")
    assert cli.ran == [["rsync", "-a", "--info=progress2", "-e", shell, str(src),
                        "runner@127.0.0.1:/workspace/data"]]
    assert probes == [["ssh", "-p", str(port), *pinned(kh, pod_id, port), "-o", "BatchMode=yes",
                       "-o", "ConnectTimeout=15", "-o", "ServerAliveInterval=30",
                       "-o", "LogLevel=ERROR", "runner@127.0.0.1", "command -v rsync"]]
    assert kh.parent.is_dir()


def test_cp_download_falls_back_to_scp_without_rsync_in_the_pod(
        localpod: LocalPodServer, kh: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    identity = tmp_path / "id key"
    monkeypatch.setenv("RUNPOD_SSH_IDENTITY_FILE", str(identity))
    pod_id = running_pod(localpod)
    port = localpod.account.pods[pod_id].mappings[22]
    dest = tmp_path / "out"
    code, cli, probes = run(["cp", f"{pod_id}:/workspace/cycle/r1", str(dest)],
                            rsync_in_pod=False)
    assert (code, cli.err) == (0, f"rsync is not in pod {pod_id}: copying with scp\n")
    assert cli.ran == [["scp", "-r", "-P", str(port), *pinned(kh, pod_id, port),
                        "-i", str(identity), "-o", "IdentitiesOnly=yes",
                        "runner@127.0.0.1:/workspace/cycle/r1", str(dest)]]
    assert len(probes) == 1


def test_cp_uses_scp_when_rsync_is_not_installed_here(localpod: LocalPodServer, kh: Path,
                                                      tmp_path: Path) -> None:
    pod_id = running_pod(localpod)
    port = localpod.account.pods[pod_id].mappings[22]
    code, cli, probes = run(["cp", f"{pod_id}:x", str(tmp_path)], rsync_here=False)
    assert (code, cli.err, probes) == (0, "rsync is not installed here: copying with scp\n", [])
    assert cli.ran == [["scp", "-r", "-P", str(port), *pinned(kh, pod_id, port),
                        "runner@127.0.0.1:x", str(tmp_path)]]


@pytest.mark.parametrize(("args", "message"), [
    (["podA:/x", "podB:/y"], "cp copies between this machine and one pod: copy to this machine "
     "first, then to the other pod"),
    (["./a", "./b"], "cp needs POD:PATH on one side (e.g. `provision.py cp POD:/workspace/cycle/"
     "r1/artifacts ./r1`)"),
    (["./no-such-file", "pod1:/x"], "./no-such-file: no such file or directory here"),
])
def test_cp_usage_errors(localpod: LocalPodServer, kh: Path, args: list[str],
                         message: str) -> None:
    code, cli, _ = run(["cp", *args])
    assert (code, cli.err, cli.ran) == (2, f"error: {message}\n", [])
    assert localpod.account.requests == []


def test_cp_failure_names_the_tool_and_its_exit(localpod: LocalPodServer, kh: Path) -> None:
    pod_id = running_pod(localpod)
    code, cli, _ = run(["cp", f"{pod_id}:/nope", "."], copy_code=23)
    assert (code, cli.err) == (1, f"error: rsync exited 23 copying {pod_id}:/nope to .; its "
                               "message is above\n")


# -- ssh-config -----------------------------------------------------------------------------------


def block(kh: Path, pod_id: str, port: int, extra: list[str] | None = None) -> str:
    return "\n".join([
        f"# BEGIN provision.py ssh-config {pod_id}", f"Host chessbot-{pod_id}",
        "    HostName 127.0.0.1", f"    Port {port}", "    User runner", *(extra or []),
        f"    HostKeyAlias runpod-{pod_id}", f"    UserKnownHostsFile {kh.resolve()}",
        "    StrictHostKeyChecking accept-new", f"# END provision.py ssh-config {pod_id}"])


def test_ssh_config_writes_entries_idempotently_and_removes_gone_pods(
        localpod: LocalPodServer, kh: Path, tmp_path: Path) -> None:
    first, second = sorted([running_pod(localpod, "a"), running_pod(localpod, "b")])
    ports = {p: localpod.account.pods[p].mappings[22] for p in (first, second)}
    config = tmp_path / "ssh" / "chessbot"
    config.parent.mkdir()
    foreign = "# my own notes\nHost myserver\n    HostName 10.0.0.1\n"
    config.write_text(foreign)
    code, cli, _ = run(["ssh-config", "--file", str(config)])
    assert code == 0, cli.err
    expected = (foreign + "\n" + block(kh, first, ports[first]) + "\n\n"
                + block(kh, second, ports[second]) + "\n")
    assert config.read_text() == expected
    assert cli.out == (f"{config}: ssh chessbot-{first}, ssh chessbot-{second}\n"
                       "once, at the top of ~/.ssh/config (before any Host line):\n"
                       f"  Include {config}\n")
    # Again: the same file.
    code, cli, _ = run(["ssh-config", "--file", str(config)])
    assert config.read_text() == expected
    # A pod that is gone loses its entry; a stopped one keeps its entry; foreign lines stay.
    run(["terminate", "--yes", second])
    code, cli, _ = run(["ssh-config", "--file", str(config), "--json"])
    assert config.read_text() == foreign + "\n" + block(kh, first, ports[first]) + "\n"
    assert json.loads(cli.out) == {"file": str(config), "written": [f"chessbot-{first}"],
                                   "removed": [f"chessbot-{second}"],
                                   "include": f"Include {config}"}
    run(["stop", "--yes", first])
    code, cli, _ = run(["ssh-config", "--file", str(config)])
    assert config.read_text() == foreign + "\n" + block(kh, first, ports[first]) + "\n"
    assert cli.out.splitlines()[0] == f"{config}: no running pod with SSH"


def test_ssh_config_for_one_pod_with_an_identity(localpod: LocalPodServer, kh: Path,
                                                 tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    identity = tmp_path / "keys" / "id_ed25519"
    monkeypatch.setenv("RUNPOD_SSH_IDENTITY_FILE", str(identity))
    one, other = running_pod(localpod, "a"), running_pod(localpod, "b")
    config = tmp_path / "chessbot"
    code, cli, _ = run(["ssh-config", one, "--file", str(config)])
    assert code == 0, cli.err
    port = localpod.account.pods[one].mappings[22]
    assert config.read_text() == block(kh, one, port, [f"    IdentityFile {identity}",
                                                       "    IdentitiesOnly yes"]) + "\n"
    assert other not in config.read_text()


def test_ssh_config_refuses_a_block_without_its_end(localpod: LocalPodServer, kh: Path,
                                                    tmp_path: Path) -> None:
    config = tmp_path / "chessbot"
    text = "# BEGIN provision.py ssh-config abc\nHost chessbot-abc\n"
    config.write_text(text)
    code, cli, _ = run(["ssh-config", "--file", str(config)])
    assert (code, cli.err) == (1, "error: '# BEGIN provision.py ssh-config abc' has no matching "
                               "'# END provision.py ssh-config' line: fix the file by hand (or "
                               "remove that block)\n")
    assert config.read_text() == text
