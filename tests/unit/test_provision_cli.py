"""host_tools/provision.py against localpod in records-only mode: every command, every injected
fault, exact messages, and a canary API key that never shows in output, logs, URLs or argv.
"""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path

import pytest

from appliance.settings import is_secret_name
from host_tools.emulators.localpod import Fault, LocalPodServer
from host_tools.pods import MARKER_ENV
from host_tools.provision import main
from tests.utils.localpod import CANARY, CliEnv, make_cli_env

pytestmark = pytest.mark.timeout(60)


def run(args: list[str], **kw: object) -> tuple[int, CliEnv]:
    cli = make_cli_env(**kw)  # type: ignore[arg-type]
    return main(args, cli.env), cli


def assert_no_canary(cli: CliEnv, server: LocalPodServer | None = None) -> None:
    assert CANARY not in cli.out and CANARY not in cli.err
    assert all(CANARY not in " ".join(argv) for argv in cli.ran)
    if server is not None:
        assert all(CANARY not in r["target"] for r in server.account.requests)


def provision(server: LocalPodServer, *extra: str) -> dict:
    code, cli = run(["provision", "--json", "--template-name", "chessbot-appliance",
                     "--gpu-type-id", "NVIDIA RTX A4000", "--name", "t1", *extra])
    assert code == 0, cli.err
    assert_no_canary(cli, server)
    return json.loads(cli.out)


def test_gpu_search_ranks_cheapest_first_with_filters(localpod: LocalPodServer) -> None:
    code, cli = run(["gpu-search", "--cloud", "secure", "--min-memory", "24",
                     "--max-price", "1.0"])
    assert code == 0
    lines = cli.out.splitlines()
    assert lines[0].split() == ["#", "GPU", "TYPE", "ID", "MEMORY", "PRICE", "CLOUD",
                                "AVAILABILITY"]
    ids = [line.split("  ")[1].strip() for line in lines[1:]]
    # A40 0.40 < 3090 0.43 < 4090 0.69; A4000 too small, A100 too dear, H100 has no stock
    assert [i for i in ids if i] == ["NVIDIA A40", "NVIDIA GeForce RTX 3090",
                                     "NVIDIA GeForce RTX 4090"]
    code, cli = run(["gpu-search", "--json", "--include-unavailable", "--min-memory", "80"])
    assert [g["id"] for g in json.loads(cli.out)] == ["NVIDIA A100 80GB PCIe",
                                                       "NVIDIA H100 80GB HBM3"]
    assert_no_canary(cli, localpod)


def test_gpu_search_community_excludes_secure_only(localpod: LocalPodServer) -> None:
    code, cli = run(["gpu-search", "--json", "--cloud", "community", "--include-unavailable"])
    data = json.loads(cli.out)
    assert "NVIDIA A40" not in [g["id"] for g in data]
    assert data[0] == {**data[0], "id": "NVIDIA RTX A4000", "price": 0.17, "rank": 1}


def test_gpu_search_nothing_matches(localpod: LocalPodServer) -> None:
    code, cli = run(["gpu-search", "--max-price", "0.01"])
    assert (code, cli.out) == (0, "no GPU type matches these filters\n")


def test_template_list_with_name_filter(localpod: LocalPodServer) -> None:
    code, cli = run(["template-list", "--json", "--name", "CHESSBOT"])
    assert code == 0
    assert [t["name"] for t in json.loads(cli.out)] == ["chessbot-appliance",
                                                         "chessbot-appliance-dev"]


def test_provision_wait_prints_ssh_and_proxy_urls(localpod: LocalPodServer,
                                                  banner_port: int) -> None:
    localpod.account.backend.port_map[22] = banner_port  # type: ignore[attr-defined]
    code, cli = run(["provision", "--template-id", "chessbotappl1", "--gpu-type-id",
                     "NVIDIA RTX A4000", "--name", "w1", "--wait", "--poll-interval", "0.5"])
    assert code == 0, cli.err
    pod_id = localpod.account.list_pods("account")[0].id
    assert f"ssh: ssh -p {banner_port} runner@127.0.0.1" in cli.out
    assert f"http 8888: https://{pod_id}-8888.proxy.runpod.net" in cli.out
    assert f"http 8000: https://{pod_id}-8000.proxy.runpod.net" in cli.out
    assert f"{pod_id}: STARTING" in cli.err and f"{pod_id}: SSH answers" in cli.err
    assert cli.sleeps == [0.5]
    assert_no_canary(cli, localpod)


def test_provision_wait_times_out_with_billing_warning(localpod: LocalPodServer) -> None:
    code, cli = run(["provision", "--image", "img", "--gpu-type-id", "NVIDIA RTX A4000",
                     "--wait", "--wait-timeout", "2", "--poll-interval", "1"])
    pod_id = localpod.account.list_pods("account")[0].id
    assert code == 1
    assert cli.err.splitlines()[-1] == (
        f"error: pod {pod_id} was not ready after 2 s (RUNNING, waiting for sshd); it is still "
        f"billing: `provision.py stop {pod_id}` or terminate it")


def test_provision_env_is_the_flags_plus_a_fresh_marker(localpod: LocalPodServer,
                                                        tmp_path: Path) -> None:
    pod = provision(localpod)
    first = localpod.account.pods[pod["id"]].env
    assert list(first) == [MARKER_ENV]
    env_file = tmp_path / "pod.env"
    env_file.write_text("# comment\nA=1\n\nB=two=2\n")
    provision(localpod, "--env-file", str(env_file), "--env", "C=3")
    second = [p for p in localpod.account.pods.values() if p.id != pod["id"]][0].env
    assert second == {"A": "1", "B": "two=2", "C": "3", MARKER_ENV: second[MARKER_ENV]}
    # A random uuid4 per create request: not a secret, and it names nothing of this machine.
    for marker in (first[MARKER_ENV], second[MARKER_ENV]):
        assert uuid.UUID(marker).version == 4 and str(uuid.UUID(marker)) == marker
    assert first[MARKER_ENV] != second[MARKER_ENV]
    assert not is_secret_name(MARKER_ENV)
    code, cli = run(["provision", "--image", "i", "--gpu-type-id", "NVIDIA A40", "--env",
                     f"{MARKER_ENV}=mine"])
    assert (code, cli.err) == (2, f"error: --env {MARKER_ENV}: provision sets it, to a fresh "
                                  "value for each create request\n")
    assert len(localpod.account.pods) == 2


def test_provision_bad_env_and_ports_are_named(localpod: LocalPodServer, tmp_path: Path) -> None:
    code, cli = run(["provision", "--image", "i", "--gpu-type-id", "NVIDIA A40", "--env", "NOEQ"])
    assert (code, cli.err) == (2, "error: --env: 'NOEQ' is not KEY=VALUE with a variable name "
                                  "of letters, digits and _\n")
    bad = tmp_path / "bad.env"
    bad.write_text("OK=1\nBAD KEY=2\n")
    code, cli = run(["provision", "--image", "i", "--env-file", str(bad)])
    assert cli.err == (f"error: {bad}:2: 'BAD KEY' is not KEY=VALUE with a variable name of "
                       "letters, digits and _\n")
    code, cli = run(["provision", "--image", "i", "--ports", "22/udp"])
    assert (code, cli.err) == (2, "error: --ports: '22/udp' is not PORT/tcp or PORT/http\n")
    code, cli = run(["provision", "--gpu-type-id", "NVIDIA A40"])
    assert (code, cli.err) == (2, "error: give --template-id, --template-name or --image\n")
    assert localpod.account.pods == {}


def test_provision_template_name_ambiguous_lists_matches(localpod: LocalPodServer) -> None:
    code, cli = run(["provision", "--template-name", "chessbot", "--gpu-type-id", "NVIDIA A40"])
    assert (code, cli.err) == (1, "error: --template-name 'chessbot' matches 2 templates: "
                                  "chessbot-appliance (chessbotappl1), chessbot-appliance-dev "
                                  "(chessbotdev01); use a longer name or --template-id\n")
    code, cli = run(["provision", "--template-name", "nope", "--gpu-type-id", "NVIDIA A40"])
    assert cli.err == ("error: no template name contains 'nope'; `provision.py template-list` "
                       "shows them\n")


def test_provision_unknown_gpu_type_id(localpod: LocalPodServer) -> None:
    code, cli = run(["provision", "--image", "i", "--gpu-type-id", "NVIDIA GTX 9999"])
    assert (code, cli.err) == (2, "error: --gpu-type-id 'NVIDIA GTX 9999' is not in the GPU "
                                  "catalog; `provision.py gpu-search` lists the ids\n")


def test_provision_with_catalog_denied_warns_and_uses_the_id(localpod: LocalPodServer) -> None:
    localpod.account.catalog_denied = True
    pod = provision(localpod)
    assert pod["gpu"] == {"count": 1, "id": "NVIDIA RTX A4000"}
    code, cli = run(["provision", "--image", "i"])
    assert code == 1
    assert "this key may not read the GPU catalog: pass --gpu-type-id" in cli.err


def test_provision_cheapest_match_and_next_candidate_on_no_capacity(
        localpod: LocalPodServer) -> None:
    localpod.account.faults.append(Fault(r"^CREATE ", kind="no_capacity"))
    code, cli = run(["provision", "--json", "--image", "i", "--cloud", "secure",
                     "--min-memory", "24"])
    assert code == 0, cli.err
    assert ("no capacity for NVIDIA A40 on the secure cloud (There are no longer any instances "
            "available") in cli.err
    assert json.loads(cli.out)["gpu"]["id"] == "NVIDIA GeForce RTX 3090"


def test_provision_no_capacity_anywhere(localpod: LocalPodServer) -> None:
    localpod.account.faults.append(Fault(r"^CREATE ", kind="no_capacity", times=5))
    code, cli = run(["provision", "--image", "i", "--gpu-type-id", "NVIDIA A40",
                     "--gpu-type-id", "NVIDIA RTX A4000"])
    assert cli.err.splitlines()[-1] == ("error: no capacity for any candidate (NVIDIA A40, "
                                        "NVIDIA RTX A4000); try other GPU types, the other "
                                        "cloud, or later")
    assert code == 1 and localpod.account.pods == {}


def test_429_and_5xx_are_retried_transparently(localpod: LocalPodServer) -> None:
    localpod.account.faults += [Fault(r"^GET /v2/pods$", status=429, retry_after="3"),
                                Fault(r"^GET /v2/pods$", status=502)]
    code, cli = run(["pods", "--json"])
    assert (code, json.loads(cli.out)) == (0, [])
    assert cli.sleeps == [3.0, 2.0]


def test_pods_status_stop_start_terminate(localpod: LocalPodServer) -> None:
    pod_id = provision(localpod)["id"]
    code, cli = run(["pods"])
    assert cli.out.splitlines()[1].split()[:3] == [pod_id, "t1", "RUNNING"]
    code, cli = run(["status", "--json", pod_id])
    assert json.loads(cli.out)["status"] == "RUNNING"
    code, cli = run(["stop", pod_id])
    assert (code, cli.out) == (0, f"stopped pod {pod_id}: EXITED (/workspace kept; "
                                  f"`provision.py start {pod_id}` resumes it)\n")
    code, cli = run(["stop", pod_id])
    assert code == 1
    assert cli.err == (f"error: stop pod {pod_id}: action stop is not allowed while the pod is "
                       "EXITED; allowed: start, terminate (HTTP 409); the pod is EXITED; wait "
                       "for it to settle or pick an action allowed now\n")
    code, cli = run(["start", "--json", pod_id])
    assert json.loads(cli.out)["status"] == "STARTING"
    code, cli = run(["terminate", pod_id])
    assert (code, cli.out) == (0, f"terminated pod {pod_id}: it and its volume are gone\n")
    assert localpod.account.backend.events == [  # type: ignore[attr-defined]
        ("start", pod_id), ("stop", pod_id), ("start", pod_id), ("remove", pod_id)]
    code, cli = run(["status", pod_id])
    assert code == 1 and "(HTTP 404)" in cli.err
    assert_no_canary(cli, localpod)


def test_start_without_free_gpus_is_no_capacity(localpod: LocalPodServer) -> None:
    pod_id = provision(localpod)["id"]
    run(["stop", pod_id])
    localpod.account.catalog["NVIDIA RTX A4000"].free = 0
    code, cli = run(["start", pod_id])
    assert code == 1
    assert cli.err == (f"error: start pod {pod_id}: There are not enough free GPUs on the host "
                       "machine to start this pod. (HTTP 400); try another GPU type, cloud or "
                       "data center\n")


def test_stop_and_terminate_ask_on_a_terminal(localpod: LocalPodServer) -> None:
    pod_id = provision(localpod)["id"]
    code, cli = run(["terminate", pod_id], tty=True, answers=["n"])
    assert (code, cli.err) == (1, "error: cancelled, nothing changed\n")
    assert localpod.account.pods[pod_id].status != "TERMINATED"
    code, cli = run(["stop", pod_id], tty=True, answers=["y"])
    assert code == 0 and localpod.account.pods[pod_id].status == "EXITED"
    code, cli = run(["terminate", "--yes", pod_id], tty=True)
    assert code == 0 and localpod.account.pods[pod_id].status == "TERMINATED"


def test_help_tells_stop_from_terminate(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "STOP a pod: GPU released, /workspace volume KEPT" in text
    assert "TERMINATE a pod: the pod AND its /workspace volume are deleted" in text


def test_ssh_uses_pinned_known_hosts(localpod: LocalPodServer, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    known = tmp_path / "kh" / "known_hosts"
    monkeypatch.setenv("RUNPOD_SSH_KNOWN_HOSTS_FILE", str(known))
    pod_id = provision(localpod)["id"]
    run(["status", pod_id])
    code, cli = run(["ssh", pod_id, "--", "supervisorctl", "status"])
    port = localpod.account.pods[pod_id].mappings[22]
    assert code == 0
    # Pinned per pod (HostKeyAlias): a start gives a pod a new IP:port, not a new host key.
    assert cli.ran == [["ssh", "-p", str(port), "-o", "StrictHostKeyChecking=accept-new", "-o",
                        f"UserKnownHostsFile={known}", "-o", f"HostKeyAlias=runpod-{pod_id}",
                        "runner@127.0.0.1", "supervisorctl", "status"]]
    assert known.parent.is_dir()
    assert_no_canary(cli, localpod)
    monkeypatch.setenv("RUNPOD_SSH_IDENTITY_FILE", str(tmp_path / "id_pod"))
    code, cli = run(["ssh", "--print", pod_id])
    assert (code, cli.out) == (0, f"ssh -p {port} -o StrictHostKeyChecking=accept-new -o "
                                  f"UserKnownHostsFile={known} -o HostKeyAlias=runpod-{pod_id} "
                                  f"-i {tmp_path / 'id_pod'} -o IdentitiesOnly=yes "
                                  "runner@127.0.0.1\n")


def test_ssh_refuses_dev_null_and_unready_pods(localpod: LocalPodServer,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    pod_id = provision(localpod)["id"]
    run(["stop", pod_id])
    code, cli = run(["ssh", pod_id])
    assert (code, cli.err) == (1, f"error: pod {pod_id} has no SSH endpoint (status EXITED); it "
                                  "needs 22/tcp in its ports and must be RUNNING: `provision.py "
                                  f"status {pod_id}`\n")
    monkeypatch.setenv("RUNPOD_SSH_KNOWN_HOSTS_FILE", "/dev/null")
    code, cli = run(["ssh", pod_id])
    assert code == 2
    assert cli.err.startswith("error: bad environment: RUNPOD_SSH_KNOWN_HOSTS_FILE='/dev/null': "
                              "Value error, a real file is needed; /dev/null would disable "
                              "host-key pinning")


def test_bad_pod_id_is_a_usage_error(localpod: LocalPodServer) -> None:
    code, cli = run(["status", "a/../b"])
    assert (code, cli.err) == (2, "error: bad pod id 'a/../b': expected letters, digits, '-' "
                                  "or '_'\n")


def test_doctor_reports_each_check(localpod: LocalPodServer, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNPOD_SSH_KNOWN_HOSTS_FILE", str(tmp_path / "known_hosts"))
    cli = make_cli_env()
    cli.env.which = lambda name: f"/usr/bin/{name}" if name in ("ssh", "podman") else None
    assert main(["doctor"], cli.env) == 0
    assert cli.out.splitlines() == [
        "ok   ssh client: /usr/bin/ssh", "ok   container engine: /usr/bin/podman",
        "ok   API key: found in RUNPOD_API_KEY (not shown)",
        f"ok   API: {localpod.rest_url} answers and accepts the key",
        f"ok   known hosts: {tmp_path / 'known_hosts'}"]
    assert_no_canary(cli, localpod)
    monkeypatch.setenv("RUNPOD_SSH_IDENTITY_FILE", str(tmp_path / "missing_key"))
    cli = make_cli_env()
    cli.env.which = lambda name: f"/usr/bin/{name}"
    assert main(["doctor"], cli.env) == 1
    assert cli.out.splitlines()[-2:] == [
        f"FAIL ssh identity: {tmp_path / 'missing_key'}",
        "     fix: point RUNPOD_SSH_IDENTITY_FILE at your private key, or unset it"]


def test_doctor_with_wrong_key_and_missing_tools(localpod: LocalPodServer,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNPOD_API_KEY", "wrong-key")
    cli = make_cli_env()
    cli.env.which = lambda name: None
    assert main(["doctor", "--json"], cli.env) == 1
    checks = {c["check"]: c for c in json.loads(cli.out)}
    assert checks["ssh client"]["fix"] == "install OpenSSH (apt-get install openssh-client)"
    assert checks["API"] == {"check": "API", "ok": False,
                             "detail": "list pods (GET /v2/pods): invalid token",
                             "fix": "the API key was refused: create a new key in the RunPod "
                                    "console"}


def test_doctor_without_any_key(localpod: LocalPodServer,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNPOD_API_KEY")
    cli = make_cli_env()
    assert main(["doctor"], cli.env) == 1
    assert ("FAIL API key: no RunPod API key found (argument, RUNPOD_API_KEY, keyring "
            "service=runpod username=RUNPOD_API_KEY)\n     fix: set RUNPOD_API_KEY") in cli.out


def test_logs_during_commands_hold_no_key(localpod: LocalPodServer,
                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    localpod.account.faults.append(Fault(r"^GET /v2/pods$", status=503))
    localpod.account.catalog_denied = True
    pod_id = provision(localpod)["id"]
    run(["pods"])
    run(["stop", "--yes", pod_id])
    assert "HTTP 503, retry 1/4" in caplog.text
    assert CANARY not in caplog.text
