"""localpod's account: the whole RunPod account one server answers for, put together from its
parts, one module per resource: pods (pods.py), templates, container registry auths, network
volumes, secrets and Instant Clusters, with what they share in common.py (errors, faults, the GPU
catalog). The faults and request log tests steer come from base.Controls; one lock guards it all.
"""

from __future__ import annotations

import secrets

from host_tools.emulators.localpod.clusters import ClustersMixin
from host_tools.emulators.localpod.common import (
    DEFAULT_IMAGE,
    RATE_LIMIT,
    Fault,
    GpuStock,
    default_catalog,
)
from host_tools.emulators.localpod.pods import PodBackend, RecordsBackend
from host_tools.emulators.localpod.templates import default_templates


class Account(ClustersMixin):
    """The account with its faults and request log (records of method, path, target, status,
    user_agent, accept); pods run through a PodBackend (records only, or real containers)."""

    def __init__(self, backend: PodBackend | None = None, api_keys: set[str] | None = None,
                 *, boot_polls: int = 1, image: str = DEFAULT_IMAGE, public_key: str = "",
                 catalog: list[GpuStock] | None = None, catalog_denied: bool = False) -> None:
        super().__init__(Fault, dict)
        self.backend = backend if backend is not None else RecordsBackend()
        self.api_keys = set(api_keys or ())
        self.boot_polls, self.public_key = boot_polls, public_key
        self.catalog = {g.id: g for g in (catalog or default_catalog())}
        self.templates = default_templates(image)
        self.registries = {}
        self.secrets = {}
        self.volumes = {}
        self.catalog_denied = catalog_denied
        self.pods = {}
        self.clusters = {}
        self.api_base = ""
        self.control_token = "lpc_" + secrets.token_urlsafe(18)  # for /_localpod/* besides a key
        self.rate_limit = RATE_LIMIT  # REST requests per window, read when the server is made

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

    def close(self) -> None:
        """Remove every cluster, pod, container and volume (the server is going away)."""
        with self.lock:
            for cluster in list(self.clusters.values()):
                self.remove_cluster(cluster)
            for pod in self.pods.values():
                if pod.status != "TERMINATED":
                    self.terminate(pod)
