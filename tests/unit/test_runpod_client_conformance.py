"""RunpodClient's REST requests against RunPod's own OpenAPI document (tests/fixtures/
runpod_openapi_v2.json): every request it sends, captured on its way to localpod, is a documented
operation whose query parameters and JSON body validate against the document's schemas.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import pytest

from appliance.runpod import RunpodClient
from appliance.runpod.clusters import ClusterSpec
from appliance.runpod.models import PodSpec, TemplateSpec
from host_tools.emulators.localpod import LocalPodServer
from tests.utils.localpod import CANARY
from tests.utils.runpod_schema import conforms, operation, parameters

pytestmark = pytest.mark.timeout(60)


class Recording(httpx.HTTPTransport):
    """The real transport, keeping every request it sends."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        return super().handle_request(request)


def query_value(raw: str, schema: dict[str, Any], explode: bool) -> Any:
    """A query string value as the JSON value its schema describes (form style)."""
    kind = schema.get("type")
    if kind == "array":
        return [query_value(v, schema["items"], explode) for v in raw.split(",")]
    if kind == "integer":
        return int(raw)
    if kind == "boolean":
        return {"true": True, "false": False}.get(raw, raw)
    return raw


def check_request(request: httpx.Request) -> str:
    """Fail unless `request` is documented and valid; its "METHOD /template"."""
    path = request.url.path
    template, op = operation(request.method, path)
    declared = parameters(template, op)
    for name, raw in request.url.params.multi_items():
        assert name in declared, f"{request.method} {path}: undocumented query {name!r}"
        schema = declared[name]["schema"]
        conforms(query_value(raw, schema, declared[name].get("explode", True)), schema)
    body = op.get("requestBody")
    if body is None:
        assert not request.content, f"{request.method} {path} sends a body the document lacks"
    else:
        assert request.headers["Content-Type"] == "application/json"
        conforms(json.loads(request.content),
                 body["content"]["application/json"]["schema"])
    return f"{request.method} {template}"


def test_every_request_the_client_sends_is_documented_and_valid(
        localpod: LocalPodServer) -> None:
    recording = Recording()
    with RunpodClient(CANARY, rest_url=localpod.rest_url, graphql_url=localpod.graphql_url,
                      transport=recording, keyring_lookup=lambda: None) as client:
        for cloud in ("ALL", "SECURE", "COMMUNITY"):
            client.list_gpus(cloud=cloud, gpu_count=2)  # type: ignore[arg-type]
        client.list_templates()
        pod = client.create_pod(PodSpec(name="conf", gpu_type_id="NVIDIA RTX A4000",
                                        image="img:1", env={"A": "b"}, cloud="COMMUNITY"))
        from_template = client.create_pod(PodSpec(name="tpl", gpu_type_id="NVIDIA A40",
                                                  template_id="chessbotappl1", ports=[]))
        client.list_pods()
        client.get_pod(pod.id)
        client.get_pod(pod.id)
        client.stop_pod(pod.id)
        client.start_pod(pod.id)
        client.terminate_pod(pod.id)
        client.terminate_pod(from_template.id)
        registry = client.create_registry("reg", "user", "pw")
        template = client.create_template(TemplateSpec(
            name="t", image="img:1", ports=["22/tcp"], env={"A": "{{ RUNPOD_SECRET_a }}"},
            disk_gb=10, volume_gb=10, registry=registry.id))
        client.update_template(template.id, TemplateSpec(env={"B": "c"}, volume_gb=20))
        client.get_template(template.id)
        client.list_registries()
        client.delete_registry(registry.id)
        volume = client.create_network_volume("data", 50, "LOCAL-1")
        assert client.list_network_volumes() == [volume]
        assert client.get_network_volume(volume.id) == volume
        on_volume = client.create_pod(PodSpec(name="nv", gpu_type_id="NVIDIA A40", image="img:1",
                                              network_volume_id=volume.id,
                                              data_center_id="LOCAL-1"))
        assert (on_volume.network_volume_id, on_volume.data_center_id) == (volume.id, "LOCAL-1")
        client.terminate_pod(on_volume.id)
        client.delete_network_volume(volume.id)
        cluster = client.create_cluster(ClusterSpec(
            name="cl", gpu_type_id="NVIDIA RTX A4000", pod_count=2, image="img:1",
            env={"A": "b"}, data_center_id="LOCAL-1"))
        assert [c.id for c in client.list_clusters()] == [cluster.id]
        assert client.get_cluster(cluster.id).pod_count == 2
        nodes = client.cluster_pods(cluster.id)
        assert [(p.cluster_id, p.cluster_rank) for p in nodes] == [(cluster.id, 0),
                                                                   (cluster.id, 1)]
        client.stop_pod(nodes[1].id)  # a cluster is stopped node by node
        client.terminate_cluster(cluster.id)
    assert all(r["status"] < 400 for r in localpod.account.requests)
    operations = [check_request(r) for r in recording.sent]
    assert sorted(set(operations)) == [
        "DELETE /v2/clusters/{id}", "DELETE /v2/network-volumes/{id}",
        "DELETE /v2/registries/{id}", "GET /v2/catalog/gpus", "GET /v2/clusters",
        "GET /v2/clusters/{id}", "GET /v2/clusters/{id}/pods",
        "GET /v2/network-volumes", "GET /v2/network-volumes/{id}",
        "GET /v2/pods", "GET /v2/pods/{id}", "GET /v2/registries", "GET /v2/templates",
        "GET /v2/templates/{id}", "PATCH /v2/templates/{id}", "POST /v2/clusters",
        "POST /v2/network-volumes",
        "POST /v2/pods", "POST /v2/pods/{id}/action", "POST /v2/registries",
        "POST /v2/templates"]


def test_the_check_refuses_what_the_document_refuses() -> None:
    def request(method: str, url: str, **kwargs: Any) -> httpx.Request:
        return httpx.Request(method, f"http://x{url}", **kwargs)

    refused = [
        request("POST", "/v2/pods", json={"name": "n", "gpu": {"id": "g", "count": 0},
                                          "image": "i"}),
        request("POST", "/v2/pods", json={"name": "n", "image": "i", "ports": "22/tcp"}),
        request("POST", "/v2/pods", json={"name": "n"}),  # neither image nor templateId
        request("POST", "/v2/pods", json={"name": "n", "image": "i", "bogus": 1}),
        request("GET", "/v2/catalog/gpus", params={"include": "EVERYTHING"}),
        request("POST", "/v2/pods/abc/action", json={"action": "reset"}),
        request("POST", "/v2/templates", json={"name": "n"}),  # no image
        request("PATCH", "/v2/templates/t", json={"startSsh": "yes"}),
        request("POST", "/v2/registries", json={"name": "n", "username": "u"}),
        request("POST", "/v2/network-volumes", json={"name": "n", "size": 5,
                                                     "dataCenter": "d"}),
        request("POST", "/v2/clusters", json={  # one node is no cluster
            "name": "c", "type": "TRAINING", "image": "i",
            "compute": {"gpuTypeId": "g", "gpuCountPerPod": 1, "podCount": 1}}),
        request("POST", "/v2/clusters", json={  # the document has no templateId here
            "name": "c", "type": "TRAINING", "templateId": "t",
            "compute": {"gpuTypeId": "g", "gpuCountPerPod": 1, "podCount": 2}}),
    ]
    for bad in refused:
        with pytest.raises(jsonschema.ValidationError):
            check_request(bad)
    with pytest.raises(KeyError, match="PUT /v2/pods is not in RunPod's document"):
        check_request(request("PUT", "/v2/pods"))
    with pytest.raises(AssertionError, match="undocumented query 'x'"):
        check_request(request("GET", "/v2/pods", params={"x": "1"}))
