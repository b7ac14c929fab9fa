"""localpod's REST v2 Instant Clusters (/v2/clusters): create, list, read, rename, delete, and a
cluster's pods, with the request and answer shapes of RunPod's document (CreateClusterRequest
has no template: the image, env, ports and disks come in the request itself). A cluster's pods
appear in GET /v2/pods only with includeClusterPods=true.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from host_tools.emulators.localpod import models
from host_tools.emulators.localpod.clusters import ClusterRecord
from host_tools.emulators.localpod.common import DATA_CENTER_ID, SERVER_ERROR, ApiError
from host_tools.emulators.localpod.pods import PodRecord
from host_tools.emulators.localpod.rest import ERRORS, Acc, Scope, pod_v2

ClusterType = Literal["APPLICATION", "TRAINING", "SLURM", "RAY"]
router = APIRouter(prefix="/v2", responses=ERRORS)


class ClusterCompute(models.Request):
    gpuTypeId: str = Field(min_length=1)
    gpuCountPerPod: int = Field(ge=1)
    podCount: int = Field(ge=2, le=250)


class CreateClusterRequest(models.Request):
    args: str | None = None
    disk: int | None = Field(default=None, ge=1)
    env: models.Env | None = None
    image: models.Image | None = None
    ports: list[models.Port] | None = None
    compute: ClusterCompute
    name: str = Field(min_length=1)
    type: ClusterType
    dataCenterIds: list[str] | None = None
    mounts: models.Mounts | None = None
    startJupyter: bool = False
    startSsh: bool = False


class UpdateClusterRequest(models.Request):
    name: str = Field(min_length=1)


class ClusterPodsSummary(BaseModel):
    total: int
    byStatus: dict[str, int]


class ClusterNetwork(BaseModel):
    cidr: str


class ClusterPrimary(BaseModel):
    podId: str
    status: models.PodStatus
    sshEndpoint: str


class ClusterComputeOut(BaseModel):
    gpuTypeId: str
    gpuCountPerPod: int
    podCount: int


class Cluster(BaseModel):
    id: str
    name: str
    type: ClusterType
    compute: ClusterComputeOut
    template: str
    dataCenterId: str
    pods: ClusterPodsSummary
    network: ClusterNetwork
    primary: ClusterPrimary
    createdAt: str


class ListClustersResponse(BaseModel):
    clusters: list[Cluster]


def cluster_v2(cluster: ClusterRecord, pods: list[PodRecord]) -> dict[str, Any]:
    by_status: dict[str, int] = {}
    for pod in pods:
        by_status[pod.status] = by_status.get(pod.status, 0) + 1
    primary = pods[0]
    ssh = primary.mappings.get(22) if primary.status == "RUNNING" else None
    return {"id": cluster.id, "name": cluster.name, "type": cluster.type,
            "compute": {"gpuTypeId": cluster.gpu_id, "gpuCountPerPod": cluster.gpu_count,
                        "podCount": len(pods)},
            "template": cluster.template_id or "", "dataCenterId": DATA_CENTER_ID,
            "pods": {"total": len(pods), "byStatus": by_status},
            "network": {"cidr": cluster.cidr},
            "primary": {"podId": primary.id, "status": primary.status,
                        "sshEndpoint": f"127.0.0.1:{ssh}" if ssh else ""},
            "createdAt": cluster.created_at}


@router.get("/clusters", response_model=ListClustersResponse)
def list_clusters(acc: Acc, scope: Scope) -> Any:
    return {"clusters": [cluster_v2(*found) for found in acc.list_clusters(scope)]}


@router.post("/clusters", status_code=201, response_model=Cluster)
def create_cluster(body: CreateClusterRequest, request: Request, acc: Acc, scope: Scope) -> Any:
    persistent = body.mounts.persistent if body.mounts is not None else None
    network = body.mounts.network[0] if body.mounts is not None and body.mounts.network else None
    req = {"name": body.name, "image": body.image, "template_id": None,
           "gpu_id": body.compute.gpuTypeId, "gpu_count": body.compute.gpuCountPerPod,
           "cloud": "SECURE", "ports": body.ports, "env": body.env, "disk_gb": body.disk,
           "registry": None,
           "volume_gb": persistent.size if persistent else None,
           "volume_path": persistent.path if persistent else None,
           "network_volume": network.volumeId if network else None,
           "data_center_ids": body.dataCenterIds}
    fault = acc.take_fault(f"CREATE {request.url.path}")
    if fault is not None and fault.kind != "create_then_500":
        raise fault.error(graphql=False)
    created = acc.create_cluster(req, body.compute.podCount, body.type, scope)
    if fault is not None:
        raise ApiError(500, SERVER_ERROR)
    return cluster_v2(*created)


@router.get("/clusters/{id}", response_model=Cluster)
def get_cluster(id: str, acc: Acc, scope: Scope) -> Any:  # noqa: A002 (the document's name)
    return cluster_v2(*acc.cluster(id, scope))


@router.patch("/clusters/{id}", response_model=Cluster)
def update_cluster(id: str, body: UpdateClusterRequest, acc: Acc,  # noqa: A002
                   scope: Scope) -> Any:
    acc.rename_cluster(id, body.name, scope)
    return cluster_v2(*acc.cluster(id, scope))


@router.delete("/clusters/{id}", status_code=204, response_class=Response)
def delete_cluster(id: str, acc: Acc, scope: Scope) -> Response:  # noqa: A002
    acc.delete_cluster(id, scope)
    return Response(status_code=204)


@router.get("/clusters/{id}/pods", response_model=models.ListPodsResponse)
def list_cluster_pods(id: str, acc: Acc, scope: Scope) -> Any:  # noqa: A002
    return {"pods": [pod_v2(p) for p in acc.cluster(id, scope)[1]]}
