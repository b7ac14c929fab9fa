"""localpod's HTTP server on 127.0.0.1: RunPod REST v2 (/v2/...) and the GraphQL subset (/graphql)
over an Account, plus /_localpod/faults and /_localpod/requests for tests.
"""

from __future__ import annotations

import json
import sys
import threading
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from graphql import (
    FieldNode,
    GraphQLError,
    OperationDefinitionNode,
    SelectionSetNode,
    parse,
    value_from_ast_untyped,
)

from host_tools.emulators.localpod.state import (
    NO_CAPACITY,
    Account,
    ApiError,
    Fault,
    GpuStock,
    PodRecord,
)

HOST = "127.0.0.1"
MAX_BODY = 1 << 20
CREATE_KEYS = {"name", "image", "args", "disk", "ports", "env", "registry", "cloud", "gpu", "cpu",
               "dataCenterIds", "globalNetworking", "mounts", "startSsh", "startJupyter",
               "templateId"}
DEPLOY_KEYS = {"name", "imageName", "templateId", "gpuTypeId", "gpuTypeIdList", "gpuCount",
               "cloudType", "containerDiskInGb", "volumeInGb", "volumeMountPath", "volumeKey",
               "networkVolumeId", "ports", "port", "env", "dockerArgs", "startSsh", "startJupyter",
               "supportPublicIp", "dataCenterId", "countryCode", "minVcpuCount", "minMemoryInGb",
               "minDisk", "minDownload", "minUpload", "cudaVersion", "allowedCudaVersions",
               "minCudaVersion", "containerRegistryAuthId", "computeType"}


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
             "type": _port_type(pod, private)} for private, public in pod.mappings.items()]}
                    if running else None),
        "createdAt": pod.created_at, "startedAt": pod.started_at,
    }


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
        "createdAt": pod.created_at,
        "machine": {"gpuDisplayName": pod.gpu_id, "gpuTypeId": pod.gpu_id,
                    "podHostId": f"{pod.id}-localpod", "dataCenterId": "LOCAL-1"},
        "runtime": ({"uptimeInSeconds": 0, "ports": [
            {"ip": HOST, "isIpPublic": True, "privatePort": private, "publicPort": public,
             "type": _port_type(pod, private)} for private, public in pod.mappings.items()],
            "gpus": [], "container": {"cpuPercent": 0, "memoryPercent": 0}}
                    if running else None),
    }


def _port_type(pod: PodRecord, private: int) -> str:
    return next((p.split("/")[1] for p in pod.ports if p.split("/")[0] == str(private)), "tcp")


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


def gpu_graphql(g: GpuStock) -> dict[str, Any]:
    def lowest(args: dict[str, Any]) -> dict[str, Any] | None:
        inp = args.get("input") or {}
        count = int(inp.get("gpuCount") or 1)
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


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms stall
    server: LocalPodServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        pass  # the request log (/_localpod/requests) replaces stderr noise

    @property
    def account(self) -> Account:
        return self.server.account

    def _reply(self, status: int, body: Any = None, headers: dict[str, str] | None = None,
               content_type: str = "application/json") -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        if data:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)
        with self.account.lock:
            self.account.requests.append({"method": self.command, "path": urlsplit(self.path).path,
                                          "target": self.path,
                                          "status": status,
                                          "user_agent": self.headers.get("User-Agent", ""),
                                          "accept": self.headers.get("Accept", "")})

    def _problem(self, exc: ApiError) -> None:
        title = {400: "Bad Request", 401: "Unauthorized", 402: "Payment Required",
                 403: "Forbidden", 404: "Not Found", 409: "Conflict",
                 422: "Unprocessable Entity", 429: "Too Many Requests"}.get(
                     exc.status, "Internal Server Error")
        self._reply(exc.status, {"title": title, "status": exc.status, "detail": exc.message},
                    exc.headers, "application/problem+json")

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ApiError(413, f"body of {length} bytes is over the {MAX_BODY} limit")
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise ApiError(400, "the body is not valid JSON") from None

    def _key(self, query: dict[str, list[str]]) -> str | None:
        auth = self.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        keys = query.get("api_key")
        return keys[0] if keys else None  # GraphQL's legacy style, accepted

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        try:
            body = self._body()
            if parts.path.startswith("/_localpod/"):
                self._control(parts.path, body)
            elif parts.path == "/graphql" and self.command == "POST":
                self._graphql(body, self._key(query))
            elif parts.path.startswith("/v2/"):
                self._rest(parts.path, query, body)
            else:
                raise ApiError(404, f"no such endpoint: {self.command} {parts.path}")
        except ApiError as exc:
            self._problem(exc)

    def _fault(self, target: str, graphql: bool = False) -> Fault | None:
        fault = self.account.take_fault(target)
        if fault is None or fault.kind == "create_then_500":
            return fault
        headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
        message = NO_CAPACITY if fault.kind == "no_capacity" else fault.message
        status = 400 if fault.kind == "no_capacity" and not graphql else \
            200 if fault.kind == "no_capacity" else fault.status
        if graphql:
            self._reply(status, {"errors": [{"message": message}], "data": None}, headers)
        else:
            self._problem(ApiError(status, message, headers))
        return fault

    # -- test control --

    def _control(self, path: str, body: Any) -> None:
        if path == "/_localpod/faults" and self.command == "POST":
            try:
                fault = Fault(**(body or {}))
            except TypeError as exc:
                raise ApiError(422, f"bad fault: {exc}") from None
            with self.account.lock:
                self.account.faults.append(fault)
            self._reply(201, asdict(fault))
        elif path == "/_localpod/faults" and self.command == "DELETE":
            with self.account.lock:
                self.account.faults.clear()
            self._reply(204)
        elif path == "/_localpod/requests" and self.command == "GET":
            with self.account.lock:
                self._reply(200, list(self.account.requests))
        else:
            raise ApiError(404, f"no such endpoint: {self.command} {path}")

    # -- REST v2 --

    def _rest(self, path: str, query: dict[str, list[str]], body: Any) -> None:
        scope = self.account.key_scope(self._key({}))
        if scope is None:
            raise ApiError(401, "missing bearer token" if not self._key({}) else "invalid token")
        route = path[len("/v2"):].rstrip("/")
        if self._fault(f"{self.command} {path}"):
            return
        segments = route.split("/")[1:]
        acc = self.account
        if route == "/pods" and self.command == "GET":
            self._reply(200, {"pods": [pod_v2(p) for p in acc.list_pods(scope)]})
        elif route == "/pods" and self.command == "POST":
            req = _v2_create(body)
            fault = self._fault(f"CREATE {path}")
            if fault is not None and fault.kind != "create_then_500":
                return
            pod = acc.create_pod(req, scope)
            if fault is not None and fault.kind == "create_then_500":
                raise ApiError(500, "Something went wrong. Please try again later or contact "
                               "support.")
            self._reply(201, pod_v2(pod))
        elif len(segments) == 2 and segments[0] == "pods" and self.command == "GET":
            self._reply(200, pod_v2(acc.get_pod(segments[1], scope)))
        elif len(segments) == 2 and segments[0] == "pods" and self.command == "DELETE":
            acc.action(segments[1], "terminate", scope)
            self._reply(204)
        elif len(segments) == 3 and segments[::2] == ["pods", "action"] \
                and self.command == "POST":
            action = (body or {}).get("action") if isinstance(body, dict) else None
            if not isinstance(action, str):
                raise ApiError(422, "Request validation failed: body needs \"action\"")
            pod = acc.action(segments[1], action, scope)
            self._reply(204) if action == "terminate" else self._reply(200, pod_v2(pod))
        elif route == "/catalog/gpus" and self.command == "GET":
            if scope != "account" or acc.catalog_denied:
                raise ApiError(403, "access denied")
            if "include" in query and "product" not in query:
                raise ApiError(400, "include=AVAILABILITY requires product")
            cloud = (query.get("cloud") or [""])[0].upper()
            gpus = [gpu_v2(g) for g in acc.catalog.values()]
            if cloud in ("SECURE", "COMMUNITY"):
                gpus = [g for g in gpus if g[cloud.lower()]]
            self._reply(200, {"gpus": gpus})
        elif route == "/templates" and self.command == "GET":
            if scope != "account":
                raise ApiError(403, "access denied")
            self._reply(200, {"templates": acc.templates})
        else:
            raise ApiError(404, "resource not found")

    # -- GraphQL --

    def _graphql(self, body: Any, key: str | None) -> None:
        if not isinstance(body, dict) or not isinstance(body.get("query"), str):
            raise ApiError(400, 'the body needs a "query" string')
        try:
            document = parse(body["query"])
        except GraphQLError as exc:
            self._reply(400, {"errors": [{"message": f"Syntax Error: {exc.message}"}]})
            return
        ops = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
        if len(ops) != 1:
            self._reply(400, {"errors": [{"message": "exactly one operation is supported"}]})
            return
        op, variables = ops[0], body.get("variables") or {}
        scope = self.account.key_scope(key)
        fields = [s for s in op.selection_set.selections if isinstance(s, FieldNode)]
        public = all(f.name.value == "gpuTypes" for f in fields)
        if scope is None and not public:
            self._reply(401, {"errors": [{"message": "Unauthorized"}]})
            return
        data: dict[str, Any] = {}
        for node in fields:
            name = node.name.value
            if self._fault(f"GRAPHQL {name}", graphql=True):
                return
            args = {a.name.value: value_from_ast_untyped(a.value, variables)
                    for a in node.arguments or ()}
            try:
                value = self._resolve(op.operation.value, name, args, scope or "public")
            except ApiError as exc:
                # Schema errors are HTTP 400 before any resolver runs; resolver errors are 200.
                schema = exc.status == 400 and ("not defined" in exc.message
                                                or "Cannot query" in exc.message)
                status = 400 if schema else exc.status if exc.status in (401, 403) else 200
                self._reply(status, {"errors": [{"message": exc.message, "path": [name]}],
                                     "data": {name: None}}, exc.headers)
                return
            data[node.alias.value if node.alias else name] = _select(value, node.selection_set,
                                                                     variables)
        self._reply(200, {"data": data})

    def _resolve(self, kind: str, name: str, args: dict[str, Any], scope: str) -> Any:
        acc = self.account
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
            pod = acc.create_pod(_graphql_create(inp), scope)
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


def _v2_create(body: Any) -> dict[str, Any]:
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


def _graphql_create(inp: dict[str, Any]) -> dict[str, Any]:
    if not inp.get("name"):
        raise ApiError(400, "name is required")
    if not inp.get("imageName") and not inp.get("templateId"):
        raise ApiError(400, "imageName or templateId is required")
    cloud = str(inp.get("cloudType") or "ALL")
    ports = inp.get("ports")
    return {"name": inp["name"], "image": inp.get("imageName"),
            "template_id": inp.get("templateId"), "gpu_id": inp.get("gpuTypeId") or "",
            "gpu_count": int(inp.get("gpuCount") or 1),
            "cloud": "COMMUNITY" if cloud == "COMMUNITY" else "SECURE",
            "ports": [p.strip() for p in ports.split(",") if p.strip()] if ports else None,
            "env": {e["key"]: e["value"] for e in inp.get("env") or []},
            "disk_gb": inp.get("containerDiskInGb"), "volume_gb": inp.get("volumeInGb"),
            "volume_path": inp.get("volumeMountPath")}


class LocalPodServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, account: Account, port: int = 0) -> None:
        super().__init__((HOST, port), Handler)
        self.account = account
        account.api_base = self.url

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-answer is normal under fault tests; anything else is shown.
        exc = sys.exc_info()[1]
        if not isinstance(exc, ConnectionError):
            super().handle_error(request, client_address)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server_port}"

    @property
    def rest_url(self) -> str:
        return f"{self.url}/v2"

    @property
    def graphql_url(self) -> str:
        return f"{self.url}/graphql"

    def start_background(self) -> threading.Thread:
        # A short poll interval keeps shutdown() (and so each test's teardown) fast.
        thread = threading.Thread(target=self.serve_forever, args=(0.05,), name="localpod",
                                  daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self.account.close()
