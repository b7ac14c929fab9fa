"""A pod started through localpod (container backend, host network, our image) with a short idle
timeout stops itself through the RunPod API: the pod is EXITED (not terminated), its /workspace
volume is kept, and the artifact that was pending went up to the Hub emulator before the stop.

The pod shares the host's network so it reaches localpod and the Hub emulator, which listen on
127.0.0.1 only; its sshd and inference API listen on the loopback ports localpod chose.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.runpod import PodSpec, RunpodClient
from host_tools.emulators.hubemu import HubEmulator
from host_tools.emulators.localpod import Account, LocalPodServer
from host_tools.emulators.localpod.containers import ContainerBackend
from host_tools.engine import Engine
from tests.utils import wait_until
from tests.utils.hubemu import CANARY

ACCOUNT_KEY = "rpk_LIFECYCLE_CANARY_0b7e3c5a9d"
HF_REPO = "acme/pod-artifacts"
TIMINGS = "/workspace/timings/runpod_phase_times.jsonl"


@pytest.fixture
def localpod(engine: Engine, image: str, client_key: Path) -> Iterator[LocalPodServer]:
    # RunPod answers a stop before the container goes; the watchdog records the answer then.
    backend = ContainerBackend(engine.name, host_network=True, stop_delay_s=2.0)
    account = Account(backend, {ACCOUNT_KEY}, boot_polls=0, image=image,
                      public_key=client_key.with_suffix(".pub").read_text().strip())
    server = LocalPodServer(account)
    server.start()
    try:
        yield server
    finally:
        names = [ContainerBackend.names(p) for p in account.pods.values()]
        server.stop()  # terminates every pod: container and volume removed
        for container, volume in names:  # in case a terminate failed half way
            for argv in engine.remove(container, 0):
                subprocess.run(argv, capture_output=True, check=False)
            subprocess.run(engine.cmd("volume", "rm", "-f", volume), capture_output=True,
                           check=False)


def _ssh_ok(client_key: Path, port: int) -> bool:
    argv = ["ssh", "-i", str(client_key), "-p", str(port), "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR", "runner@127.0.0.1", "true"]
    return subprocess.run(argv, capture_output=True, timeout=30, check=False).returncode == 0


def test_idle_pod_stops_itself_through_the_api_after_uploading_pending_artifacts(
        engine: Engine, image: str, client_key: Path, localpod: LocalPodServer,
        hub: HubEmulator) -> None:
    client = RunpodClient(ACCOUNT_KEY, rest_url=localpod.rest_url,
                          graphql_url=localpod.graphql_url, keyring_lookup=lambda: None)
    env = {
        "START_JUPYTER": "0", "START_IDLE_WATCHDOG": "1", "AUTOSTOP_ACTION": "runpod_api",
        "AUTOSTOP_IDLE_MINUTES": "0.5", "AUTOSTOP_POLL_SECONDS": "2",
        "AUTOSTOP_WARN_MINUTES": "0", "AUTOSTOP_SYNC_FLUSH_SECONDS": "60",
        "START_HF_SYNC": "1", "HF_ENDPOINT": hub.url, "HF_TOKEN": CANARY,
        "HF_REPO_ID": HF_REPO, "HF_HUB_DISABLE_XET": "1",
        "HF_SYNC_SOURCE_DIR": "/workspace/artifacts", "HF_SYNC_DEBOUNCE_SECONDS": "1",
        "RUNPOD_PHASE_TIMING_LOG": TIMINGS,
    }
    started = time.monotonic()
    created = client.create_pod(PodSpec(name="lifecycle-autostop", gpu_type_id="NVIDIA A40",
                                        image=image, env=env))
    pod_id = created.id
    record = localpod.account.pods[pod_id]
    container, volume = ContainerBackend.names(record)
    wait_until(lambda: client.get_pod(pod_id).status == "RUNNING", 60, 0.5)
    pod = client.get_pod(pod_id)
    ports = {m.private: m.public for m in pod.mappings}
    assert set(ports) == {22, 8888, 8000} and all(ports[p] != p for p in ports)

    # The pod's sshd listens on the host loopback port localpod reported.
    wait_until(lambda: _ssh_ok(client_key, ports[22]), 90, 0.5)
    # Something for hf-sync to upload: the stop must not come before it is on the Hub.
    subprocess.run(engine.cmd(
        "exec", "-u", "runner", container, "sh", "-c",
        "mkdir -p /workspace/artifacts && head -c 65536 /dev/urandom > /tmp/m.pt && "
        "mv /tmp/m.pt /workspace/artifacts/model_best.pt"), check=True, capture_output=True,
        timeout=60)

    wait_until(lambda: localpod.account.pods[pod_id].status == "EXITED", 150, 1)
    stopped_after = time.monotonic() - started
    assert client.get_pod(pod_id).status == "EXITED"  # stopped, not terminated

    def container_gone() -> bool:
        return subprocess.run(engine.cmd("inspect", "--type", "container", container),
                              capture_output=True,
                              check=False).returncode != 0

    wait_until(container_gone, 60, 0.5)  # the stop removed the container...
    assert subprocess.run(engine.cmd("volume", "inspect", volume), capture_output=True,
                          check=False).returncode == 0, "...and kept the /workspace volume"

    # Uploaded before the stop.
    head = hub.state.store.get("model", HF_REPO).head
    assert "model_best.pt" in head.files

    # The watchdog's phase record, read from the kept volume.
    cat = subprocess.run(engine.cmd("run", "--rm", *engine.run_flags, "--network", "none",
                                    "--entrypoint", "cat", "-v", f"{volume}:/workspace", image,
                                    TIMINGS), capture_output=True, text=True, timeout=120,
                         check=True)
    records = [json.loads(line) for line in cat.stdout.splitlines() if line.strip()]
    stops = [r for r in records if r.get("source") == "idle_watchdog"
             and r.get("phase") == "autostop"]
    assert len(stops) == 1, records
    [stop] = stops
    assert stop["status"] == "ok"
    assert stop["reason"].endswith(f"action runpod_api: pod {pod_id} stopped through the "
                                   "RunPod API (EXITED)")
    assert head.ts * 1000 <= stop["ts_epoch_ms"] + 1000  # the upload came first
    # localpod's records: one stop through the pod-scoped key, never a terminate.
    requests = localpod.account.requests
    assert any(r["path"] == f"/v2/pods/{pod_id}/action" for r in requests)
    assert all(r["method"] != "DELETE" for r in requests)
    assert pod_id in localpod.account.pods and record.status == "EXITED"
    assert CANARY not in cat.stdout and record.pod_key not in cat.stdout
    print(f"pod stopped itself {stopped_after:.1f} s after its create: {stop['reason']}")
