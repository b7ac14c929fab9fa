"""provision.py's network volumes against records-only localpod: `volume create|list|delete`,
`provision --volume` (the pod on the volume, in its data center), terminate keeping the data,
delete refused while a pod uses the volume, clear errors for unknown volumes and bad sizes, and
`cycle --volume`.
"""

from __future__ import annotations

import json

import pytest

from host_tools.emulators.localpod import LocalPodServer
from host_tools.provision import main
from tests.unit.podjobs_harness import Harness, cycle, make_dataset
from tests.utils.localpod import CANARY, CliEnv, make_cli_env

pytestmark = pytest.mark.timeout(60)


def run(args: list[str], **kw: object) -> tuple[int, CliEnv]:
    cli = make_cli_env(**kw)  # type: ignore[arg-type]
    code = main(args, cli.env)
    assert CANARY not in cli.out and CANARY not in cli.err
    return code, cli


def create_volume(name: str = "data") -> dict:
    code, cli = run(["volume", "create", name, "--size", "50", "--data-center", "LOCAL-1",
                     "--json"])
    assert (code, cli.err) == (0, "")
    return json.loads(cli.out)


def provision_on(volume: str, name: str) -> tuple[dict, str]:
    code, cli = run(["provision", "--json", "--template-name", "chessbot-appliance",
                     "--gpu-type-id", "NVIDIA RTX A4000", "--name", name, "--volume", volume])
    assert code == 0, cli.err
    return json.loads(cli.out), cli.err


def test_volume_create_list_delete(localpod: LocalPodServer) -> None:
    code, cli = run(["volume", "list"])
    assert (code, cli.out) == (0, "no network volumes\n")
    code, cli = run(["volume", "create", "data", "--size", "50", "--data-center", "LOCAL-1"])
    (vid,) = localpod.account.volumes
    assert (code, cli.out) == (
        0, f"created network volume data (id {vid}, 50 GB, data center LOCAL-1); use it with "
        f"`provision --volume {vid}` (pods on it run in its data center)\n")
    assert localpod.account.volumes[vid] == {"id": vid, "name": "data", "size": 50,
                                             "dataCenter": "LOCAL-1", "type": "STANDARD"}
    code, cli = run(["volume", "list"])
    assert cli.out.splitlines()[1:] == [f"{vid}  data  50 GB  LOCAL-1      STANDARD"]
    code, cli = run(["volume", "list", "--json"])
    assert json.loads(cli.out) == [{"id": vid, "name": "data", "size": 50,
                                    "dataCenter": "LOCAL-1", "type": "STANDARD"}]
    code, cli = run(["volume", "delete", "data"], tty=True, answers=["n"])
    assert (code, cli.err) == (1, "error: cancelled, nothing changed\n")
    assert list(localpod.account.volumes) == [vid]
    code, cli = run(["volume", "delete", "data"], tty=True, answers=["y"])
    assert (code, cli.out) == (0, f"deleted network volume data (id {vid}, 50 GB, data center "
                                  "LOCAL-1): its data is gone\n")
    assert localpod.account.volumes == {}
    assert localpod.account.backend.events[-1] == (  # type: ignore[attr-defined]
        "remove-network-volume", vid)


def test_a_pod_on_a_volume_survives_terminate_for_the_next_pod(
        localpod: LocalPodServer) -> None:
    volume = create_volume()
    first, err = provision_on("data", "first")
    assert (first["networkVolumeId"], first["dataCenterId"]) == (volume["id"], "LOCAL-1")
    assert err.splitlines()[-1] == (
        f"/workspace is network volume data (id {volume['id']}, 50 GB, data center LOCAL-1): "
        "terminate keeps its data")
    created = [r for r in localpod.account.requests if r["method"] == "POST"
               and r["target"] == "/v2/pods"]
    assert len(created) == 1 and created[0]["status"] == 201
    record = localpod.account.pods[first["id"]]
    assert (record.network_volume, record.volume_path) == (volume["id"], "/workspace")

    code, cli = run(["volume", "delete", volume["id"], "--yes"])
    assert (code, cli.err) == (
        1, f"error: network volume data (id {volume['id']}, 50 GB, data center LOCAL-1) is in "
        f"use by pod(s) {first['id']}: terminate them first (`provision.py terminate POD`)\n")
    run(["stop", first["id"], "--yes"])  # a stopped pod still holds it
    code, cli = run(["volume", "delete", volume["id"], "--yes"])
    assert code == 1 and f"in use by pod(s) {first['id']}" in cli.err

    code, cli = run(["terminate", first["id"], "--yes"])
    assert (code, cli.out) == (0, f"terminated pod {first['id']}: it is gone; its network "
                                  f"volume {volume['id']} keeps the data of /workspace\n")
    assert list(localpod.account.volumes) == [volume["id"]]
    second, _ = provision_on(volume["id"], "second")
    assert second["networkVolumeId"] == volume["id"]
    code, cli = run(["terminate", second["id"], "--yes", "--json"])
    assert json.loads(cli.out) == {"id": second["id"], "status": "TERMINATED",
                                   "networkVolumeKept": volume["id"]}
    code, cli = run(["volume", "delete", "data", "--yes"])
    assert code == 0 and localpod.account.volumes == {}


def test_terminate_without_a_volume_says_the_data_goes(localpod: LocalPodServer) -> None:
    code, cli = run(["provision", "--json", "--template-name", "chessbot-appliance",
                     "--gpu-type-id", "NVIDIA RTX A4000", "--name", "plain"])
    pod = json.loads(cli.out)
    assert (pod["networkVolumeId"], localpod.account.pods[pod["id"]].network_volume) == ("", None)
    code, cli = run(["terminate", pod["id"]], tty=True, answers=["y"])
    assert cli.answers == [] and cli.out == (
        f"terminated pod {pod['id']}: it and its volume are gone\n")


def test_unknown_volumes_and_bad_sizes_are_clear_errors(
        localpod: LocalPodServer, capsys: pytest.CaptureFixture[str]) -> None:
    code, cli = run(["provision", "--template-name", "chessbot-appliance",
                     "--gpu-type-id", "NVIDIA RTX A4000", "--volume", "nosuch"])
    assert (code, cli.err) == (1, "error: no network volume has the id or name 'nosuch'; "
                                  "`provision.py volume list` shows them\n")
    assert localpod.account.pods == {}
    code, cli = run(["volume", "delete", "nosuch", "--yes"])
    assert (code, cli.err) == (1, "error: no network volume has the id or name 'nosuch'; "
                                  "`provision.py volume list` shows them\n")
    create_volume("twin")
    create_volume("twin")
    code, cli = run(["volume", "delete", "twin", "--yes"])
    ids = ", ".join(localpod.account.volumes)
    assert (code, cli.err) == (1, f"error: 2 network volumes are named 'twin' ({ids}): "
                                  "give the id\n")
    code, cli = run(["volume", "create", "v", "--size", "10", "--data-center", "EU-RO-1"])
    assert (code, cli.err) == (
        1, "error: create network volume 'v': unknown data center 'EU-RO-1': localpod has "
        "LOCAL-1 only (HTTP 400); fix the request; retrying it unchanged will fail the same "
        "way\n")
    for size in ("5", "4097", "ten"):
        with pytest.raises(SystemExit) as exited:
            main(["volume", "create", "v", "--size", size, "--data-center", "LOCAL-1"])
        assert exited.value.code == 2
        assert capsys.readouterr().err.splitlines()[-1] == (
            f"provision.py volume create: error: argument --size: {size!r} is not a whole "
            "number of GB from 10 to 4096")
    assert len(localpod.account.volumes) == 2


def test_cycle_on_a_volume_keeps_it_after_terminate(h: Harness) -> None:
    volume = h.server.account.create_volume("runs", 100, "LOCAL-1", "STANDARD")
    dataset = make_dataset(h.tmp / "ds", "train.jsonl", "val.jsonl")
    code, cli = cycle(h, "--dataset", str(dataset), "--volume", "runs", "--then", "terminate")
    assert code == 0, cli.err
    pod = h.only_pod()
    assert (pod.network_volume, pod.volume_path, pod.status) == (
        volume["id"], "/workspace", "TERMINATED")
    assert h.pod.commands[0] == ("mkdir -p /workspace/cycle/r1/dataset && "
                                 "tar -xf - -C /workspace/cycle/r1/dataset")
    assert cli.out.splitlines()[-2].startswith(
        f"cycle r1: pod {pod.id} terminated; its network volume {volume['id']} keeps /workspace "
        "(datasets, artifacts) and bills as storage; artifacts in ")
    assert list(h.server.account.volumes) == [volume["id"]]
