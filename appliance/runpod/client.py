"""The one RunPod API client: REST v2 first, GraphQL where REST is denied or missing; typed errors
with actions; the API key found once (argument, RUNPOD_API_KEY, keyring) and sent only in the
Authorization header, scrubbed from all it raises or logs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx

from appliance.credentials import RUNPOD_KEY_ENTRY
from appliance.runpod.clusters import Cluster, ClusterSpec
from appliance.runpod.errors import (
    AccessDeniedError,
    AuthError,
    ConflictError,
    NoApiKeyError,
    RunpodError,
)
from appliance.runpod.graphql import GraphqlApi
from appliance.runpod.models import (
    Cloud,
    GpuType,
    NetworkVolume,
    Pod,
    PodAction,
    PodSpec,
    Registry,
    Template,
    TemplateSpec,
    check_pod_id,
)
from appliance.runpod.rest import RestApi
from appliance.runpod.session import Session
from appliance.settings import RunpodSettings, load

log = logging.getLogger("appliance.runpod")

# REST answers these when a call is denied to this key or absent on this server: try GraphQL.
FALLBACK_STATUSES = frozenset({403, 404, 405, 501})


def resolve_api_key(explicit: str | None = None, settings: RunpodSettings | None = None,
                    keyring_lookup: Callable[[], str | None] = RUNPOD_KEY_ENTRY.lookup
                    ) -> tuple[str, str]:
    """The key and where it came from: explicit, then RUNPOD_API_KEY, then the keyring."""
    if explicit and explicit.strip():
        return explicit.strip(), "argument"
    settings = settings if settings is not None else load(RunpodSettings)
    if settings.RUNPOD_API_KEY is not None and settings.RUNPOD_API_KEY.get_secret_value().strip():
        return settings.RUNPOD_API_KEY.get_secret_value().strip(), "RUNPOD_API_KEY"
    from_keyring = keyring_lookup()
    if from_keyring and from_keyring.strip():
        return from_keyring.strip(), f"keyring (service={RUNPOD_KEY_ENTRY.service})"
    raise NoApiKeyError("API key lookup", "no RunPod API key found (argument, RUNPOD_API_KEY, "
                        f"keyring service={RUNPOD_KEY_ENTRY.service} "
                        f"username={RUNPOD_KEY_ENTRY.username})")


def strip_api_key(url: str) -> str:
    """The URL without any api_key query parameter (the legacy GraphQL auth style)."""
    parts = urlsplit(url.strip())
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
             if k.lower() not in ("api_key", "apikey")]
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), urlencode(query), ""))


def _split_query(url: str) -> tuple[str, dict[str, str]]:
    parts = urlsplit(url)
    return (urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")),
            dict(parse_qsl(parts.query, keep_blank_values=True)))


class RunpodClient:
    """REST v2 with GraphQL fallback. `transport`, `sleep` and `keyring_lookup` are the seams
    tests replace."""

    def __init__(self, api_key: str | None = None, *, settings: RunpodSettings | None = None,
                 rest_url: str | None = None, graphql_url: str | None = None,
                 transport: httpx.BaseTransport | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 keyring_lookup: Callable[[], str | None] = RUNPOD_KEY_ENTRY.lookup,
                 retries: int = 4, backoff_s: float = 1.0, max_wait_s: float = 60.0,
                 timeout_s: float = 30.0) -> None:
        settings = settings if settings is not None else load(RunpodSettings)
        key, self.key_source = resolve_api_key(api_key, settings, keyring_lookup)
        self._session = Session(key, transport=transport, sleep=sleep, retries=retries,
                                backoff_s=backoff_s, max_wait_s=max_wait_s, timeout_s=timeout_s)
        # Query parameters of a configured URL (api_key removed) go on every request to it.
        self.rest_url, rest_params = _split_query(
            strip_api_key(rest_url or settings.RUNPOD_REST_URL))
        self.graphql_url, graphql_params = _split_query(
            strip_api_key(graphql_url or settings.RUNPOD_GRAPHQL_URL))
        self._rest = RestApi(self._session, self.rest_url, rest_params)
        self._graphql = GraphqlApi(self._session, self.graphql_url, graphql_params)

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> RunpodClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RunpodClient(rest_url={self.rest_url!r}, key from {self.key_source})"

    def _with_fallback(self, rest: Callable[[], Any], gql: Callable[[], Any]) -> Any:
        try:
            return rest()
        except RunpodError as exc:
            if exc.status not in FALLBACK_STATUSES:
                raise
            log.info("%s: HTTP %s on REST v2, falling back to GraphQL", exc.call, exc.status)
            try:
                return gql()
            except (AccessDeniedError, AuthError) as gql_exc:
                raise exc from gql_exc

    # -- pods --

    def list_pods(self) -> list[Pod]:
        return list(self._with_fallback(self._rest.list_pods, self._graphql.list_pods))

    def get_pod(self, pod_id: str) -> Pod:
        check_pod_id(pod_id)
        pod = self._with_fallback(lambda: self._rest.get_pod(pod_id),
                                  lambda: self._graphql.get_pod(pod_id))
        assert isinstance(pod, Pod)
        return pod

    def create_pod(self, spec: PodSpec) -> Pod:
        """POST /v2/pods. A 5xx is not retried: RunPod may have created the pod before failing,
        so the caller looks for it (by a marker the spec's env carries: names are not unique)
        instead of creating a twin."""
        return self._rest.create_pod(spec)

    def stop_pod(self, pod_id: str) -> Pod | None:
        """Stop: compute released, /workspace kept (and billed as storage)."""
        check_pod_id(pod_id)
        return self._with_fallback(
            lambda: self._action(pod_id, "stop"),
            lambda: self._pod_after_mutation(pod_id, self._graphql.stop_pod(pod_id)))

    def start_pod(self, pod_id: str, gpu_count: int = 1) -> Pod | None:
        check_pod_id(pod_id)
        return self._with_fallback(
            lambda: self._action(pod_id, "start"),
            lambda: self._pod_after_mutation(pod_id, self._graphql.resume_pod(pod_id, gpu_count)))

    def terminate_pod(self, pod_id: str) -> None:
        """Terminate: the pod and its /workspace volume are deleted; nothing bills afterwards."""
        check_pod_id(pod_id)
        self._with_fallback(lambda: self._action(pod_id, "terminate"),
                            lambda: self._graphql.terminate_pod(pod_id))

    def _action(self, pod_id: str, action: PodAction) -> Pod | None:
        try:
            return self._rest.action(pod_id, action)
        except ConflictError as exc:  # say which state the pod is in, when it can be read
            raise ConflictError(exc.call, exc.message, status=exc.status,
                                state=self._state_or_none(pod_id)) from None

    def _state_or_none(self, pod_id: str) -> str | None:
        try:
            return self.get_pod(pod_id).status
        except RunpodError:
            return None

    def _pod_after_mutation(self, pod_id: str, value: Any) -> Pod | None:
        if not isinstance(value, dict) or "id" not in value:
            return None
        try:
            return self.get_pod(pod_id)
        except RunpodError:
            return Pod.from_graphql(value)

    def pod_logs(self, pod_id: str, tail: int = 100) -> list[str]:
        """The last `tail` lines the pod's container wrote (REST v2 only: GraphQL has none)."""
        check_pod_id(pod_id)
        return self._rest.pod_logs(pod_id, tail)

    # -- catalog --

    def list_gpus(self, cloud: Cloud = "ALL", gpu_count: int = 1) -> list[GpuType]:
        """The GPU catalog with prices and availability (REST v2 catalog, else GraphQL gpuTypes)."""
        try:
            return list(self._with_fallback(lambda: self._rest.list_gpus(cloud, gpu_count),
                                            lambda: self._graphql.list_gpus(cloud, gpu_count)))
        except AccessDeniedError as exc:
            raise AccessDeniedError(
                exc.call, exc.message, status=exc.status,
                action="this key may not read the GPU catalog: pass --gpu-type-id to provision "
                "without it, or use a key with read access") from None

    def list_templates(self) -> list[Template]:
        return self._rest.list_templates()

    # -- templates and registry auths: REST v2 only (GraphQL's saveTemplate and registry
    # mutations are not used: a key denied these REST calls gets the typed error) --

    def get_template(self, template_id: str) -> Template:
        check_pod_id(template_id, "template")
        return self._rest.get_template(template_id)

    def create_template(self, spec: TemplateSpec) -> Template:
        return self._rest.create_template(spec)

    def update_template(self, template_id: str, spec: TemplateSpec) -> Template:
        check_pod_id(template_id, "template")
        return self._rest.update_template(template_id, spec)

    def list_registries(self) -> list[Registry]:
        return self._rest.list_registries()

    def create_registry(self, name: str, username: str, password: str) -> Registry:
        return self._rest.create_registry(name, username, password)

    def delete_registry(self, registry_id: str) -> None:
        check_pod_id(registry_id, "registry auth")
        self._rest.delete_registry(registry_id)

    def list_network_volumes(self) -> list[NetworkVolume]:
        return self._rest.list_network_volumes()

    def get_network_volume(self, volume_id: str) -> NetworkVolume:
        check_pod_id(volume_id, "network volume")
        return self._rest.get_network_volume(volume_id)

    def create_network_volume(self, name: str, size_gb: int, data_center: str) -> NetworkVolume:
        return self._rest.create_network_volume(name, size_gb, data_center)

    def delete_network_volume(self, volume_id: str) -> None:
        check_pod_id(volume_id, "network volume")
        self._rest.delete_network_volume(volume_id)

    # -- Instant Clusters: REST v2 only. RunPod's GraphQL API offers no cluster operations this
    # client could fall back on, so a denied or missing call raises its typed error. A cluster
    # has no stop of its own: stopping one is stop_pod on each of its pods. --

    def list_clusters(self) -> list[Cluster]:
        return self._rest.list_clusters()

    def get_cluster(self, cluster_id: str) -> Cluster:
        check_pod_id(cluster_id, "cluster")
        return self._rest.get_cluster(cluster_id)

    def create_cluster(self, spec: ClusterSpec) -> Cluster:
        """POST /v2/clusters. A 5xx is not retried (see create_pod): the caller looks for the
        cluster by the marker its nodes' env carries."""
        return self._rest.create_cluster(spec)

    def terminate_cluster(self, cluster_id: str) -> None:
        """DELETE /v2/clusters/{id}: every node and its volume are deleted."""
        check_pod_id(cluster_id, "cluster")
        self._rest.delete_cluster(cluster_id)

    def cluster_pods(self, cluster_id: str) -> list[Pod]:
        """The cluster's pods (each with its rank and address on the cluster's network)."""
        check_pod_id(cluster_id, "cluster")
        return self._rest.cluster_pods(cluster_id)
