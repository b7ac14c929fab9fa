"""What provision.py may never do, against localpod in records-only mode: touch a pod this
request did not create after a failed create (pods are found by this request's marker, never by
name alone), or create a pod above --max-price in the cloud it is created in.
"""

from __future__ import annotations

import json
import re

import pytest

from host_tools.emulators.localpod import Fault, LocalPodServer
from host_tools.pods import MARKER_ENV
from tests.unit.test_provision_cli import assert_no_canary, provision, run

pytestmark = pytest.mark.timeout(60)

# -- a failed create: only the pod that carries this request's marker is ever touched -------------

SERVER_500 = ("create pod 'same': Something went wrong. Please try again later or contact "
              "support. (HTTP 500); RunPod failed on its side; try again later")


def marker_of(err: str) -> str:
    found = re.search(rf"carrying this request's marker {MARKER_ENV}=([0-9a-f-]{{36}})\n", err)
    assert found is not None, err
    return found.group(1)


def same_name_pod(server: LocalPodServer) -> str:
    """A pod named 'same' that another command created minutes earlier."""
    pod_id = str(provision(server, "--name", "same")["id"])
    server.account.backend.events.clear()  # type: ignore[attr-defined]
    return pod_id


@pytest.mark.parametrize("mode", ["adopt", "remove"])
def test_failed_create_leaves_a_same_name_pod_alone(localpod: LocalPodServer, mode: str) -> None:
    other = same_name_pod(localpod)
    localpod.account.faults.append(Fault(r"^POST /v2/pods$", status=500))
    code, cli = run(["provision", "--image", "i", "--gpu-type-id", "NVIDIA A40", "--name",
                     "same", "--half-created", mode])
    marker = marker_of(cli.err)
    assert (code, cli.err.splitlines()) == (1, [
        f"warning: {SERVER_500}; looking for a half-created pod named 'same' carrying this "
        f"request's marker {MARKER_ENV}={marker}",
        f"pod {other} is also named 'same', but it does not carry this request's marker: left "
        "alone",
        f"error: {SERVER_500}; no pod carries this request's marker, so nothing it created "
        "bills; no other pod was touched"])
    assert [(p.id, p.status) for p in localpod.account.pods.values()] == [(other, "RUNNING")]
    assert localpod.account.backend.events == []  # type: ignore[attr-defined]
    assert_no_canary(cli, localpod)


def test_failed_create_without_any_pod_says_nothing_bills(localpod: LocalPodServer) -> None:
    localpod.account.faults.append(Fault(r"^POST /v2/pods$", status=500))
    code, cli = run(["provision", "--image", "i", "--gpu-type-id", "NVIDIA A40", "--name",
                     "same"])
    assert (code, cli.err.splitlines()[1:]) == (1, [
        f"error: {SERVER_500}; no pod carries this request's marker, so nothing it created "
        "bills; no other pod was touched"])
    assert localpod.account.pods == {}


def test_create_then_500_adopts_only_the_pod_with_our_marker(localpod: LocalPodServer) -> None:
    other = same_name_pod(localpod)
    localpod.account.faults.append(Fault(r"^CREATE ", kind="create_then_500"))
    code, cli = run(["provision", "--json", "--image", "i", "--gpu-type-id", "NVIDIA A40",
                     "--name", "same"])
    assert code == 0, cli.err
    ours = json.loads(cli.out)["id"]
    marker = marker_of(cli.err)
    assert localpod.account.pods[ours].env == {MARKER_ENV: marker}
    assert cli.err.splitlines() == [
        f"warning: {SERVER_500}; looking for a half-created pod named 'same' carrying this "
        f"request's marker {MARKER_ENV}={marker}",
        f"pod {other} is also named 'same', but it does not carry this request's marker: left "
        "alone",
        f"pod {ours} was created despite the error (it carries this request's marker); "
        "continuing with it",
        f"created pod {ours} (same) on NVIDIA A40 (secure cloud, $0.40/h per GPU)"]
    assert {p.id: p.status for p in localpod.account.pods.values()} == {
        other: "RUNNING", ours: "RUNNING"}


def test_create_then_500_removes_only_the_pod_with_our_marker(localpod: LocalPodServer) -> None:
    other = same_name_pod(localpod)
    localpod.account.faults.append(Fault(r"^CREATE ", kind="create_then_500"))
    code, cli = run(["provision", "--image", "i", "--gpu-type-id", "NVIDIA A40", "--name",
                     "same", "--half-created", "remove"])
    ours = next(p.id for p in localpod.account.pods.values() if p.id != other)
    assert code == 1
    assert cli.err.splitlines()[1:] == [
        f"pod {other} is also named 'same', but it does not carry this request's marker: left "
        "alone",
        f"error: {SERVER_500}; the half-created pod {ours} (it carries this request's marker) "
        "was terminated"]
    assert {p.id: p.status for p in localpod.account.pods.values()} == {
        other: "RUNNING", ours: "TERMINATED"}
    assert localpod.account.backend.events == [  # type: ignore[attr-defined]
        ("start", ours), ("remove", ours)]


def test_failed_lookup_after_a_failed_create_touches_nothing(localpod: LocalPodServer) -> None:
    other = same_name_pod(localpod)
    localpod.account.faults += [Fault(r"^CREATE ", kind="create_then_500"),
                                Fault(r"^GET /v2/pods$", status=502, times=5)]
    code, cli = run(["provision", "--image", "i", "--gpu-type-id", "NVIDIA A40", "--name",
                     "same", "--half-created", "remove"])
    assert code == 1
    assert cli.err.splitlines()[-1].startswith(f"error: {SERVER_500}; looking for the "
                                               "half-created pod failed too (list pods")
    assert cli.err.splitlines()[-1].endswith(
        "`provision.py pods --json` shows whether a pod named 'same' exists: check its env for "
        "the marker above before removing it")
    ours = next(p.id for p in localpod.account.pods.values() if p.id != other)
    assert [p.status for p in localpod.account.pods.values()] == ["STARTING", "PROVISIONING"]
    assert localpod.account.backend.events == [("start", ours)]  # type: ignore[attr-defined]


# -- --max-price: the price of the cloud the pod is created in ------------------------------------


def test_gpu_search_all_shows_the_cloud_a_pod_would_go_on(localpod: LocalPodServer) -> None:
    code, cli = run(["gpu-search", "--cloud", "all", "--max-price", "0.25"])
    assert (code, cli.out) == (0, (
        "#  GPU TYPE ID              MEMORY  PRICE    CLOUD      AVAILABILITY\n"
        "1  NVIDIA RTX A4000         16 GB   $0.17/h  community  HIGH\n"
        "2  NVIDIA GeForce RTX 3090  24 GB   $0.22/h  community  LOW\n"))
    code, cli = run(["gpu-search", "--json", "--cloud", "all", "--min-memory", "48"])
    assert [(g["id"], g["cloud"], g["price"]) for g in json.loads(cli.out)] == [
        ("NVIDIA A40", "SECURE", 0.40), ("NVIDIA A100 80GB PCIe", "COMMUNITY", 1.19)]


def test_max_price_with_cloud_all_never_creates_above_it(localpod: LocalPodServer) -> None:
    # No capacity for the two cheapest: the third candidate is still under the cap where it goes.
    localpod.account.faults.append(Fault(r"^CREATE ", kind="no_capacity", times=2))
    code, cli = run(["provision", "--image", "i", "--cloud", "all", "--max-price", "0.35",
                     "--candidates", "5"])
    assert code == 0, cli.err
    (pod,) = localpod.account.pods.values()
    assert (pod.gpu_id, pod.cloud, pod.price) == ("NVIDIA GeForce RTX 4090", "COMMUNITY", 0.34)
    assert cli.err.splitlines() == [
        "no capacity for NVIDIA RTX A4000 on the community cloud (There are no longer any "
        "instances available with the requested specifications. Please refresh and try "
        "again.); trying the next candidate",
        "no capacity for NVIDIA GeForce RTX 3090 on the community cloud (There are no longer any "
        "instances available with the requested specifications. Please refresh and try "
        "again.); trying the next candidate",
        f"created pod {pod.id} ({pod.name}) on NVIDIA GeForce RTX 4090 (community cloud, "
        "$0.34/h per GPU)"]
    # Secure-only A40 at $0.40 is never a candidate under $0.35, whatever the community prices.
    localpod.account.faults.append(Fault(r"^CREATE ", kind="no_capacity", times=3))
    code, cli = run(["provision", "--image", "i", "--cloud", "all", "--max-price", "0.35",
                     "--candidates", "5"])
    assert cli.err.splitlines()[-1] == (
        "error: no capacity for any candidate (NVIDIA RTX A4000, NVIDIA GeForce RTX 3090, "
        "NVIDIA GeForce RTX 4090); try other GPU types, the other cloud, or later")
    code, cli = run(["provision", "--image", "i", "--cloud", "all", "--min-memory", "48",
                     "--max-price", "0.5"])
    assert code == 0, cli.err
    created = [p for p in localpod.account.pods.values() if p.gpu_id == "NVIDIA A40"]
    assert [(p.cloud, p.price) for p in created] == [("SECURE", 0.40)]


def test_max_price_with_gpu_type_ids_skips_those_above_it(localpod: LocalPodServer) -> None:
    code, cli = run(["provision", "--image", "i", "--cloud", "all", "--max-price", "0.3",
                     "--gpu-type-id", "NVIDIA GeForce RTX 4090", "--gpu-type-id",
                     "NVIDIA RTX A4000"])
    assert code == 0, cli.err
    (pod,) = localpod.account.pods.values()
    assert (pod.gpu_id, pod.cloud, pod.price) == ("NVIDIA RTX A4000", "COMMUNITY", 0.17)
    assert cli.err.splitlines()[0] == ("--gpu-type-id 'NVIDIA GeForce RTX 4090' costs $0.34/h "
                                       "on the community cloud, over --max-price $0.30/h: "
                                       "skipped")
    code, cli = run(["provision", "--image", "i", "--cloud", "secure", "--max-price", "0.3",
                     "--gpu-type-id", "NVIDIA RTX A4000"])
    assert (code, cli.err.splitlines()[-1]) == (1, (
        "error: no --gpu-type-id is offered at or under --max-price $0.30/h; `provision.py "
        "gpu-search` shows prices"))
    localpod.account.catalog_denied = True
    code, cli = run(["provision", "--image", "i", "--max-price", "0.3", "--gpu-type-id",
                     "NVIDIA RTX A4000"])
    assert (code, cli.err) == (2, "error: GPU catalog (GET /v2/catalog/gpus) was denied, so "
                                  "--max-price cannot be checked; drop --max-price to use "
                                  "--gpu-type-id unchecked\n")
    assert len(localpod.account.pods) == 1
