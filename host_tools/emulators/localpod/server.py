"""localpod's HTTP server on 127.0.0.1: routes RunPod REST v2 (/v2/..., rest.py) and the GraphQL
subset (/graphql, graphql.py) to an Account, plus /_localpod/faults and /_localpod/requests for
tests; every answer goes into the account's request log.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

from host_tools.emulators.base import (
    ControlRoute,
    EmulatorHandler,
    EmulatorServer,
    FaultSpecError,
    HttpError,
)
from host_tools.emulators.localpod.graphql import graphql
from host_tools.emulators.localpod.rest import rest
from host_tools.emulators.localpod.state import Account, ApiError

MAX_BODY = 1 << 20
CONTROL = ControlRoute("/_localpod", added_status=201, cleared_status=204, cleared_body=None)
TITLES = {400: "Bad Request", 401: "Unauthorized", 402: "Payment Required", 403: "Forbidden",
          404: "Not Found", 409: "Conflict", 422: "Unprocessable Entity",
          429: "Too Many Requests"}


class Handler(EmulatorHandler):
    server: LocalPodServer

    @property
    def account(self) -> Account:
        return self.server.account

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        self.begin_request()
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        try:
            body = self._json_body()
            if parts.path.startswith(f"{CONTROL.prefix}/"):
                self._control(parts.path, body)
            elif parts.path == "/graphql" and self.command == "POST":
                status, answer, headers = graphql(self.account, body, self._key(query))
                self._reply(status, answer, headers)
            elif parts.path.startswith("/v2/"):
                self._reply(*rest(self.account, self.command, parts.path, query, body,
                                  self.bearer_token()))
            else:
                raise ApiError(404, f"no such endpoint: {self.command} {parts.path}")
        except HttpError as exc:
            self.skip_body(MAX_BODY)
            self._problem(exc)

    def _reply(self, status: int, body: Any = None, headers: dict[str, str] | None = None,
               content_type: str = "application/json") -> None:
        self.send_json(status, body, headers, content_type)
        self.account.record({"method": self.command, "path": urlsplit(self.path).path,
                             "target": self.path, "status": status,
                             "user_agent": self.headers.get("User-Agent", ""),
                             "accept": self.headers.get("Accept", "")})

    def _problem(self, exc: HttpError) -> None:
        title = TITLES.get(exc.status, "Internal Server Error")
        self._reply(exc.status, {"title": title, "status": exc.status, "detail": exc.message},
                    exc.headers, "application/problem+json")

    def _json_body(self) -> Any:
        raw = self.read_body(MAX_BODY)
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise ApiError(400, "the body is not valid JSON") from None

    def _key(self, query: dict[str, list[str]]) -> str | None:
        keys = query.get("api_key")  # GraphQL's legacy style, accepted
        return self.bearer_token() or (keys[0] if keys else None)

    def _control(self, path: str, body: Any) -> None:
        try:
            answer = self.account.control(CONTROL, self.command, path, lambda: body)
        except FaultSpecError as exc:
            raise ApiError(422, f"bad fault: {exc}") from None
        if answer is None:
            raise ApiError(404, f"no such endpoint: {self.command} {path}")
        self._reply(*answer)


class LocalPodServer(EmulatorServer):
    """localpod serving `account`: `LocalPodServer(account).start()` ... `.stop()` (which also
    removes every pod's container and volume), or `with LocalPodServer(account) as server:`."""

    thread_name = "localpod"

    def __init__(self, account: Account, port: int = 0) -> None:
        super().__init__(port, Handler)
        self.account = account
        account.api_base = self.url

    @property
    def rest_url(self) -> str:
        return f"{self.url}/v2"

    @property
    def graphql_url(self) -> str:
        return f"{self.url}/graphql"

    def stop(self) -> None:
        super().stop()
        self.account.close()
