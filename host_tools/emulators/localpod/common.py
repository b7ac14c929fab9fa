"""What every part of localpod's account shares: the API error, the faults tests inject, the GPU
catalog, RunPod's fixed messages and ids, and `AccountBase`, the attributes the per-resource parts
(pods, templates, registries, volumes, secrets, clusters) of Account read.
"""

from __future__ import annotations

import secrets
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from host_tools.emulators.base import HOST, Controls, FaultSpecError, HttpError, RegexFault

if TYPE_CHECKING:
    from host_tools.emulators.localpod.clusters import ClusterRecord
    from host_tools.emulators.localpod.pods import PodBackend, PodRecord

NO_CAPACITY = ("There are no longer any instances available with the requested specifications. "
               "Please refresh and try again.")
NO_FREE_GPUS = "There are not enough free GPUs on the host machine to start this pod."
SERVER_ERROR = "Something went wrong. Please try again later or contact support."
DEFAULT_IMAGE = "localhost/chessbot-appliance:latest"
RATE_LIMIT = (2000, 10)  # REST requests per window of seconds: RunPod's RateLimit-Policy


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


DATA_CENTER_ID = "LOCAL-1"  # localpod's one data center


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class Fault(RegexFault):
    """Answer the next `times` requests whose target matches `match` (a regex searched in e.g.
    "POST /v2/pods", "CREATE /v2/pods" or "GRAPHQL podStop") with `kind`: an HTTP `status`,
    RunPod's no-capacity error, or (CREATE targets: /v2/pods, /v2/clusters) a pod or cluster
    created and then a 500."""

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


class AccountBase(Controls[Fault, dict[str, Any]]):
    """The account's state as every part sees it; Account (state.py) sets it all."""

    backend: PodBackend
    catalog: dict[str, GpuStock]
    templates: list[dict[str, Any]]
    registries: dict[str, dict[str, str]]  # id -> name, username, password
    secrets: dict[str, str]  # name -> value
    volumes: dict[str, dict[str, Any]]  # id -> REST v2 NetworkVolume
    pods: dict[str, PodRecord]
    clusters: dict[str, ClusterRecord]
    boot_polls: int
    public_key: str
    api_base: str


def new_id(length: int = 14) -> str:
    """A RunPod-style id: lowercase letters and digits."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(length))


def now() -> str:
    return datetime.fromtimestamp(time.time(), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
