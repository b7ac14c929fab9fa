"""Inference API with FastAPI's test client: responses, bad input, auth, heartbeat, metrics, docs
closed by a token, HEAD /healthz; the body timeout through the ASGI app itself."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import chess
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from appliance import settings
from appliance.datasets.rows import encode_row
from appliance.inference.app import Heartbeat, Service, ServiceMiddleware, create_app
from appliance.inference.batcher import MicroBatcher
from appliance.model import features
from appliance.model.checkpoint import save_checkpoint
from appliance.model.network import ModelConfig, MovePredictor
from appliance.training.batching import collate

CANARY = "canary-api-token-7f3a91"
START = chess.STARTING_FEN
GAME = ["e2e4", "c7c5", "g1f3", "d7d6", "d2d4", "c5d4", "f3d4", "g8f6", "b1c3", "a7a6"]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "artifacts" / "tiny.pt"
    save_checkpoint(path, MovePredictor(ModelConfig(embed_dim=16, hidden_dim=24)))
    return path


def _service(monkeypatch, model: Path | None, repo: Path, **env: str) -> Service:
    for key in list(os.environ):
        if key.startswith("INFERENCE_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Service(settings.load(settings.InferenceSettings), model, repo, "cpu")


@pytest.fixture()
def client(monkeypatch, model_path: Path, tmp_path: Path):
    service = _service(monkeypatch, model_path, tmp_path,
                       INFERENCE_HEARTBEAT_FILE=str(tmp_path / "hb"), INFERENCE_MAX_HISTORY="300",
                       INFERENCE_MAX_BATCH_POSITIONS="4", INFERENCE_MAX_BODY_BYTES="4096")
    assert service.load_once()
    with TestClient(create_app(service, load_in_background=False)) as c:
        c.service = service  # type: ignore[attr-defined]
        yield c


def test_infer_response(client: TestClient):
    r = client.post("/infer", json={"moves": GAME[:4], "topk": 7})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"topk", "predicted_uci", "best_legal", "device", "latency_ms", "phase",
                         "side_to_move"}
    assert len(body["topk"]) == 7 and body["device"] == "cpu"
    probs = [m["prob"] for m in body["topk"]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
    board = chess.Board()
    for m in GAME[:4]:
        board.push_uci(m)
    legal = {m.uci() for m in board.legal_moves}
    assert all(m["legal"] == (m["uci"] in legal) for m in body["topk"])
    assert body["predicted_uci"] == body["topk"][0]["uci"]
    assert body["best_legal"] in legal
    assert (body["phase"], body["side_to_move"]) == ("opening", "white")
    fen = "4k3/8/8/8/8/8/4P3/4K3 b - - 0 30"
    r = client.post("/infer", json={"fen": fen})
    assert r.status_code == 200
    assert (r.json()["phase"], r.json()["side_to_move"]) == ("endgame", "black")
    assert len(r.json()["topk"]) == 5


def test_valid_infer_requests_are_answered_before_fastapi_exactly_as_its_route(
        client: TestClient, monkeypatch):
    bodies = [{"moves": GAME[:4], "topk": 7}, {"moves": GAME, "fen": None, "topk": None},
              {"fen": "4k3/8/8/8/8/8/4P3/4K3 b - - 0 30"}, {}]
    answered = []
    fast_infer = ServiceMiddleware._fast_infer

    async def spy(self, scope, body):
        answer = await fast_infer(self, scope, body)
        answered.append(answer is not None)
        return answer

    monkeypatch.setattr(ServiceMiddleware, "_fast_infer", spy)
    fast = [client.post("/infer", json=b) for b in bodies]
    bad = client.post("/infer", json={"moves": ["e2e4"], "topk": 0})
    assert answered == [True] * len(bodies) + [False]  # errors are FastAPI's to answer
    assert (bad.status_code, bad.json()["error"]) == (422, "topk: must be an integer from 1 to 50")

    async def declined(self, scope, body):
        return None

    monkeypatch.setattr(ServiceMiddleware, "_fast_infer", declined)
    routed = [client.post("/infer", json=b) for b in bodies]
    for a, b in zip(fast, routed, strict=True):
        assert a.status_code == b.status_code == 200
        assert a.headers["content-type"] == b.headers["content-type"] == "application/json"
        assert {**a.json(), "latency_ms": 0} == {**b.json(), "latency_ms": 0}
        assert a.json()["latency_ms"] > 0


def test_prediction_equals_the_training_forward_pass(client: TestClient):
    service: Service = client.service  # type: ignore[attr-defined]
    predictor = service.state.predictor
    assert predictor is not None
    game = encode_row({"moves_uci": GAME})
    b = collate([(game, np.ones(len(game), bool))])
    with torch.inference_mode():
        expected = torch.softmax(predictor.model(b.tokens, b.phase, b.side, b.boards)[0], -1)
    for t in (0, 3, 9):
        top = client.post("/infer", json={"moves": GAME[:t], "topk": 3}).json()["topk"]
        want = expected[t].topk(3)
        assert [m["prob"] for m in top] == pytest.approx(want.values.tolist(), abs=1e-5)
        assert int(game.phase[t]) == features.PHASES.index(
            client.post("/infer", json={"moves": GAME[:t]}).json()["phase"])


BAD = [
    ({"moves": ["e2e4"], "topk": 0}, 422, "topk: must be an integer from 1 to 50"),
    ({"moves": ["e2e4"], "topk": 51}, 422, "topk: must be an integer from 1 to 50"),
    ({"moves": ["e2e4"], "topk": "5"}, 422, "topk: must be an integer from 1 to 50"),
    ({"moves": "e2e4"}, 422, "moves: must be a list of UCI move strings"),
    ({"moves": ["e2e4", 7]}, 422, "moves: must be a list of UCI move strings"),
    ({"fen": 3}, 422, "fen: must be a FEN string or null"),
    ({"fen": "8/" * 60}, 422, "bad FEN '" + "8/" * 50 + "'... (120 chars): " + (
        "expected 8 rows in position part of fen: '" + "8/" * 60)[:160] + "... (163 chars)"),
    ({"moves": [], "colour": "w"}, 422, "colour: unknown field"),
    ({"moves": ["e2e4", "e7e9"]}, 422, "moves[1] = 'e7e9' is not a UCI move"),
    ({"moves": ["e2e4", "e2e4"]}, 422, "moves[1] = 'e2e4' is illegal: there is no black piece on "
     "e2 (position 'rnbqkbnr/pppppppp/8/8/4P3/8/PPPP1PPP/RNBQKBNR b KQkq - 0 1')"),
    ({"fen": "8/8/8 w - - 0 1"}, 422,
     "bad FEN '8/8/8 w - - 0 1': expected 8 rows in position part of fen: '8/8/8'"),
    ({"fen": "4k3/8/8/8/8/8/8/8 w - - 0 1"}, 422,
     "bad FEN '4k3/8/8/8/8/8/8/8 w - - 0 1': not a valid position (<Status.NO_WHITE_KING: 1>)"),
    ({"moves": ["f2f3", "e7e5", "g2g4", "d8h4"]}, 422,
     "the game is over (checkmate): no legal move in the final position"),
    ({"moves": ["g1f3", "g8f6", "f3g1", "f6g8"] * 76}, 422,
     "moves: 304 moves exceed the limit of 300"),
]


@pytest.mark.parametrize(("body", "status", "message"), BAD)
def test_bad_input_gets_exact_4xx(client: TestClient, body, status, message):
    r = client.post("/infer", json=body)
    assert (r.status_code, r.json()["error"]) == (status, message)


def test_malformed_and_oversized_bodies(client: TestClient):
    def post(content: bytes, path: str = "/infer") -> tuple[int, str]:
        r = client.post(path, content=content)
        return r.status_code, r.json()["error"]

    assert post(b'{"moves": [') == (400, "malformed JSON body: Expecting value")
    assert post(b"[" * 2000 + b"]" * 2000) == (
        400, "malformed JSON body: cannot be parsed")
    assert post(b"[1, 2]") == (422, "request body must be a JSON object")
    assert post(b"") == (422, "request body must be a JSON object")
    assert post(b'"e2e4"') == (422, "request body must be a JSON object")
    assert post(b" " * 5000) == (413, "request body exceeds 4096 bytes")
    r = client.post("/infer", content=b"{}", headers={"content-length": "99999999"})
    assert (r.status_code, r.json()["error"]) == (413, "request body exceeds 4096 bytes")
    assert client.get("/nowhere").json() == {"error": "not found: /nowhere"}
    assert client.get("/infer").status_code == 405


def test_batch_endpoint(client: TestClient):
    r = client.post("/infer/batch", json={"positions": [{"moves": GAME[:2]},
                                                        {"moves": [], "topk": 2}]})
    assert r.status_code == 200
    results = r.json()["results"]
    assert [len(x["topk"]) for x in results] == [5, 2]
    assert [x["side_to_move"] for x in results] == ["white", "white"]
    single = client.post("/infer", json={"moves": GAME[:2]}).json()
    assert results[0]["topk"] == single["topk"]
    bad = [
        ({"positions": []}, "positions: must be a non-empty list of positions"),
        ({"positions": [{}] * 5}, "positions: 5 positions exceed the limit of 4"),
        ({"positions": [{}, {"moves": [1]}]}, "positions[1].moves: must be a list of UCI move "
         "strings"),
        ({"positions": [{}, {"moves": ["a1a1"]}]}, "positions[1]: moves[0] = 'a1a1' is not a "
         "UCI move"),
    ]
    for body, message in bad:
        r = client.post("/infer/batch", json=body)
        assert (r.status_code, r.json()["error"]) == (422, message)


def test_best_legal_is_legal_on_every_position_of_a_real_game(client: TestClient):
    from appliance.datasets.pgn_import import ImportCounts, iter_pgn_rows
    real = Path(__file__).resolve().parents[1] / "fixtures" / "pgn" / "real_games_chesscom.pgn"
    rows = iter_pgn_rows(real, ImportCounts())
    game = next(rows)["moves_uci"]
    cfg = client.service.cfg  # type: ignore[attr-defined]
    cfg.INFERENCE_MAX_BATCH_POSITIONS, cfg.INFERENCE_MAX_BODY_BYTES = 1000, 10**6
    positions = [{"moves": game[:t]} for t in range(len(game))]
    r = client.post("/infer/batch", json={"positions": positions})
    assert r.status_code == 200
    board = chess.Board()
    for t, result in enumerate(r.json()["results"]):
        assert chess.Move.from_uci(result["best_legal"]) in board.legal_moves, t
        board.push_uci(game[t])
    assert len(game) > 40


def test_auth_with_canary_token(monkeypatch, model_path: Path, tmp_path: Path, caplog):
    caplog.set_level(logging.DEBUG)
    service = _service(monkeypatch, model_path, tmp_path, INFERENCE_API_TOKEN=CANARY)
    assert service.load_once()
    seen = []
    with TestClient(create_app(service, load_in_background=False)) as c:
        for path, method in (("/infer", "POST"), ("/infer/batch", "POST"), ("/metrics", "GET")):
            body = {"positions": [{}]} if "batch" in path else {}
            r = c.request(method, path, json=body)
            assert (r.status_code, r.json()["error"]) == (401, "missing bearer token")
            assert r.headers["www-authenticate"] == 'Bearer realm="inference"'
            r = c.request(method, path, json=body, headers={"Authorization": "Bearer nope"})
            assert (r.status_code, r.json()["error"]) == (401, "invalid bearer token")
            assert r.headers["www-authenticate"] == (
                'Bearer realm="inference", error="invalid_token"')
            seen.append(r.text + str(r.headers))
        ok = {"Authorization": f"Bearer {CANARY}"}
        assert c.post("/infer", json={}, headers=ok).status_code == 200
        assert c.get("/metrics", headers=ok).status_code == 200
        assert c.post("/infer", json={}, headers={"Authorization": f"Basic {CANARY}"}
                      ).status_code == 401
        health = c.get("/healthz")
        assert health.status_code == 200
        seen += [health.text, c.get("/metrics", headers=ok).text]
    assert not any(CANARY in s for s in seen)
    assert CANARY not in caplog.text


def test_healthz_reports_missing_model_then_picks_one_up(monkeypatch, tmp_path: Path,
                                                        model_path: Path):
    service = _service(monkeypatch, None, tmp_path)
    with TestClient(create_app(service, load_in_background=False)) as c:
        assert not service.load_once()
        r = c.get("/healthz")
        assert r.status_code == 503
        assert r.json() == {"status": "no_model", "reason": (
            f"no model found: no *.pt under {tmp_path / 'artifacts'}; train one (make train) or "
            "set INFERENCE_MODEL_PATH")}
        r = c.post("/infer", json={})
        assert r.status_code == 503 and r.json()["error"].startswith("model not ready: no model")
        older = tmp_path / "artifacts" / "a" / "old.pt"
        older.parent.mkdir(parents=True)
        older.write_bytes(b"junk")
        os.utime(older, (1, 1))
        newest = tmp_path / "artifacts" / "b" / "new.pt"
        newest.parent.mkdir(parents=True)
        newest.write_bytes(model_path.read_bytes())
        assert service.load_once()
        body = c.get("/healthz").json()
        assert body["status"] == "ok" and body["model_path"] == str(newest)
        assert body["parameters"] > 0 and body["features"]["board"] is True
    bad = _service(monkeypatch, tmp_path / "artifacts" / "a" / "old.pt", tmp_path)
    assert not bad.load_once()
    assert (bad.state.status, bad.state.reason) == (
        "error", f"{tmp_path / 'artifacts' / 'a' / 'old.pt'}: not a readable checkpoint "
        "(UnpicklingError)")


def test_heartbeat_throttled_and_only_for_api_traffic(client: TestClient, tmp_path: Path):
    hb = tmp_path / "hb"
    assert not hb.exists()
    client.get("/healthz")
    client.get("/metrics")
    assert not hb.exists()
    client.post("/infer", json={})
    assert hb.exists()
    now = [100.0]
    beat = Heartbeat(tmp_path / "sub" / "hb2", clock=lambda: now[0])
    beat.beat()
    first = (tmp_path / "sub" / "hb2").stat().st_mtime_ns
    os.utime(tmp_path / "sub" / "hb2", ns=(1, 1))
    now[0] += 0.5
    beat.beat()
    assert (tmp_path / "sub" / "hb2").stat().st_mtime_ns == 1  # within the second: untouched
    now[0] += 0.6
    beat.beat()
    assert (tmp_path / "sub" / "hb2").stat().st_mtime_ns >= first


def test_metrics(client: TestClient):
    client.post("/infer", json={"moves": ["e2e4"]})
    client.post("/infer", json={"topk": 0})
    text = client.get("/metrics").text
    assert 'inference_requests_total{route="/infer",status="200"} 1.0' in text
    assert 'inference_requests_total{route="/infer",status="422"} 1.0' in text
    assert "inference_batch_size_count 1.0" in text
    assert "inference_model_ready 1.0" in text
    assert 'inference_model_info{device="cpu"' in text
    assert 'inference_request_latency_seconds_count{route="/infer"} 2.0' in text


def test_micro_batcher_groups_concurrent_work_and_survives_errors():
    sizes: list[int] = []

    def run(items: list[int]) -> list[int]:
        if -1 in items:
            raise RuntimeError("boom")
        return [i * 2 for i in items]

    async def scenario() -> None:
        batcher: MicroBatcher[int, int] = MicroBatcher(run, window_s=0.05, max_batch=8,
                                                       on_batch=sizes.append)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit([i]) for i in range(20)))
        assert [r[0] for r in results] == [i * 2 for i in range(20)]
        with pytest.raises(RuntimeError, match="boom"):
            await batcher.submit([-1])
        assert await batcher.submit([3, 4]) == [6, 8]
        await batcher.stop()

    asyncio.run(scenario())
    assert sizes == [8, 8, 4, 1, 2]  # a request's positions share a pass


def test_micro_batcher_answers_every_request_when_its_thread_cannot_start_or_a_pass_miscounts():
    def broken_init() -> None:
        raise RuntimeError("no torch threads")

    def short(items: list[int]) -> list[int]:
        return items[1:]

    async def scenario() -> None:
        for kwargs, run, error in ((dict(init_worker=broken_init), list, "no torch threads"),
                                   ({}, short, "a pass of 2 gave 1 answers")):
            batcher: MicroBatcher[int, int] = MicroBatcher(run, window_s=0.05, max_batch=8,
                                                           **kwargs)
            batcher.start()
            for _ in range(2):  # the next pass fails the same way: the batcher still serves
                with pytest.raises(RuntimeError) as err:
                    await asyncio.wait_for(batcher.submit([1, 2]), timeout=5)
                assert str(err.value) == error
            await batcher.stop()

    asyncio.run(scenario())


@pytest.mark.parametrize(("env", "is_open"), [
    ({}, True),
    ({"INFERENCE_API_TOKEN": CANARY}, False),
    ({"INFERENCE_API_TOKEN": CANARY, "INFERENCE_OPEN_DOCS": "1"}, True),
    ({"INFERENCE_OPEN_DOCS": "0"}, False),
])
def test_docs_are_closed_while_a_token_is_set_unless_opened(monkeypatch, model_path: Path,
                                                            tmp_path: Path, env, is_open):
    service = _service(monkeypatch, model_path, tmp_path, **env)
    with TestClient(create_app(service, load_in_background=False)) as c:
        for path in ("/docs", "/redoc", "/openapi.json"):
            # The token does not open them either: closed means not served.
            r = c.get(path, headers={"Authorization": f"Bearer {CANARY}"})
            if is_open:
                assert r.status_code == 200, path
            else:
                assert (r.status_code, r.json()) == (404, {"error": f"not found: {path}"})
        if is_open:
            schema = c.get("/openapi.json").json()
            assert set(schema["paths"]) == {"/healthz", "/infer", "/infer/batch", "/metrics"}
            assert set(schema["paths"]["/healthz"]) == {"get", "head"}


def test_head_healthz_answers_like_get_without_a_body(monkeypatch, model_path: Path,
                                                      tmp_path: Path):
    service = _service(monkeypatch, model_path, tmp_path)
    with TestClient(create_app(service, load_in_background=False)) as c:
        assert service.load_once()
        r = c.head("/healthz")
        get = c.get("/healthz")
        assert (r.status_code, r.content, get.status_code) == (200, b"", 200)
        assert r.headers["content-type"] == "application/json"
    empty = _service(monkeypatch, None, tmp_path)
    with TestClient(create_app(empty, load_in_background=False)) as c:
        assert not empty.load_once()
        r = c.head("/healthz")
        assert (r.status_code, r.content) == (503, b"")
        assert c.get("/healthz").json()["status"] == "no_model"


def test_a_body_that_stalls_is_answered_408(monkeypatch, model_path: Path, tmp_path: Path):
    service = _service(monkeypatch, model_path, tmp_path, INFERENCE_BODY_TIMEOUT_SECONDS="0.3")
    app = create_app(service, load_in_background=False)
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/infer", "raw_path": b"/infer", "query_string": b"",
             "root_path": "", "headers": [(b"content-length", b"100")],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2)}
    calls = []

    async def receive() -> dict:
        calls.append(1)
        if len(calls) == 1:
            return {"type": "http.request", "body": b'{"moves"', "more_body": True}
        await asyncio.Event().wait()  # the rest never comes
        raise AssertionError("unreachable")

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    async def run() -> float:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await asyncio.wait_for(app(scope, receive, send), timeout=10)
        return loop.time() - t0

    elapsed = asyncio.run(run())
    assert 0.3 <= elapsed < 3
    start, body = sent
    assert start["status"] == 408
    assert (b"connection", b"close") in start["headers"]
    assert body["body"] == b'{"error":"request body not received within 0.3 s"}'
