"""localpod's Instant Clusters (REST v2 /v2/clusters): N pods of one GPU shape created together
on a private network of their own, each with RunPod's cluster env (PRIMARY_ADDR / MASTER_ADDR,
PRIMARY_PORT / MASTER_PORT, NODE_ADDR, NODE_RANK, NUM_NODES, NUM_TRAINERS, HOST_NODE_ADDR,
WORLD_SIZE). Creating one is all or nothing: a node that does not start removes the nodes and
the network made before it. Deleting a cluster terminates its nodes and removes the network; a
node alone can be stopped and started, never terminated.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from host_tools.emulators.localpod.common import ApiError, new_id, now
from host_tools.emulators.localpod.pods import ClusterNode, PodRecord, PodsMixin

PRIMARY_PORT = 29500  # torch.distributed's usual port; RunPod leaves every port open
CLUSTER_TYPES = ("APPLICATION", "TRAINING", "SLURM", "RAY")


@dataclass
class ClusterRecord:
    id: str
    name: str
    type: str
    gpu_id: str
    gpu_count: int  # per pod
    template_id: str | None
    cidr: str
    network: str
    created_at: str
    pod_ids: list[str] = field(default_factory=list)  # by rank


NETWORK_TRIES = 5  # another program's network may hold the subnet drawn: draw again


def subnet(taken: set[str]) -> str:
    """A /24 of 10.0.0.0/8 no cluster of this account uses (10.64-127.x: clear of podman's and
    Docker's default pools), drawn from the OS's randomness: a test that seeds `random` must not
    make two localpods on one host draw the same."""
    while True:
        cidr = f"10.{_draw.randint(64, 127)}.{_draw.randint(0, 255)}.0/24"
        if cidr not in taken:
            return cidr


_draw = random.SystemRandom()


class ClustersMixin(PodsMixin):
    """The account's clusters."""

    def create_cluster(self, req: dict[str, Any], nodes: int, cluster_type: str,
                       scope: str) -> tuple[ClusterRecord, list[PodRecord]]:
        """A cluster of `nodes` pods, each as `req` (create_pod's keys) asks; every value and
        the stock for all nodes checked before anything changes."""
        if scope != "account":
            raise ApiError(403, "access denied: a pod-scoped key cannot create clusters")
        if cluster_type not in CLUSTER_TYPES:
            raise ApiError(400, f"cluster type {cluster_type!r} is not one of "
                           f"{', '.join(CLUSTER_TYPES)}")
        if req.get("network_volume") is not None:
            raise ApiError(400, "localpod does not emulate a network volume on a cluster")
        with self.lock:
            first = self.new_pod(req, nodes)  # checks every value and the stock for all
            cluster_id = new_id()
            network = f"localpod-cluster-{cluster_id}"
            taken = {c.cidr for c in self.clusters.values()}
            for attempt in range(NETWORK_TRIES):
                cidr = subnet(taken)
                try:
                    self.backend.create_network(network, cidr)
                    break
                except Exception as exc:
                    taken.add(cidr)
                    if attempt == NETWORK_TRIES - 1:
                        raise ApiError(500, f"the cluster's network was not created: {exc}") \
                            from None
            base = cidr.rsplit(".", 1)[0]
            cluster = ClusterRecord(cluster_id, req["name"], cluster_type, first.gpu_id,
                                    first.gpu_count, first.template_id, cidr, network, now())
            self.clusters[cluster_id] = cluster
            made: list[PodRecord] = []
            try:
                for rank in range(nodes):
                    pod = first if rank == 0 else self.new_pod(req, nodes - rank)
                    pod.name = f"{req['name']}-{rank}"
                    pod.cluster = ClusterNode(cluster_id, rank, f"{base}.{10 + rank}",
                                              f"{base}.10", PRIMARY_PORT, nodes, pod.gpu_count,
                                              cluster.network)
                    self.catalog[pod.gpu_id].free -= pod.gpu_count
                    self.pods[pod.id] = pod
                    cluster.pod_ids.append(pod.id)
                    made.append(pod)
                    self._boot(pod)
            except ApiError:
                for pod in made:
                    if pod.status == "ERROR":  # its GPUs were taken for it, never used
                        self.catalog[pod.gpu_id].free += pod.gpu_count
                self.remove_cluster(cluster)
                raise
            return cluster, made

    def cluster(self, cluster_id: str, scope: str) -> tuple[ClusterRecord, list[PodRecord]]:
        """The cluster and its pods by rank (each advanced as a read of it would)."""
        if scope != "account":
            raise ApiError(403, "access denied: a pod-scoped key cannot read clusters")
        with self.lock:
            found = self.clusters.get(cluster_id)
            if found is None:
                raise ApiError(404, "resource not found")
            return found, [self._advance(self.pods[p]) for p in found.pod_ids]

    def list_clusters(self, scope: str) -> list[tuple[ClusterRecord, list[PodRecord]]]:
        with self.lock:
            return [self.cluster(c, scope) for c in list(self.clusters)]

    def rename_cluster(self, cluster_id: str, name: str, scope: str) -> ClusterRecord:
        with self.lock:
            found, _ = self.cluster(cluster_id, scope)
            found.name = name
            return found

    def delete_cluster(self, cluster_id: str, scope: str) -> None:
        with self.lock:
            self.remove_cluster(self.cluster(cluster_id, scope)[0])

    def remove_cluster(self, cluster: ClusterRecord) -> None:
        """Terminate every node, then remove the network and the record."""
        for pod_id in cluster.pod_ids:
            pod = self.pods[pod_id]
            if pod.status != "TERMINATED":
                self.terminate(pod)
        self.backend.remove_network(cluster.network)
        self.clusters.pop(cluster.id, None)
