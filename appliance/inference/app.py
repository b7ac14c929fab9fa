"""The FastAPI app: /healthz, /infer, /infer/batch, /metrics, with auth, limits (body size and
the time its body may take) and batching; the API docs unless a token closes them. Bodies and
error responses are defined in `inference.schemas`.

A valid, authorised `POST /infer` is answered by the service's middleware itself, which
`InferenceApp` puts in front of every FastAPI layer (error, telemetry, body limit, router,
dependencies, exception handlers): it validates the body with the same pydantic model and
answers exactly as the route does. Anything else, every error included, goes through FastAPI,
so error answers have one source.

The model loads on a background thread; until it is ready (or while none can be found) /healthz
answers 503 with the reason and /infer* answer 503, and the service keeps looking for a model.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from appliance.inference.batcher import MicroBatcher
from appliance.inference.games import GameCache, GameKey, game_key
from appliance.inference.predictor import InputError, Prediction, Predictor, Prepared
from appliance.inference.schemas import (
    BatchRequest,
    BatchResponse,
    ErrorBody,
    InferRequest,
    InferResponse,
    json_error,
    json_response,
    validation_message,
)
from appliance.model.checkpoint import CheckpointError
from appliance.settings import InferenceSettings

log = logging.getLogger("appliance.inference")
ROUTES = ("/healthz", "/infer", "/infer/batch", "/metrics")
# A history up to this long is replayed on the event loop (about 3 ms of python-chess at most);
# a longer one in a worker thread, so the loop is never held long.
INLINE_PREPARE_MOVES = 256

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


# -- service state -----------------------------------------------------------------------------


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("inference_requests", "Requests by route and status",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("inference_request_latency_seconds", "Request latency",
                                 ["route"], registry=self.registry,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5))
        self.batch = Histogram("inference_batch_size", "Positions per forward pass",
                               registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.ready = Gauge("inference_model_ready", "1 when a model is loaded",
                           registry=self.registry)
        self.model = Info("inference_model", "The model being served", registry=self.registry)
        self.games = Gauge("inference_game_cache", "Kept game states: entries, bytes, and "
                           "lookups since the start by result", ["what"], registry=self.registry)

    def observe_games(self, cache: GameCache) -> None:
        stats = cache.stats
        for what, value in (("entries", len(cache)), ("bytes", cache.nbytes),
                            ("hits", stats.hits), ("misses", stats.misses),
                            ("diverged", stats.diverged), ("evictions", stats.evictions),
                            ("expired", stats.expired)):
            self.games.labels(what).set(value)


class Heartbeat:
    """Touches the heartbeat file at most once per interval; a failure never fails a request."""

    def __init__(self, path: Path | None, clock: Callable[[], float] = time.monotonic,
                 interval: float = 1.0) -> None:
        self.path = path
        self.clock = clock
        self.interval = interval
        self.last = float("-inf")
        self.warned = False

    def beat(self) -> None:
        now = self.clock()
        if self.path is None or now - self.last < self.interval:
            return
        self.last = now
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.touch()
            os.utime(self.path)
        except OSError as exc:
            if not self.warned:
                log.warning("cannot touch heartbeat file %s: %s", self.path, exc.strerror)
                self.warned = True


@dataclass
class ModelState:
    status: str = "loading"
    reason: str = "the model is loading"
    predictor: Predictor | None = None
    loaded_at: float = 0.0
    stop: threading.Event = field(default_factory=threading.Event)


def resolve_model_path(explicit: Path | None, repo_dir: Path) -> Path:
    """--model / INFERENCE_MODEL_PATH, else the newest *.pt under $REPO_DIR/artifacts/."""
    if explicit is not None:
        if not explicit.is_file():
            raise FileNotFoundError(f"model file not found: {explicit}")
        return explicit
    root = repo_dir / "artifacts"
    found = [p for p in root.rglob("*.pt") if p.is_file()] if root.is_dir() else []
    if not found:
        raise FileNotFoundError(
            f"no model found: no *.pt under {root}; train one (make train) or set "
            "INFERENCE_MODEL_PATH"
        )
    return max(found, key=lambda p: p.stat().st_mtime)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        log.info("device auto: no usable CUDA GPU (torch %s built for CUDA %s): using the CPU",
                 torch.__version__, torch.version.cuda or "none")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device cuda requested but CUDA is not available")
    return torch.device(name)


class Service:
    def __init__(self, cfg: InferenceSettings, model_path: Path | None, repo_dir: Path,
                 device: str, progress: bool = False) -> None:
        self.cfg = cfg
        self.model_path = model_path
        self.repo_dir = repo_dir
        self.device_name = device
        self.progress = progress
        self.state = ModelState()
        self.metrics = Metrics()
        self.heartbeat = Heartbeat(cfg.INFERENCE_HEARTBEAT_FILE)
        token = cfg.INFERENCE_API_TOKEN.get_secret_value() if cfg.INFERENCE_API_TOKEN else ""
        self.token = token.encode()
        self.games = GameCache(cfg.INFERENCE_GAME_CACHE_GAMES,
                               int(cfg.INFERENCE_GAME_CACHE_MB * 2**20),
                               cfg.INFERENCE_GAME_TTL_SECONDS)
        self.batcher: MicroBatcher[Prepared, Prediction] = MicroBatcher(
            self._forward, cfg.INFERENCE_BATCH_WINDOW_MS / 1000, cfg.INFERENCE_BATCH_MAX,
            self.metrics.batch.observe, self._init_forward_thread,
        )

    def _init_forward_thread(self) -> None:
        # Torch's spinning worker threads would otherwise take the core the event loop needs.
        torch.set_num_threads(self.cfg.INFERENCE_TORCH_THREADS
                              or max(1, torch.get_num_threads() - 1))

    def _forward(self, batch: list[Prepared]) -> list[Prediction]:
        predictor = self.state.predictor
        assert predictor is not None  # requests are admitted only once a model is ready
        return predictor.predict(batch)

    def load_once(self) -> bool:
        """Try to resolve and load the model; True when ready."""
        try:
            device = resolve_device(self.device_name)
            path = resolve_model_path(self.model_path, self.repo_dir)
            self.state.reason = f"loading {path}"
            predictor = Predictor.load(path, device, self.cfg.INFERENCE_MAX_HISTORY,
                                       self.progress, self.games)
        except (FileNotFoundError, CheckpointError, RuntimeError, OSError) as exc:
            self.state.status = "no_model" if isinstance(exc, FileNotFoundError) else "error"
            self.state.reason = str(exc)
            return False
        facts = predictor.facts()
        self.state.predictor = predictor
        self.state.loaded_at = time.time()
        self.state.status, self.state.reason = "ok", ""
        self.metrics.ready.set(1)
        self.metrics.model.info({k: str(v) for k, v in facts.items() if k != "features"})
        feats = ",".join(k for k, on in facts["features"].items() if on)
        log.info("model ready: path=%s sha256=%s parameters=%d device=%s torch=%s features=%s",
                 facts["model_path"], facts["model_sha256"], facts["parameters"],
                 facts["device"], facts["torch"], feats)
        return True

    def load_until_ready(self) -> None:
        logged = ""
        while not self.state.stop.is_set():
            if self.load_once():
                return
            if self.state.reason != logged:  # once per new reason, not every rescan
                logged = self.state.reason
                log.warning("inference not ready: %s (looking again every %gs)", logged,
                            self.cfg.INFERENCE_MODEL_RESCAN_SECONDS)
            self.state.stop.wait(self.cfg.INFERENCE_MODEL_RESCAN_SECONDS)

    def ready_predictor(self) -> Predictor:
        if self.state.predictor is None:
            raise HTTPException(503, f"model not ready: {self.state.reason}")
        return self.state.predictor

    def game(self, game_id: str | None) -> GameKey | None:
        return None if game_id is None else game_key(self.token, game_id)

    def token_error(self, header: str) -> HTTPException | None:
        """The 401 for an Authorization header value, or None when it passes."""
        if not self.token:
            return None
        scheme, _, value = header.partition(" ")
        if not header:
            return HTTPException(401, "missing bearer token",
                                 headers={"WWW-Authenticate": 'Bearer realm="inference"'})
        if scheme.lower() != "bearer" or not secrets.compare_digest(value.strip().encode(),
                                                                     self.token):
            return HTTPException(401, "invalid bearer token", headers={
                "WWW-Authenticate": 'Bearer realm="inference", error="invalid_token"'})
        return None

    async def check_token(self, request: Request) -> None:
        """The auth dependency; async, so FastAPI runs it on the loop, not in a thread."""
        error = self.token_error(request.headers.get("authorization", ""))
        if error is not None:
            raise error

    async def infer(self, predictor: Predictor, req: InferRequest) -> dict[str, Any]:
        """The answer of `POST /infer` (InputError for a position it cannot predict)."""
        t0 = time.perf_counter()
        args = (req.moves, req.fen, req.topk or self.cfg.INFERENCE_TOPK_DEFAULT,
                self.game(req.game_id))
        if len(req.moves) <= INLINE_PREPARE_MOVES:
            prepared = predictor.prepare(*args)
        else:
            prepared = await run_in_threadpool(predictor.prepare, *args)
        [result] = await self.batcher.submit([prepared])
        body = result.to_dict()
        body["device"] = str(predictor.device)
        body["latency_ms"] = round((time.perf_counter() - t0) * 1000, 3)
        return body


# -- ASGI middleware: body limit, metrics, heartbeat --------------------------------------------


class ServiceMiddleware:
    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]],
                 service: Service) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        service = self.service
        path = scope["path"]
        route = path if path in ROUTES else "other"
        start = time.perf_counter()
        status = {"code": 500}

        async def tracking_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            body = await self._read_body(scope, receive)
            if isinstance(body, Response):
                await body(scope, receive, tracking_send)
                return
            replayed = False

            async def replay() -> Message:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            if route == "/infer" and scope["method"] == "POST":
                answer = await self._fast_infer(scope, body)
                if answer is not None:
                    await answer(scope, receive, tracking_send)
                    return
            if route.startswith("/infer"):
                # Bodies are JSON whatever Content-Type says (curl -d sends a form type).
                scope = {**scope, "headers": [
                    (k, v) for k, v in scope.get("headers", []) if k != b"content-type"
                ] + [(b"content-type", b"application/json")]}
            await self.app(scope, replay, tracking_send)
        finally:
            service.metrics.requests.labels(route, str(status["code"])).inc()
            service.metrics.latency.labels(route).observe(time.perf_counter() - start)
            if path.startswith("/infer"):
                # Health probes and scrapes are not activity: they must not keep a pod alive.
                service.heartbeat.beat()

    async def _fast_infer(self, scope: Scope, body: bytes) -> Response | None:
        """The answer to an authorised `POST /infer` with a valid body once a model is ready;
        None otherwise: FastAPI then answers (with the error) exactly as it always does."""
        service = self.service
        predictor = service.state.predictor
        if predictor is None:
            return None
        header = b""
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                header = value
        try:
            if service.token_error(header.decode("latin-1")) is not None:
                return None
            req = InferRequest.model_validate_json(body)
        except ValidationError:  # bad JSON, bytes, nesting or fields: FastAPI names them
            return None
        try:
            return json_response(await service.infer(predictor, req))
        except InputError as exc:
            return json_error(422, str(exc))

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | Response:
        """The whole body, or the error answer: 400 for a bad Content-Length, 413 over the size
        limit, 408 when it has not all arrived within the body timeout (a client that stalls
        after its headers must not hold a connection and a task for long)."""
        limit = self.service.cfg.INFERENCE_MAX_BODY_BYTES
        too_big = json_error(413, f"request body exceeds {limit} bytes")
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    return json_error(400, "invalid Content-Length header")
                if declared > limit:
                    return too_big
        chunks, size = [], 0
        seconds = self.service.cfg.INFERENCE_BODY_TIMEOUT_SECONDS
        try:
            async with asyncio.timeout(seconds):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        break
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:
                        return too_big
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            # The rest of the body may still come: the connection cannot be reused.
            return json_error(408, f"request body not received within {seconds:g} s",
                              headers={"Connection": "close"})
        return b"".join(chunks)


# -- the app -----------------------------------------------------------------------------------


class InferenceApp(FastAPI):
    """FastAPI with `ServiceMiddleware` in front of all its own layers."""

    def __init__(self, service: Service, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.front = ServiceMiddleware(super().__call__, service)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.front(scope, receive, send)


def create_app(service: Service, load_in_background: bool = True) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        service.batcher.start()
        loader = None
        if load_in_background:
            loader = threading.Thread(target=service.load_until_ready, name="model-loader",
                                      daemon=True)
            loader.start()
        try:
            yield
        finally:
            service.state.stop.set()
            await service.batcher.stop()

    open_docs = service.cfg.INFERENCE_OPEN_DOCS
    if open_docs is None:
        open_docs = not service.token  # the docs would tell anyone what the token guards
    app = InferenceApp(
        service,
        title="chess-bot inference API",
        version="1",
        description="Next-move predictions from the trained chess model. Errors are "
        '`{"error": message}`.',
        lifespan=lifespan,
        docs_url="/docs" if open_docs else None,
        redoc_url="/redoc" if open_docs else None,
        openapi_url="/openapi.json" if open_docs else None,
    )
    auth = Depends(service.check_token)
    errors: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorBody} for code in (400, 401, 413, 422, 503)
    }

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> Response:
        status, messages = validation_message(list(exc.errors()))
        return json_error(status, messages[0], details=messages)

    @app.exception_handler(HTTPException)
    async def on_http(request: Request, exc: HTTPException) -> Response:
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404:
            detail = f"not found: {request.url.path}"
        elif exc.status_code == 400 and detail == "There was an error parsing the body":
            detail = "malformed JSON body: cannot be parsed"
        return json_error(exc.status_code, detail, headers=exc.headers)

    @app.exception_handler(InputError)
    async def on_input(request: Request, exc: InputError) -> Response:
        return json_error(422, str(exc))

    @app.get("/healthz", responses={503: {"model": ErrorBody}})
    async def healthz() -> Response:
        st = service.state
        if st.predictor is None:
            return json_response({"status": st.status, "reason": st.reason}, 503)
        return json_response({"status": "ok", **st.predictor.facts(),
                             "uptime_s": round(time.time() - st.loaded_at, 1)})

    # HEAD answers like GET without the body, for probes that only look at the status.
    app.add_api_route("/healthz", healthz, methods=["HEAD"], responses={503: {"model": ErrorBody}})

    # The routes answer with a Response: FastAPI then neither validates nor re-encodes the
    # answer through response_model, which only documents it.
    @app.post("/infer", dependencies=[auth], response_model=InferResponse, responses=errors)
    async def infer(req: InferRequest) -> Response:
        # Reached only when the middleware's fast path declined (it answers valid requests).
        return json_response(await service.infer(service.ready_predictor(), req))

    @app.post("/infer/batch", dependencies=[auth], response_model=BatchResponse,
              responses=errors)
    async def infer_batch(req: BatchRequest) -> Response:
        predictor = service.ready_predictor()
        limit = service.cfg.INFERENCE_MAX_BATCH_POSITIONS
        if len(req.positions) > limit:
            raise InputError(f"positions: {len(req.positions)} positions exceed the limit of "
                             f"{limit}")
        t0 = time.perf_counter()

        def prepare_all() -> list[Prepared]:
            out = []
            for i, p in enumerate(req.positions):
                try:
                    out.append(predictor.prepare(p.moves, p.fen,
                                                 p.topk or service.cfg.INFERENCE_TOPK_DEFAULT,
                                                 service.game(p.game_id)))
                except InputError as exc:
                    raise InputError(f"positions[{i}]: {exc}") from None
            return out

        prepared = await run_in_threadpool(prepare_all)
        results = await service.batcher.submit(prepared)
        return json_response({"results": [r.to_dict() for r in results],
                             "device": str(predictor.device),
                             "latency_ms": round((time.perf_counter() - t0) * 1000, 3)})

    @app.get("/metrics", dependencies=[auth], response_class=Response)
    async def metrics() -> Response:
        service.metrics.observe_games(service.games)
        return Response(generate_latest(service.metrics.registry),
                        media_type=CONTENT_TYPE_LATEST)
    return app
