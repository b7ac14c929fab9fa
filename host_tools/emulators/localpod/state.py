"""localpod's account: GPU catalog, templates, pods and their RunPod status machine, API keys,
container registry auths and secrets (`{{ RUNPOD_SECRET_<name> }}` in a pod's env resolved into
its container's env, never into an answer), plus the faults and request log tests steer
(base.Controls); pods run through a PodBackend (records only, or real containers).
"""

from __future__ import annotations

import re
import secrets
import socket
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal, Protocol

from appliance.settings import pod_ports
from host_tools.emulators.base import HOST, Controls, FaultSpecError, HttpError, RegexFault

NO_CAPACITY = ("There are no longer any instances available with the requested specifications. "
               "Please refresh and try again.")
NO_FREE_GPUS = "There are not enough free GPUs on the host machine to start this pod."
SERVER_ERROR = "Something went wrong. Please try again later or contact support."
DEFAULT_IMAGE = "localhost/chessbot-appliance:latest"
RATE_LIMIT = (2000, 10)  # REST requests per window of seconds: RunPod's RateLimit-Policy
ACTIONS = {"PROVISIONING": ["stop", "terminate"], "STARTING": ["stop", "terminate"],
           "RUNNING": ["stop", "restart", "terminate"], "EXITED": ["start", "terminate"],
           "ERROR": ["start", "terminate"], "TERMINATED": []}


class ApiError(HttpError):
    """A RunPod API answer other than success: problem+json on REST, errors[] on GraphQL."""


@dataclass
class GpuStock:
    id: str
    name: str
    memory_gb: int
    secure_price: float | None
    community_price: float | None
    free: int  # GPUs free to rent right now (both clouds together, for simplicity)
    max_count: int = 8
    manufacturer: str = "NVIDIA"

    def availability(self) -> str:
        return "NONE" if self.free <= 0 else "LOW" if self.free < 2 else \
            "MEDIUM" if self.free < 4 else "HIGH"


def default_catalog() -> list[GpuStock]:
    # Prices as in reference/runpod_api.md examples; stock chosen to exercise every availability.
    return [
        GpuStock("NVIDIA GeForce RTX 4090", "RTX 4090", 24, 0.69, 0.34, 4),
        GpuStock("NVIDIA RTX A4000", "RTX A4000", 16, 0.32, 0.17, 8),
        GpuStock("NVIDIA GeForce RTX 3090", "RTX 3090", 24, 0.43, 0.22, 1),
        GpuStock("NVIDIA A40", "A40", 48, 0.40, None, 2),
        GpuStock("NVIDIA A100 80GB PCIe", "A100 80GB", 80, 1.64, 1.19, 2),
        GpuStock("NVIDIA H100 80GB HBM3", "H100 SXM", 80, 2.99, None, 0),
    ]


def template(tid: str, name: str, image: str) -> dict[str, Any]:
    """A template as REST v2's Template: every field the document requires."""
    return {"id": tid, "name": name, "image": image, "args": "", "disk": 30,
            "mounts": {"persistent": {"size": 20, "path": "/workspace"}},
            "ports": list(pod_ports()), "env": {}, "registry": None,
            "serverless": False, "public": False, "category": "NVIDIA", "startSsh": True,
            "startJupyter": False, "allowedCudaVersions": []}


def default_templates(image: str) -> list[dict[str, Any]]:
    return [template("chessbotappl1", "chessbot-appliance", image),
            template("chessbotdev01", "chessbot-appliance-dev", image),
            template("torchbase0001", "pytorch-base", "runpod/pytorch:1.0.2-cu1281-torch280")]


# -- what a pod request may hold (shared by REST's models and GraphQL's create) --

DATA_CENTER_ID = "LOCAL-1"  # localpod's one data center
MIN_VOLUME_GB = 10  # RunPod's PersistentMount minimum; 0 (GraphQL) means no volume
MAX_NETWORK_VOLUME_GB = 4096  # RunPod's NetworkVolume maximum
PORT_SPEC = re.compile(r"^([0-9]{1,5})/(tcp|http)$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]*$")
SECRET_REF = re.compile(r"\{\{\s*RUNPOD_SECRET_([A-Za-z0-9_-]+)\s*\}\}")


def secret_refs(env: dict[str, str]) -> dict[str, list[str]]:
    """The secrets an env refers to, each with the variables that name it."""
    found: dict[str, list[str]] = {}
    for var, value in env.items():
        for name in SECRET_REF.findall(value):
            found.setdefault(name, []).append(var)
    return found


def resolve_secrets(env: dict[str, str], secrets_: dict[str, str]) -> dict[str, str]:
    """The env with every secret reference replaced by the secret's value (KeyError: unknown)."""
    return {k: SECRET_REF.sub(lambda m: secrets_[m.group(1)], v) for k, v in env.items()}


def check_port(spec: str) -> str:
    """A "<port>/tcp|http" spec with a port 1..65535, else ValueError naming it."""
    match = PORT_SPEC.match(spec)
    if match is None or not 1 <= int(match.group(1)) <= 65535:
        raise ValueError(f"port {spec!r} is not <1..65535>/tcp or <1..65535>/http")
    return spec


def check_env(env: dict[str, str]) -> dict[str, str]:
    for name, value in env.items():
        if not ENV_NAME.match(name):
            raise ValueError(f"env name {name!r} is not a variable name ([A-Za-z_][A-Za-z0-9_]*)")
        if "\0" in value:
            raise ValueError(f"env {name} holds a NUL character")
    return env


def check_image(image: str) -> str:
    if not IMAGE.match(image):
        raise ValueError(f"image {image[:100]!r} is not an image reference")
    return image


@dataclass
class PodRecord:
    id: str
    name: str
    image: str
    gpu_id: str
    gpu_count: int
    cloud: str
    ports: list[str]
    env: dict[str, str]
    disk_gb: int
    volume_gb: int
    volume_path: str
    template_id: str | None
    pod_key: str  # the pod-scoped RUNPOD_API_KEY injected into the pod
    created_at: str
    status: str = "PROVISIONING"
    started_at: str | None = None
    polls_left: int = 0
    mappings: dict[int, int] = field(default_factory=dict)  # private -> public on 127.0.0.1
    price: float = 0.0
    locked: bool = False
    registry: str | None = None  # the container registry auth the image is pulled with
    network_volume: str | None = None  # the network volume at volume_path (no pod volume)

    @property
    def actions(self) -> list[str]:
        return list(ACTIONS[self.status])

    def port_type(self, private: int) -> str:
        """The protocol ("tcp", "http") the pod's port spec gives a private port."""
        return next((p.split("/")[1] for p in self.ports if p.split("/")[0] == str(private)),
                    "tcp")

    def cost(self) -> float:
        return round(self.price * self.gpu_count, 4) if self.status == "RUNNING" else 0.0

    def injected_env(self, public_key: str, api_base: str,
                     secrets_: dict[str, str] | None = None) -> dict[str, str]:
        """What RunPod puts into a pod's environment (reference/runpod_api.md section 4.1),
        secret references resolved."""
        env = resolve_secrets(self.env, secrets_ or {})
        env.update({
            "RUNPOD_POD_ID": self.id, "RUNPOD_API_KEY": self.pod_key,
            "RUNPOD_POD_HOSTNAME": f"{self.id}-localpod", "RUNPOD_DC_ID": "LOCAL-1",
            "RUNPOD_GPU_COUNT": str(self.gpu_count), "RUNPOD_CPU_COUNT": "2",
            "RUNPOD_PUBLIC_IP": "127.0.0.1",
            "RUNPOD_REST_URL": f"{api_base}/v2", "RUNPOD_GRAPHQL_URL": f"{api_base}/graphql",
        })
        for private, public in self.mappings.items():
            env[f"RUNPOD_TCP_PORT_{private}"] = str(public)
        if public_key:
            env["PUBLIC_KEY"] = public_key
        return env


class PodBackend(Protocol):
    """What runs a pod. Records-only answers instantly; the container backend runs our image."""

    def start(self, pod: PodRecord, env: dict[str, str],
              login: tuple[str, str] | None = None) -> None:
        """Run the pod (create its volume if new); pod.mappings are already chosen. `login`:
        the username and password of the pod's container registry auth, to pull its image."""

    def ready(self, pod: PodRecord) -> bool:
        """Whether the pod's container is up (RUNNING may be reported)."""

    def stop(self, pod: PodRecord) -> None:
        """Remove the pod's container, keep its /workspace volume."""

    def remove(self, pod: PodRecord) -> None:
        """Remove container and volume."""

    def logs(self, pod: PodRecord, tail: int) -> list[str]:
        """The last `tail` lines the pod's container wrote (none when it has no container)."""

    def remove_network_volume(self, volume_id: str) -> None:
        """Remove a deleted network volume's data."""


class RecordsBackend:
    """No containers: a pod is RUNNING after `boot_polls` reads. `port_map` pins public ports
    (a test can point 22 at a local banner server); others come from the OS."""

    def __init__(self, port_map: dict[int, int] | None = None) -> None:
        self.port_map = dict(port_map or {})
        self.events: list[tuple[str, str]] = []

    def start(self, pod: PodRecord, env: dict[str, str],
              login: tuple[str, str] | None = None) -> None:
        self.events.append(("start", pod.id))

    def ready(self, pod: PodRecord) -> bool:
        return True

    def stop(self, pod: PodRecord) -> None:
        self.events.append(("stop", pod.id))

    def remove(self, pod: PodRecord) -> None:
        self.events.append(("remove", pod.id))

    def logs(self, pod: PodRecord, tail: int) -> list[str]:
        return []  # records only: no container, no output

    def remove_network_volume(self, volume_id: str) -> None:
        self.events.append(("remove-network-volume", volume_id))


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class Fault(RegexFault):
    """Answer the next `times` requests whose target matches `match` (a regex searched in e.g.
    "POST /v2/pods", "CREATE /v2/pods" or "GRAPHQL podStop") with `kind`: an HTTP `status`,
    RunPod's no-capacity error, or (CREATE targets) a pod created and then a 500."""

    pattern_field: ClassVar[str] = "match"
    match: str
    kind: Literal["status", "no_capacity", "create_then_500"] = "status"
    status: int = 500
    message: str = SERVER_ERROR
    retry_after: str | None = None
    times: int = 1
    hits: int = 0

    def check(self) -> None:
        super().check()
        if self.kind not in ("status", "no_capacity", "create_then_500"):
            raise FaultSpecError("'kind' must be status, no_capacity or create_then_500")
        if not isinstance(self.status, int) or isinstance(self.status, bool) \
                or not 400 <= self.status <= 599:
            raise FaultSpecError("'status' must be an integer from 400 to 599")
        if not isinstance(self.message, str) or not (
                self.retry_after is None or isinstance(self.retry_after, str)):
            raise FaultSpecError("'message' and 'retry_after' must be strings")

    def error(self, graphql: bool) -> ApiError:
        """The fault's answer (GraphQL's no-capacity error comes with 200); create_then_500,
        matched by a target other than CREATE, answers as "status" does."""
        headers = {"Retry-After": self.retry_after} if self.retry_after else {}
        if self.kind == "no_capacity":
            return ApiError(200 if graphql else 400, NO_CAPACITY, headers)
        return ApiError(self.status, self.message, headers)


class Account(Controls[Fault, dict[str, Any]]):
    """The whole RunPod account localpod serves, with its faults and request log (records of
    method, path, target, status, user_agent, accept); one lock guards it all."""

    def __init__(self, backend: PodBackend | None = None, api_keys: set[str] | None = None,
                 *, boot_polls: int = 1, image: str = DEFAULT_IMAGE, public_key: str = "",
                 catalog: list[GpuStock] | None = None, catalog_denied: bool = False) -> None:
        super().__init__(Fault, dict)
        self.backend: PodBackend = backend if backend is not None else RecordsBackend()
        self.api_keys = set(api_keys or ())
        self.boot_polls, self.public_key = boot_polls, public_key
        self.catalog = {g.id: g for g in (catalog or default_catalog())}
        self.templates = default_templates(image)
        self.registries: dict[str, dict[str, str]] = {}  # id -> name, username, password
        self.secrets: dict[str, str] = {}  # name -> value
        self.volumes: dict[str, dict[str, Any]] = {}  # id -> REST v2 NetworkVolume
        self.catalog_denied = catalog_denied
        self.pods: dict[str, PodRecord] = {}
        self.api_base = ""
        self.control_token = "lpc_" + secrets.token_urlsafe(18)  # for /_localpod/* besides a key
        self.rate_limit = RATE_LIMIT  # REST requests per window, read when the server is made

    # -- auth --

    def key_scope(self, key: str | None) -> str | None:
        """"account" for an account key, the pod id for a pod-scoped key; None when refused.
        With no keys configured every non-empty key is an account key."""
        if not key:
            return None
        if key in self.api_keys or (not self.api_keys and key):
            return "account"
        for pod in self.pods.values():
            if secrets.compare_digest(pod.pod_key, key) and pod.status != "TERMINATED":
                return pod.id
        return None

    # -- pods --

    def _get(self, pod_id: str, scope: str) -> PodRecord:
        pod = self.pods.get(pod_id)
        if pod is None or pod.status == "TERMINATED":
            raise ApiError(404, "resource not found")
        if scope not in ("account", pod_id):
            raise ApiError(403, "access denied: this pod-scoped key is for another pod")
        return pod

    def list_pods(self, scope: str) -> list[PodRecord]:
        with self.lock:
            return [self._advance(p) for p in self.pods.values()
                    if p.status != "TERMINATED" and scope in ("account", p.id)]

    def get_pod(self, pod_id: str, scope: str) -> PodRecord:
        with self.lock:
            return self._advance(self._get(pod_id, scope))

    def _advance(self, pod: PodRecord) -> PodRecord:
        """Reads move a booting pod on: PROVISIONING -> STARTING -> RUNNING once the backend
        says the container is up (records: after `boot_polls` reads)."""
        if pod.status in ("PROVISIONING", "STARTING"):
            if pod.polls_left > 0:
                pod.polls_left -= 1
                if pod.status == "PROVISIONING":
                    pod.status = "STARTING"
            elif self.backend.ready(pod):
                pod.status = "RUNNING"
                pod.started_at = _now()
        return pod

    def create_pod(self, req: dict[str, Any], scope: str) -> PodRecord:
        """Create a pod from a request (keys: name, image, template_id, gpu_id, gpu_count,
        cloud, ports, env, disk_gb, volume_gb, volume_path; network_volume and data_center_ids
        optional). Every value is checked before
        anything changes: a refused request (ApiError 400) leaves the account as it was."""
        if scope != "account":
            raise ApiError(403, "access denied: a pod-scoped key cannot create pods")
        network_volume, data_centers = req.get("network_volume"), req.get("data_center_ids")
        req = checked_request(req)
        with self.lock:
            gpu_id, count, cloud = req["gpu_id"], req["gpu_count"], req["cloud"]
            stock = self.catalog.get(gpu_id)
            if stock is None:
                raise ApiError(400, f"unknown GPU type {gpu_id!r}")
            price = stock.community_price if cloud == "COMMUNITY" else stock.secure_price
            if price is None:
                raise ApiError(400, NO_CAPACITY)
            if count > stock.max_count or stock.free < count:
                raise ApiError(400, NO_CAPACITY)
            template = None
            if req["template_id"]:
                template = next((t for t in self.templates if t["id"] == req["template_id"]),
                                None)
                if template is None:
                    raise ApiError(400, f"template {req['template_id']!r} not found")
            image = req["image"] or (template["image"] if template else "")
            if not image:
                raise ApiError(400, "the pod needs an image: neither the request nor the "
                               "template names one")
            persistent = (template or {}).get("mounts", {}).get("persistent", {})
            env = {**(template["env"] if template else {}), **req["env"]}
            self.check_secrets(env)
            registry = req["registry"] or (template or {}).get("registry")
            self.check_registry(registry)
            if network_volume is not None:
                self.check_pod_volume(network_volume, data_centers)
            pod_id = new_id()
            pod = PodRecord(
                id=pod_id, name=req["name"], image=image,
                gpu_id=gpu_id, gpu_count=count, cloud=cloud,
                ports=list(req["ports"] if req["ports"] is not None
                           else (template["ports"] if template else [])),
                env=env, registry=registry,
                disk_gb=req["disk_gb"] or (template["disk"] if template else 30),
                volume_gb=req["volume_gb"] or persistent.get("size") or 20,
                volume_path=req["volume_path"] or persistent.get("path") or "/workspace",
                template_id=template["id"] if template else None, network_volume=network_volume,
                pod_key="rpa_pod_" + secrets.token_hex(16), created_at=_now(), price=price,
                polls_left=self.boot_polls,
            )
            stock.free -= count
            self.pods[pod_id] = pod
            self._boot(pod)
            return pod

    def check_secrets(self, env: dict[str, str]) -> None:
        """ApiError 400 naming the first secret the env refers to that the account lacks."""
        for name, variables in secret_refs(env).items():
            if name not in self.secrets:
                raise ApiError(400, f"secret {name!r} (referenced by env "
                               f"{', '.join(variables)}) does not exist: create it first")

    def check_pod_volume(self, volume_id: str, data_centers: list[str] | None) -> None:
        """ApiError 400 unless the network volume exists in one of the pod's data centers."""
        volume = self.volumes.get(volume_id)
        if volume is None:
            raise ApiError(400, f"network volume {volume_id!r} not found")
        if data_centers and volume["dataCenter"] not in data_centers:
            raise ApiError(400, f"network volume {volume_id!r} is in {volume['dataCenter']}, "
                           f"not in the pod's data centers {', '.join(data_centers)}")

    # -- network volumes --

    def create_volume(self, name: str, size: int, data_center: str, type_: str) -> dict[str, Any]:
        with self.lock:
            if data_center != DATA_CENTER_ID:
                raise ApiError(400, f"unknown data center {data_center!r}: localpod has "
                               f"{DATA_CENTER_ID} only")
            volume_id = new_id(10)
            volume = {"id": volume_id, "name": name, "size": size, "dataCenter": data_center,
                      "type": type_}
            self.volumes[volume_id] = volume
            return dict(volume)

    def get_volume(self, volume_id: str) -> dict[str, Any]:
        with self.lock:
            if volume_id not in self.volumes:
                raise ApiError(404, "resource not found")
            return dict(self.volumes[volume_id])

    def update_volume(self, volume_id: str, name: str | None, size: int | None) -> dict[str, Any]:
        """Rename, or grow (a network volume never shrinks)."""
        with self.lock:
            volume = self.volumes.get(volume_id)
            if volume is None:
                raise ApiError(404, "resource not found")
            if size is not None and size <= volume["size"]:
                raise ApiError(400, f"a network volume can only grow: {volume['size']} GB now, "
                               f"{size} GB asked")
            volume.update({k: v for k, v in (("name", name), ("size", size)) if v is not None})
            return dict(volume)

    def delete_volume(self, volume_id: str) -> None:
        """409 while a pod that is not terminated has it mounted."""
        with self.lock:
            if volume_id not in self.volumes:
                raise ApiError(404, "resource not found")
            users = sorted(p.id for p in self.pods.values()
                           if p.network_volume == volume_id and p.status != "TERMINATED")
            if users:
                raise ApiError(409, f"network volume {volume_id} is in use by pod(s) "
                               f"{', '.join(users)}: terminate them first")
            self.backend.remove_network_volume(volume_id)
            del self.volumes[volume_id]

    def check_registry(self, registry: str | None) -> None:
        if registry is not None and registry not in self.registries:
            raise ApiError(400, f"container registry auth {registry!r} not found")

    def update_pod(self, pod_id: str, changes: dict[str, Any], scope: str) -> PodRecord:
        """PATCH: change name, image, env, ports, disk, volume size (grow only) or lock; a pod
        that runs is reset (its container recreated), as RunPod does."""
        with self.lock:
            pod = self._advance(self._get(pod_id, scope))
            merged = {"name": pod.name, "image": pod.image, "gpu_id": pod.gpu_id,
                      "gpu_count": pod.gpu_count, "cloud": pod.cloud, "ports": pod.ports,
                      "env": pod.env, "disk_gb": pod.disk_gb, "volume_gb": pod.volume_gb,
                      "volume_path": pod.volume_path, **changes}
            req = checked_request(merged)
            self.check_secrets(req["env"])
            if req["volume_gb"] < pod.volume_gb:
                raise ApiError(400, f"the volume can only grow: {pod.volume_gb} GB now, "
                               f"{req['volume_gb']} GB asked")
            pod.name, pod.image, pod.ports = req["name"], req["image"], list(req["ports"])
            pod.env, pod.disk_gb, pod.volume_gb = req["env"], req["disk_gb"], req["volume_gb"]
            pod.volume_path = req["volume_path"]
            pod.locked = bool(changes.get("locked", pod.locked))
            if pod.status in ("PROVISIONING", "STARTING", "RUNNING") and set(changes) - {
                    "name", "locked"}:
                self.backend.stop(pod)
                pod.status, pod.polls_left = "STARTING", self.boot_polls
                self._boot(pod)
            return pod

    def pod_logs(self, pod_id: str, scope: str, tail: int) -> list[str]:
        with self.lock:
            pod = self._get(pod_id, scope)
        return self.backend.logs(pod, tail) if pod.status != "EXITED" else []

    def _boot(self, pod: PodRecord) -> None:
        pod.mappings = {}
        port_map = getattr(self.backend, "port_map", {})
        for spec in pod.ports:
            private = int(spec.split("/")[0])
            pod.mappings[private] = port_map.get(private) or free_port()
        try:
            auth = self.registries.get(pod.registry or "")
            self.backend.start(pod, pod.injected_env(self.public_key, self.api_base,
                                                     self.secrets),
                               (auth["username"], auth["password"]) if auth else None)
        except Exception as exc:
            pod.status = "ERROR"
            raise ApiError(500, f"the pod's container did not start: {exc}") from None

    def action(self, pod_id: str, action: str, scope: str) -> PodRecord:
        with self.lock:
            pod = self._advance(self._get(pod_id, scope))
            if action not in ("start", "stop", "restart", "terminate"):
                raise ApiError(422, f"unknown action {action!r}: start, stop, restart or terminate")
            if action not in pod.actions:
                raise ApiError(409, f"action {action} is not allowed while the pod is "
                               f"{pod.status}; allowed: {', '.join(pod.actions) or 'none'}")
            stock = self.catalog[pod.gpu_id]
            if action == "stop":
                self.backend.stop(pod)
                pod.status, pod.mappings = "EXITED", {}
                stock.free += pod.gpu_count
            elif action == "start":
                if stock.free < pod.gpu_count:
                    raise ApiError(400, NO_FREE_GPUS)
                stock.free -= pod.gpu_count
                pod.status, pod.polls_left = "STARTING", self.boot_polls
                self._boot(pod)
            elif action == "restart":
                self.backend.stop(pod)
                pod.status, pod.polls_left = "STARTING", self.boot_polls
                self._boot(pod)
            else:
                self.terminate(pod)
            return pod

    def terminate(self, pod: PodRecord) -> None:
        if pod.status in ("RUNNING", "PROVISIONING", "STARTING"):
            self.catalog[pod.gpu_id].free += pod.gpu_count
        self.backend.remove(pod)
        pod.status, pod.mappings = "TERMINATED", {}

    def close(self) -> None:
        """Remove every pod's container and volume (the server is going away)."""
        with self.lock:
            for pod in self.pods.values():
                if pod.status != "TERMINATED":
                    self.terminate(pod)


def checked_request(req: dict[str, Any]) -> dict[str, Any]:
    """A create request with every key present and every value of the right type and range;
    ApiError 400 naming the first that is not (GraphQL's create has no schema in front)."""
    def fail(message: str) -> ApiError:
        return ApiError(400, f"invalid pod request: {message}")

    def integer(key: str, minimum: int, default: int | None) -> int | None:
        value = req.get(key)
        if value is None:
            return default
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise fail(f"{key} must be an integer >= {minimum}, not {value!r}")
        return value

    name, image, template_id = req.get("name"), req.get("image"), req.get("template_id")
    if not isinstance(name, str) or not name:
        raise fail("name must be a non-empty string")
    for key, value in (("image", image), ("template_id", template_id),
                       ("volume_path", req.get("volume_path"))):
        if value is not None and not isinstance(value, str):
            raise fail(f"{key} must be a string")
    if req.get("volume_path") and not str(req["volume_path"]).startswith("/"):
        raise fail("volume_path must be an absolute path")
    if req.get("cloud") not in ("SECURE", "COMMUNITY"):
        raise fail(f"cloud must be SECURE or COMMUNITY, not {req.get('cloud')!r}")
    if not isinstance(req.get("gpu_id"), str) or not req["gpu_id"]:
        raise fail("gpu_id must be a GPU type id")
    ports, env = req.get("ports"), req.get("env") or {}
    if ports is not None and not (isinstance(ports, list)
                                  and all(isinstance(p, str) for p in ports)):
        raise fail("ports must be a list of \"<port>/tcp|http\" strings")
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                            for k, v in env.items()):
        raise fail("env must map names to strings")
    volume_gb = integer("volume_gb", 0, 0)
    if volume_gb and volume_gb < MIN_VOLUME_GB:
        raise fail(f"the volume must be at least {MIN_VOLUME_GB} GB, not {volume_gb}")
    try:
        for spec in ports or []:
            check_port(spec)
        check_env(env)
        if image:
            check_image(image)
    except ValueError as exc:
        raise fail(str(exc)) from None
    registry = req.get("registry")
    if registry is not None and not isinstance(registry, str):
        raise fail("registry must be a string")
    return {"name": name, "image": image or None, "template_id": template_id or None,
            "registry": registry or None,
            "gpu_id": req["gpu_id"], "gpu_count": integer("gpu_count", 1, 1),
            "cloud": req["cloud"], "ports": ports, "env": dict(env),
            "disk_gb": integer("disk_gb", 1, None), "volume_gb": volume_gb,
            "volume_path": req.get("volume_path") or None}


def new_id(length: int = 14) -> str:
    """A RunPod-style id: lowercase letters and digits."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(length))


def _now() -> str:
    return datetime.fromtimestamp(time.time(), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
