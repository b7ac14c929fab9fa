"""The one RunPod API client: REST v2 first, GraphQL where REST is denied or missing; typed errors
with actions; the API key only in the Authorization header, scrubbed from all it raises or logs.
"""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx

from appliance.settings import RunpodSettings, load

log = logging.getLogger(__name__)

DEFAULT_REST_URL = "https://api.runpod.io/v2"
DEFAULT_GRAPHQL_URL = "https://api.runpod.io/graphql"
USER_AGENT = "chessbot-pod-appliance/0.1 (+runpod client)"
KEYRING_SERVICE = "runpod"
KEYRING_USERNAME = "RUNPOD_API_KEY"
NO_CAPACITY_MARKERS = (
    "no longer any instances available",
    "does not have the resources to deploy",
    "not enough free gpus",
    "no capacity",
)
# REST answers these when a call is denied to this key or absent on this server: try GraphQL.
FALLBACK_STATUSES = frozenset({403, 404, 405, 501})
Cloud = Literal["SECURE", "COMMUNITY", "ALL"]
PodAction = Literal["start", "stop", "restart", "terminate"]


# -- errors ---------------------------------------------------------------------------------------


class RunpodError(Exception):
    """A failed RunPod call: which call, what the server said, and what to do about it."""

    default_action = "check the RunPod status page and try again"

    def __init__(self, call: str, message: str, *, status: int | None = None,
                 action: str | None = None) -> None:
        self.call, self.message, self.status = call, message, status
        self.action = action or self.default_action
        super().__init__(f"{call}: {message} ({'HTTP ' + str(status) if status else 'no answer'})"
                         f"; {self.action}")


class NoApiKeyError(RunpodError):
    default_action = ("set RUNPOD_API_KEY, or store it with "
                      "`keyring set runpod RUNPOD_API_KEY`, or pass it explicitly")


class AuthError(RunpodError):
    default_action = "the API key was refused: create a new key in the RunPod console"


class AccessDeniedError(RunpodError):
    default_action = "this key may not make this call: use a key with full access"


class PaymentRequiredError(RunpodError):
    default_action = "add credit to the RunPod account (a pod needs at least one hour of credit)"


class NoCapacityError(RunpodError):
    default_action = "try another GPU type, cloud or data center"


class InvalidRequestError(RunpodError):
    default_action = "fix the request; retrying it unchanged will fail the same way"


class NotFoundError(RunpodError):
    default_action = "list pods with `provision.py pods` to see which exist"


class ConflictError(RunpodError):
    """The action is not allowed in the pod's current state (`state`, when known)."""

    def __init__(self, call: str, message: str, *, status: int | None = 409,
                 action: str | None = None, state: str | None = None) -> None:
        self.state = state
        if action is None:
            action = (f"the pod is {state}; wait for it to settle or pick an action allowed now"
                      if state else "check the pod's state with `provision.py status POD`")
        super().__init__(call, message, status=status, action=action)


class RateLimitedError(RunpodError):
    default_action = "too many requests: wait a minute and try again"


class ServerError(RunpodError):
    default_action = "RunPod failed on its side; try again later"


class TransportError(RunpodError):
    default_action = "check the network and RUNPOD_REST_URL / RUNPOD_GRAPHQL_URL"


# -- models ---------------------------------------------------------------------------------------


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
            "createdAt": self.created_at,
            "runtime": {"ports": [m.__dict__ for m in self.mappings]} if self.mappings else None,
        }

    @classmethod
    def from_v2(cls, d: dict[str, Any]) -> Pod:
        runtime = d.get("runtime") or {}
        mounts = d.get("mounts") or {}
        return cls(
            id=str(d["id"]), name=str(d.get("name") or ""), status=str(d.get("status") or ""),
            image=str(d.get("image") or ""), gpu_id=str((d.get("gpu") or {}).get("id") or ""),
            gpu_count=int((d.get("gpu") or {}).get("count") or 0),
            cost_per_hr=float(d.get("cost") or 0.0), ports=list(d.get("ports") or []),
            env=dict(d.get("env") or {}), actions=list(d.get("actions") or []),
            volume_gb=int((mounts.get("persistent") or {}).get("size") or 0),
            created_at=str(d.get("createdAt") or ""),
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
            mappings=[PortMapping(int(p["privatePort"]), int(p["publicPort"]),
                                  str(p.get("type", "tcp")), str(p.get("ip", "")))
                      for p in (runtime or {}).get("ports") or []],
        )


_GRAPHQL_STATUS = {"CREATED": "PROVISIONING", "RUNNING": "RUNNING", "RESTARTING": "STARTING",
                   "EXITED": "EXITED", "PAUSED": "EXITED", "DEAD": "ERROR",
                   "TERMINATED": "TERMINATED"}


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


@dataclass(frozen=True)
class Template:
    id: str
    name: str
    image: str
    ports: list[str]
    env: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class PodSpec:
    """What to create; `to_v2()` is the REST v2 CreatePodRequest body."""

    name: str
    gpu_type_id: str
    image: str = ""
    template_id: str = ""
    gpu_count: int = 1
    cloud: Literal["SECURE", "COMMUNITY"] = "SECURE"
    ports: list[str] = field(default_factory=lambda: ["22/tcp", "8888/http", "8000/http"])
    env: dict[str, str] = field(default_factory=dict)
    disk_gb: int = 30
    volume_gb: int = 20
    volume_path: str = "/workspace"
    start_ssh: bool = True

    def to_v2(self) -> dict[str, Any]:
        if not self.image and not self.template_id:
            raise ValueError("a pod needs an image or a template id")
        body: dict[str, Any] = {
            "name": self.name, "cloud": self.cloud, "ports": self.ports, "disk": self.disk_gb,
            # count is always sent: without it RunPod answers a misleading "no instances" 400.
            "gpu": {"id": self.gpu_type_id, "count": self.gpu_count},
            "mounts": {"persistent": {"size": self.volume_gb, "path": self.volume_path}},
            "startSsh": self.start_ssh,
        }
        if self.image:
            body["image"] = self.image
        if self.template_id:
            body["templateId"] = self.template_id
        if self.env:
            body["env"] = dict(self.env)
        return body


# -- key and URL hygiene --------------------------------------------------------------------------


def _keyring_lookup() -> str | None:
    try:
        import keyring  # imported late: a broken keyring backend must not break the client

        return keyring.get_password(KEYRING_SERVICE, KEYRING_USERNAME)
    except Exception as exc:  # noqa: BLE001 (any backend failure means "no key there")
        log.debug("keyring lookup failed: %s", type(exc).__name__)
        return None


def resolve_api_key(explicit: str | None = None, settings: RunpodSettings | None = None,
                    keyring_lookup: Callable[[], str | None] = _keyring_lookup) -> tuple[str, str]:
    """The key and where it came from: explicit, then RUNPOD_API_KEY, then the keyring."""
    if explicit and explicit.strip():
        return explicit.strip(), "argument"
    settings = settings if settings is not None else load(RunpodSettings)
    if settings.RUNPOD_API_KEY is not None and settings.RUNPOD_API_KEY.get_secret_value().strip():
        return settings.RUNPOD_API_KEY.get_secret_value().strip(), "RUNPOD_API_KEY"
    from_keyring = keyring_lookup()
    if from_keyring and from_keyring.strip():
        return from_keyring.strip(), f"keyring (service={KEYRING_SERVICE})"
    raise NoApiKeyError("API key lookup", "no RunPod API key found (argument, RUNPOD_API_KEY, "
                        f"keyring service={KEYRING_SERVICE} username={KEYRING_USERNAME})")


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


def _retry_after_seconds(value: str | None, now: float) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


# -- the client -----------------------------------------------------------------------------------


class RunpodClient:
    """REST v2 with GraphQL fallback. `transport` and `sleep` are the seams tests replace."""

    def __init__(self, api_key: str | None = None, *, settings: RunpodSettings | None = None,
                 rest_url: str | None = None, graphql_url: str | None = None,
                 transport: httpx.BaseTransport | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 keyring_lookup: Callable[[], str | None] = _keyring_lookup,
                 retries: int = 4, backoff_s: float = 1.0, max_wait_s: float = 60.0,
                 timeout_s: float = 30.0) -> None:
        settings = settings if settings is not None else load(RunpodSettings)
        self._key, self.key_source = resolve_api_key(api_key, settings, keyring_lookup)
        # Query parameters of a configured URL (api_key removed) go on every request to it.
        self.rest_url, self._rest_params = _split_query(
            strip_api_key(rest_url or settings.RUNPOD_REST_URL))
        self.graphql_url, self._graphql_params = _split_query(
            strip_api_key(graphql_url or settings.RUNPOD_GRAPHQL_URL))
        self._sleep, self.retries = sleep, retries
        self.backoff_s, self.max_wait_s = backoff_s, max_wait_s
        # Redirects are not followed, so the Authorization header never leaves the two endpoints.
        self._http = httpx.Client(
            transport=transport, timeout=timeout_s, follow_redirects=False,
            headers={"Authorization": f"Bearer {self._key}", "Accept": "application/json",
                     "User-Agent": USER_AGENT},
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RunpodClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RunpodClient(rest_url={self.rest_url!r}, key from {self.key_source})"

    # -- plumbing --

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "<redacted>") if self._key else text

    def _request(self, method: str, url: str, call: str, *, json_body: Any = None,
                 params: dict[str, str] | None = None, retry_5xx: bool = True) -> httpx.Response:
        """One call with retries: 429 waits Retry-After, 5xx and connection errors back off."""
        base = self._rest_params if url.startswith(self.rest_url) else self._graphql_params
        params = {**base, **(params or {})} or None
        attempt = 0
        while True:
            try:
                response = self._http.request(method, url, json=json_body, params=params)
            except httpx.HTTPError as exc:
                if attempt >= self.retries or not retry_5xx:
                    raise TransportError(call, self._scrub(f"{type(exc).__name__}: {exc}")) \
                        from None
                wait = self.backoff_s * 2 ** attempt
            else:
                status = response.status_code
                if status == 429 and attempt < self.retries:
                    wait = _retry_after_seconds(response.headers.get("Retry-After"), time.time())
                    wait = self.backoff_s * 2 ** attempt if wait is None else wait
                    if wait > self.max_wait_s:
                        raise self._error(call, response)
                elif status >= 500 and retry_5xx and attempt < self.retries:
                    wait = self.backoff_s * 2 ** attempt
                else:
                    return response
                log.warning("%s: HTTP %d, retry %d/%d in %.1f s", call, status, attempt + 1,
                            self.retries, wait)
            attempt += 1
            self._sleep(min(wait, self.max_wait_s))

    def _message(self, response: httpx.Response) -> str:
        try:
            body = response.json()
        except ValueError:
            return self._scrub(response.text.strip()[:300]) or response.reason_phrase
        parts: list[str] = []
        if isinstance(body, dict):
            if isinstance(body.get("errors"), list) and body["errors"]:
                first = body["errors"][0]
                parts.append(str(first.get("message") if isinstance(first, dict) else first))
            for key in ("detail", "message", "error", "title"):
                if body.get(key) and not parts:
                    parts.append(str(body[key]))
        return self._scrub("; ".join(parts)[:300] or response.reason_phrase)

    def _error(self, call: str, response: httpx.Response, state: str | None = None
               ) -> RunpodError:
        status, message = response.status_code, self._message(response)
        return _classify(call, status, message, state)

    def _rest(self, method: str, path: str, call: str, *, json_body: Any = None,
              params: dict[str, str] | None = None, ok: Iterable[int] = (200, 201, 204),
              retry_5xx: bool = True) -> Any:
        response = self._request(method, self.rest_url + path, call, json_body=json_body,
                                 params=params, retry_5xx=retry_5xx)
        if response.status_code not in tuple(ok):
            raise self._error(call, response)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise ServerError(call, "the answer was not JSON", status=response.status_code) \
                from None

    def graphql(self, query: str, variables: dict[str, Any] | None = None,
                call: str = "GraphQL") -> dict[str, Any]:
        body: dict[str, Any] = {"query": query}
        if variables is not None:
            body["variables"] = variables
        response = self._request("POST", self.graphql_url, call, json_body=body)
        try:
            payload = response.json()
        except ValueError:
            payload = None
        # Resolver errors come as HTTP 200 with `errors`; schema errors as 400; both handled.
        if response.status_code != 200 or not isinstance(payload, dict) or payload.get("errors"):
            raise self._error(call, response)
        data = payload.get("data")
        return data if isinstance(data, dict) else {}

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
        def rest() -> list[Pod]:
            body = self._rest("GET", "/pods", "list pods (GET /v2/pods)")
            return [Pod.from_v2(p) for p in (body or {}).get("pods", [])]

        def gql() -> list[Pod]:
            data = self.graphql("query { myself { pods { " + _GQL_POD_FIELDS + " } } }",
                                call="list pods (GraphQL myself.pods)")
            return [Pod.from_graphql(p) for p in (data.get("myself") or {}).get("pods") or []]

        return list(self._with_fallback(rest, gql))

    def get_pod(self, pod_id: str) -> Pod:
        _check_pod_id(pod_id)

        def rest() -> Pod:
            return Pod.from_v2(self._rest("GET", f"/pods/{pod_id}", f"get pod {pod_id}"))

        def gql() -> Pod:
            data = self.graphql("query Pod($podId: String!) { pod(input: {podId: $podId}) { "
                                + _GQL_POD_FIELDS + " } }", {"podId": pod_id},
                                call=f"get pod {pod_id} (GraphQL pod)")
            if not data.get("pod"):
                raise NotFoundError(f"get pod {pod_id}", "no such pod", status=404)
            return Pod.from_graphql(data["pod"])

        return _as_pod(self._with_fallback(rest, gql))

    def find_pods_by_name(self, name: str) -> list[Pod]:
        return [p for p in self.list_pods() if p.name == name and p.status != "TERMINATED"]

    def create_pod(self, spec: PodSpec) -> Pod:
        """POST /v2/pods. A 5xx is not retried: RunPod may have created the pod before failing,
        so the caller looks it up by name (`find_pods_by_name`) instead of creating a twin."""
        body = spec.to_v2()
        return Pod.from_v2(self._rest("POST", "/pods", f"create pod {spec.name!r}",
                                      json_body=body, ok=(200, 201), retry_5xx=False))

    def _action(self, pod_id: str, action: PodAction) -> Pod | None:
        call = f"{action} pod {pod_id}"
        response = self._request("POST", f"{self.rest_url}/pods/{pod_id}/action", call,
                                 json_body={"action": action})
        if response.status_code == 409:
            raise self._error(call, response, state=self._state_or_none(pod_id))
        if response.status_code not in (200, 204):
            raise self._error(call, response)
        return Pod.from_v2(response.json()) if response.content else None

    def _state_or_none(self, pod_id: str) -> str | None:
        try:
            return self.get_pod(pod_id).status
        except RunpodError:
            return None

    def stop_pod(self, pod_id: str) -> Pod | None:
        """Stop: compute released, /workspace kept (and billed as storage)."""
        _check_pod_id(pod_id)
        return self._with_fallback(lambda: self._action(pod_id, "stop"),
                                   lambda: self._graphql_stop(pod_id))

    def start_pod(self, pod_id: str, gpu_count: int = 1) -> Pod | None:
        _check_pod_id(pod_id)

        def gql() -> Pod | None:
            data = self.graphql(
                "mutation Resume($input: PodResumeInput!) { podResume(input: $input) { "
                "id desiredStatus } }", {"input": {"podId": pod_id, "gpuCount": gpu_count}},
                call=f"start pod {pod_id} (GraphQL podResume)")
            return self._pod_after_mutation(pod_id, data.get("podResume"))

        return self._with_fallback(lambda: self._action(pod_id, "start"), gql)

    def restart_pod(self, pod_id: str) -> Pod | None:
        _check_pod_id(pod_id)
        return self._action(pod_id, "restart")  # GraphQL has no restart mutation

    def terminate_pod(self, pod_id: str) -> None:
        """Terminate: the pod and its /workspace volume are deleted; nothing bills afterwards."""
        _check_pod_id(pod_id)

        def gql() -> None:
            self.graphql("mutation Terminate($input: PodTerminateInput!) { "
                         "podTerminate(input: $input) }", {"input": {"podId": pod_id}},
                         call=f"terminate pod {pod_id} (GraphQL podTerminate)")

        self._with_fallback(lambda: self._action(pod_id, "terminate"), gql)

    def delete_pod(self, pod_id: str) -> None:
        _check_pod_id(pod_id)
        self._rest("DELETE", f"/pods/{pod_id}", f"delete pod {pod_id}", ok=(200, 204))

    def _graphql_stop(self, pod_id: str) -> Pod | None:
        """podStop in the shapes seen in the wild; the next is tried when the schema rejects one."""
        call = f"stop pod {pod_id} (GraphQL podStop)"
        last: RunpodError | None = None
        for query, variables in _stop_shapes(pod_id):
            try:
                data = self.graphql(query, variables, call=call)
            except InvalidRequestError as exc:
                last = exc
                log.info("%s: shape rejected (%s), trying the next", call, exc.message)
                continue
            return self._pod_after_mutation(pod_id, data.get("podStop"))
        assert last is not None
        raise last

    def _pod_after_mutation(self, pod_id: str, value: Any) -> Pod | None:
        if not isinstance(value, dict) or "id" not in value:
            return None
        try:
            return self.get_pod(pod_id)
        except RunpodError:
            return Pod.from_graphql(value)

    # -- catalog --

    def list_gpus(self, cloud: Cloud = "ALL", gpu_count: int = 1) -> list[GpuType]:
        """The GPU catalog with prices and availability (REST v2 catalog, else GraphQL gpuTypes)."""
        def rest() -> list[GpuType]:
            params = {"include": "AVAILABILITY", "product": "POD", "count": str(gpu_count)}
            if cloud != "ALL":
                params["cloud"] = cloud
            body = self._rest("GET", "/catalog/gpus", "GPU catalog (GET /v2/catalog/gpus)",
                              params=params)
            return [_gpu_from_v2(g) for g in (body or {}).get("gpus", [])]

        def gql() -> list[GpuType]:
            query = ("query Gpus($lp: GpuLowestPriceInput!) { gpuTypes { id displayName "
                     "memoryInGb secureCloud communityCloud securePrice communityPrice "
                     "lowestPrice(input: $lp) { uninterruptablePrice stockStatus } } }")
            lp: dict[str, Any] = {"gpuCount": gpu_count}
            if cloud != "ALL":
                lp["secureCloud"] = cloud == "SECURE"
            data = self.graphql(query, {"lp": lp}, call="GPU catalog (GraphQL gpuTypes)")
            return [_gpu_from_graphql(g) for g in data.get("gpuTypes") or []
                    if g.get("id") != "unknown"]

        try:
            return list(self._with_fallback(rest, gql))
        except AccessDeniedError as exc:
            raise AccessDeniedError(
                exc.call, exc.message, status=exc.status,
                action="this key may not read the GPU catalog: pass --gpu-type-id to provision "
                "without it, or use a key with read access") from None

    def list_templates(self) -> list[Template]:
        body = self._rest("GET", "/templates", "list templates (GET /v2/templates)")
        return [Template(id=str(t["id"]), name=str(t.get("name") or ""),
                         image=str(t.get("image") or ""), ports=list(t.get("ports") or []),
                         env=dict(t.get("env") or {}))
                for t in (body or {}).get("templates", [])]


_GQL_POD_FIELDS = ("id name desiredStatus imageName costPerHr gpuCount ports env volumeInGb "
                   "machine { gpuTypeId } "
                   "runtime { ports { ip isIpPublic privatePort publicPort type } }")


def _stop_shapes(pod_id: str) -> list[tuple[str, dict[str, Any] | None]]:
    return [
        ("mutation Stop($input: PodStopInput!) { podStop(input: $input) { id desiredStatus } }",
         {"input": {"podId": pod_id}}),
        ("mutation stopPod($podId: String!) { podStop(input: {podId: $podId}) "
         "{ id desiredStatus } }", {"podId": pod_id}),
        # pod ids are checked to be [a-z0-9-] before they reach this inline literal
        (f'mutation {{ podStop(input: {{podId: "{pod_id}"}}) {{ id desiredStatus }} }}', None),
    ]


def _check_pod_id(pod_id: str) -> None:
    if not pod_id or not all(c.isalnum() or c in "-_" for c in pod_id) or len(pod_id) > 64:
        raise ValueError(f"bad pod id {pod_id[:80]!r}: expected letters, digits, '-' or '_'")


def _as_pod(value: Any) -> Pod:
    assert isinstance(value, Pod)
    return value


def _classify(call: str, status: int, message: str, state: str | None = None) -> RunpodError:
    lowered = message.lower()
    if any(m in lowered for m in NO_CAPACITY_MARKERS):
        return NoCapacityError(call, message, status=status)
    if status == 401 or "unauthorized" in lowered:
        return AuthError(call, message, status=status)
    if status == 402 or "balance" in lowered:
        return PaymentRequiredError(call, message, status=status)
    if status == 403:
        return AccessDeniedError(call, message, status=status)
    if status == 404 or "not found" in lowered:
        return NotFoundError(call, message, status=status)
    if status == 409:
        return ConflictError(call, message, status=status, state=state)
    if status == 429:
        return RateLimitedError(call, message, status=status)
    if status >= 500 or "something went wrong" in lowered:
        return ServerError(call, message, status=status)
    if status in (400, 422):
        return InvalidRequestError(call, message, status=status)
    return RunpodError(call, message, status=status)


def _gpu_from_v2(g: dict[str, Any]) -> GpuType:
    price = g.get("price") or {}
    return GpuType(
        id=str(g["id"]), name=str(g.get("name") or g["id"]), memory_gb=int(g.get("memory") or 0),
        secure=bool(g.get("secure")), community=bool(g.get("community")),
        secure_price=_float_or_none(price.get("secure")),
        community_price=_float_or_none(price.get("community")),
        availability=str(g.get("availability") or "UNKNOWN").upper(),
    )


def _gpu_from_graphql(g: dict[str, Any]) -> GpuType:
    lowest = g.get("lowestPrice") or {}
    stock = lowest.get("stockStatus")
    availability = {"HIGH": "HIGH", "MEDIUM": "MEDIUM", "LOW": "LOW"}.get(
        str(stock).upper(), "NONE")
    return GpuType(
        id=str(g["id"]), name=str(g.get("displayName") or g["id"]),
        memory_gb=int(g.get("memoryInGb") or 0), secure=bool(g.get("secureCloud")),
        community=bool(g.get("communityCloud")),
        secure_price=_float_or_none(g.get("securePrice")),
        community_price=_float_or_none(g.get("communityPrice")), availability=availability,
    )


def _float_or_none(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None
