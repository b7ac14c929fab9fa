"""provision.py's operating views against localpod in records-only mode: $/h and the cost so far
in `pods` and `status` (a fixed clock), `pods --all` with the run id of ours, and `--max-hours`
reaching the pod's env at create.
"""

from __future__ import annotations

import json

import pytest

from appliance.runpod import PodSpec, RunpodClient
from host_tools.emulators.localpod import LocalPodServer
from host_tools.pods import MARKER_ENV
from host_tools.provision import main
from tests.utils.localpod import CliEnv, make_cli_env

pytestmark = pytest.mark.timeout(60)
STARTED = "2026-06-01T12:00:00Z"
NOW = 1_780_315_200.0 + 5400  # 1.5 h later


def run(args: list[str]) -> tuple[int, CliEnv]:
    cli = make_cli_env()
    cli.env.clock = lambda: NOW
    return main(args, cli.env), cli


def provision(*extra: str) -> str:
    code, cli = run(["provision", "--json", "--template-name", "chessbot-appliance",
                     "--gpu-type-id", "NVIDIA RTX A4000", "--name", "t1", *extra])
    assert code == 0, cli.err
    return str(json.loads(cli.out)["id"])


def running(server: LocalPodServer, pod_id: str, started: str = STARTED) -> None:
    while server.account.pods[pod_id].status != "RUNNING":
        run(["status", pod_id])  # reads move the booting record on to RUNNING
    server.account.pods[pod_id].started_at = started


def foreign_pod(server: LocalPodServer) -> str:
    with RunpodClient(keyring_lookup=lambda: None) as client:
        pod = client.create_pod(PodSpec(name="theirs", gpu_type_id="NVIDIA GeForce RTX 3090",
                                        image="someone/else:1"))
    return pod.id


def test_status_shows_price_and_cost_so_far(localpod: LocalPodServer) -> None:
    pod_id = provision()
    running(localpod, pod_id)
    code, cli = run(["status", pod_id])
    assert code == 0
    assert cli.out.splitlines()[1] == "  gpu: 1 x NVIDIA RTX A4000   cost: $0.32/h, $0.48 so far " \
        "(1.5 h)"
    code, cli = run(["status", "--json", pod_id])
    data = json.loads(cli.out)
    assert (data["costPerHr"], data["runningSeconds"], data["costSoFar"], data["startedAt"]) == (
        0.32, 5400.0, 0.48, STARTED)


def test_a_stopped_pod_has_no_cost_so_far(localpod: LocalPodServer) -> None:
    pod_id = provision()
    running(localpod, pod_id)
    run(["stop", pod_id])
    code, cli = run(["status", "--json", pod_id])
    data = json.loads(cli.out)
    assert (data["status"], data["costPerHr"], data["runningSeconds"], data["costSoFar"]) == (
        "EXITED", 0.0, None, None)
    code, cli = run(["status", pod_id])
    assert cli.out.splitlines()[1] == "  gpu: 1 x NVIDIA RTX A4000   cost: $0.00/h"


def test_pods_lists_ours_with_cost_and_all_lists_every_pod(localpod: LocalPodServer) -> None:
    ours = provision("--env", "RUN_ID=cycle-7")
    running(localpod, ours)
    theirs = foreign_pod(localpod)
    running(localpod, theirs, "2026-06-01T13:00:00Z")
    port = localpod.account.pods[ours].mappings[22]
    code, cli = run(["pods"])
    assert code == 0
    assert cli.out.splitlines() == [
        "ID              NAME  STATUS   GPU                  $/H      SO FAR  RUN      SSH",
        f"{ours}  t1    RUNNING  1x NVIDIA RTX A4000  $0.32/h  $0.48   cycle-7  "
        f"127.0.0.1:{port}",
        "(1 more pod not created by provision.py: `provision.py pods --all`)"]
    code, cli = run(["pods", "--all"])
    rows = [line.split("  ") for line in cli.out.splitlines()[1:]]
    assert [[c.strip() for c in r if c.strip()][:7] for r in rows] == [
        [ours, "t1", "RUNNING", "1x NVIDIA RTX A4000", "$0.32/h", "$0.48", "cycle-7"],
        [theirs, "theirs", "RUNNING", "1x NVIDIA GeForce RTX 3090", "$0.43/h", "$0.21",
         "(not ours)"]]
    code, cli = run(["pods", "--all", "--json"])
    data = {p["id"]: p for p in json.loads(cli.out)}
    assert {k: (v["ours"], v["runId"], v["costSoFar"]) for k, v in data.items()} == {
        ours: (True, "cycle-7", 0.48), theirs: (False, None, 0.215)}
    assert "env" not in data[ours]  # a pod's env may hold secrets
    assert MARKER_ENV in localpod.account.pods[ours].env


def test_max_hours_reaches_the_pod_env(localpod: LocalPodServer) -> None:
    pod_id = provision("--max-hours", "2.5")
    assert localpod.account.pods[pod_id].env["AUTOSTOP_MAX_HOURS"] == "2.5"


@pytest.mark.parametrize(("args", "message"), [
    (["--max-hours", "0"], "argument --max-hours: '0' is not a number of hours above 0"),
    (["--max-hours", "x"], "argument --max-hours: 'x' is not a number of hours above 0"),
])
def test_max_hours_must_be_positive(localpod: LocalPodServer, args: list[str], message: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        run(["provision", "--image", "i", *args])
    assert exc.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"provision.py provision: error: {message}"
    assert localpod.account.pods == {}


def test_max_hours_and_env_of_the_same_variable_conflict(localpod: LocalPodServer) -> None:
    code, cli = run(["provision", "--image", "i", "--max-hours", "1",
                     "--env", "AUTOSTOP_MAX_HOURS=3"])
    assert (code, cli.err) == (2, "error: --env AUTOSTOP_MAX_HOURS: --max-hours sets it\n")
    assert localpod.account.pods == {}
