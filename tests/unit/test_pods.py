"""host_tools.pods without argparse: a typed CreateRequest and WaitRequest against localpod in
records-only mode, and pod_args turning the provision options into those requests."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace

import pytest

from appliance.runpod import GpuType, Pod, PodSpec, RunpodClient, RunpodError, epoch_seconds
from host_tools.cli import CliError, find_by_ref
from host_tools.emulators.localpod import Fault, LocalPodServer
from host_tools.pod_args import create_request, provision_options, wait_request
from host_tools.pods import (
    DEFAULT_PORTS,
    MARKER_ENV,
    CreateRequest,
    WaitRequest,
    cheapest_cloud,
    create_pod,
    wait_ready,
)
from tests.utils.localpod import make_cli_env

pytestmark = pytest.mark.timeout(60)


def test_create_and_wait_from_typed_requests(localpod: LocalPodServer, banner_port: int) -> None:
    localpod.account.backend.port_map[22] = banner_port  # type: ignore[attr-defined]
    cli = make_cli_env()
    req = CreateRequest(name="typed", template_name="chessbot-appliance",
                        gpu_type_ids=("NVIDIA RTX A4000",), env={"A": "1"})
    with cli.env.client_factory() as client:
        pod = create_pod(cli.env, client, req)
        ready = wait_ready(cli.env, client, pod, WaitRequest(timeout=30, interval=0.5))
    assert (ready.id, ready.name, ready.status) == (pod.id, "typed", "RUNNING")
    assert ready.ssh_endpoint() == ("127.0.0.1", banner_port)
    assert f"created pod {pod.id} (typed) on NVIDIA RTX A4000" in cli.err
    assert cli.sleeps == [0.5]


def test_wait_request_left_running_decides_the_timeout_message(localpod: LocalPodServer) -> None:
    cli = make_cli_env()
    with cli.env.client_factory() as client:
        pod = create_pod(cli.env, client, CreateRequest(name="w", image="img",
                                                        gpu_type_ids=("NVIDIA RTX A4000",)))
        with pytest.raises(CliError) as exc:
            wait_ready(cli.env, client, pod, WaitRequest(1, 1, left_running=False))
    # The caller cleans up, so the message says nothing about a billing pod.
    assert str(exc.value) == (f"pod {pod.id} was not ready after 1 s (RUNNING, waiting for "
                              "sshd)")


def test_pod_args_build_the_requests() -> None:
    parser = argparse.ArgumentParser()
    provision_options(parser)
    args = parser.parse_args(["--image", "img", "--gpu-type-id", "A", "--gpu-type-id", "B",
                              "--env", "K=v", "--ports", "22/tcp", "--wait-timeout", "5"])
    req = create_request(args, "fallback")
    assert req == CreateRequest(name="fallback", image="img", gpu_type_ids=("A", "B"),
                                env={"K": "v"}, ports=("22/tcp",))
    assert wait_request(args) == WaitRequest(5.0, 3.0, True)
    assert wait_request(args, left_running=False).left_running is False
    defaults = create_request(parser.parse_args(["--template-id", "t1", "--name", "n"]))
    assert (defaults.name, defaults.template_id, defaults.ports, defaults.cloud) == (
        "n", "t1", DEFAULT_PORTS, "secure")
    assert create_request(parser.parse_args([])).name.startswith("chessbot-")


# -- the create marker ----------------------------------------------------------------------------


def test_epoch_seconds_reads_rfc3339_and_unix_seconds() -> None:
    assert epoch_seconds("2026-06-01T12:00:00Z") == 1780315200.0
    assert epoch_seconds("2026-06-01T12:00:00") == 1780315200.0  # no zone: UTC
    assert epoch_seconds("2026-06-01T14:00:00.500+02:00") == 1780315200.5
    assert epoch_seconds("1780315200") == 1780315200.0
    assert [epoch_seconds(t) for t in ("", "  ", "yesterday")] == [None, None, None]


def record_specs(client: RunpodClient, monkeypatch: pytest.MonkeyPatch) -> list[PodSpec]:
    specs: list[PodSpec] = []
    create = client.create_pod

    def recording(spec: PodSpec) -> Pod:
        specs.append(spec)
        return create(spec)

    monkeypatch.setattr(client, "create_pod", recording)
    return specs


@pytest.mark.parametrize(("created_at", "adopted"), [("2020-01-01T00:00:00Z", False),
                                                     ("", True)])
def test_a_marked_pod_counts_only_when_created_in_the_requests_time(
        localpod: LocalPodServer, created_at: str, adopted: bool) -> None:
    cli = make_cli_env()
    req = CreateRequest(name="m", image="img", gpu_type_ids=("NVIDIA RTX A4000",))
    with cli.env.client_factory() as client:
        earlier = client.create_pod(PodSpec(name="m", gpu_type_id="NVIDIA RTX A4000",
                                            image="img", env={MARKER_ENV: "fixed"}))
        localpod.account.pods[earlier.id].created_at = created_at
        localpod.account.faults.append(Fault(r"^POST /v2/pods$", status=500))
        if adopted:  # createdAt unknown: the marker alone decides
            assert create_pod(cli.env, client, req, marker=lambda: "fixed").id == earlier.id
            assert cli.err.splitlines()[-2:] == [
                f"pod {earlier.id} was created despite the error (it carries this request's "
                "marker); continuing with it",
                f"created pod {earlier.id} (m) on NVIDIA RTX A4000 (secure cloud, $0.32/h per "
                "GPU)"]
            return
        with pytest.raises(CliError) as exc:
            create_pod(cli.env, client, req, marker=lambda: "fixed")
    assert str(exc.value).endswith("; no pod carries this request's marker, so nothing it "
                                   "created bills; no other pod was touched")
    assert cli.err.splitlines()[-1] == (
        f"pod {earlier.id} is also named 'm', but it was created at 2020-01-01T00:00:00Z, "
        "outside this request's time, though it carries its marker: left alone")
    assert localpod.account.pods[earlier.id].status != "TERMINATED"


def test_a_list_without_env_is_checked_pod_by_pod(localpod: LocalPodServer,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    cli = make_cli_env()
    localpod.account.faults.append(Fault(r"^CREATE ", kind="create_then_500"))
    with cli.env.client_factory() as client:
        listed = client.list_pods
        monkeypatch.setattr(client, "list_pods", lambda: [replace(p, env={}) for p in listed()])
        with pytest.raises(CliError) as exc:
            create_pod(cli.env, client, CreateRequest(
                name="l", image="img", gpu_type_ids=("NVIDIA RTX A4000",),
                half_created="remove"), marker=lambda: "m-1")
    (record,) = localpod.account.pods.values()
    assert record.env == {MARKER_ENV: "m-1"} and record.status == "TERMINATED"
    assert str(exc.value).endswith(f"the half-created pod {record.id} (it carries this "
                                   "request's marker) was terminated")
    assert [(r["method"], r["path"]) for r in localpod.account.requests][-3:] == [
        ("GET", "/v2/pods"), ("GET", f"/v2/pods/{record.id}"),
        ("POST", f"/v2/pods/{record.id}/action")]


def test_two_pods_with_the_marker_are_both_left_alone(localpod: LocalPodServer) -> None:
    cli = make_cli_env()
    with cli.env.client_factory() as client:
        copied = client.create_pod(PodSpec(name="d", gpu_type_id="NVIDIA RTX A4000",
                                           image="img", env={MARKER_ENV: "fixed"}))
        localpod.account.faults.append(Fault(r"^CREATE ", kind="create_then_500"))
        with pytest.raises(CliError) as exc:
            create_pod(cli.env, client, CreateRequest(
                name="d", image="img", gpu_type_ids=("NVIDIA RTX A4000",),
                half_created="remove"), marker=lambda: "fixed")
    ours = next(p for p in localpod.account.pods if p != copied.id)
    assert str(exc.value).endswith(f"; pods {copied.id}, {ours} all carry this request's "
                                   "marker, so none was touched: check them with "
                                   "`provision.py status`")
    assert localpod.account.backend.events == [  # type: ignore[attr-defined]
        ("start", copied.id), ("start", ours)]


def test_the_template_env_is_sent_under_the_request_env(localpod: LocalPodServer,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # Whether RunPod merges a create's env into the template's or replaces it, the pod gets both.
    localpod.account.templates[0]["env"] = {"T": "t", "A": "template"}
    cli = make_cli_env()
    with cli.env.client_factory() as client:
        specs = record_specs(client, monkeypatch)
        for template in ({"template_name": "chessbot-appliance"},
                         {"template_id": "chessbotappl1"}):
            create_pod(cli.env, client, CreateRequest(
                name="tp", gpu_type_ids=("NVIDIA RTX A4000",), env={"A": "1"}, **template),
                marker=lambda: "m")
        localpod.account.faults.append(Fault(r"^GET /v2/templates$", status=403))
        create_pod(cli.env, client, CreateRequest(
            name="tp", gpu_type_ids=("NVIDIA RTX A4000",), env={"A": "1"},
            template_id="chessbotappl1"), marker=lambda: "m")
        with pytest.raises(RunpodError):
            create_pod(cli.env, client, CreateRequest(
                name="tp", gpu_type_ids=("NVIDIA RTX A4000",), template_id="public00001"),
                marker=lambda: "m")
    assert [s.env for s in specs] == [{"T": "t", "A": "1", MARKER_ENV: "m"}] * 2 + [
        {"A": "1", MARKER_ENV: "m"}, {MARKER_ENV: "m"}]
    warnings = [line for line in cli.err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 2
    assert warnings[0].startswith("warning: the env of template chessbotappl1 is unknown "
                                  "(listing templates failed: list templates (GET "
                                  "/v2/templates): ")
    assert warnings[0].endswith("); the pod is sent only --env and the create marker")
    assert warnings[1] == ("warning: the env of template public00001 is unknown (it is not "
                           "among this account's templates); the pod is sent only --env and "
                           "the create marker")


def test_cheapest_cloud_is_the_cloud_whose_price_is_checked() -> None:
    def gpu(secure: float | None, community: float | None) -> GpuType:
        return GpuType("g", "g", 24, secure is not None, community is not None, secure,
                       community, "HIGH")

    assert cheapest_cloud(gpu(0.32, 0.17), "ALL") == ("COMMUNITY", 0.17)
    assert cheapest_cloud(gpu(0.32, 0.17), "SECURE") == ("SECURE", 0.32)
    assert cheapest_cloud(gpu(0.30, 0.30), "ALL") == ("SECURE", 0.30)  # a tie: secure
    assert cheapest_cloud(gpu(0.40, None), "ALL") == ("SECURE", 0.40)
    assert cheapest_cloud(gpu(0.40, None), "COMMUNITY") is None


def test_find_by_ref_takes_ids_first_and_never_an_ambiguous_name() -> None:
    @dataclass(frozen=True)
    class Item:
        id: str
        name: str

    items = [Item("a1", "dev"), Item("b2", "a1"), Item("c3", "twin"), Item("d4", "twin")]
    assert find_by_ref(items, "a1", "template", "provision.py template-list") == items[0]
    assert find_by_ref(items, "dev", "template", "provision.py template-list") == items[0]
    with pytest.raises(CliError) as exc:
        find_by_ref(items, "twin", "template", "provision.py template-list")
    assert str(exc.value) == "2 templates are named 'twin' (c3, d4): give the id"
    with pytest.raises(CliError) as exc:
        find_by_ref(items, "nope", "registry auth", "provision.py registry-auth list")
    assert str(exc.value) == ("no registry auth has the id or name 'nope'; "
                              "`provision.py registry-auth list` shows them")
