"""localpod against RunPod's own OpenAPI document for REST v2
(tests/fixtures/runpod_openapi_v2.json, structure only): a bounded schemathesis run over pods,
templates, container registry auths, network volumes, Instant Clusters, the GPU, CPU and
data-center catalog and the account's SSH keys (no server errors,
answers, headers and status codes as the document lists them, invalid requests refused, 405
with Allow for unlisted methods), plus localpod's real answers along a pod's life checked
against the document's response schemas.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.specs.openapi import checks

from host_tools.emulators.localpod import Account, LocalPodServer, RecordsBackend
from tests.utils.runpod_schema import DOCUMENT, conforms

pytestmark = pytest.mark.timeout(120)
KEY = "rpk_conformance_3f9a"
# The parts localpod emulates; the rest of the document (serverless, ECR delegations, billing)
# is not served (404).
EMULATED = (r"^/v2/(pods|templates|registries(/\{id\})?$|catalog/(gpus|datacenters|cpus|templates)"
            r"|account/ssh-keys|network-volumes|clusters)")

schema = schemathesis.openapi.from_path(DOCUMENT).include(path_regex=EMULATED)
schema.config.generation.update(modes=[schemathesis.GenerationMode.POSITIVE,
                                       schemathesis.GenerationMode.NEGATIVE],
                                max_examples=12, deterministic=True)
CHECKS = [checks.status_code_conformance, checks.content_type_conformance,
          checks.response_schema_conformance, checks.response_headers_conformance,
          checks.negative_data_rejection, checks.unsupported_method,
          checks.missing_required_header, checks.ignored_auth]


@pytest.fixture(scope="module")
def server() -> Iterator[LocalPodServer]:
    account = Account(RecordsBackend(), {KEY})
    account.rate_limit = (100_000, 10)  # the run's burst is not what this test is about
    with LocalPodServer(account) as running:
        yield running


@schema.parametrize()
@settings(max_examples=12, deadline=2000, derandomize=True, database=None,
          phases=[Phase.explicit, Phase.generate],
          suppress_health_check=list(HealthCheck))
def test_localpod_conforms_to_runpods_document(case: schemathesis.Case,
                                               server: LocalPodServer) -> None:
    response = case.call(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"},
                         timeout=10)
    assert response.status_code < 500, f"{case.method} {case.formatted_path}: server error"
    case.validate_response(response, checks=CHECKS,
                           headers={"Authorization": f"Bearer {KEY}"})


# -- localpod's real answers against the document's schemas --


def test_a_pods_life_answers_as_the_document_says(server: LocalPodServer) -> None:
    with httpx.Client(base_url=f"{server.url}/v2",
                      headers={"Authorization": f"Bearer {KEY}"}) as api:
        created = api.post("/pods", json={
            "name": "conf", "image": "img:1", "gpu": {"id": "NVIDIA RTX A4000", "count": 1},
            "ports": ["22/tcp", "8888/http"], "env": {"A": "b"}, "cloud": "COMMUNITY",
            "mounts": {"persistent": {"size": 20, "path": "/workspace"}}})
        assert created.status_code == 201
        pod_id = created.json()["id"]
        assert created.json()["status"] == "PROVISIONING"
        answers = [(created.json(), "Pod")]
        for _ in range(3):  # PROVISIONING -> STARTING -> RUNNING
            answers.append((api.get(f"/pods/{pod_id}").json(), "Pod"))
        assert answers[-1][0]["status"] == "RUNNING"
        assert answers[-1][0]["ssh"]["direct"]["port"] == server.account.pods[
            pod_id].mappings[22]
        answers.append((api.get("/pods").json(), "ListPodsResponse"))
        stopped = api.post(f"/pods/{pod_id}/action", json={"action": "stop"})
        assert stopped.json()["status"] == "EXITED"
        answers.append((stopped.json(), "Pod"))
        patched = api.patch(f"/pods/{pod_id}", json={"name": "renamed", "env": {"B": "c"}})
        assert (patched.status_code, patched.json()["name"], patched.json()["env"]) == (
            200, "renamed", {"B": "c"})
        answers.append((patched.json(), "Pod"))
        answers.append((api.get("/catalog/gpus").json(), "ListGpuTypesResponse"))
        answers.append((api.get("/catalog/gpus/NVIDIA A40").json(), "GpuType"))
        answers.append((api.get("/catalog/datacenters", params={
            "include": "GPU_AVAILABILITY"}).json(), "ListDataCentersResponse"))
        answers.append((api.get("/templates").json(), "ListTemplatesResponse"))
        template = api.post("/templates", json={"name": "conf-tpl", "image": "img:2"})
        assert template.status_code == 201
        answers.append((template.json(), "Template"))
        registry = api.post("/registries", json={"name": "conf-reg", "username": "u",
                                                 "password": "p"})
        assert registry.status_code == 201
        answers.append((registry.json(), "Registry"))
        answers.append((api.get("/registries").json(), "ListRegistriesResponse"))
        answers.append((api.get(f"/registries/{registry.json()['id']}").json(), "Registry"))
        assert api.delete(f"/registries/{registry.json()['id']}").status_code == 204
        answers.append((api.get("/pods/nosuchpod0000").json(), "ErrorResponse"))
        answers.append((api.post("/pods", json={"name": "x"}).json(), "ErrorResponse"))
        deleted = api.delete(f"/pods/{pod_id}")
        assert (deleted.status_code, deleted.content) == (204, b"")
    for answer, name in answers:
        conforms(answer, name)


def test_a_network_volumes_life_answers_as_the_document_says(server: LocalPodServer) -> None:
    with httpx.Client(base_url=f"{server.url}/v2",
                      headers={"Authorization": f"Bearer {KEY}"}) as api:
        created = api.post("/network-volumes", json={"name": "data", "size": 50,
                                                     "dataCenter": "LOCAL-1"})
        assert created.status_code == 201
        volume = created.json()
        assert {k: v for k, v in volume.items() if k != "id"} == {
            "name": "data", "size": 50, "dataCenter": "LOCAL-1", "type": "STANDARD"}
        answers = [(volume, "NetworkVolume"),
                   (api.get("/network-volumes").json(), "ListNetworkVolumesResponse"),
                   (api.get(f"/network-volumes/{volume['id']}").json(), "NetworkVolume")]
        grown = api.patch(f"/network-volumes/{volume['id']}", json={"size": 60})
        assert (grown.status_code, grown.json()["size"]) == (200, 60)
        shrunk = api.patch(f"/network-volumes/{volume['id']}", json={"size": 20})
        assert (shrunk.status_code, shrunk.json()["detail"]) == (
            400, "a network volume can only grow: 60 GB now, 20 GB asked")
        pod = api.post("/pods", json={
            "name": "nv", "image": "img:1", "gpu": {"id": "NVIDIA RTX A4000", "count": 1},
            "dataCenterIds": ["LOCAL-1"],
            "mounts": {"network": [{"volumeId": volume["id"], "path": "/workspace"}]}})
        assert pod.status_code == 201
        assert pod.json()["mounts"] == {"network": [{"volumeId": volume["id"],
                                                     "path": "/workspace"}]}
        in_use = api.delete(f"/network-volumes/{volume['id']}")
        assert (in_use.status_code, in_use.json()["detail"]) == (
            409, f"network volume {volume['id']} is in use by pod(s) {pod.json()['id']}: "
            "terminate them first")
        answers += [(pod.json(), "Pod"), (shrunk.json(), "ErrorResponse"),
                    (in_use.json(), "ErrorResponse"),
                    (api.get("/network-volumes/nosuchvol0").json(), "ErrorResponse")]
        assert api.delete(f"/pods/{pod.json()['id']}").status_code == 204
        deleted = api.delete(f"/network-volumes/{volume['id']}")
        assert (deleted.status_code, deleted.content) == (204, b"")
        assert api.get(f"/network-volumes/{volume['id']}").status_code == 404
    for answer, name in answers:
        conforms(answer, name)


def test_a_clusters_life_answers_as_the_document_says(server: LocalPodServer) -> None:
    with httpx.Client(base_url=f"{server.url}/v2",
                      headers={"Authorization": f"Bearer {KEY}"}) as api:
        created = api.post("/clusters", json={
            "name": "cl", "type": "TRAINING", "image": "img:1", "ports": ["22/tcp"],
            "env": {"A": "b"}, "compute": {"gpuTypeId": "NVIDIA RTX A4000",
                                          "gpuCountPerPod": 1, "podCount": 2}})
        assert created.status_code == 201, created.text
        cluster = created.json()
        assert (cluster["compute"], cluster["pods"]) == (
            {"gpuTypeId": "NVIDIA RTX A4000", "gpuCountPerPod": 1, "podCount": 2},
            {"total": 2, "byStatus": {"PROVISIONING": 2}})
        pods = api.get(f"/clusters/{cluster['id']}/pods").json()
        base = cluster["network"]["cidr"].rsplit(".", 1)[0]
        assert [(p["name"], p["cluster"]) for p in pods["pods"]] == [
            ("cl-0", {"id": cluster["id"], "rank": 0, "ip": f"{base}.10"}),
            ("cl-1", {"id": cluster["id"], "rank": 1, "ip": f"{base}.11"})]
        assert api.get("/pods").json() == {"pods": []}  # cluster pods only when asked
        listed = api.get("/pods", params={"includeClusterPods": "true"}).json()
        assert sorted(p["name"] for p in listed["pods"]) == ["cl-0", "cl-1"]
        refused = api.post(f"/pods/{pods['pods'][1]['id']}/action",
                           json={"action": "terminate"})
        assert (refused.status_code, refused.json()["detail"]) == (
            400, f"pod {pods['pods'][1]['id']} is a node of cluster {cluster['id']}: its nodes "
            f"are terminated with it (DELETE /v2/clusters/{cluster['id']})")
        renamed = api.patch(f"/clusters/{cluster['id']}", json={"name": "cl2"})
        answers = [(cluster, "Cluster"), (pods, "ListPodsResponse"),
                   (listed, "ListPodsResponse"), (renamed.json(), "Cluster"),
                   (api.get(f"/clusters/{cluster['id']}").json(), "Cluster"),
                   (api.get("/clusters").json(), "ListClustersResponse"),
                   (refused.json(), "ErrorResponse")]
        assert renamed.json()["name"] == "cl2"
        assert answers[4][0]["primary"]["status"] == "RUNNING"
        deleted = api.delete(f"/clusters/{cluster['id']}")
        assert (deleted.status_code, deleted.content) == (204, b"")
        gone = api.get(f"/clusters/{cluster['id']}")
        assert gone.status_code == 404
        assert all(server.account.pods[p["id"]].status == "TERMINATED" for p in pods["pods"])
        answers.append((gone.json(), "ErrorResponse"))
    for answer, name in answers:
        conforms(answer, name)
