"""Per-game state, legal ranking, either architecture and the batch plan of the predictor:
`MovePredictor.step`, the game cache's bounds, /infer with and without `game_id` on real games,
`meta["legal_mask"]`, a non-recurrent model fed its last `context_positions`, the adaptive batch
window."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import chess
import pytest
import torch
from fastapi.testclient import TestClient
from torch import nn

from appliance import settings
from appliance.datasets.pgn_import import ImportCounts, iter_pgn_rows
from appliance.inference import predictor as predictor_module
from appliance.inference.app import Service, create_app
from appliance.inference.batcher import MicroBatcher
from appliance.inference.games import GameCache, GameEntry, game_key
from appliance.inference.predictor import Predictor, plan_passes
from appliance.model import encoding as encoding_module
from appliance.model.checkpoint import LoadedModel, save_checkpoint
from appliance.model.encoding import encode_moves, pad_inputs
from appliance.model.network import ModelConfig, MovePredictor
from appliance.model.vocab import NUM_MOVES

REAL = Path(__file__).resolve().parents[1] / "fixtures" / "pgn" / "real_games_chesscom.pgn"
TINY = ModelConfig(embed_dim=16, hidden_dim=24)


@pytest.fixture(scope="module")
def real_games() -> list[list[str]]:
    rows = iter_pgn_rows(REAL, ImportCounts())
    return [next(rows)["moves_uci"] for _ in range(3)]


def _checkpoint(path: Path, **meta: object) -> Path:
    torch.manual_seed(0)
    save_checkpoint(path, MovePredictor(TINY), **meta)
    return path


def _client(monkeypatch, model: Path, **env: str) -> TestClient:
    for key in list(os.environ):
        if key.startswith("INFERENCE_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    service = Service(settings.load(settings.InferenceSettings), model, model.parent, "cpu")
    assert service.load_once()
    client = TestClient(create_app(service, load_in_background=False))
    client.service = service  # type: ignore[attr-defined]
    return client


def _answer(body: dict) -> dict:
    return {k: v for k, v in body.items() if k != "latency_ms"}


def test_step_continues_forward_from_its_state():
    torch.manual_seed(0)
    model = MovePredictor(TINY).eval()
    assert MovePredictor.recurrent is True
    enc = encode_moves(["e2e4", "e7e5", "g1f3", "b8c6", "f1b5"], final=True).inputs
    arrays = [torch.from_numpy(a) for a in pad_inputs([enc])]
    with torch.inference_mode():
        whole = model(*arrays)
        first, state = model.step(*(a[:, :4] for a in arrays))
        rest, after = model.step(*(a[:, 4:] for a in arrays), state=state)
        again, _ = model.step(*arrays, state=None)
    assert whole.shape == (1, 6, NUM_MOVES)
    assert torch.allclose(torch.cat([first, rest], 1), whole, atol=1e-5)
    assert torch.equal(again, whole)
    assert [tuple(s.shape) for s in after] == [(2, 1, 24), (2, 1, 24)]  # LSTM (h, c)


def _entry(moves: int, state_floats: int = 10) -> GameEntry:
    return GameEntry(None, ["e2e4"] * moves, chess.Board(),
                     (torch.zeros(state_floats), torch.zeros(state_floats)), torch.zeros(6))


def test_game_cache_bounds_by_count_bytes_and_ttl():
    now = [0.0]
    small = _entry(0)
    assert small.nbytes == 4 * (10 + 10 + 6) + 2048
    cache = GameCache(max_games=2, max_bytes=3 * small.nbytes, ttl_s=60, clock=lambda: now[0])
    a, b, c = (game_key(b"tok", g) for g in "abc")
    cache.put(a, small)
    cache.put(b, small)
    assert cache.get(a) is small  # a is now the most recently used
    cache.put(c, small)
    assert (cache.get(b), len(cache), cache.stats.evictions) == (None, 2, 1)
    big = _entry(0, state_floats=2 * small.nbytes // 4 // 2)  # two small entries' worth alone
    cache.put(b, big)
    assert [k for k in cache.entries] == [b]  # a and c went to make room for the bytes
    assert cache.nbytes == big.nbytes and cache.stats.evictions == 3
    cache.put(a, _entry(0, state_floats=3 * small.nbytes))  # larger than the bound: not kept
    assert cache.get(a) is None and cache.nbytes == big.nbytes
    now[0] = 59.9
    assert cache.get(b) is big  # used: its minute starts again
    now[0] = 119.8
    assert cache.get(b) is big
    now[0] = 180
    assert (cache.get(b), len(cache), cache.nbytes, cache.stats.expired) == (None, 0, 0, 1)
    assert game_key(b"tok", "g") != game_key(b"other", "g")  # a game belongs to its token
    assert (cache.stats.hits, cache.stats.misses) == (3, 3)


def test_plan_passes_splits_by_length_when_padding_costs_more_than_a_pass():
    assert plan_passes([]) == []
    assert plan_passes([5, 3, 4]) == [[1, 2, 0]]  # similar lengths: one pass
    # 16 short games and one long: padding them all to 200 costs more than a second pass.
    lengths = [10] * 16 + [200]
    assert plan_passes(lengths) == [list(range(16)), [16]]
    assert plan_passes([10, 200]) == [[0], [1]]
    assert plan_passes([150, 200]) == [[0, 1]]


def test_game_id_gives_the_same_answers_on_real_games(monkeypatch, tmp_path: Path,
                                                      real_games: list[list[str]]):
    client = _client(monkeypatch, _checkpoint(tmp_path / "m.pt"),
                     INFERENCE_MAX_BODY_BYTES=str(10**6))
    service: Service = client.service  # type: ignore[attr-defined]
    with client:
        plies = 0
        for g, game in enumerate(real_games):
            for t in range(0, min(len(game), 90), 1 if g else 3):  # game 0: 3 moves at a time
                plain = client.post("/infer", json={"moves": game[:t], "topk": 10})
                kept = client.post("/infer", json={"moves": game[:t], "topk": 10,
                                                   "game_id": f"g{g}"})
                assert plain.status_code == kept.status_code == 200, (g, t)
                a, b = _answer(plain.json()), _answer(kept.json())
                assert [(m["uci"], m["legal"]) for m in a["topk"]] == [
                    (m["uci"], m["legal"]) for m in b["topk"]], (g, t)
                # Same moves, same order; probabilities equal but for the last float bits,
                # which depend on how the pass is split (as they do on the batch's make-up).
                assert [m["prob"] for m in a["topk"]] == pytest.approx(
                    [m["prob"] for m in b["topk"]], abs=2e-6)
                a.pop("topk"), b.pop("topk")
                assert a == b
                plies += 1
        stats = service.games.stats
        assert (stats.misses, stats.hits, stats.diverged) == (3, plies - 3, 0)
        assert len(service.games) == 3
        metrics = client.get("/metrics").text
        assert f'inference_game_cache{{what="hits"}} {float(plies - 3)}' in metrics
        assert 'inference_game_cache{what="entries"} 3.0' in metrics


def test_a_history_that_does_not_extend_the_kept_one_gets_a_full_pass(
        monkeypatch, tmp_path: Path, real_games: list[list[str]]):
    client = _client(monkeypatch, _checkpoint(tmp_path / "m.pt"))
    service: Service = client.service  # type: ignore[attr-defined]
    game = real_games[0]
    fen = "4k3/8/8/8/8/8/4P3/4K3 w - - 0 30"

    def both(body: dict) -> tuple[dict, dict]:
        a = client.post("/infer", json=body)
        b = client.post("/infer", json={**body, "game_id": "x"})
        return a.json(), b.json()

    board = chess.Board()
    for move in game[:19]:
        board.push_uci(move)
    other = next(m.uci() for m in board.legal_moves if m.uci() != game[19])
    with client:
        client.post("/infer", json={"moves": game[:20], "game_id": "x"})
        for body in ({"moves": game[:12]},  # taken back: a full pass
                     {"moves": game[:19] + [other]},  # extends the 12 moves now kept
                     {"moves": game[:19] + [other]},  # the very same position: kept logits
                     {"moves": [], "fen": fen}):  # another start: a full pass
            a, b = both(body)
            assert [m["uci"] for m in a["topk"]] == [m["uci"] for m in b["topk"]], body
            assert a["phase"] == b["phase"] and a["best_legal"] == b["best_legal"]
        stats = service.games.stats
        assert (stats.misses, stats.hits, stats.diverged) == (1, 4, 2)
        # A bad move after the kept ones is named exactly as without game_id.
        bad = {"moves": game[:20] + ["e1e1"], "game_id": "x"}
        client.post("/infer", json={"moves": game[:20], "game_id": "x"})
        r = client.post("/infer", json=bad)
        assert (r.status_code, r.json()["error"]) == (
            422, "moves[20] = 'e1e1' is not a UCI move")
        illegal = game[:20] + ["a1a8"]
        assert client.post("/infer", json={"moves": illegal, "game_id": "x"}).json() == \
            client.post("/infer", json={"moves": illegal}).json()
        r = client.post("/infer", json={"moves": [], "game_id": ""})
        assert (r.status_code, r.json()["error"]) == (
            422, "game_id: must be a string of 1 to 128 characters or null")
        r = client.post("/infer", json={"moves": [], "game_id": 7})
        assert r.json()["error"] == "game_id: must be a string of 1 to 128 characters or null"


def test_legal_mask_checkpoint_ranks_legal_moves_only(monkeypatch, tmp_path: Path):
    client = _client(monkeypatch, _checkpoint(tmp_path / "m.pt", legal_mask=True))
    with client:
        body = client.post("/infer", json={"moves": ["e2e4", "e7e5"], "topk": 50}).json()
        board = chess.Board()
        board.push_uci("e2e4"), board.push_uci("e7e5")
        legal = {m.uci() for m in board.legal_moves}
        assert len(body["topk"]) == 29 == len(legal)  # fewer legal moves than topk
        assert {m["uci"] for m in body["topk"]} == legal
        assert all(m["legal"] for m in body["topk"])
        assert sum(m["prob"] for m in body["topk"]) == pytest.approx(1, abs=1e-4)
        assert body["predicted_uci"] == body["best_legal"] == body["topk"][0]["uci"]
        fen = "7k/8/8/8/8/8/8/K7 w - - 0 1"  # 3 legal moves
        r = client.post("/infer", json={"fen": fen}).json()
        assert sorted(m["uci"] for m in r["topk"]) == ["a1a2", "a1b1", "a1b2"]
        health = client.get("/healthz").json()
        assert (health["legal_only"], health["recurrent"]) == (True, True)
    plain = _client(monkeypatch, _checkpoint(tmp_path / "p.pt"))
    with plain:
        r = plain.post("/infer", json={"fen": "7k/8/8/8/8/8/8/K7 w - - 0 1"}).json()
        assert len(r["topk"]) == 5  # without the mask, illegal moves are ranked too
        assert plain.get("/healthz").json()["legal_only"] is False


class _Window(nn.Module):
    """A stand-in for a non-recurrent model: logits from the last 3 positions only."""

    recurrent = False
    context_positions = 3

    def __init__(self) -> None:
        super().__init__()
        self.out = nn.Embedding(5000, NUM_MOVES)

    def forward(self, tokens, phase, side, board):
        window = torch.stack([tokens.roll(k, 1) for k in range(3)], -1)
        return self.out(window).sum(-2)

    def position_logits(self, history, board, side):
        return self.out(history).sum(-2)


def test_a_non_recurrent_model_gets_its_context_and_keeps_games_by_their_inputs(
        monkeypatch, real_games: list[list[str]]):
    model = _Window().eval()
    cache = GameCache(10, 10**6, 60)
    predictor = Predictor(LoadedModel(model, TINY, {}, Path("w.pt")),  # type: ignore[arg-type]
                          torch.device("cpu"), "sha", 500, cache)
    seen: list[int] = []
    traced = predictor.final_logits
    assert traced is not None
    predictor.final_logits = lambda h, b, s: seen.append(h.shape[1]) or traced(h, b, s)
    game = ["e2e4", "e7e5", "g1f3", "b8c6", "f1b5", "a7a6"]
    key = game_key(b"", "w")
    p = predictor.prepare(game, None, 5, key)
    assert len(p.inputs) == 3 and p.save is None and p.start is None
    full = encode_moves(game, final=True).inputs
    assert p.inputs.tokens.tolist() == full.tokens[-3:].tolist()
    [pred] = predictor.predict([p])
    with torch.inference_mode():
        want = model(*[torch.from_numpy(a) for a in pad_inputs([full])])[0, -1]
    assert pred.predicted_uci == predictor.predict([predictor.prepare(game, None, 5)])[0]\
        .predicted_uci
    assert [m["prob"] for m in pred.topk] == pytest.approx(
        torch.softmax(want, -1).topk(5).values.tolist(), abs=1e-6)
    assert seen == [3, 3] and len(cache) == 1
    assert predictor.facts()["recurrent"] is False

    # A real game one ply at a time: each request replays only its new move from the kept
    # board, and gets exactly the inputs (so the answer) of a full replay.
    real = real_games[0][:60]
    plains = [encode_moves(real[:t], final=True).inputs for t in range(len(real))]
    replayed: list[int] = []
    original = predictor_module.replay

    def counting(moves, board, field):
        replayed.append(len(moves))
        return original(moves, board, field)

    monkeypatch.setattr(predictor_module, "replay", counting)  # a kept game's new moves
    monkeypatch.setattr(encoding_module, "replay", counting)  # a full replay
    for t, plain in enumerate(plains):  # (not the whole game: its last position may be mate)
        kept = predictor.prepare(real[:t], None, 5, game_key(b"", "real"))
        for a, b in zip((kept.inputs.tokens, kept.inputs.phase, kept.inputs.side,
                         kept.inputs.boards), (plain.tokens, plain.phase, plain.side,
                                               plain.boards), strict=True):
            assert a.tolist() == b[-3:].tolist(), t
        assert (kept.phase, kept.side) == (int(plain.phase[-1]), int(plain.side[-1]))
    assert replayed == [0] + [1] * (len(real) - 1)  # a new game's empty history, then 1 move each
    assert (cache.stats.hits, cache.stats.misses, cache.stats.diverged) == (len(real) - 1, 2, 0)
    entry = cache.get(game_key(b"", "real"))
    assert entry is not None and entry.moves == real[:-1] and entry.state is None
    assert entry.context is not None and len(entry.context) == 3
    # Taken back: a full replay, and the kept game follows the request.
    assert len(predictor.prepare(real[:10], None, 5, game_key(b"", "real")).inputs) == 3
    assert cache.stats.diverged == 1 and replayed[-1] == 10


def test_predict_groups_plain_and_stepped_positions(tmp_path: Path, real_games):
    predictor = Predictor.load(_checkpoint(tmp_path / "m.pt"), torch.device("cpu"), 500,
                               games=GameCache(10, 10**7, 60))
    game = real_games[1]
    keys = [game_key(b"", f"k{i}") for i in range(3)]
    for i, key in enumerate(keys):  # keep three games at different plies
        predictor.predict([predictor.prepare(game[:10 + i], None, 3, key)])
    batch = [predictor.prepare(game[:t], None, 3) for t in (4, 30, 7)]
    batch += [predictor.prepare(game[:12], None, 3, k) for k in keys]  # 2, 1 and 0 new moves
    batch.append(predictor.prepare(game[:15], None, 3, game_key(b"", "new")))
    calls: list[tuple[int, int]] = []
    model = predictor.model
    step = model.step

    def spy_step(*a, **kw):
        calls.append(a[0].shape)
        return step(*a, **kw)

    model.step = spy_step  # type: ignore[method-assign]
    got = predictor.predict(batch)
    model.step = step  # type: ignore[method-assign]
    # plain positions: one padded pass; kept games: one step per count of new positions (the
    # game with none new needs no pass); the new game: a full pass that keeps its state.
    assert sorted(calls) == [(1, 1), (1, 2), (1, 16), (3, 31)]
    alone = [predictor.predict([predictor.prepare(game[:t], None, 3)])[0]
             for t in (4, 30, 7, 12, 12, 12, 15)]
    for a, b in zip(got, alone, strict=True):
        assert [m["uci"] for m in a.topk] == [m["uci"] for m in b.topk]
        assert [m["prob"] for m in a.topk] == pytest.approx([m["prob"] for m in b.topk],
                                                             abs=2e-6)
    assert len(predictor.games or []) == 4


def test_batch_window_waits_only_under_load():
    sizes: list[int] = []

    def run(items: list[int]) -> list[int]:
        time.sleep(0.02)
        return items

    async def scenario() -> None:
        batcher: MicroBatcher[int, int] = MicroBatcher(run, window_s=0.5, max_batch=16,
                                                       on_batch=sizes.append)
        batcher.start()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for i in range(3):  # alone: no wait for company
            assert await batcher.submit([i]) == [i]
        assert loop.time() - t0 < 0.4
        # Eight clients in a closed loop: two groups of four take turns, one in the pass while
        # the other comes back (each pass waits for its four, never for all eight).
        async def client(k: int) -> None:
            for _ in range(6):
                await batcher.submit([k])
                await asyncio.sleep(0.001 * k)

        await asyncio.gather(*(client(k) for k in range(8)))
        await batcher.stop()

    asyncio.run(scenario())
    assert sizes == [1, 1, 1] + [4] * 12


@pytest.mark.parametrize("threads", ["1", "3", None])
def test_the_forward_thread_takes_its_torch_threads_from_the_settings(monkeypatch,
                                                                       tmp_path: Path, threads):
    before = torch.get_num_threads()
    seen: list[int] = []
    env = {"INFERENCE_TORCH_THREADS": threads} if threads else {}
    client = _client(monkeypatch, _checkpoint(tmp_path / "m.pt"), **env)
    service: Service = client.service  # type: ignore[attr-defined]
    forward = service.batcher.run

    def spy(batch):
        seen.append(torch.get_num_threads())
        return forward(batch)

    service.batcher.run = spy
    try:
        with client:
            assert client.post("/infer", json={"moves": ["e2e4"]}).status_code == 200
    finally:
        torch.set_num_threads(before)
    # Unset: torch's default less one, so a core stays with the event loop.
    assert seen == [int(threads) if threads else max(1, before - 1)]
