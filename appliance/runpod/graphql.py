"""RunPod's GraphQL API, where the client falls back when REST v2 denies a call or lacks it:
pod listing and lookup, stop/resume/terminate mutations and the GPU catalog. Mutations answer
with the raw mutation value; reading the pod afterwards is the client's business.
"""

from __future__ import annotations

import logging
from typing import Any

from appliance.runpod.errors import InvalidRequestError, NotFoundError, RunpodError
from appliance.runpod.models import Cloud, GpuType, Pod, check_pod_id
from appliance.runpod.session import Session

log = logging.getLogger("appliance.runpod")

POD_FIELDS = ("id name desiredStatus imageName costPerHr gpuCount ports env volumeInGb "
              "networkVolumeId uptimeSeconds machine { gpuTypeId } "
              "runtime { ports { ip isIpPublic privatePort publicPort type } }")


class GraphqlApi:
    """Queries to one GraphQL URL; `params` (the URL's own query) go on every request."""

    def __init__(self, session: Session, url: str, params: dict[str, str]) -> None:
        self.session, self.url, self.params = session, url, params

    def query(self, query: str, variables: dict[str, Any] | None = None,
              call: str = "GraphQL") -> dict[str, Any]:
        """The answer's `data`, or the typed error."""
        body: dict[str, Any] = {"query": query}
        if variables is not None:
            body["variables"] = variables
        response = self.session.request("POST", self.url, call, json_body=body,
                                        params=self.params)
        try:
            payload = response.json()
        except ValueError:
            payload = None
        # Resolver errors come as HTTP 200 with `errors`; schema errors as 400; both handled.
        if response.status_code != 200 or not isinstance(payload, dict) or payload.get("errors"):
            raise self.session.error(call, response)
        data = payload.get("data")
        return data if isinstance(data, dict) else {}

    def list_pods(self) -> list[Pod]:
        data = self.query("query { myself { pods { " + POD_FIELDS + " } } }",
                          call="list pods (GraphQL myself.pods)")
        return [Pod.from_graphql(p) for p in (data.get("myself") or {}).get("pods") or []]

    def get_pod(self, pod_id: str) -> Pod:
        data = self.query("query Pod($podId: String!) { pod(input: {podId: $podId}) { "
                          + POD_FIELDS + " } }", {"podId": pod_id},
                          call=f"get pod {pod_id} (GraphQL pod)")
        if not data.get("pod"):
            raise NotFoundError(f"get pod {pod_id}", "no such pod", status=404)
        return Pod.from_graphql(data["pod"])

    def stop_pod(self, pod_id: str) -> Any:
        """podStop in the shapes seen in the wild; the next is tried when the schema rejects one."""
        call = f"stop pod {pod_id} (GraphQL podStop)"
        last: RunpodError | None = None
        for query, variables in _stop_shapes(pod_id):
            try:
                data = self.query(query, variables, call=call)
            except InvalidRequestError as exc:
                last = exc
                log.info("%s: shape rejected (%s), trying the next", call, exc.message)
                continue
            return data.get("podStop")
        assert last is not None
        raise last

    def resume_pod(self, pod_id: str, gpu_count: int) -> Any:
        data = self.query(
            "mutation Resume($input: PodResumeInput!) { podResume(input: $input) { "
            "id desiredStatus } }", {"input": {"podId": pod_id, "gpuCount": gpu_count}},
            call=f"start pod {pod_id} (GraphQL podResume)")
        return data.get("podResume")

    def terminate_pod(self, pod_id: str) -> None:
        self.query("mutation Terminate($input: PodTerminateInput!) { "
                   "podTerminate(input: $input) }", {"input": {"podId": pod_id}},
                   call=f"terminate pod {pod_id} (GraphQL podTerminate)")

    def list_gpus(self, cloud: Cloud, gpu_count: int) -> list[GpuType]:
        query = ("query Gpus($lp: GpuLowestPriceInput!) { gpuTypes { id displayName "
                 "memoryInGb secureCloud communityCloud securePrice communityPrice "
                 "lowestPrice(input: $lp) { uninterruptablePrice stockStatus } } }")
        lp: dict[str, Any] = {"gpuCount": gpu_count}
        if cloud != "ALL":
            lp["secureCloud"] = cloud == "SECURE"
        data = self.query(query, {"lp": lp}, call="GPU catalog (GraphQL gpuTypes)")
        return [GpuType.from_graphql(g) for g in data.get("gpuTypes") or []
                if g.get("id") != "unknown"]


def _stop_shapes(pod_id: str) -> list[tuple[str, dict[str, Any] | None]]:
    check_pod_id(pod_id)  # the last shape puts the id into the query text
    return [
        ("mutation Stop($input: PodStopInput!) { podStop(input: $input) { id desiredStatus } }",
         {"input": {"podId": pod_id}}),
        ("mutation stopPod($podId: String!) { podStop(input: {podId: $podId}) "
         "{ id desiredStatus } }", {"podId": pod_id}),
        (f'mutation {{ podStop(input: {{podId: "{pod_id}"}}) {{ id desiredStatus }} }}', None),
    ]
