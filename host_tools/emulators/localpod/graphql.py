"""localpod's RunPod GraphQL subset (/graphql): gpuTypes, myself, pod and the pod mutations the
runpod SDK and our client send, answered from an Account with RunPod's status conventions
(schema errors 400, resolver errors 200 with errors[]).
"""

from __future__ import annotations

from typing import Any

from graphql import (
    FieldNode,
    GraphQLError,
    OperationDefinitionNode,
    SelectionSetNode,
    parse,
    value_from_ast_untyped,
)

from host_tools.emulators.base import HOST
from host_tools.emulators.localpod.common import ApiError, GpuStock
from host_tools.emulators.localpod.pods import PodRecord
from host_tools.emulators.localpod.state import Account

DEPLOY_KEYS = {"name", "imageName", "templateId", "gpuTypeId", "gpuTypeIdList", "gpuCount",
               "cloudType", "containerDiskInGb", "volumeInGb", "volumeMountPath", "volumeKey",
               "networkVolumeId", "ports", "port", "env", "dockerArgs", "startSsh", "startJupyter",
               "supportPublicIp", "dataCenterId", "countryCode", "minVcpuCount", "minMemoryInGb",
               "minDisk", "minDownload", "minUpload", "cudaVersion", "allowedCudaVersions",
               "minCudaVersion", "containerRegistryAuthId", "computeType"}

Answer = tuple[int, dict[str, Any], dict[str, str]]  # status, JSON body, headers


def pod_graphql(pod: PodRecord) -> dict[str, Any]:
    running = pod.status == "RUNNING"
    desired = {"PROVISIONING": "RUNNING", "STARTING": "RUNNING", "RUNNING": "RUNNING",
               "EXITED": "EXITED", "ERROR": "DEAD", "TERMINATED": "TERMINATED"}[pod.status]
    return {
        "id": pod.id, "name": pod.name, "desiredStatus": desired, "imageName": pod.image,
        "containerDiskInGb": pod.disk_gb, "costPerHr": pod.cost(), "dockerArgs": "",
        "dockerId": None, "env": [f"{k}={v}" for k, v in pod.env.items()],
        "gpuCount": pod.gpu_count, "lastStatusChange": pod.status, "machineId": "localmachine1",
        "memoryInGb": 16, "podType": "RESERVED", "port": None, "ports": ",".join(pod.ports),
        "uptimeSeconds": 0, "vcpuCount": 2, "volumeInGb": pod.volume_gb,
        "volumeMountPath": pod.volume_path, "templateId": pod.template_id,
        "networkVolumeId": pod.network_volume, "createdAt": pod.created_at,
        "machine": {"gpuDisplayName": pod.gpu_id, "gpuTypeId": pod.gpu_id,
                    "podHostId": f"{pod.id}-localpod", "dataCenterId": "LOCAL-1"},
        "runtime": ({"uptimeInSeconds": 0, "ports": [
            {"ip": HOST, "isIpPublic": True, "privatePort": private, "publicPort": public,
             "type": pod.port_type(private)} for private, public in pod.mappings.items()],
            "gpus": [], "container": {"cpuPercent": 0, "memoryPercent": 0}}
                    if running else None),
    }


def gpu_graphql(g: GpuStock) -> dict[str, Any]:
    def lowest(args: dict[str, Any]) -> dict[str, Any] | None:
        given = args.get("input")
        inp: dict[str, Any] = given if isinstance(given, dict) else {}
        count = inp["gpuCount"] if isinstance(inp.get("gpuCount"), int) else 1
        secure = inp.get("secureCloud")
        price = g.secure_price if secure else g.community_price if secure is False else min(
            p for p in (g.secure_price, g.community_price, 99.0) if p is not None)
        stock = {"HIGH": "High", "MEDIUM": "Medium", "LOW": "Low"}.get(g.availability())
        return {"minimumBidPrice": None, "uninterruptablePrice": price,
                "stockStatus": stock if g.free >= count else None,
                "availableGpuCounts": [n for n in (1, 2, 4, 8) if n <= g.free],
                "gpuName": g.name, "gpuTypeId": g.id}
    return {"id": g.id, "displayName": g.name, "manufacturer": g.manufacturer,
            "memoryInGb": g.memory_gb, "cudaCores": 0, "secureCloud": g.secure_price is not None,
            "communityCloud": g.community_price is not None, "securePrice": g.secure_price,
            "communityPrice": g.community_price, "maxGpuCount": g.max_count,
            "oneMonthPrice": None, "threeMonthPrice": None, "oneWeekPrice": None,
            "communitySpotPrice": None, "secureSpotPrice": None, "lowestPrice": lowest}


def graphql(acc: Account, body: Any, key: str | None) -> Answer:
    """Answer a POST /graphql; ApiError only for a body without a query (a REST-style 400)."""
    if not isinstance(body, dict) or not isinstance(body.get("query"), str):
        raise ApiError(400, 'the body needs a "query" string')
    try:
        document = parse(body["query"])
    except GraphQLError as exc:
        return 400, {"errors": [{"message": f"Syntax Error: {exc.message}"}]}, {}
    ops = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    if len(ops) != 1:
        return 400, {"errors": [{"message": "exactly one operation is supported"}]}, {}
    op, variables = ops[0], body.get("variables") or {}
    scope = acc.key_scope(key)
    fields = [s for s in op.selection_set.selections if isinstance(s, FieldNode)]
    public = all(f.name.value == "gpuTypes" for f in fields)
    if scope is None and not public:
        return 401, {"errors": [{"message": "Unauthorized"}]}, {}
    data: dict[str, Any] = {}
    for node in fields:
        name = node.name.value
        if (fault := acc.take_fault(f"GRAPHQL {name}")) is not None:
            err = fault.error(graphql=True)
            return err.status, {"errors": [{"message": err.message}], "data": None}, err.headers
        args = {a.name.value: value_from_ast_untyped(a.value, variables)
                for a in node.arguments or ()}
        try:
            value = _resolve(acc, op.operation.value, name, args, scope or "public")
        except ApiError as exc:
            # Schema errors are HTTP 400 before any resolver runs; resolver errors are 200.
            schema = exc.status == 400 and ("not defined" in exc.message
                                            or "Cannot query" in exc.message)
            status = 400 if schema else exc.status if exc.status in (401, 403) else 200
            return status, {"errors": [{"message": exc.message, "path": [name]}],
                            "data": {name: None}}, exc.headers
        data[node.alias.value if node.alias else name] = _select(value, node.selection_set,
                                                                 variables)
    return 200, {"data": data}, {}


def _resolve(acc: Account, kind: str, name: str, args: dict[str, Any], scope: str) -> Any:
    inp = args.get("input") if isinstance(args.get("input"), dict) else {}
    assert isinstance(inp, dict)
    if kind == "query" and name == "gpuTypes":
        if acc.catalog_denied:
            raise ApiError(403, "access denied")
        ids = {inp["id"]} if inp.get("id") else set(inp.get("ids") or []) or None
        return [gpu_graphql(g) for g in acc.catalog.values() if ids is None or g.id in ids]
    if kind == "query" and name == "myself":
        return {"id": "localuser", "pubKey": acc.public_key,
                "pods": [pod_graphql(p) for p in acc.list_pods(scope)]}
    if kind == "query" and name == "pod":
        try:
            return pod_graphql(acc.get_pod(str(inp.get("podId") or ""), scope))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
    if kind == "mutation" and name == "podFindAndDeployOnDemand":
        unknown = sorted(set(inp) - DEPLOY_KEYS)
        if unknown:
            raise ApiError(400, f'Field "{unknown[0]}" is not defined by type '
                           '"PodFindAndDeployOnDemandInput".')
        pod = acc.create_pod(_create_request(inp), scope)
        return pod_graphql(pod)
    if kind == "mutation" and name in ("podStop", "podResume", "podTerminate"):
        allowed = {"podStop": {"podId", "incrementVersion"},
                   "podResume": {"podId", "gpuCount", "syncMachine", "computeType"},
                   "podTerminate": {"podId"}}[name]
        unknown = sorted(set(inp) - allowed)
        if unknown:
            raise ApiError(400, f'Field "{unknown[0]}" is not defined by type '
                           f'"{name[0].upper()}{name[1:]}Input".')
        action = {"podStop": "stop", "podResume": "start", "podTerminate": "terminate"}[name]
        try:
            pod = acc.action(str(inp.get("podId") or ""), action, scope)
        except ApiError as exc:
            if exc.status == 404:
                raise ApiError(200, "pod not found") from None
            raise
        return None if name == "podTerminate" else pod_graphql(pod)
    raise ApiError(400, f'Cannot query field "{name}" on type '
                   f'"{"Mutation" if kind == "mutation" else "Query"}".')


def _select(value: Any, selection: SelectionSetNode | None,
            variables: dict[str, Any] | None = None) -> Any:
    """Project a resolved value onto the query's selection set; callables take field args."""
    if selection is None or value is None:
        return value
    if isinstance(value, list):
        return [_select(v, selection, variables) for v in value]
    out: dict[str, Any] = {}
    for node in selection.selections:
        if not isinstance(node, FieldNode):
            continue
        item = value.get(node.name.value) if isinstance(value, dict) else None
        if callable(item):
            item = item({a.name.value: value_from_ast_untyped(a.value, variables)
                         for a in node.arguments or ()})
        out[node.alias.value if node.alias else node.name.value] = _select(
            item, node.selection_set, variables)
    return out


def _create_request(inp: dict[str, Any]) -> dict[str, Any]:
    """A podFindAndDeployOnDemand input as Account.create_pod's request."""
    if not inp.get("name"):
        raise ApiError(400, "name is required")
    if not inp.get("imageName") and not inp.get("templateId"):
        raise ApiError(400, "imageName or templateId is required")
    cloud = inp.get("cloudType") or "ALL"
    ports, env = inp.get("ports"), inp.get("env") or []
    if not isinstance(env, list) or not all(
            isinstance(e, dict) and set(e) == {"key", "value"} for e in env):
        raise ApiError(400, "env must be a list of {key, value}")
    return {"name": inp["name"], "image": inp.get("imageName"),
            "template_id": inp.get("templateId"), "gpu_id": inp.get("gpuTypeId") or "",
            "gpu_count": inp.get("gpuCount"),
            "cloud": "SECURE" if cloud == "ALL" else cloud,
            "ports": ([p.strip() for p in ports.split(",") if p.strip()]
                      if isinstance(ports, str) else ports) or None,
            "env": {e["key"]: e["value"] for e in env},
            "disk_gb": inp.get("containerDiskInGb"), "volume_gb": inp.get("volumeInGb"),
            "volume_path": inp.get("volumeMountPath"),
            "network_volume": inp.get("networkVolumeId"),
            "data_center_ids": [inp["dataCenterId"]] if inp.get("dataCenterId") else None}
