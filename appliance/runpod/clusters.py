"""RunPod Instant Clusters as the client hands them out and takes them in: a Cluster read from
REST v2 (/v2/clusters) and the ClusterSpec a create sends. REST v2's CreateClusterRequest has no
template field: a cluster from a template is sent the template's image, env, ports and disks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from appliance.settings import pod_ports

ClusterType = Literal["APPLICATION", "TRAINING", "SLURM", "RAY"]


@dataclass(frozen=True)
class Cluster:
    id: str
    name: str
    type: str
    gpu_id: str
    gpu_count_per_pod: int
    pod_count: int
    pods_by_status: dict[str, int]
    primary_pod_id: str = ""
    primary_status: str = ""
    cidr: str = ""
    template: str = ""
    data_center_id: str = ""
    created_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "type": self.type,
                "compute": {"gpuTypeId": self.gpu_id, "gpuCountPerPod": self.gpu_count_per_pod,
                            "podCount": self.pod_count},
                "pods": {"byStatus": dict(self.pods_by_status)},
                "primary": {"podId": self.primary_pod_id, "status": self.primary_status},
                "network": {"cidr": self.cidr}, "template": self.template,
                "dataCenterId": self.data_center_id, "createdAt": self.created_at}

    @classmethod
    def from_v2(cls, c: dict[str, Any]) -> Cluster:
        compute, pods = c.get("compute") or {}, c.get("pods") or {}
        primary = c.get("primary") or {}
        return cls(id=str(c["id"]), name=str(c.get("name") or ""), type=str(c.get("type") or ""),
                   gpu_id=str(compute.get("gpuTypeId") or ""),
                   gpu_count_per_pod=int(compute.get("gpuCountPerPod") or 0),
                   pod_count=int(compute.get("podCount") or pods.get("total") or 0),
                   pods_by_status={str(k): int(v) for k, v in
                                   (pods.get("byStatus") or {}).items()},
                   primary_pod_id=str(primary.get("podId") or ""),
                   primary_status=str(primary.get("status") or ""),
                   cidr=str((c.get("network") or {}).get("cidr") or ""),
                   template=str(c.get("template") or ""),
                   data_center_id=str(c.get("dataCenterId") or ""),
                   created_at=str(c.get("createdAt") or ""))


@dataclass
class ClusterSpec:
    """What to create; `to_v2()` is REST v2's CreateClusterRequest body."""

    name: str
    gpu_type_id: str
    pod_count: int
    image: str
    gpu_count_per_pod: int = 1
    type: ClusterType = "TRAINING"
    ports: list[str] = field(default_factory=lambda: list(pod_ports()))
    env: dict[str, str] = field(default_factory=dict)
    disk_gb: int = 30
    volume_gb: int = 20
    volume_path: str = "/workspace"
    data_center_id: str = ""

    def to_v2(self) -> dict[str, Any]:
        if not self.image:
            raise ValueError("a cluster needs an image (a template's, or --image)")
        if self.pod_count < 2:
            raise ValueError(f"a cluster has 2 to 250 nodes, not {self.pod_count}")
        body: dict[str, Any] = {
            "name": self.name, "type": self.type, "image": self.image, "ports": self.ports,
            "disk": self.disk_gb,
            "compute": {"gpuTypeId": self.gpu_type_id, "gpuCountPerPod": self.gpu_count_per_pod,
                        "podCount": self.pod_count},
            "mounts": {"persistent": {"size": self.volume_gb, "path": self.volume_path}},
            "startSsh": True,
        }
        if self.env:
            body["env"] = dict(self.env)
        if self.data_center_id:
            body["dataCenterIds"] = [self.data_center_id]
        return body
