"""localpod's RunPod REST v2 (/v2/...) as a FastAPI router: pods (create, read, update, actions,
logs), the GPU and data-center catalog, templates, container registry auths (their passwords
never answered), network volumes and the account's SSH keys, answered from an
Account as RunPod's JSON (shapes in models.py). Every route needs a key (`caller`), which is also
where injected faults answer; errors are raised as ApiError and answered as problem+json.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import StreamingResponse

from appliance import settings
from host_tools.emulators.base import HOST
from host_tools.emulators.localpod import models
from host_tools.emulators.localpod.common import (
    DATA_CENTER_ID,
    SERVER_ERROR,
    ApiError,
    GpuStock,
    new_id,
)
from host_tools.emulators.localpod.pods import PodRecord
from host_tools.emulators.localpod.state import Account
from host_tools.emulators.localpod.templates import template

USER = settings.default(settings.RuntimeSettings, "APPLIANCE_USER")  # the image's login
DATA_CENTER = {"id": DATA_CENTER_ID, "name": "localpod", "region": "UNKNOWN",
               "networkVolumeTypes": [], "compliance": [], "globalNetwork": False}
PROBLEM = {"model": models.ErrorResponse, "content": {"application/problem+json": {}}}
ERRORS: dict[int | str, dict[str, Any]] = {status: PROBLEM for status in (
    400, 401, 403, 404, 409, 422, 429)}


def account(request: Request) -> Account:
    acc = request.app.state.account
    assert isinstance(acc, Account)
    return acc


def bearer(request: Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    return auth[7:].strip() if auth.lower().startswith("bearer ") else None


def declared_query(dependant: Any) -> set[str]:
    """The query parameters a route (its dependencies included) declares."""
    return {p.alias for p in dependant.query_params}.union(
        *(declared_query(d) for d in dependant.dependencies))


def caller(request: Request) -> str:
    """The caller's scope ("account" or a pod id): 401 without a valid key, 422 for a query
    parameter the route does not know; then an injected fault matching "METHOD /path" answers
    instead of the route."""
    acc, key = account(request), bearer(request)
    scope = acc.key_scope(key)
    if scope is None:
        raise ApiError(401, "missing bearer token" if not key else "invalid token")
    unknown = sorted(set(request.query_params) - declared_query(request.scope["route"].dependant))
    if unknown:
        raise ApiError(422, f"Request validation failed: unknown query parameter "
                       f"{unknown[0][:100]!r}")
    if (fault := acc.take_fault(f"{request.method} {request.url.path}")) is not None:
        raise fault.error(graphql=False)
    return scope


Scope = Annotated[str, Depends(caller)]
Acc = Annotated[Account, Depends(account)]
router = APIRouter(prefix="/v2", responses=ERRORS)


def account_only(scope: str, acc: Account | None = None) -> None:
    if scope != "account" or (acc is not None and acc.catalog_denied):
        raise ApiError(403, "access denied")


# -- shapes --


def pod_v2(pod: PodRecord) -> dict[str, Any]:
    running = pod.status == "RUNNING"
    ssh_port = pod.mappings.get(22) if running else None
    return {
        "id": pod.id, "name": pod.name, "image": pod.image, "args": "", "disk": pod.disk_gb,
        "ports": pod.ports, "env": pod.env, "registry": pod.registry, "status": pod.status,
        "actions": pod.actions,
        "mounts": ({"network": [{"volumeId": pod.network_volume, "path": pod.volume_path}]}
                   if pod.network_volume else
                   {"persistent": {"size": pod.volume_gb, "path": pod.volume_path}}),
        "gpu": {"id": pod.gpu_id, "count": pod.gpu_count}, "cloud": pod.cloud,
        "dataCenterId": DATA_CENTER_ID, "cudaVersion": "12.8", "template": pod.template_id,
        "cost": pod.cost(), "locked": pod.locked, "globalNetworking": {"enabled": False},
        "ssh": {"proxy": None, "direct": None if ssh_port is None else {
            "host": HOST, "port": ssh_port, "username": USER,
            "command": f"ssh {USER}@{HOST} -p {ssh_port}"}},
        "runtime": ({"uptime": 0, "ports": [
            {"private": private, "public": public, "ip": HOST,
             "type": pod.port_type(private)} for private, public in pod.mappings.items()]}
                    if running else None),
        "createdAt": pod.created_at, "startedAt": pod.started_at,
        "cluster": None if pod.cluster is None else {
            "id": pod.cluster.cluster_id, "rank": pod.cluster.rank, "ip": pod.cluster.ip},
    }


def gpu_v2(g: GpuStock) -> dict[str, Any]:
    # RunPod's price is a number in both clouds; `secure` / `community` say where it applies.
    return {"id": g.id, "name": g.name, "pool": "LOCAL", "manufacturer": g.manufacturer,
            "memory": g.memory_gb, "secure": g.secure_price is not None,
            "community": g.community_price is not None,
            "price": {"secure": g.secure_price or 0.0, "community": g.community_price or 0.0},
            "maxCount": {"secure": g.max_count, "community": g.max_count},
            "availability": g.availability(),
            "dataCenters": [{"id": "LOCAL-1", "name": "localpod", "availability":
                             g.availability()}],
            "cudaVersions": [{"version": "12.8", "available": True}]}


def listed(value: str | None, name: str, allowed: tuple[str, ...] | None = None,
           pattern: str | None = None, max_items: int | None = None) -> list[str]:
    """A comma-separated query parameter (`style: form, explode: false`), checked."""
    items = [] if value is None else value.split(",")
    bad = [i for i in items if (allowed is not None and i not in allowed)
           or (pattern is not None and not re.fullmatch(pattern, i))]
    if bad or (max_items is not None and len(items) > max_items):
        raise ApiError(422, f"Request validation failed: query {name}={value!r} is not "
                       + (f"one of {', '.join(allowed)}" if allowed else f"{pattern}")
                       + (f" (at most {max_items})" if max_items else ""))
    return items


# -- pods --


@router.get("/pods", response_model=models.ListPodsResponse)
def list_pods(acc: Acc, scope: Scope, includeClusterPods: bool = False) -> Any:
    return {"pods": [pod_v2(p) for p in acc.list_pods(scope, includeClusterPods)]}


@router.post("/pods", status_code=201, response_model=models.Pod)
def create_pod(body: models.CreatePodRequest, request: Request, acc: Acc, scope: Scope) -> Any:
    if body.cpu is not None or body.gpu is None:
        raise ApiError(400, "CPU pods are not emulated by localpod: the request needs \"gpu\"")
    persistent = body.mounts.persistent if body.mounts is not None else None
    network = body.mounts.network[0] if body.mounts is not None and body.mounts.network else None
    if persistent is not None and network is not None:
        raise ApiError(400, "mounts: persistent and network are mutually exclusive")
    req = {"name": body.name, "image": body.image, "template_id": body.templateId,
           "gpu_id": body.gpu.id, "gpu_count": body.gpu.count, "cloud": body.cloud,
           "ports": body.ports, "env": body.env, "disk_gb": body.disk, "registry": body.registry,
           "volume_gb": persistent.size if persistent else None,
           "volume_path": (persistent.path if persistent else network.path if network
                           else None),
           "network_volume": network.volumeId if network else None,
           "data_center_ids": body.dataCenterIds}
    fault = acc.take_fault(f"CREATE {request.url.path}")
    if fault is not None and fault.kind != "create_then_500":
        raise fault.error(graphql=False)
    pod = acc.create_pod(req, scope)
    if fault is not None:
        raise ApiError(500, SERVER_ERROR)
    return pod_v2(pod)


@router.get("/pods/{id}", response_model=models.Pod)
def get_pod(id: str, acc: Acc, scope: Scope) -> Any:  # noqa: A002 (the document's name)
    return pod_v2(acc.get_pod(id, scope))


@router.patch("/pods/{id}", response_model=models.Pod)
def update_pod(id: str, body: models.UpdatePodRequest, acc: Acc,  # noqa: A002
               scope: Scope) -> Any:
    if body.templateId is not None or body.globalNetworking or body.registry is not None:
        raise ApiError(400, "localpod does not emulate changing a pod's template, registry "
                       "or global networking")
    if body.mounts is not None and (body.mounts.network or body.mounts.persistent is None):
        raise ApiError(400, "a pod's network volume is attached at creation only")
    changes: dict[str, Any] = {k: v for k, v in {
        "name": body.name, "image": body.image, "ports": body.ports, "env": body.env,
        "disk_gb": body.disk, "locked": body.locked}.items() if v is not None}
    if body.mounts is not None and body.mounts.persistent is not None:
        changes.update(volume_gb=body.mounts.persistent.size,
                       volume_path=body.mounts.persistent.path)
    return pod_v2(acc.update_pod(id, changes, scope))


@router.delete("/pods/{id}", status_code=204, response_class=Response)
def delete_pod(id: str, acc: Acc, scope: Scope) -> Response:  # noqa: A002
    acc.action(id, "terminate", scope)
    return Response(status_code=204)


@router.post("/pods/{id}/action", response_model=models.Pod,
             responses={204: {"description": "terminated"}})
def pod_action(id: str, body: models.PodActionRequest, acc: Acc,  # noqa: A002
               scope: Scope) -> Any:
    pod = acc.action(id, body.action, scope)
    return Response(status_code=204) if body.action == "terminate" else pod_v2(pod)


@router.get("/pods/{id}/logs", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}}})
def pod_logs(id: str, acc: Acc, scope: Scope,  # noqa: A002
             source: Literal["container", "system"] = "container",
             tail: Annotated[int, Query(ge=0, le=5000)] = 100,
             since: datetime | None = None,
             last_event_id: Annotated[datetime | None, Header(alias="Last-Event-ID")] = None,
             ) -> StreamingResponse:
    """Server-sent events, one per line the pod's container wrote (none in records mode)."""
    lines = acc.pod_logs(id, scope, tail) if source == "container" else []
    events = "".join(f"data: {json.dumps({'source': source, 'line': line})}\n\n"
                     for line in lines)
    return StreamingResponse(iter([events]), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


# -- catalog --

CatalogQuery = Annotated[str | None, Query()]


def gpu_filters(include: CatalogQuery = None, product: CatalogQuery = None,
                count: Annotated[int, Query(ge=1)] = 1,
                cloud: Literal["SECURE", "COMMUNITY"] | None = None,
                countryCodes: CatalogQuery = None, cudaVersions: CatalogQuery = None,
                minCudaVersion: Annotated[str | None, Query(pattern=r"^\d+(\.\d+)?$")] = None,
                ) -> str | None:
    """The catalog's query, checked; the cloud to filter by."""
    listed(include, "include", ("AVAILABILITY",), max_items=1)
    listed(product, "product", ("POD", "CLUSTER", "SERVERLESS"))
    listed(countryCodes, "countryCodes", pattern=r"[A-Z]{2}")
    listed(cudaVersions, "cudaVersions", pattern=r"\d+\.\d+")
    if include is not None and product is None:
        raise ApiError(400, "include=AVAILABILITY requires product")
    return cloud


Filters = Annotated[str | None, Depends(gpu_filters)]


@router.get("/catalog/gpus", response_model=models.ListGpuTypesResponse)
def list_gpus(acc: Acc, scope: Scope, cloud: Filters) -> Any:
    account_only(scope, acc)
    gpus = [gpu_v2(g) for g in acc.catalog.values()]
    return {"gpus": [g for g in gpus if cloud is None or g[cloud.lower()]]}


@router.get("/catalog/gpus/{id}", response_model=models.GpuType)
def get_gpu(id: str, acc: Acc, scope: Scope, cloud: Filters) -> Any:  # noqa: A002
    account_only(scope, acc)
    if id not in acc.catalog:
        raise ApiError(404, "resource not found")
    return gpu_v2(acc.catalog[id])


def data_center(acc: Account, include: str | None) -> dict[str, Any]:
    wanted = listed(include, "include", ("GPU_AVAILABILITY", "CPU_AVAILABILITY"))
    extra: dict[str, Any] = {}
    if "GPU_AVAILABILITY" in wanted:
        extra["gpuAvailability"] = [{"id": g.id, "name": g.name,
                                     "availability": g.availability()}
                                    for g in acc.catalog.values()]
    if "CPU_AVAILABILITY" in wanted:
        extra["cpuAvailability"] = []
    return {**DATA_CENTER, **extra}


@router.get("/catalog/datacenters", response_model=models.ListDataCentersResponse,
            response_model_exclude_none=True)
def list_data_centers(acc: Acc, scope: Scope, include: CatalogQuery = None,
                      regions: CatalogQuery = None, networkVolumeTypes: CatalogQuery = None,
                      compliance: CatalogQuery = None, globalNetwork: bool | None = None) -> Any:
    account_only(scope)
    wanted_regions = listed(regions, "regions", pattern=r"[A-Z_]+")
    listed(networkVolumeTypes, "networkVolumeTypes", ("STANDARD", "HIGH_PERFORMANCE"))
    listed(compliance, "compliance", pattern=r"[A-Z0-9_]+")
    center = data_center(acc, include)
    matches = ((not wanted_regions or center["region"] in wanted_regions)
               and (compliance is None and networkVolumeTypes is None)
               and globalNetwork in (None, False))
    return {"dataCenters": [center] if matches else []}


@router.get("/catalog/datacenters/{id}", response_model=models.DataCenter,
            response_model_exclude_none=True)
def get_data_center(id: str, acc: Acc, scope: Scope,  # noqa: A002
                    include: CatalogQuery = None) -> Any:
    account_only(scope)
    if id != DATA_CENTER["id"]:
        raise ApiError(404, "resource not found")
    return data_center(acc, include)


@router.get("/catalog/cpus", response_model=models.ListCpuTypesResponse)
def list_cpus(scope: Scope, include: CatalogQuery = None, product: CatalogQuery = None,
              vcpuCount: Annotated[int | None, Query(ge=2)] = None) -> Any:
    account_only(scope)
    listed(include, "include", ("AVAILABILITY",), max_items=1)
    listed(product, "product", ("POD", "SERVERLESS"))
    return {"cpus": []}  # CPU pods are not emulated


@router.get("/catalog/cpus/{id}", response_model=models.CpuType)
def get_cpu(id: str, scope: Scope, include: CatalogQuery = None,  # noqa: A002
            product: CatalogQuery = None,
            vcpuCount: Annotated[int | None, Query(ge=2)] = None) -> Any:
    account_only(scope)
    raise ApiError(404, "resource not found (localpod emulates no CPU types)")


@router.get("/catalog/templates", response_model=models.ListTemplatesResponse)
def list_public_templates(acc: Acc, scope: Scope,
                          source: Literal["official", "verified", "community"] = "official"
                          ) -> Any:
    account_only(scope)
    return {"templates": [t for t in acc.templates if t["public"]] if source == "official"
            else []}


# -- templates --


@router.get("/templates", response_model=models.ListTemplatesResponse)
def list_templates(acc: Acc, scope: Scope) -> Any:
    account_only(scope)
    return {"templates": acc.templates}


def find_template(acc: Account, template_id: str) -> dict[str, Any]:
    found = next((t for t in acc.templates if t["id"] == template_id), None)
    if found is None:
        raise ApiError(404, "resource not found")
    return found


def template_changes(body: models.TemplateFields) -> dict[str, Any]:
    changes = body.model_dump(exclude_unset=True, exclude={"mounts"})
    if body.mounts is not None and body.mounts.persistent is not None:
        changes["mounts"] = {"persistent": body.mounts.persistent.model_dump()}
    return changes


@router.post("/templates", status_code=201, response_model=models.Template)
def create_template(body: models.CreateTemplateRequest, acc: Acc, scope: Scope) -> Any:
    account_only(scope)
    with acc.lock:
        if any(t["name"] == body.name for t in acc.templates):
            raise ApiError(400, f"a template named {body.name!r} exists: names are unique")
        acc.check_registry(body.registry)
        created = {**template(new_id(10), body.name, body.image), "mounts": {},
                   **body.model_dump(exclude={"mounts"}, exclude_none=True),
                   **template_changes(body)}
        acc.templates.append(created)
        return created


@router.patch("/templates/{id}", response_model=models.Template)
def update_template(id: str, body: models.UpdateTemplateRequest, acc: Acc,  # noqa: A002
                    scope: Scope) -> Any:
    account_only(scope)
    with acc.lock:
        found = find_template(acc, id)
        changes = template_changes(body)
        acc.check_registry(changes.get("registry"))
        if any(t["name"] == changes.get("name") and t is not found for t in acc.templates):
            raise ApiError(400, f"a template named {changes['name']!r} exists")
        found.update(changes)
        return found


@router.get("/templates/{id}", response_model=models.Template)
def get_template(id: str, acc: Acc, scope: Scope) -> Any:  # noqa: A002
    account_only(scope)
    return find_template(acc, id)


@router.delete("/templates/{id}", status_code=204, response_class=Response)
def delete_template(id: str, acc: Acc, scope: Scope) -> Response:  # noqa: A002
    account_only(scope)
    with acc.lock:
        acc.templates.remove(find_template(acc, id))
    return Response(status_code=204)


# -- container registry auths --


def registry_v2(rid: str, auth: dict[str, str]) -> dict[str, Any]:
    return {"id": rid, "name": auth["name"]}  # never the username's password


@router.get("/registries", response_model=models.ListRegistriesResponse)
def list_registries(acc: Acc, scope: Scope) -> Any:
    account_only(scope)
    with acc.lock:
        return {"registries": [registry_v2(k, v) for k, v in acc.registries.items()]}


@router.post("/registries", status_code=201, response_model=models.Registry)
def create_registry(body: models.CreateRegistryRequest, acc: Acc, scope: Scope) -> Any:
    account_only(scope)
    with acc.lock:
        if any(r["name"] == body.name for r in acc.registries.values()):
            raise ApiError(400, f"a registry auth named {body.name!r} exists: names are unique")
        rid = new_id(10)
        acc.registries[rid] = {"name": body.name, "username": body.username,
                               "password": body.password}
        return registry_v2(rid, acc.registries[rid])


def found_registry(acc: Account, rid: str) -> dict[str, str]:
    if rid not in acc.registries:
        raise ApiError(404, "resource not found")
    return acc.registries[rid]


@router.get("/registries/{id}", response_model=models.Registry)
def get_registry(id: str, acc: Acc, scope: Scope) -> Any:  # noqa: A002
    account_only(scope)
    with acc.lock:
        return registry_v2(id, found_registry(acc, id))


@router.delete("/registries/{id}", status_code=204, response_class=Response)
def delete_registry(id: str, acc: Acc, scope: Scope) -> Response:  # noqa: A002
    account_only(scope)
    with acc.lock:
        found_registry(acc, id)
        del acc.registries[id]
    return Response(status_code=204)


# -- account --


@router.get("/account/ssh-keys", response_model=models.SshKeys)
def get_ssh_keys(acc: Acc, scope: Scope) -> Any:
    account_only(scope)
    return {"keys": acc.public_key.splitlines()}


@router.put("/account/ssh-keys", response_model=models.SshKeys)
def put_ssh_keys(body: models.UpdateSshKeysRequest, acc: Acc, scope: Scope) -> Any:
    account_only(scope)
    acc.public_key = "\n".join(body.keys)
    return {"keys": body.keys}


# -- network volumes --


@router.get("/network-volumes", response_model=models.ListNetworkVolumesResponse)
def list_network_volumes(acc: Acc, scope: Scope) -> Any:
    account_only(scope)
    with acc.lock:
        return {"networkVolumes": [dict(v) for v in acc.volumes.values()]}


@router.post("/network-volumes", status_code=201, response_model=models.NetworkVolume)
def create_network_volume(body: models.CreateNetworkVolumeRequest, acc: Acc,
                          scope: Scope) -> Any:
    account_only(scope)
    return acc.create_volume(body.name, body.size, body.dataCenter, body.type)


@router.get("/network-volumes/{id}", response_model=models.NetworkVolume)
def get_network_volume(id: str, acc: Acc, scope: Scope) -> Any:  # noqa: A002
    account_only(scope)
    return acc.get_volume(id)


@router.patch("/network-volumes/{id}", response_model=models.NetworkVolume)
def update_network_volume(id: str, body: models.UpdateNetworkVolumeRequest,  # noqa: A002
                          acc: Acc, scope: Scope) -> Any:
    account_only(scope)
    return acc.update_volume(id, body.name, body.size)


@router.delete("/network-volumes/{id}", status_code=204, response_class=Response)
def delete_network_volume(id: str, acc: Acc, scope: Scope) -> Response:  # noqa: A002
    account_only(scope)
    acc.delete_volume(id)
    return Response(status_code=204)
