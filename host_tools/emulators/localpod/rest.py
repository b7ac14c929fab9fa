"""localpod's RunPod REST v2 (/v2/...): pods and their actions, the GPU catalog and templates,
answered from an Account as RunPod's JSON; errors are raised as ApiError (problem+json).
"""

from __future__ import annotations

from typing import Any

from host_tools.emulators.base import HOST
from host_tools.emulators.localpod.state import (
    SERVER_ERROR,
    Account,
    ApiError,
    GpuStock,
    PodRecord,
)

CREATE_KEYS = {"name", "image", "args", "disk", "ports", "env", "registry", "cloud", "gpu", "cpu",
               "dataCenterIds", "globalNetworking", "mounts", "startSsh", "startJupyter",
               "templateId"}


def pod_v2(pod: PodRecord) -> dict[str, Any]:
    running = pod.status == "RUNNING"
    return {
        "id": pod.id, "name": pod.name, "image": pod.image, "args": "", "disk": pod.disk_gb,
        "ports": pod.ports, "env": pod.env, "registry": None, "status": pod.status,
        "actions": pod.actions,
        "mounts": {"persistent": {"size": pod.volume_gb, "path": pod.volume_path}},
        "gpu": {"id": pod.gpu_id, "count": pod.gpu_count}, "cloud": pod.cloud,
        "dataCenterId": "LOCAL-1", "cudaVersion": "12.8", "template": pod.template_id,
        "cost": pod.cost(), "locked": False, "globalNetworking": {"enabled": False},
        "ssh": ({"direct": {"host": HOST, "port": pod.mappings[22], "username": "runner",
                            "command": f"ssh runner@{HOST} -p {pod.mappings[22]}"}}
                if running and 22 in pod.mappings else None),
        "runtime": ({"uptime": 0, "ports": [
            {"private": private, "public": public, "ip": HOST,
             "type": pod.port_type(private)} for private, public in pod.mappings.items()]}
                    if running else None),
        "createdAt": pod.created_at, "startedAt": pod.started_at,
    }


def gpu_v2(g: GpuStock) -> dict[str, Any]:
    return {"id": g.id, "name": g.name, "pool": "LOCAL", "manufacturer": g.manufacturer,
            "memory": g.memory_gb, "secure": g.secure_price is not None,
            "community": g.community_price is not None,
            "price": {"secure": g.secure_price, "community": g.community_price},
            "maxCount": {"secure": g.max_count, "community": g.max_count},
            "availability": g.availability(),
            "dataCenters": [{"id": "LOCAL-1", "name": "localpod", "availability":
                             g.availability()}],
            "cudaVersions": [{"version": "12.8", "available": True}]}


def rest(acc: Account, method: str, path: str, query: dict[str, list[str]], body: Any,
         key: str | None) -> tuple[int, Any]:
    """Answer a /v2 request as (status, JSON or None for no body)."""
    scope = acc.key_scope(key)
    if scope is None:
        raise ApiError(401, "missing bearer token" if not key else "invalid token")
    route = path[len("/v2"):].rstrip("/")
    if (fault := acc.take_fault(f"{method} {path}")) is not None:
        raise fault.error(graphql=False)
    segments = route.split("/")[1:]
    if route == "/pods" and method == "GET":
        return 200, {"pods": [pod_v2(p) for p in acc.list_pods(scope)]}
    if route == "/pods" and method == "POST":
        req = create_request(body)
        fault = acc.take_fault(f"CREATE {path}")
        if fault is not None and fault.kind != "create_then_500":
            raise fault.error(graphql=False)
        pod = acc.create_pod(req, scope)
        if fault is not None:
            raise ApiError(500, SERVER_ERROR)
        return 201, pod_v2(pod)
    if len(segments) == 2 and segments[0] == "pods" and method == "GET":
        return 200, pod_v2(acc.get_pod(segments[1], scope))
    if len(segments) == 2 and segments[0] == "pods" and method == "DELETE":
        acc.action(segments[1], "terminate", scope)
        return 204, None
    if len(segments) == 3 and segments[::2] == ["pods", "action"] and method == "POST":
        action = body.get("action") if isinstance(body, dict) else None
        if not isinstance(action, str):
            raise ApiError(422, "Request validation failed: body needs \"action\"")
        pod = acc.action(segments[1], action, scope)
        return (204, None) if action == "terminate" else (200, pod_v2(pod))
    if route == "/catalog/gpus" and method == "GET":
        if scope != "account" or acc.catalog_denied:
            raise ApiError(403, "access denied")
        if "include" in query and "product" not in query:
            raise ApiError(400, "include=AVAILABILITY requires product")
        cloud = (query.get("cloud") or [""])[0].upper()
        gpus = [gpu_v2(g) for g in acc.catalog.values()]
        if cloud in ("SECURE", "COMMUNITY"):
            gpus = [g for g in gpus if g[cloud.lower()]]
        return 200, {"gpus": gpus}
    if route == "/templates" and method == "GET":
        if scope != "account":
            raise ApiError(403, "access denied")
        return 200, {"templates": acc.templates}
    raise ApiError(404, "resource not found")


def create_request(body: Any) -> dict[str, Any]:
    """A POST /v2/pods body, validated, as Account.create_pod's request."""
    if not isinstance(body, dict):
        raise ApiError(422, "Request validation failed: the body must be a JSON object")
    unknown = sorted(set(body) - CREATE_KEYS)
    if unknown:
        raise ApiError(422, f"Request validation failed: unknown field {unknown[0]!r}")
    if not body.get("name"):
        raise ApiError(422, "Request validation failed: \"name\" is required")
    if not body.get("image") and not body.get("templateId"):
        raise ApiError(422, "Request validation failed: \"image\" is required without "
                       "\"templateId\"")
    gpu = body.get("gpu")
    if not isinstance(gpu, dict) or not gpu.get("id"):
        raise ApiError(422, "Request validation failed: \"gpu.id\" is required (CPU pods are "
                       "not emulated)")
    mounts = (body.get("mounts") or {}).get("persistent") or {}
    return {"name": body["name"], "image": body.get("image"), "template_id":
            body.get("templateId"), "gpu_id": gpu["id"], "gpu_count": int(gpu.get("count") or 1),
            "cloud": body.get("cloud") or "SECURE", "ports": body.get("ports"),
            "env": body.get("env"), "disk_gb": body.get("disk"),
            "volume_gb": mounts.get("size"), "volume_path": mounts.get("path")}
