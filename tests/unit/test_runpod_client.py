"""appliance.runpod against a mock transport: headers, key lookup and hygiene, retries, error types
and the GraphQL fallback, with no network and no sleeping.
"""

from __future__ import annotations

import json
import logging
import time
from email.utils import formatdate

import httpx
import pytest

from appliance import runpod
from appliance.runpod import (
    AccessDeniedError,
    AuthError,
    ConflictError,
    NoApiKeyError,
    NoCapacityError,
    PaymentRequiredError,
    Pod,
    PodSpec,
    RateLimitedError,
    RunpodClient,
    ServerError,
    resolve_api_key,
    strip_api_key,
)
from appliance.settings import RunpodSettings
from tests.utils.localpod import CANARY

REST = "https://rest.example.test/v2"
GQL = "https://gql.example.test/graphql"
POD = {"id": "abcdefghijklmn", "name": "p", "status": "RUNNING", "actions": ["stop"],
       "gpu": {"id": "NVIDIA A40", "count": 1}, "ports": ["22/tcp", "8888/http"],
       "runtime": {"ports": [{"private": 22, "public": 4022, "type": "tcp", "ip": "10.0.0.1"}]}}


def client_for(handler, sleeps: list[float] | None = None, **kw) -> RunpodClient:
    sleep_log = sleeps if sleeps is not None else []
    return RunpodClient(CANARY, settings=RunpodSettings(), rest_url=REST, graphql_url=GQL,
                        transport=httpx.MockTransport(handler), sleep=sleep_log.append, **kw)


def problem(status: int, detail: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json={"title": "x", "status": status, "detail": detail},
                          headers=headers)


def test_headers_key_only_in_authorization_and_api_key_stripped_from_urls() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"pods": [POD]})

    client = RunpodClient(CANARY, settings=RunpodSettings(),
                          rest_url=f"{REST}?api_key={CANARY}&x=1",
                          graphql_url=f"{GQL}?api_key={CANARY}",
                          transport=httpx.MockTransport(handler), sleep=lambda s: None)
    assert [p.id for p in client.list_pods()] == ["abcdefghijklmn"]
    request = seen[0]
    assert request.headers["Authorization"] == f"Bearer {CANARY}"
    assert request.headers["Accept"] == "application/json"
    assert request.headers["User-Agent"] == runpod.USER_AGENT
    assert str(request.url) == "https://rest.example.test/v2/pods?x=1"
    assert client.graphql_url == GQL and client.rest_url == REST
    assert CANARY not in repr(client)
    for name, value in request.headers.items():
        if name != "authorization":
            assert CANARY not in value


def test_strip_api_key_keeps_other_parameters() -> None:
    assert strip_api_key("https://h/graphql?api_key=s&a=1&APIKEY=t") == "https://h/graphql?a=1"


def test_key_lookup_order_argument_env_keyring(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_api_key("arg", RunpodSettings(RUNPOD_API_KEY="env"),
                           lambda: "ring") == ("arg", "argument")
    assert resolve_api_key(None, RunpodSettings(RUNPOD_API_KEY="env"),
                           lambda: "ring") == ("env", "RUNPOD_API_KEY")
    assert resolve_api_key(None, RunpodSettings(), lambda: "ring") == (
        "ring", "keyring (service=runpod)")
    with pytest.raises(NoApiKeyError) as info:
        resolve_api_key(None, RunpodSettings(), lambda: None)
    assert str(info.value) == (
        "API key lookup: no RunPod API key found (argument, RUNPOD_API_KEY, keyring "
        "service=runpod username=RUNPOD_API_KEY) (no answer); set RUNPOD_API_KEY, or store it "
        "with `keyring set runpod RUNPOD_API_KEY`, or pass it explicitly")


def test_keyring_is_asked_for_service_runpod(monkeypatch: pytest.MonkeyPatch) -> None:
    import keyring

    asked: list[tuple[str, str]] = []

    def get_password(service: str, username: str) -> str:
        asked.append((service, username))
        return "from-ring"

    monkeypatch.setattr(keyring, "get_password", get_password)
    assert resolve_api_key(None, RunpodSettings()) == ("from-ring", "keyring (service=runpod)")
    assert asked == [("runpod", "RUNPOD_API_KEY")]


def test_429_honours_retry_after_then_succeeds() -> None:
    answers = [problem(429, "slow down", {"Retry-After": "7"}), httpx.Response(200, json=POD)]
    sleeps: list[float] = []
    client = client_for(lambda r: answers.pop(0), sleeps)
    assert client.get_pod("abcdefghijklmn").status == "RUNNING"
    assert sleeps == [7.0]


def test_429_honours_retry_after_as_an_http_date() -> None:
    when = formatdate(time.time() + 10, usegmt=True)
    answers = [problem(429, "slow down", {"Retry-After": when}), httpx.Response(200, json=POD)]
    sleeps: list[float] = []
    client = client_for(lambda r: answers.pop(0), sleeps)
    assert client.get_pod("abcdefghijklmn").status == "RUNNING"
    assert len(sleeps) == 1 and 8.0 < sleeps[0] <= 10.0


def test_429_with_retry_after_beyond_max_wait_fails_at_once() -> None:
    sleeps: list[float] = []
    client = client_for(lambda r: problem(429, "slow down", {"Retry-After": "3600"}), sleeps)
    with pytest.raises(RateLimitedError) as info:
        client.get_pod("abcdefghijklmn")
    assert sleeps == []
    assert info.value.status == 429


def test_5xx_retried_with_exponential_backoff_then_typed_error() -> None:
    sleeps: list[float] = []
    client = client_for(lambda r: problem(503, "busy"), sleeps, retries=3, backoff_s=0.5)
    with pytest.raises(ServerError) as info:
        client.list_pods()
    assert sleeps == [0.5, 1.0, 2.0]
    assert str(info.value) == ("list pods (GET /v2/pods): busy (HTTP 503); RunPod failed on its "
                               "side; try again later")


def test_create_is_not_retried_on_5xx() -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        return problem(500, "Something went wrong.")

    client = client_for(handler)
    with pytest.raises(ServerError):
        client.create_pod(PodSpec(name="n", gpu_type_id="NVIDIA A40", image="img"))
    assert calls == ["POST"]


@pytest.mark.parametrize(("status", "detail", "error", "action"), [
    (401, "invalid token", AuthError,
     "the API key was refused: create a new key in the RunPod console"),
    (402, "insufficient balance", PaymentRequiredError,
     "add credit to the RunPod account (a pod needs at least one hour of credit)"),
    (400, "There are no longer any instances available with the requested specifications.",
     NoCapacityError, "try another GPU type, cloud or data center"),
])
def test_errors_are_typed_with_actions(status: int, detail: str, error: type, action: str) -> None:
    client = client_for(lambda r: problem(status, detail))
    with pytest.raises(error) as info:
        client.create_pod(PodSpec(name="n", gpu_type_id="NVIDIA A40", image="img"))
    assert info.value.action == action
    assert info.value.message == detail


def test_409_names_the_pod_state() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return problem(409, "action stop not allowed")
        return httpx.Response(200, json={**POD, "status": "EXITED"})

    with pytest.raises(ConflictError) as info:
        client_for(handler).stop_pod("abcdefghijklmn")
    assert info.value.state == "EXITED"
    assert info.value.action == ("the pod is EXITED; wait for it to settle or pick an action "
                                 "allowed now")


def test_server_echo_of_the_key_is_redacted_in_errors() -> None:
    client = client_for(lambda r: problem(400, f"bad key {CANARY} given"))
    with pytest.raises(runpod.InvalidRequestError) as info:
        client.list_templates()
    assert CANARY not in str(info.value)
    assert "bad key <redacted> given" in str(info.value)


def test_catalog_denied_everywhere_says_what_to_do() -> None:
    client = client_for(lambda r: problem(403, "access denied"))
    with pytest.raises(AccessDeniedError) as info:
        client.list_gpus()
    assert info.value.action == ("this key may not read the GPU catalog: pass --gpu-type-id to "
                                 "provision without it, or use a key with read access")


def test_stop_falls_back_to_graphql_and_tries_the_next_mutation_shape() -> None:
    bodies: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "rest.example.test":
            return problem(403, "access denied")
        body = json.loads(request.content)
        bodies.append(body)
        if len(bodies) == 1:
            return httpx.Response(400, json={"errors": [
                {"message": 'Unknown type "PodStopInput".'}]})
        if "podStop" in body["query"]:
            return httpx.Response(200, json={"data": {"podStop": {
                "id": "abcdefghijklmn", "desiredStatus": "EXITED"}}})
        return httpx.Response(200, json={"data": {"pod": {
            "id": "abcdefghijklmn", "desiredStatus": "EXITED", "runtime": None}}})

    pod = client_for(handler).stop_pod("abcdefghijklmn")
    assert pod is not None and pod.status == "EXITED"
    assert bodies[0]["variables"] == {"input": {"podId": "abcdefghijklmn"}}
    assert bodies[1]["variables"] == {"podId": "abcdefghijklmn"}
    assert "podStop(input: {podId: $podId})" in bodies[1]["query"]


def test_bad_pod_id_is_refused_before_any_request() -> None:
    client = client_for(lambda r: pytest.fail("no request expected"))
    with pytest.raises(ValueError) as info:
        client.stop_pod('x"} ) { id } }')
    assert str(info.value) == ("bad pod id 'x\"} ) { id } }': expected letters, digits, '-' "
                               "or '_'")


def test_logs_never_hold_the_key(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    answers = [problem(429, "slow", {"Retry-After": "1"}), problem(503, "busy"),
               httpx.Response(200, json={"pods": []})]
    client_for(lambda r: answers.pop(0)).list_pods()
    assert "retry 1/4" in caplog.text
    assert CANARY not in caplog.text


def test_a_network_volume_replaces_the_pod_volume_and_pins_the_data_center() -> None:
    spec = PodSpec(name="n", gpu_type_id="g", image="i", network_volume_id="vol1",
                   data_center_id="EU-RO-1")
    body = spec.to_v2()
    assert (body["mounts"], body["dataCenterIds"]) == (
        {"network": [{"volumeId": "vol1", "path": "/workspace"}]}, ["EU-RO-1"])
    assert "dataCenterIds" not in PodSpec(name="n", gpu_type_id="g", image="i").to_v2()
    v2 = Pod.from_v2({"id": "p", "dataCenterId": "EU-RO-1",
                      "mounts": {"network": [{"volumeId": "vol1", "path": "/workspace"}]}})
    assert (v2.network_volume_id, v2.data_center_id, v2.volume_gb) == ("vol1", "EU-RO-1", 0)
    assert Pod.from_graphql({"id": "p", "networkVolumeId": "vol1"}).network_volume_id == "vol1"
