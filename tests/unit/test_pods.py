"""host_tools.pods without argparse: a typed CreateRequest and WaitRequest against localpod in
records-only mode, and pod_args turning the provision options into those requests."""

from __future__ import annotations

import argparse

import pytest

from host_tools.cli import CliError
from host_tools.emulators.localpod import LocalPodServer
from host_tools.pod_args import create_request, provision_options, wait_request
from host_tools.pods import DEFAULT_PORTS, CreateRequest, WaitRequest, create_pod, wait_ready
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
