"""What the RunPod client hands out and takes in: pods, GPU types, templates, registry auths,
network volumes, pod and template specs, read from REST v2 or GraphQL answers into one
vocabulary (REST v2's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from appliance.settings import pod_ports

Cloud = Literal["SECURE", "COMMUNITY", "ALL"]
PodAction = Literal["start", "stop", "terminate"]

# GraphQL's desiredStatus in REST v2's vocabulary.
_GRAPHQL_STATUS = {"CREATED": "PROVISIONING", "RUNNING": "RUNNING", "RESTARTING": "STARTING",
                   "EXITED": "EXITED", "PAUSED": "EXITED", "DEAD": "ERROR",
                   "TERMINATED": "TERMINATED"}


def check_pod_id(pod_id: str, what: str = "pod") -> None:
    """Refuse an id that is not [A-Za-z0-9_-]{1,64} before it reaches a URL or a query."""
    if not pod_id or not all(c.isalnum() or c in "-_" for c in pod_id) or len(pod_id) > 64:
        raise ValueError(f"bad {what} id {pod_id[:80]!r}: expected letters, digits, '-' or '_'")


@dataclass(frozen=True)
class PortMapping:
    private: int
    public: int
    type: str  # "tcp" or "http"
    ip: str


@dataclass
class Pod:
    id: str
    name: str
    status: str  # v2 vocabulary: PROVISIONING STARTING RUNNING EXITED ERROR TERMINATED
    image: str = ""
    gpu_id: str = ""
    gpu_count: int = 0
    cost_per_hr: float = 0.0
    ports: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    mappings: list[PortMapping] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    volume_gb: int = 0
    created_at: str = ""
    started_at: str = ""  # when it last started (REST v2 startedAt, GraphQL lastStartedAt)
    uptime_s: float | None = None  # seconds running since then, where the API says
    network_volume_id: str = ""  # the network volume mounted instead of a pod volume
    data_center_id: str = ""
    cluster_id: str = ""  # an Instant Cluster's node: its cluster, rank and address there
    cluster_rank: int | None = None
    cluster_ip: str = ""

    def running_s(self, now: float) -> float | None:
        """Seconds this pod has been running since it last started: the API's uptime, else
        `now` (epoch seconds) less startedAt; None when it is not RUNNING or neither is known."""
        if self.status != "RUNNING":
            return None
        if self.uptime_s:
            return self.uptime_s
        started = epoch_seconds(self.started_at)
        return None if started is None else max(0.0, now - started)

    def cost_so_far(self, now: float) -> float | None:
        """USD since the pod last started: costPerHr x its running time (None when unknown)."""
        running = self.running_s(now)
        return None if running is None else self.cost_per_hr * running / 3600

    def ssh_endpoint(self) -> tuple[str, int] | None:
        for m in self.mappings:
            if m.private == 22 and m.type == "tcp":
                return m.ip, m.public
        return None

    def proxy_urls(self) -> dict[int, str]:
        return {int(p.split("/")[0]): f"https://{self.id}-{p.split('/')[0]}.proxy.runpod.net"
                for p in self.ports if p.endswith("/http")}

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "status": self.status, "image": self.image,
            "gpu": {"id": self.gpu_id, "count": self.gpu_count}, "costPerHr": self.cost_per_hr,
            "ports": self.ports, "actions": self.actions, "volumeInGb": self.volume_gb,
            "createdAt": self.created_at, "startedAt": self.started_at,
            "networkVolumeId": self.network_volume_id, "dataCenterId": self.data_center_id,
            "cluster": ({"id": self.cluster_id, "rank": self.cluster_rank, "ip": self.cluster_ip}
                        if self.cluster_id else None),
            "runtime": {"ports": [m.__dict__ for m in self.mappings]} if self.mappings else None,
        }

    @classmethod
    def from_v2(cls, d: dict[str, Any]) -> Pod:
        runtime = d.get("runtime") or {}
        mounts = d.get("mounts") or {}
        cluster = d.get("cluster") or {}
        return cls(
            id=str(d["id"]), name=str(d.get("name") or ""), status=str(d.get("status") or ""),
            image=str(d.get("image") or ""), gpu_id=str((d.get("gpu") or {}).get("id") or ""),
            gpu_count=int((d.get("gpu") or {}).get("count") or 0),
            cost_per_hr=float(d.get("cost") or 0.0), ports=list(d.get("ports") or []),
            env=dict(d.get("env") or {}), actions=list(d.get("actions") or []),
            volume_gb=int((mounts.get("persistent") or {}).get("size") or 0),
            network_volume_id=str(((mounts.get("network") or [{}])[0]).get("volumeId") or ""),
            data_center_id=str(d.get("dataCenterId") or ""),
            created_at=str(d.get("createdAt") or ""),
            started_at=str(d.get("startedAt") or ""),
            uptime_s=_float_or_none(runtime.get("uptime")),
            cluster_id=str(cluster.get("id") or ""),
            cluster_rank=None if cluster.get("rank") is None else int(cluster["rank"]),
            cluster_ip=str(cluster.get("ip") or ""),
            mappings=[PortMapping(int(p["private"]), int(p["public"]), str(p.get("type", "tcp")),
                                  str(p.get("ip", ""))) for p in runtime.get("ports") or []],
        )

    @classmethod
    def from_graphql(cls, d: dict[str, Any]) -> Pod:
        runtime = d.get("runtime")
        status = _GRAPHQL_STATUS.get(str(d.get("desiredStatus") or ""), "ERROR")
        if status == "RUNNING" and not runtime:
            status = "STARTING"  # desiredStatus reads RUNNING while the image still pulls
        env_list = d.get("env") or []
        env = dict(e.split("=", 1) for e in env_list if "=" in e)
        ports = d.get("ports") or ""
        return cls(
            id=str(d["id"]), name=str(d.get("name") or ""), status=status,
            image=str(d.get("imageName") or ""), gpu_count=int(d.get("gpuCount") or 0),
            gpu_id=str((d.get("machine") or {}).get("gpuTypeId") or ""),
            cost_per_hr=float(d.get("costPerHr") or 0.0),
            ports=[p for p in ports.split(",") if p] if isinstance(ports, str) else list(ports),
            env=env, volume_gb=int(d.get("volumeInGb") or 0),
            network_volume_id=str(d.get("networkVolumeId") or ""),
            started_at=str(d.get("lastStartedAt") or ""),
            uptime_s=_float_or_none((runtime or {}).get("uptimeInSeconds",
                                                         d.get("uptimeSeconds"))),
            mappings=[PortMapping(int(p["privatePort"]), int(p["publicPort"]),
                                  str(p.get("type", "tcp")), str(p.get("ip", "")))
                      for p in (runtime or {}).get("ports") or []],
        )


@dataclass(frozen=True)
class GpuType:
    id: str
    name: str
    memory_gb: int
    secure: bool
    community: bool
    secure_price: float | None
    community_price: float | None
    availability: str  # NONE LOW MEDIUM HIGH, or UNKNOWN when the source does not say

    def price(self, cloud: Cloud) -> float | None:
        prices = {"SECURE": [self.secure_price if self.secure else None],
                  "COMMUNITY": [self.community_price if self.community else None],
                  "ALL": [self.secure_price if self.secure else None,
                          self.community_price if self.community else None]}[cloud]
        known = [p for p in prices if p is not None]
        return min(known) if known else None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_v2(cls, g: dict[str, Any]) -> GpuType:
        # REST v2 gives a number for both clouds; it is a price only where the GPU is offered.
        price = g.get("price") or {}
        secure, community = bool(g.get("secure")), bool(g.get("community"))
        return cls(
            id=str(g["id"]), name=str(g.get("name") or g["id"]),
            memory_gb=int(g.get("memory") or 0), secure=secure, community=community,
            secure_price=_float_or_none(price.get("secure")) if secure else None,
            community_price=_float_or_none(price.get("community")) if community else None,
            availability=str(g.get("availability") or "UNKNOWN").upper(),
        )

    @classmethod
    def from_graphql(cls, g: dict[str, Any]) -> GpuType:
        lowest = g.get("lowestPrice") or {}
        stock = lowest.get("stockStatus")
        availability = {"HIGH": "HIGH", "MEDIUM": "MEDIUM", "LOW": "LOW"}.get(
            str(stock).upper(), "NONE")
        return cls(
            id=str(g["id"]), name=str(g.get("displayName") or g["id"]),
            memory_gb=int(g.get("memoryInGb") or 0), secure=bool(g.get("secureCloud")),
            community=bool(g.get("communityCloud")),
            secure_price=_float_or_none(g.get("securePrice")),
            community_price=_float_or_none(g.get("communityPrice")), availability=availability,
        )


@dataclass(frozen=True)
class Template:
    id: str
    name: str
    image: str
    ports: list[str]
    env: dict[str, str]
    disk_gb: int = 0
    volume_gb: int = 0
    volume_path: str = ""
    registry: str = ""  # the container registry auth's id; "" for none

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_v2(cls, t: dict[str, Any]) -> Template:
        persistent = (t.get("mounts") or {}).get("persistent") or {}
        return cls(id=str(t["id"]), name=str(t.get("name") or ""),
                   image=str(t.get("image") or ""), ports=list(t.get("ports") or []),
                   env=dict(t.get("env") or {}), disk_gb=int(t.get("disk") or 0),
                   volume_gb=int(persistent.get("size") or 0),
                   volume_path=str(persistent.get("path") or ""),
                   registry=str(t.get("registry") or ""))


@dataclass
class TemplateSpec:
    """A template to create or change: `to_v2()` is REST v2's CreateTemplateRequest body, or
    (partial=True) an UpdateTemplateRequest with only the fields that are set."""

    name: str = ""
    image: str = ""
    ports: list[str] | None = None
    env: dict[str, str] | None = None
    disk_gb: int | None = None
    volume_gb: int | None = None
    volume_path: str = "/workspace"
    registry: str | None = None  # container registry auth id

    def to_v2(self, partial: bool = False) -> dict[str, Any]:
        if not partial and (not self.name or not self.image):
            raise ValueError("a template needs a name and an image")
        body: dict[str, Any] = {"name": self.name, "image": self.image, "ports": self.ports,
                                "env": self.env, "disk": self.disk_gb,
                                "registry": self.registry}
        if self.volume_gb is not None:
            body["mounts"] = {"persistent": {"size": self.volume_gb, "path": self.volume_path}}
        if not partial:
            # The image runs its own sshd and Jupyter: RunPod should start neither.
            body.update(startSsh=True, startJupyter=False, category="NVIDIA")
        return {k: v for k, v in body.items() if v not in (None, "")}


@dataclass(frozen=True)
class Registry:
    """A container registry auth (REST v2 /registries): RunPod never gives its password back."""

    id: str
    name: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_v2(cls, r: dict[str, Any]) -> Registry:
        return cls(id=str(r["id"]), name=str(r.get("name") or ""))


@dataclass(frozen=True)
class NetworkVolume:
    """A RunPod network volume (REST v2 /network-volumes): storage in one data center that
    outlives pods; a pod created with it mounts it instead of a pod volume."""

    id: str
    name: str
    size_gb: int
    data_center: str
    type: str = "STANDARD"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "size": self.size_gb,
                "dataCenter": self.data_center, "type": self.type}

    @classmethod
    def from_v2(cls, v: dict[str, Any]) -> NetworkVolume:
        return cls(id=str(v["id"]), name=str(v.get("name") or ""),
                   size_gb=int(v.get("size") or 0), data_center=str(v.get("dataCenter") or ""),
                   type=str(v.get("type") or "STANDARD"))


@dataclass
class PodSpec:
    """What to create; `to_v2()` is the REST v2 CreatePodRequest body."""

    name: str
    gpu_type_id: str
    image: str = ""
    template_id: str = ""
    gpu_count: int = 1
    cloud: Literal["SECURE", "COMMUNITY"] = "SECURE"
    ports: list[str] = field(default_factory=lambda: list(pod_ports()))
    env: dict[str, str] = field(default_factory=dict)
    disk_gb: int = 30
    volume_gb: int = 20
    volume_path: str = "/workspace"
    start_ssh: bool = True
    registry: str = ""  # container registry auth id, for a private image
    network_volume_id: str = ""  # mounted at volume_path instead of a pod volume
    data_center_id: str = ""  # pins the pod (a network volume's data center)

    def to_v2(self) -> dict[str, Any]:
        if not self.image and not self.template_id:
            raise ValueError("a pod needs an image or a template id")
        body: dict[str, Any] = {
            "name": self.name, "cloud": self.cloud, "ports": self.ports, "disk": self.disk_gb,
            # count is always sent: without it RunPod answers a misleading "no instances" 400.
            "gpu": {"id": self.gpu_type_id, "count": self.gpu_count},
            "mounts": ({"network": [{"volumeId": self.network_volume_id,
                                     "path": self.volume_path}]}
                       if self.network_volume_id else
                       {"persistent": {"size": self.volume_gb, "path": self.volume_path}}),
            "startSsh": self.start_ssh,
        }
        if self.data_center_id:
            body["dataCenterIds"] = [self.data_center_id]
        if self.image:
            body["image"] = self.image
        if self.template_id:
            body["templateId"] = self.template_id
        if self.env:
            body["env"] = dict(self.env)
        if self.registry:
            body["registry"] = self.registry
        return body


def _float_or_none(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def epoch_seconds(stamp: str) -> float | None:
    """An API time (RFC 3339 or unix seconds) in epoch seconds; None when absent or unreadable."""
    text = stamp.strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
