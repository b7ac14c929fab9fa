"""RunPod's REST v2 API, the client's first choice: pods and their actions and logs, the GPU
catalog, templates, container registry auths, network volumes and Instant Clusters. A denied or
missing call raises its typed error; falling back is the client's business.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from appliance.runpod.clusters import Cluster, ClusterSpec
from appliance.runpod.errors import ServerError
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
)
from appliance.runpod.session import Session


class RestApi:
    """Calls to one REST v2 base URL; `params` (the URL's own query) go on every request."""

    def __init__(self, session: Session, url: str, params: dict[str, str]) -> None:
        self.session, self.url, self.params = session, url, params

    def call(self, method: str, path: str, call: str, *, json_body: Any = None,
             params: dict[str, str] | None = None, ok: Iterable[int] = (200, 201, 204),
             retry_5xx: bool = True) -> Any:
        """The decoded JSON answer (None when empty), or the typed error."""
        response = self.session.request(method, self.url + path, call, json_body=json_body,
                                        params={**self.params, **(params or {})},
                                        retry_5xx=retry_5xx)
        if response.status_code not in tuple(ok):
            raise self.session.error(call, response)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise ServerError(call, "the answer was not JSON", status=response.status_code) \
                from None

    def list_pods(self) -> list[Pod]:
        body = self.call("GET", "/pods", "list pods (GET /v2/pods)")
        return [Pod.from_v2(p) for p in (body or {}).get("pods", [])]

    def get_pod(self, pod_id: str) -> Pod:
        return Pod.from_v2(self.call("GET", f"/pods/{pod_id}", f"get pod {pod_id}"))

    def create_pod(self, spec: PodSpec) -> Pod:
        """A 5xx is not retried: RunPod may have created the pod before failing."""
        body = spec.to_v2()
        return Pod.from_v2(self.call("POST", "/pods", f"create pod {spec.name!r}",
                                     json_body=body, ok=(200, 201), retry_5xx=False))

    def action(self, pod_id: str, action: PodAction) -> Pod | None:
        body = self.call("POST", f"/pods/{pod_id}/action", f"{action} pod {pod_id}",
                         json_body={"action": action}, ok=(200, 204))
        return Pod.from_v2(body) if body else None

    def pod_logs(self, pod_id: str, tail: int) -> list[str]:
        """The last `tail` lines of the pod's container output: server-sent events whose data is
        `{"source": "container", "line": ...}` (a data line that is not such JSON is taken as
        the line itself)."""
        call = f"pod logs {pod_id} (GET /v2/pods/{pod_id}/logs)"
        response = self.session.request(
            "GET", f"{self.url}/pods/{pod_id}/logs", call,
            params={**self.params, "source": "container", "tail": str(tail)})
        if response.status_code != 200:
            raise self.session.error(call, response)
        lines = []
        for raw in response.text.splitlines():
            if not raw.startswith("data:"):
                continue
            data = raw[5:].removeprefix(" ")
            try:
                event = json.loads(data)
            except ValueError:
                event = None
            lines.append(str(event["line"]) if isinstance(event, dict) and "line" in event
                         else data)
        return lines

    def list_gpus(self, cloud: Cloud, gpu_count: int) -> list[GpuType]:
        params = {"include": "AVAILABILITY", "product": "POD", "count": str(gpu_count)}
        if cloud != "ALL":
            params["cloud"] = cloud
        body = self.call("GET", "/catalog/gpus", "GPU catalog (GET /v2/catalog/gpus)",
                         params=params)
        return [GpuType.from_v2(g) for g in (body or {}).get("gpus", [])]

    def list_templates(self) -> list[Template]:
        body = self.call("GET", "/templates", "list templates (GET /v2/templates)")
        return [Template.from_v2(t) for t in (body or {}).get("templates", [])]

    def get_template(self, template_id: str) -> Template:
        return Template.from_v2(self.call("GET", f"/templates/{template_id}",
                                          f"get template {template_id}"))

    def create_template(self, spec: TemplateSpec) -> Template:
        return Template.from_v2(self.call("POST", "/templates",
                                          f"create template {spec.name!r}",
                                          json_body=spec.to_v2(), ok=(200, 201)))

    def update_template(self, template_id: str, spec: TemplateSpec) -> Template:
        return Template.from_v2(self.call("PATCH", f"/templates/{template_id}",
                                          f"update template {template_id}",
                                          json_body=spec.to_v2(partial=True), ok=(200,)))

    def list_registries(self) -> list[Registry]:
        body = self.call("GET", "/registries", "list registry auths (GET /v2/registries)")
        return [Registry.from_v2(r) for r in (body or {}).get("registries", [])]

    def create_registry(self, name: str, username: str, password: str) -> Registry:
        """The password goes in the body only; no answer or error repeats it."""
        return Registry.from_v2(self.call(
            "POST", "/registries", f"create registry auth {name!r}",
            json_body={"name": name, "username": username, "password": password},
            ok=(200, 201)))

    def delete_registry(self, registry_id: str) -> None:
        self.call("DELETE", f"/registries/{registry_id}", f"delete registry auth {registry_id}",
                  ok=(200, 204))

    def list_network_volumes(self) -> list[NetworkVolume]:
        body = self.call("GET", "/network-volumes",
                         "list network volumes (GET /v2/network-volumes)")
        return [NetworkVolume.from_v2(v) for v in (body or {}).get("networkVolumes", [])]

    def get_network_volume(self, volume_id: str) -> NetworkVolume:
        return NetworkVolume.from_v2(self.call("GET", f"/network-volumes/{volume_id}",
                                               f"get network volume {volume_id}"))

    def create_network_volume(self, name: str, size_gb: int, data_center: str) -> NetworkVolume:
        return NetworkVolume.from_v2(self.call(
            "POST", "/network-volumes", f"create network volume {name!r}",
            json_body={"name": name, "size": size_gb, "dataCenter": data_center},
            ok=(200, 201), retry_5xx=False))

    def delete_network_volume(self, volume_id: str) -> None:
        self.call("DELETE", f"/network-volumes/{volume_id}",
                  f"delete network volume {volume_id}", ok=(200, 204))

    def list_clusters(self) -> list[Cluster]:
        body = self.call("GET", "/clusters", "list clusters (GET /v2/clusters)")
        return [Cluster.from_v2(c) for c in (body or {}).get("clusters", [])]

    def get_cluster(self, cluster_id: str) -> Cluster:
        return Cluster.from_v2(self.call("GET", f"/clusters/{cluster_id}",
                                         f"get cluster {cluster_id}"))

    def create_cluster(self, spec: ClusterSpec) -> Cluster:
        """A 5xx is not retried: RunPod may have created the cluster before failing."""
        return Cluster.from_v2(self.call("POST", "/clusters", f"create cluster {spec.name!r}",
                                         json_body=spec.to_v2(), ok=(200, 201),
                                         retry_5xx=False))

    def delete_cluster(self, cluster_id: str) -> None:
        self.call("DELETE", f"/clusters/{cluster_id}", f"delete cluster {cluster_id}",
                  ok=(200, 204))

    def cluster_pods(self, cluster_id: str) -> list[Pod]:
        body = self.call("GET", f"/clusters/{cluster_id}/pods",
                         f"list the pods of cluster {cluster_id}")
        return [Pod.from_v2(p) for p in (body or {}).get("pods", [])]
