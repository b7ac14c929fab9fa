"""localpod's account: GPU catalog, templates, pods and their RunPod status machine, API keys,
plus the faults and request log tests steer (base.Controls); pods run through a PodBackend
(records only, or real containers).
"""

from __future__ import annotations

import secrets
import socket
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal, Protocol

from host_tools.emulators.base import HOST, Controls, HttpError, RegexFault

NO_CAPACITY = ("There are no longer any instances available with the requested specifications. "
               "Please refresh and try again.")
NO_FREE_GPUS = "There are not enough free GPUs on the host machine to start this pod."
SERVER_ERROR = "Something went wrong. Please try again later or contact support."
DEFAULT_IMAGE = "localhost/chessbot-appliance:latest"
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


def default_templates(image: str) -> list[dict[str, Any]]:
    def tpl(tid: str, name: str, img: str) -> dict[str, Any]:
        return {"id": tid, "name": name, "image": img, "ports": ["22/tcp", "8888/http",
                                                                   "8000/http"],
                "env": {}, "disk": 30, "mounts": {"persistent": {"size": 20,
                                                                  "path": "/workspace"}},
                "args": "", "category": "NVIDIA", "public": False, "serverless": False}
    return [tpl("chessbotappl1", "chessbot-appliance", image),
            tpl("chessbotdev01", "chessbot-appliance-dev", image),
            tpl("torchbase0001", "pytorch-base", "runpod/pytorch:1.0.2-cu1281-torch280")]


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

    @property
    def actions(self) -> list[str]:
        return list(ACTIONS[self.status])

    def port_type(self, private: int) -> str:
        """The protocol ("tcp", "http") the pod's port spec gives a private port."""
        return next((p.split("/")[1] for p in self.ports if p.split("/")[0] == str(private)),
                    "tcp")

    def cost(self) -> float:
        return round(self.price * self.gpu_count, 4) if self.status == "RUNNING" else 0.0

    def injected_env(self, public_key: str, api_base: str) -> dict[str, str]:
        """What RunPod puts into a pod's environment (reference/runpod_api.md section 4.1)."""
        env = dict(self.env)
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

    def start(self, pod: PodRecord, env: dict[str, str]) -> None:
        """Run the pod (create its volume if new); pod.mappings are already chosen."""

    def ready(self, pod: PodRecord) -> bool:
        """Whether the pod's container is up (RUNNING may be reported)."""

    def stop(self, pod: PodRecord) -> None:
        """Remove the pod's container, keep its /workspace volume."""

    def remove(self, pod: PodRecord) -> None:
        """Remove container and volume."""


class RecordsBackend:
    """No containers: a pod is RUNNING after `boot_polls` reads. `port_map` pins public ports
    (a test can point 22 at a local banner server); others come from the OS."""

    def __init__(self, port_map: dict[int, int] | None = None) -> None:
        self.port_map = dict(port_map or {})
        self.events: list[tuple[str, str]] = []

    def start(self, pod: PodRecord, env: dict[str, str]) -> None:
        self.events.append(("start", pod.id))

    def ready(self, pod: PodRecord) -> bool:
        return True

    def stop(self, pod: PodRecord) -> None:
        self.events.append(("stop", pod.id))

    def remove(self, pod: PodRecord) -> None:
        self.events.append(("remove", pod.id))


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
        self.catalog_denied = catalog_denied
        self.pods: dict[str, PodRecord] = {}
        self.api_base = ""

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
        if scope != "account":
            raise ApiError(403, "access denied: a pod-scoped key cannot create pods")
        with self.lock:
            gpu_id, count, cloud = req["gpu_id"], req["gpu_count"], req["cloud"]
            stock = self.catalog.get(gpu_id)
            if stock is None:
                raise ApiError(400, f"unknown GPU type {gpu_id!r}")
            price = stock.community_price if cloud == "COMMUNITY" else stock.secure_price
            if price is None:
                raise ApiError(400, NO_CAPACITY)
            if stock.free < count:
                raise ApiError(400, NO_CAPACITY)
            template = None
            if req.get("template_id"):
                template = next((t for t in self.templates if t["id"] == req["template_id"]),
                                None)
                if template is None:
                    raise ApiError(400, f"template {req['template_id']!r} not found")
            pod_id = _new_id()
            pod = PodRecord(
                id=pod_id, name=req["name"],
                image=req.get("image") or (template["image"] if template else ""),
                gpu_id=gpu_id, gpu_count=count, cloud=cloud,
                ports=list(req.get("ports") or (template["ports"] if template else [])),
                env={**(template["env"] if template else {}), **(req.get("env") or {})},
                disk_gb=int(req.get("disk_gb") or 30), volume_gb=int(req.get("volume_gb") or 20),
                volume_path=req.get("volume_path") or "/workspace",
                template_id=template["id"] if template else None,
                pod_key="rpa_pod_" + secrets.token_hex(16), created_at=_now(), price=price,
                polls_left=self.boot_polls,
            )
            stock.free -= count
            self.pods[pod_id] = pod
            self._boot(pod)
            return pod

    def _boot(self, pod: PodRecord) -> None:
        pod.mappings = {}
        port_map = getattr(self.backend, "port_map", {})
        for spec in pod.ports:
            private = int(spec.split("/")[0])
            pod.mappings[private] = port_map.get(private) or free_port()
        try:
            self.backend.start(pod, pod.injected_env(self.public_key, self.api_base))
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


def _new_id() -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(14))


def _now() -> str:
    return datetime.fromtimestamp(time.time(), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
