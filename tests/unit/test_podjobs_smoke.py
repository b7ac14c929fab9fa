"""`provision.py smoke` (host_tools/podjobs.py) against localpod: the check table from the pod's
podcheck lines, SSH failures, the public /healthz, and throwaway pods that are always terminated.
"""

from __future__ import annotations

import json
import re

import httpx
import pytest

from tests.unit.podjobs_harness import CHECKS_OK, GPU, Harness, table_rows

pytestmark = pytest.mark.timeout(60)


# -- smoke ----------------------------------------------------------------------------------------


def existing_pod(h: Harness, *extra: str) -> str:
    code, cli = h.run("provision", "--json", *GPU, "--name", "s1", *extra)
    assert code == 0, cli.err
    return str(json.loads(cli.out)["id"])


def test_smoke_existing_pod_passes(h: Harness) -> None:
    pod_id = existing_pod(h)
    code, cli = h.run("smoke", pod_id)
    assert code == 0, cli.err
    pod = h.server.account.pods[pod_id]
    port, http_port = pod.mappings[22], pod.mappings[8000]
    rows = table_rows(cli.out, "CHECK")
    assert [(r[0], r[1], r[3]) for r in rows] == [
        ("ssh", "PASS", f"runner@127.0.0.1:{port}, host key pinned as runpod-{pod_id}"),
        *[(c["check"], c["status"], c["detail"]) for c in CHECKS_OK],
        ("healthz_public", "PASS", f"http://127.0.0.1:{http_port}/healthz answered 503 "
                                   "(no_model)")]
    assert [r[2] for r in rows[1:7]] == ["0.1 s", "0.0 s", "0.0 s", "20.5 s", "3.0 s", "0.0 s"]
    assert cli.out.splitlines()[-1] == "smoke: PASS"
    assert h.pod.commands == ["id -un", "python -m appliance.runtime.podcheck"]
    for argv, stdin, stdout in h.pod.calls:
        assert argv[-2].endswith("runner@127.0.0.1")
        assert "BatchMode=yes" in argv and f"HostKeyAlias=runpod-{pod_id}" in argv
        assert stdin is None and stdout is not None
    assert h.urls == [f"http://127.0.0.1:{http_port}/healthz"]
    assert pod.status == "RUNNING"  # an existing pod is left alone
    assert f"smoke: checks in pod {pod_id} (the training epoch takes a while)" in cli.err

    records = h.records()
    assert [(r["phase"], r["status"]) for r in records] == [
        ("ssh", "ok"), *[(c["check"], "ok") for c in CHECKS_OK], ("healthz_public", "ok")]
    assert {r["source"] for r in records} == {"host_smoke"}
    (run_id,) = {r["run_id"] for r in records}
    assert re.fullmatch(r"smoke-\d{8}T\d{6}Z", run_id)
    assert [r["elapsed_ms"] for r in records[1:7]] == [c["elapsed_ms"] for c in CHECKS_OK]
    h.assert_no_canary()


def test_smoke_json(h: Harness) -> None:
    pod_id = existing_pod(h)
    code, cli = h.run("smoke", "--json", pod_id)
    assert code == 0
    data = json.loads(cli.out)
    assert data["pod"] == pod_id and data["ok"] is True
    assert [c["check"] for c in data["checks"]] == [
        "ssh", *[c["check"] for c in CHECKS_OK], "healthz_public"]
    assert data["checks"][1:7] == CHECKS_OK
    assert set(data["checks"][0]) == {"check", "status", "detail", "elapsed_ms"}


def test_smoke_fail_rows_fail_the_smoke(h: Harness) -> None:
    pod_id = existing_pod(h)
    infer = {"check": "infer", "status": "FAIL", "detail": "POST /infer answered 401: no",
             "elapsed_ms": 7}
    h.pod.checks = "".join(json.dumps(c) + "\n" for c in [*CHECKS_OK[:4], infer, CHECKS_OK[5]])
    h.pod.checks_code = 1
    h.healthz = [lambda url: httpx.Response(502, text="bad gateway",
                                            request=httpx.Request("GET", url))]
    code, cli = h.run("smoke", pod_id)
    assert code == 1
    assert cli.out.splitlines()[-1] == "smoke: FAIL (infer, healthz_public)"
    rows = {r[0]: r for r in table_rows(cli.out, "CHECK")}
    assert rows["infer"][1:] == ["FAIL", "0.0 s", "POST /infer answered 401: no"]
    http_port = h.server.account.pods[pod_id].mappings[8000]
    assert rows["healthz_public"][1] == "FAIL"
    assert rows["healthz_public"][3] == (f"http://127.0.0.1:{http_port}/healthz answered 502 "
                                         "(10 tries)")
    assert len(h.urls) == 10
    assert h.clis[-1].sleeps == [2.0] * 9
    statuses = {r["phase"]: r["status"] for r in h.records()}
    assert statuses["infer"] == "error" and statuses["healthz_public"] == "error"
    assert statuses["supervisorctl"] == "ok"


def test_smoke_skip_rows_pass(h: Harness) -> None:
    pod_id = existing_pod(h)
    skip = {"check": "jupyter_api", "status": "SKIP", "detail": "no jupyter program in this pod",
            "elapsed_ms": 0}
    h.pod.checks = "".join(json.dumps(c) + "\n" for c in [CHECKS_OK[0], skip])
    code, cli = h.run("smoke", pod_id)
    assert code == 0
    assert cli.out.splitlines()[-1] == "smoke: PASS"
    assert ("jupyter_api", "skipped") in [(r["phase"], r["status"]) for r in h.records()]


@pytest.mark.parametrize("output", ["", "Traceback (most recent call last):\nboom\n",
                                    '{"check": "x"}\n[1, 2]\n{"check": "y", "status": "PASS", '
                                    '"detail": "d", "elapsed_ms": "soon"}\n'])
def test_smoke_podcheck_without_results_is_a_fail_row(h: Harness, output: str) -> None:
    pod_id = existing_pod(h)
    h.pod.checks, h.pod.checks_code = output, 1
    code, cli = h.run("smoke", pod_id)
    assert code == 1
    rows = table_rows(cli.out, "CHECK")
    assert [r[0] for r in rows] == ["ssh", "podcheck", "healthz_public"]
    assert rows[1][1] == "FAIL"
    assert rows[1][3] == ("python -m appliance.runtime.podcheck exit 1 gave no results; is the pod "
                          "running this project's image?")
    assert cli.out.splitlines()[-1] == "smoke: FAIL (podcheck)"


def test_smoke_podcheck_lines_among_other_output(h: Harness) -> None:
    pod_id = existing_pod(h)
    h.pod.checks = "warming up\n" + json.dumps(CHECKS_OK[0]) + "\nnot json\n"
    code, cli = h.run("smoke", pod_id)
    assert code == 0
    assert [r[0] for r in table_rows(cli.out, "CHECK")] == ["ssh", "supervisorctl",
                                                            "healthz_public"]


def test_smoke_ssh_failure_skips_podcheck(h: Harness) -> None:
    pod_id = existing_pod(h)
    h.pod.ssh_code = 255
    code, cli = h.run("smoke", pod_id)
    assert code == 1
    rows = table_rows(cli.out, "CHECK")
    assert [(r[0], r[1], r[3]) for r in rows[:2]] == [
        ("ssh", "FAIL", f"ssh exit 255, user -: `provision.py ssh {pod_id}` shows why"),
        ("podcheck", "SKIP", "needs SSH")]
    assert rows[2][:2] == ["healthz_public", "PASS"]
    assert cli.out.splitlines()[-1] == "smoke: FAIL (ssh)"
    assert h.pod.commands == ["id -un"]
    assert [(r["phase"], r["status"]) for r in h.records()] == [
        ("ssh", "error"), ("podcheck", "skipped"), ("healthz_public", "ok")]
    h.assert_no_canary()


def test_smoke_ssh_as_another_user_fails(h: Harness) -> None:
    pod_id = existing_pod(h)
    h.pod.user = "root"
    code, cli = h.run("smoke", pod_id)
    assert code == 1
    assert table_rows(cli.out, "CHECK")[0][3] == (
        f"ssh exit 0, user root: `provision.py ssh {pod_id}` shows why")


def test_smoke_passes_the_dataset_to_podcheck(h: Harness) -> None:
    pod_id = existing_pod(h)
    code, cli = h.run("smoke", pod_id, "--dataset", "/workspace/my data")
    assert code == 0, cli.err
    assert h.pod.commands[1] == ("python -m appliance.runtime.podcheck "
                                 "--dataset '/workspace/my data'")


def test_smoke_public_healthz_retries_then_passes(h: Harness) -> None:
    pod_id = existing_pod(h)

    def refused(url: str) -> httpx.Response:
        raise httpx.ConnectError("refused", request=httpx.Request("GET", url))

    h.healthz = [refused,
                 lambda url: httpx.Response(200, text="<html>proxy</html>",
                                            request=httpx.Request("GET", url)),
                 lambda url: httpx.Response(200, json={"status": "ok"},
                                            request=httpx.Request("GET", url))]
    code, cli = h.run("smoke", pod_id)
    assert code == 0, cli.out
    http_port = h.server.account.pods[pod_id].mappings[8000]
    assert table_rows(cli.out, "CHECK")[-1][3] == (
        f"http://127.0.0.1:{http_port}/healthz answered 200 (ok)")
    assert len(h.urls) == 3 and h.clis[-1].sleeps == [2.0, 2.0]


def test_smoke_public_healthz_never_answering(h: Harness) -> None:
    pod_id = existing_pod(h)

    def refused(url: str) -> httpx.Response:
        raise httpx.ConnectError("refused", request=httpx.Request("GET", url))

    h.healthz = [refused]
    code, cli = h.run("smoke", pod_id)
    assert code == 1
    http_port = h.server.account.pods[pod_id].mappings[8000]
    row = table_rows(cli.out, "CHECK")[-1]
    assert (row[1], row[3]) == (
        "FAIL", f"http://127.0.0.1:{http_port}/healthz ConnectError (10 tries)")
    assert cli.out.splitlines()[-1] == "smoke: FAIL (healthz_public)"


def test_smoke_pod_without_port_8000_skips_public_healthz(h: Harness) -> None:
    pod_id = existing_pod(h, "--ports", "22/tcp,8888/http")
    code, cli = h.run("smoke", pod_id)
    assert code == 0
    assert table_rows(cli.out, "CHECK")[-1] == ["healthz_public", "SKIP", "0.0 s",
                                                "the pod publishes no port 8000"]
    assert h.urls == []


def test_smoke_stopped_pod(h: Harness) -> None:
    pod_id = existing_pod(h)
    h.run("stop", "--yes", pod_id)
    code, cli = h.run("smoke", pod_id)
    assert (code, cli.err) == (1, f"error: pod {pod_id} has no SSH endpoint (status EXITED); it "
                                  "needs 22/tcp in its ports and must be RUNNING: `provision.py "
                                  f"status {pod_id}`\n")
    assert h.pod.calls == []


def test_smoke_without_pod_or_image_is_a_usage_error(h: Harness) -> None:
    code, cli = h.run("smoke")
    assert (code, cli.out, cli.err) == (
        2, "", "error: give a POD, or --image/--template-id/--template-name for a throwaway "
               "pod\n")
    assert h.server.account.pods == {}


@pytest.mark.parametrize("fail", [False, True])
def test_smoke_throwaway_pod_is_always_terminated(h: Harness, fail: bool) -> None:
    if fail:
        train = {**CHECKS_OK[3], "status": "FAIL", "detail": "training preset exit 2: error"}
        h.pod.checks = "".join(json.dumps(c) + "\n" for c in [*CHECKS_OK[:3], train])
    code, cli = h.run("smoke", *GPU, "--poll-interval", "0.5")
    pod = h.only_pod()
    assert code == (1 if fail else 0), cli.err
    assert pod.status == "TERMINATED"
    assert re.fullmatch(r"chessbot-smoke-\d{8}T\d{6}Z", pod.name)
    rows = table_rows(cli.out, "CHECK")
    assert (rows[0][0], rows[0][1], rows[0][3]) == ("provision", "PASS", f"pod {pod.id} ready")
    assert (rows[-1][0], rows[-1][1], rows[-1][3]) == (
        "terminate", "PASS", f"throwaway pod {pod.id} terminated")
    assert rows[1][:2] == ["ssh", "PASS"]
    assert cli.out.splitlines()[-1] == ("smoke: FAIL (train_epoch)" if fail else "smoke: PASS")
    phases = [r["phase"] for r in h.records()]
    assert phases[0] == "provision" and phases[-1] == "terminate"
    assert h.backend.events == [("start", pod.id), ("remove", pod.id)]
    h.assert_no_canary()


def test_smoke_throwaway_pod_terminated_when_never_ready(h: Harness) -> None:
    del h.backend.port_map[22]
    code, cli = h.run("smoke", *GPU, "--wait-timeout", "2", "--poll-interval", "1")
    pod = h.only_pod()
    assert code == 1
    assert pod.status == "TERMINATED"
    assert cli.err.splitlines()[-1] == (
        f"error: pod {pod.id} was not ready after 2 s (RUNNING, waiting for sshd)")
    assert cli.out == ""
    assert h.pod.calls == []
