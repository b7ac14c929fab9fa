"""localpod's pods: what a create request may hold, the pod record with RunPod's status machine
(PROVISIONING -> STARTING -> RUNNING, stop/start/restart/terminate), the env RunPod injects into
a pod (a cluster node's too), and the PodBackend that runs pods (records only here, real
containers in containers.py).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from typing import Any, Protocol

from host_tools.emulators.localpod.common import (
    DATA_CENTER_ID,
    NO_CAPACITY,
    NO_FREE_GPUS,
    ApiError,
    free_port,
    new_id,
    now,
)
from host_tools.emulators.localpod.registries import RegistriesMixin
from host_tools.emulators.localpod.secrets import SecretsMixin, resolve_secrets
from host_tools.emulators.localpod.volumes import VolumesMixin

ACTIONS = {"PROVISIONING": ["stop", "terminate"], "STARTING": ["stop", "terminate"],
           "RUNNING": ["stop", "restart", "terminate"], "EXITED": ["start", "terminate"],
           "ERROR": ["start", "terminate"], "TERMINATED": []}

MIN_VOLUME_GB = 10  # RunPod's PersistentMount minimum; 0 (GraphQL) means no volume
PORT_SPEC = re.compile(r"^([0-9]{1,5})/(tcp|http)$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]*$")


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


@dataclass(frozen=True)
class ClusterNode:
    """A pod's place in an Instant Cluster: RunPod's cluster env is made from it."""

    cluster_id: str
    rank: int
    ip: str  # NODE_ADDR: the node's static address on the cluster's own network
    primary_ip: str  # PRIMARY_ADDR / MASTER_ADDR: rank 0's
    port: int  # PRIMARY_PORT / MASTER_PORT
    nodes: int  # NUM_NODES
    gpus_per_node: int  # NUM_TRAINERS
    network: str  # the private network's name (its container network, with containers)

    def env(self) -> dict[str, str]:
        """The variables RunPod sets on every node (its Instant Clusters docs)."""
        return {"PRIMARY_ADDR": self.primary_ip, "MASTER_ADDR": self.primary_ip,
                "PRIMARY_PORT": str(self.port), "MASTER_PORT": str(self.port),
                "NODE_ADDR": self.ip, "NODE_RANK": str(self.rank), "NUM_NODES": str(self.nodes),
                "NUM_TRAINERS": str(self.gpus_per_node),
                "HOST_NODE_ADDR": f"{self.primary_ip}:{self.port}",
                "WORLD_SIZE": str(self.nodes * self.gpus_per_node)}


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

    cluster: ClusterNode | None = None  # set for an Instant Cluster's node

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
            "RUNPOD_POD_HOSTNAME": f"{self.id}-localpod", "RUNPOD_DC_ID": DATA_CENTER_ID,
            "RUNPOD_GPU_COUNT": str(self.gpu_count), "RUNPOD_CPU_COUNT": "2",
            "RUNPOD_PUBLIC_IP": "127.0.0.1",
            "RUNPOD_REST_URL": f"{api_base}/v2", "RUNPOD_GRAPHQL_URL": f"{api_base}/graphql",
        })
        for private, public in self.mappings.items():
            env[f"RUNPOD_TCP_PORT_{private}"] = str(public)
        if self.cluster is not None:
            env.update(self.cluster.env())
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

    def create_network(self, name: str, cidr: str) -> None:
        """Create a cluster's private network (before its pods start)."""

    def remove_network(self, name: str) -> None:
        """Remove a cluster's private network (after its pods are gone)."""


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

    def create_network(self, name: str, cidr: str) -> None:
        self.events.append(("create-network", name))

    def remove_network(self, name: str) -> None:
        self.events.append(("remove-network", name))


class PodsMixin(SecretsMixin, RegistriesMixin, VolumesMixin):
    """The account's pods."""

    def _get(self, pod_id: str, scope: str) -> PodRecord:
        pod = self.pods.get(pod_id)
        if pod is None or pod.status == "TERMINATED":
            raise ApiError(404, "resource not found")
        if scope not in ("account", pod_id):
            raise ApiError(403, "access denied: this pod-scoped key is for another pod")
        return pod

    def list_pods(self, scope: str, clusters: bool = False) -> list[PodRecord]:
        """The pods the key may see; a cluster's pods only with `clusters` (RunPod's
        includeClusterPods)."""
        with self.lock:
            return [self._advance(p) for p in self.pods.values()
                    if p.status != "TERMINATED" and scope in ("account", p.id)
                    and (clusters or p.cluster is None)]

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
                pod.started_at = now()
        return pod

    def create_pod(self, req: dict[str, Any], scope: str) -> PodRecord:
        """Create a pod from a request (keys: name, image, template_id, gpu_id, gpu_count,
        cloud, ports, env, disk_gb, volume_gb, volume_path; network_volume and data_center_ids
        optional). Every value is checked before
        anything changes: a refused request (ApiError 400) leaves the account as it was."""
        if scope != "account":
            raise ApiError(403, "access denied: a pod-scoped key cannot create pods")
        with self.lock:
            pod = self.new_pod(req, 1)
            self.catalog[pod.gpu_id].free -= pod.gpu_count
            self.pods[pod.id] = pod
            self._boot(pod)
            return pod

    def new_pod(self, req: dict[str, Any], nodes: int) -> PodRecord:
        """The record of a pod `req` asks for, every value checked and `nodes` such pods' GPUs
        in stock (ApiError 400 otherwise); the account is not changed."""
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
            if count > stock.max_count or stock.free < count * nodes:
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
            return PodRecord(
                id=new_id(), name=req["name"], image=image,
                gpu_id=gpu_id, gpu_count=count, cloud=cloud,
                ports=list(req["ports"] if req["ports"] is not None
                           else (template["ports"] if template else [])),
                env=env, registry=registry,
                disk_gb=req["disk_gb"] or (template["disk"] if template else 30),
                volume_gb=req["volume_gb"] or persistent.get("size") or 20,
                volume_path=req["volume_path"] or persistent.get("path") or "/workspace",
                template_id=template["id"] if template else None, network_volume=network_volume,
                pod_key="rpa_pod_" + secrets.token_hex(16), created_at=now(), price=price,
                polls_left=self.boot_polls,
            )

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
            if action == "terminate" and pod.cluster is not None:
                cid = pod.cluster.cluster_id
                raise ApiError(400, f"pod {pod.id} is a node of cluster {cid}: its nodes are "
                               f"terminated with it (DELETE /v2/clusters/{cid})")
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
