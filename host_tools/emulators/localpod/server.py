"""localpod's HTTP server on 127.0.0.1: one FastAPI app with RunPod REST v2 (/v2/..., rest.py;
/v2/clusters, cluster_routes.py), the GraphQL subset (/graphql, graphql.py) and the test controls
(/_localpod/faults, /_localpod/requests and /_localpod/secrets, behind the account key or the
control token), served by uvicorn.

Every error is RFC 9457 problem+json (`type`, `title` as the status's phrase, `status`,
`detail`); every answer carries RunPod's rate-limit headers and goes into the account's request
log; an unexpected exception is a 500 problem that leaves the account as it was.
"""

from __future__ import annotations

import json
import secrets
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from host_tools.emulators.base import AsgiServer, ControlRoute, FaultSpecError, HttpError
from host_tools.emulators.localpod import cluster_routes, models
from host_tools.emulators.localpod.common import ApiError
from host_tools.emulators.localpod.graphql import graphql
from host_tools.emulators.localpod.rest import account, bearer, router
from host_tools.emulators.localpod.state import Account

MAX_BODY = 1 << 20
CONTROL = ControlRoute("/_localpod", added_status=201, cleared_status=204, cleared_body=None)


def problem(status: int, detail: str, headers: dict[str, str] | None = None,
            errors: list[str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"type": "about:blank", "title": HTTPStatus(status).phrase,
                            "status": status, "detail": detail}
    if errors:
        body["errors"] = errors
    return JSONResponse(body, status, headers, media_type="application/problem+json")


def describe(error: Any) -> str:
    """One pydantic/FastAPI validation error as a sentence naming the field."""
    where, place = ".".join(str(p) for p in error["loc"][1:]), error["loc"][0]
    prefix = "" if place == "body" else f"{place} "
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return f"unknown field {where!r}"
    if error["type"] == "missing":
        return f"{prefix}{where!r} is required" if where else f"the {place} is required"
    return f"{prefix}{where}: {message}" if where else message


class RateLimiter:
    """A fixed window per server: RunPod's RateLimit / RateLimit-Policy headers, and 429 with
    Retry-After beyond the limit."""

    def __init__(self, limit: int, window_s: int) -> None:
        self.limit, self.window_s = limit, window_s
        self.lock = threading.Lock()
        self.start, self.used = time.monotonic(), 0

    def take(self) -> tuple[bool, dict[str, str]]:
        with self.lock:
            now = time.monotonic()
            if now - self.start >= self.window_s:
                self.start, self.used = now, 0
            self.used += 1
            reset = max(1, int(self.window_s - (now - self.start) + 0.999))
            remaining = max(0, self.limit - self.used)
            headers = {"RateLimit": f'"default";r={remaining};t={reset}',
                       "RateLimit-Policy": f'"default";q={self.limit};w={self.window_s}'}
            if self.used > self.limit:
                return False, {**headers, "Retry-After": str(reset)}
            return True, headers


def allowed_methods(app: FastAPI, path: str) -> str:
    methods = {m for r in [*app.routes, *router.routes]
               if isinstance(r, APIRoute) and r.path_regex.match(path) for m in r.methods or ()}
    return ", ".join(sorted(methods | ({"HEAD"} if "GET" in methods else set())))


def controller(request: Request) -> Account:
    """The account, for a caller holding the account key or the control token."""
    acc, key = account(request), bearer(request)
    if not key or not (secrets.compare_digest(key, acc.control_token)
                       or acc.key_scope(key) == "account"):
        raise ApiError(401, "the controls need the account key or the control token")
    return acc


Control = Annotated[Account, Depends(controller)]


async def json_body(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        raise ApiError(400, "the body is not valid JSON") from None


def create_app(acc: Account) -> FastAPI:
    app = FastAPI(title="localpod", description="A local RunPod REST v2 control plane",
                  openapi_url="/_localpod/openapi.json", docs_url="/_localpod/docs",
                  redoc_url=None, swagger_ui_oauth2_redirect_url=None)
    app.state.account = acc
    app.include_router(router)
    app.include_router(cluster_routes.router)
    limiter = RateLimiter(*acc.rate_limit)

    @app.exception_handler(HttpError)
    async def http_error(request: Request, exc: HttpError) -> Response:
        return problem(exc.status, exc.message, exc.headers)

    @app.exception_handler(HTTPException)
    async def starlette_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 405:
            return problem(405, f"{request.method} is not allowed on {request.url.path}",
                           {"Allow": allowed_methods(app, request.url.path)})
        if exc.status_code == 404:
            return problem(404, f"no such endpoint: {request.method} {request.url.path}")
        return problem(exc.status_code, str(exc.detail), dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = list(exc.errors())
        if any(e["type"] == "json_invalid" for e in errors):
            return problem(400, "the body is not valid JSON")
        described = [describe(e) for e in errors]
        return problem(422, "Request validation failed: " + "; ".join(described[:3]),
                       errors=described)

    @app.middleware("http")
    async def every_request(request: Request,
                            call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        length = request.headers.get("Content-Length", "0")
        headers: dict[str, str] = {}
        if request.url.path.startswith("/v2/"):
            within, headers = limiter.take()
        else:
            within = True
        if not length.isdigit():
            response: Response = problem(400, "Content-Length is not a number")
        elif int(length) > MAX_BODY:
            response = problem(413, f"request body of {length} bytes is over {MAX_BODY}")
        elif not within:
            response = problem(429, "rate limit exceeded", headers)
        else:
            try:
                response = await call_next(request)
            except Exception:  # a bug: shown, answered, and the next request is served
                traceback.print_exc(file=sys.stderr)
                response = problem(500, "localpod failed on this request (see its stderr)")
        response.headers.update(headers)
        query = request.url.query
        acc.record({"method": request.method, "path": request.url.path,
                    "target": request.url.path + (f"?{query}" if query else ""),
                    "status": response.status_code,
                    "user_agent": request.headers.get("User-Agent", ""),
                    "accept": request.headers.get("Accept", "")})
        return response

    @app.post("/graphql", include_in_schema=False)
    async def graphql_route(request: Request) -> Response:
        body = await json_body(request)
        key = bearer(request) or request.query_params.get("api_key")  # legacy style, accepted
        status, answer, headers = graphql(acc, body, key)
        return JSONResponse(answer, status, headers)

    @app.post(f"{CONTROL.prefix}/faults", include_in_schema=False)
    async def add_fault(request: Request, controls: Control) -> Response:
        body = await json_body(request)
        try:
            status, answer = controls.control(CONTROL, "POST", f"{CONTROL.prefix}/faults",
                                              lambda: body) or (404, None)
        except FaultSpecError as exc:
            raise ApiError(422, f"bad fault: {exc}") from None
        return JSONResponse(answer, status)

    @app.delete(f"{CONTROL.prefix}/faults", include_in_schema=False)
    def clear_faults(controls: Control) -> Response:
        controls.clear_faults()
        return Response(status_code=CONTROL.cleared_status)

    @app.post(f"{CONTROL.prefix}/secrets", status_code=201, include_in_schema=False)
    def set_secret(body: models.SetSecretRequest, controls: Control) -> Any:
        """Create or replace a secret that `{{ RUNPOD_SECRET_<name> }}` refers to (RunPod's
        console does this there); the answer names it, never its value."""
        with controls.lock:
            controls.secrets[body.name] = body.value
        return {"name": body.name}

    @app.get(f"{CONTROL.prefix}/requests", include_in_schema=False)
    def request_log(controls: Control) -> Any:
        with controls.lock:
            return list(controls.requests)

    return app


class LocalPodServer(AsgiServer):
    """localpod serving `account`: `LocalPodServer(account).start()` ... `.stop()` (which also
    removes every pod's container and volume), or `with LocalPodServer(account) as server:`."""

    thread_name = "localpod"

    def __init__(self, account: Account, port: int = 0) -> None:
        self.account = account
        super().__init__(create_app(account), port)
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
