"""localpod's Instant Clusters (host_tools/emulators/localpod/clusters.py): the cluster env each
node gets, all-or-nothing creation, stock, and the container backend's private network (the
engine's command lines through a fake engine).
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

import pytest

from host_tools.emulators.localpod import Account, RecordsBackend
from host_tools.emulators.localpod.common import NO_CAPACITY, ApiError
from host_tools.emulators.localpod.containers import ContainerBackend
from host_tools.emulators.localpod.pods import PodRecord
from tests.utils.localpod import CANARY

REQ = {"name": "cl", "image": "img:1", "gpu_id": "NVIDIA RTX A4000", "gpu_count": 1,
       "cloud": "SECURE", "ports": ["22/tcp"], "env": {"A": "b"}}


class Capturing(RecordsBackend):
    def __init__(self, fail_rank: int | None = None) -> None:
        super().__init__()
        self.envs: dict[str, dict[str, str]] = {}
        self.fail_rank = fail_rank

    def start(self, pod: PodRecord, env: dict[str, str],
              login: tuple[str, str] | None = None) -> None:
        if pod.cluster is not None and pod.cluster.rank == self.fail_rank:
            raise RuntimeError("no such image")
        super().start(pod, env, login)
        self.envs[pod.id] = env


def test_every_node_gets_runpods_cluster_env() -> None:
    backend = Capturing()
    acc = Account(backend, {CANARY})
    cluster, pods = acc.create_cluster(dict(REQ), 3, "TRAINING", "account")
    base = cluster.cidr.rsplit(".", 1)[0]
    assert cluster.network == f"localpod-cluster-{cluster.id}"
    for rank, pod in enumerate(pods):
        env = backend.envs[pod.id]
        assert {k: env[k] for k in ("PRIMARY_ADDR", "MASTER_ADDR", "PRIMARY_PORT", "MASTER_PORT",
                                    "NODE_ADDR", "NODE_RANK", "NUM_NODES", "NUM_TRAINERS",
                                    "HOST_NODE_ADDR", "WORLD_SIZE", "A")} == {
            "PRIMARY_ADDR": f"{base}.10", "MASTER_ADDR": f"{base}.10", "PRIMARY_PORT": "29500",
            "MASTER_PORT": "29500", "NODE_ADDR": f"{base}.{10 + rank}", "NODE_RANK": str(rank),
            "NUM_NODES": "3", "NUM_TRAINERS": "1", "HOST_NODE_ADDR": f"{base}.10:29500",
            "WORLD_SIZE": "3", "A": "b"}
        assert pod.env == {"A": "b"}  # the injected env is never the pod's own
    assert acc.catalog["NVIDIA RTX A4000"].free == 8 - 3
    assert backend.events[0] == ("create-network", cluster.network)
    acc.delete_cluster(cluster.id, "account")
    assert acc.catalog["NVIDIA RTX A4000"].free == 8
    assert backend.events[-1] == ("remove-network", cluster.network)
    assert [e for e, _ in backend.events].count("remove") == 3


def test_a_node_that_does_not_start_removes_the_whole_cluster() -> None:
    backend = Capturing(fail_rank=1)
    acc = Account(backend, {CANARY})
    with pytest.raises(ApiError, match="the pod's container did not start: no such image"):
        acc.create_cluster(dict(REQ), 2, "TRAINING", "account")
    assert acc.clusters == {}
    assert [p.status for p in acc.pods.values()] == ["TERMINATED", "TERMINATED"]
    assert acc.catalog["NVIDIA RTX A4000"].free == 8
    assert [e for e, _ in backend.events] == ["create-network", "start", "remove", "remove",
                                              "remove-network"]


def test_stock_for_every_node_is_checked_before_anything_changes() -> None:
    acc = Account(Capturing(), {CANARY})
    with pytest.raises(ApiError, match=NO_CAPACITY):  # 4 RTX 4090s in stock
        acc.create_cluster({**REQ, "gpu_id": "NVIDIA GeForce RTX 4090"}, 5, "TRAINING",
                           "account")
    with pytest.raises(ApiError, match="cluster type 'BATCH' is not one of APPLICATION"):
        acc.create_cluster(dict(REQ), 2, "BATCH", "account")
    with pytest.raises(ApiError, match="a pod-scoped key cannot create clusters"):
        acc.create_cluster(dict(REQ), 2, "TRAINING", "somepod")
    assert acc.pods == {} and acc.clusters == {} and acc.backend.events == []  # type: ignore


class FakeEngine:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, argv: Sequence[str], env: dict[str, str] | None
                 ) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(argv))
        return subprocess.CompletedProcess(list(argv), 0, "true\n", "")


def test_container_nodes_run_on_the_clusters_own_network() -> None:
    engine = FakeEngine()
    acc = Account(ContainerBackend("podman", run=engine, host_network=True), {CANARY})
    cluster, pods = acc.create_cluster(dict(REQ), 2, "TRAINING", "account")
    assert engine.calls[:2] == [
        ["podman", "network", "rm", cluster.network],
        ["podman", "network", "create", "--subnet", cluster.cidr, cluster.network]]
    runs = [argv for argv in engine.calls if argv[1] == "run"]
    for pod, argv in zip(pods, runs, strict=True):
        # Not the host's network, whatever host_network says: its own, at its NODE_ADDR, with
        # SSH published on loopback as for any pod.
        assert argv[argv.index("--network"):][:4] == ["--network", cluster.network, "--ip",
                                                      pod.cluster.ip]  # type: ignore[union-attr]
        assert f"127.0.0.1:{pod.mappings[22]}:22" in argv
        assert f"localpod-{pod.id}-workspace:/workspace" in argv
        assert "APPLIANCE_BIND_HOST" not in argv and "SSH_PORT" not in argv
    engine.calls.clear()
    acc.close()
    assert engine.calls[-1] == ["podman", "network", "rm", cluster.network]
    assert sum(argv[1:3] == ["volume", "rm"] for argv in engine.calls) == 2


class SubnetsTaken(RecordsBackend):
    """The host already has networks on the first `taken` subnets drawn."""

    def __init__(self, taken: int) -> None:
        super().__init__()
        self.taken, self.tried = taken, []

    def create_network(self, name: str, cidr: str) -> None:
        self.tried.append(cidr)
        if len(self.tried) <= self.taken:
            raise RuntimeError(f"subnet {cidr} is already used on the host")
        super().create_network(name, cidr)


def test_a_subnet_another_network_holds_is_drawn_again() -> None:
    backend = SubnetsTaken(taken=2)
    acc = Account(backend, {CANARY})
    cluster, _ = acc.create_cluster(dict(REQ), 2, "TRAINING", "account")
    assert len(set(backend.tried)) == 3 and cluster.cidr == backend.tried[-1]
    assert backend.events[0] == ("create-network", cluster.network)


def test_no_free_subnet_after_five_draws_is_a_500_and_creates_nothing() -> None:
    backend = SubnetsTaken(taken=5)
    acc = Account(backend, {CANARY})
    with pytest.raises(ApiError) as info:
        acc.create_cluster(dict(REQ), 2, "TRAINING", "account")
    assert info.value.status == 500
    assert info.value.message.startswith(
        f"the cluster's network was not created: subnet {backend.tried[-1]} is already used")
    assert len(backend.tried) == 5 and acc.clusters == {} and acc.pods == {}
    assert acc.catalog["NVIDIA RTX A4000"].free == 8
