"""Legal-move mask (encoding, cache, batches, loss, checkpoint, evaluation) and the conv network."""

from __future__ import annotations

import json
from pathlib import Path

import chess
import numpy as np
import pytest
import torch

from appliance.datasets import encoded_cache
from appliance.datasets.rows import GAME_FORMAT, LEGACY_FORMAT, encode_row
from appliance.inference.predictor import Predictor
from appliance.model import vocab
from appliance.model.checkpoint import build_model, load_model, save_checkpoint
from appliance.model.convnet import ConvConfig, ConvPredictor
from appliance.model.encoding import encode_moves
from appliance.training import evaluate, train
from appliance.training.batching import collate
from tests.utils.datasets import make_dataset, random_game, write_rows
from tests.utils.training import run_trainer, trainer_args

GAME = ["e2e4", "e7e5", "g1f3", "b8c6", "f1b5", "a7a6", "b5c6", "d7c6", "e1g1"]
PROMOTION_FEN = "8/P6k/8/8/8/8/8/K7 w - - 0 1"


def _legal_ucis(board: chess.Board) -> list[str]:
    return sorted(m.uci() for m in board.legal_moves)


def test_legal_moves_of_each_position_match_python_chess():
    import random
    rng = random.Random(3)
    for moves in [GAME, *(random_game(rng, 120) for _ in range(5))]:
        enc = encode_moves(moves, legal=True, final=True)
        assert enc.legal is not None and len(enc.legal) == len(moves) + 1
        board = chess.Board()
        for t in range(len(moves) + 1):
            assert sorted(vocab.class_to_move(int(c)) for c in enc.legal.of(t)) == \
                _legal_ucis(board)
            if t < len(moves):
                board.push_uci(moves[t])
    promo = encode_moves(["a7a8q"], fen=PROMOTION_FEN, legal=True)
    assert promo.legal is not None
    assert sorted(vocab.class_to_move(int(c)) for c in promo.legal.of(0)) == sorted(
        ["a7a8q", "a7a8r", "a7a8b", "a7a8n", "a1a2", "a1b1", "a1b2"])
    assert encode_moves(GAME).legal is None


def test_batch_mask_marks_exactly_the_legal_moves_and_no_padding():
    long, short = encode_row({"moves_uci": GAME}, legal=True), encode_row(
        {"moves_uci": GAME[:3]}, legal=True)
    batch = collate([(long, np.ones(9, bool)), (short, np.ones(3, bool))], legal=True)
    assert batch.legal is not None and batch.legal.shape == (2, 9, vocab.NUM_MOVES)
    board, counts = chess.Board(), []
    for uci in GAME:
        counts.append(board.legal_moves.count())
        board.push_uci(uci)
    assert counts[:3] == [20, 20, 29]
    assert batch.legal[0].sum(1).tolist() == counts
    assert batch.legal[1].sum(1).tolist() == counts[:3] + [0] * 6
    assert bool(batch.legal[0, 0, vocab.move_class("e2e4")])
    assert not bool(batch.legal[0, 0, vocab.move_class("e2e5")])
    assert collate([(long, np.ones(9, bool))]).legal is None
    with pytest.raises(ValueError, match="needs games encoded with their legal moves"):
        collate([(encode_row({"moves_uci": GAME}), np.ones(9, bool))], legal=True)


def test_masked_loss_is_cross_entropy_over_the_legal_moves_only():
    game = encode_row({"moves_uci": GAME}, legal=True)
    batch = collate([(game, np.ones(9, bool))], legal=True)
    torch.manual_seed(0)
    logits = torch.randn(1, 9, vocab.NUM_MOVES)
    loss, ce = train.masked_loss(train.mask_illegal(logits, batch), batch)
    assert game.legal is not None
    for t in range(9):
        legal = torch.from_numpy(game.legal.of(t).astype(np.int64))
        sub = logits[0, t, legal]
        target = int((legal == int(game.targets[t])).nonzero())
        expected = -torch.log_softmax(sub, 0)[target]
        assert float(ce[0, t]) == pytest.approx(float(expected), rel=1e-5)
    assert float(loss) == pytest.approx(float(ce.mean()), rel=1e-5)
    unmasked, _ = train.masked_loss(logits, batch)
    assert float(unmasked) > float(loss)


def test_encoded_cache_roundtrip_and_invalidation(tmp_path: Path):
    data = write_rows(tmp_path / "train.jsonl", [{"moves_uci": GAME, "random_plies": [1]},
                                                 {"context": GAME[:4], "target": GAME[4]}])
    fresh, counts, hits = encoded_cache.load_cached([data], "auto", legal=True)
    assert (counts, hits) == ({GAME_FORMAT: 1, LEGACY_FORMAT: 1}, 0)
    assert [p.name.endswith(".legal.npz") for p in (tmp_path / ".encoded").iterdir()] == [True]
    cached, counts2, hits = encoded_cache.load_cached([data], "auto", legal=True)
    assert (counts2, hits) == (counts, 1)
    for a, b in zip(fresh, cached, strict=True):
        for key in ("tokens", "phase", "side", "boards", "targets", "trainable"):
            assert np.array_equal(getattr(a, key), getattr(b, key))
        assert a.spliced == b.spliced
        assert a.legal is not None and b.legal is not None
        assert np.array_equal(a.legal.classes, b.legal.classes)
        assert np.array_equal(a.legal.offsets, b.legal.offsets)
    write_rows(data, [{"moves_uci": GAME[:2]}])  # changed content: a new entry, not a stale one
    games, _, hits = encoded_cache.load_cached([data], "auto", legal=True)
    assert (len(games), len(games[0]), hits) == (1, 2, 0)
    _, _, hits = encoded_cache.load_cached([data], "off", legal=True)
    assert hits == 0 and len(list((tmp_path / ".encoded").iterdir())) == 2


def _conv() -> ConvPredictor:
    torch.manual_seed(0)
    return ConvPredictor(ConvConfig(channels=8, blocks=1, history=3, head_channels=4)).eval()


def test_conv_prediction_depends_on_the_last_context_positions_only():
    model = _conv()
    assert (model.recurrent, model.context_positions) == (False, 3)
    enc = encode_moves(GAME, final=True).inputs
    t = torch.from_numpy
    full = model(t(enc.tokens).long()[None], t(enc.phase).long()[None], t(enc.side).long()[None],
                 t(enc.boards)[None])
    assert full.shape == (1, 10, vocab.NUM_MOVES)
    k = model.context_positions
    tail = model(t(enc.tokens[-k:]).long()[None], t(enc.phase[-k:]).long()[None],
                 t(enc.side[-k:]).long()[None], t(enc.boards[-k:])[None])
    assert torch.allclose(full[0, -1], tail[0, -1], atol=1e-5)
    shorter = model(t(enc.tokens[-k + 1:]).long()[None], t(enc.phase[-k + 1:]).long()[None],
                    t(enc.side[-k + 1:]).long()[None], t(enc.boards[-k + 1:])[None])
    assert not torch.allclose(full[0, -1], shorter[0, -1], atol=1e-5)
    padded = model(*(torch.nn.functional.pad(x, (0, 2)) for x in (
        t(enc.tokens).long()[None], t(enc.phase).long()[None], t(enc.side).long()[None])),
        torch.nn.functional.pad(t(enc.boards)[None], (0, 0, 0, 2)))
    assert torch.allclose(padded[0, :10], full[0], atol=1e-5)
    assert padded[0, 10:].abs().sum() == 0


def test_served_conv_runs_only_final_positions_and_matches_the_full_forward(tmp_path: Path):
    torch.manual_seed(0)
    model = ConvPredictor(ConvConfig(channels=8, blocks=1, history=3, head_channels=4,
                                     flip=True)).eval()
    save_checkpoint(tmp_path / "c.pt", model)
    predictor = Predictor.load(tmp_path / "c.pt", torch.device("cpu"), 100)
    rows: list[int] = []
    traced = predictor.final_logits
    assert traced is not None
    predictor.final_logits = lambda h, b, s: rows.append(len(h)) or traced(h, b, s)
    enc = encode_moves(GAME, final=True).inputs
    t = torch.from_numpy
    with torch.inference_mode():
        full = model(t(enc.tokens).long()[None], t(enc.phase).long()[None],
                     t(enc.side).long()[None], t(enc.boards)[None])[0]
    # Every ply (histories shorter than the context included), alone and in one shared pass.
    batch = [predictor.prepare(GAME[:n], None, 5) for n in range(len(GAME) + 1)]
    together = predictor.predict(batch)
    assert rows == [len(GAME) + 1]  # one pass of one row per position
    for n, (p, answer) in enumerate(zip(batch, together, strict=True)):
        [alone] = predictor.predict([p])
        want = torch.softmax(full[n], -1).topk(5)
        for got in (alone, answer):
            assert [m["uci"] for m in got.topk] == [
                vocab.class_to_move(c) for c in want.indices.tolist()], n
            assert [m["prob"] for m in got.topk] == pytest.approx(want.values.tolist(),
                                                                  abs=1e-6)
    assert rows == [len(GAME) + 1] + [1] * (len(GAME) + 1)


def test_served_conv_that_ranks_legal_moves_runs_only_their_head_rows(tmp_path: Path):
    """A conv model trained with the legal mask is served from the head rows of the legal moves
    alone: the answers of the full head masked to legal moves, for either side to move (the
    flip maps a black position's classes), alone and in one shared pass."""
    torch.manual_seed(0)
    model = ConvPredictor(ConvConfig(channels=8, blocks=1, history=3, head_channels=4,
                                     flip=True)).eval()
    save_checkpoint(tmp_path / "c.pt", model, legal_mask=True)
    predictor = Predictor.load(tmp_path / "c.pt", torch.device("cpu"), 100)
    assert predictor.final_logits is None and predictor.legal_logits is not None
    traced = predictor.legal_logits
    pairs: list[int] = []
    predictor.legal_logits = lambda h, b, s, r, c: pairs.append(len(c)) or traced(h, b, s, r, c)
    enc = encode_moves(GAME, final=True, legal=True)
    assert enc.legal is not None
    t = torch.from_numpy
    with torch.inference_mode():
        full = model(t(enc.inputs.tokens).long()[None], t(enc.inputs.phase).long()[None],
                     t(enc.inputs.side).long()[None], t(enc.inputs.boards)[None])[0]
    batch = [predictor.prepare(GAME[:n], None, 50) for n in range(len(GAME) + 1)]
    together = predictor.predict(batch)
    legal_counts = [len(enc.legal.of(n)) for n in range(len(GAME) + 1)]
    assert pairs == [sum(legal_counts)]  # one pass, one head row per legal move
    for n, (p, answer) in enumerate(zip(batch, together, strict=True)):
        [alone] = predictor.predict([p])
        masked = torch.full_like(full[n], float("-inf"))
        masked[enc.legal.of(n)] = full[n][enc.legal.of(n)]
        want = torch.softmax(masked, -1).topk(legal_counts[n])
        for got in (alone, answer):
            assert [m["uci"] for m in got.topk] == [
                vocab.class_to_move(c) for c in want.indices.tolist()], n
            assert [m["prob"] for m in got.topk] == pytest.approx(want.values.tolist(),
                                                                  abs=1e-6)
            assert all(m["legal"] for m in got.topk) and got.best_legal == got.predicted_uci
    assert pairs == [sum(legal_counts)] + legal_counts
    assert enc.inputs.side.tolist()[:2] == [0, 1]  # both sides to move were served


def test_conv_checkpoint_records_architecture_and_loads(tmp_path: Path):
    model = _conv()
    save_checkpoint(tmp_path / "c.pt", model, legal_mask=True)
    loaded = load_model(tmp_path / "c.pt")
    assert isinstance(loaded.model, ConvPredictor)
    assert loaded.meta["architecture"] == "conv" and loaded.meta["legal_mask"] is True
    assert loaded.meta["model_config"] == {"channels": 8, "blocks": 1, "history": 3,
                                           "head_channels": 4, "flip": False}
    with pytest.raises(ValueError, match="unknown architecture 'tree' \\(known: recurrent, conv"):
        build_model("tree", {})
    with pytest.raises(ValueError, match="unknown model config keys: width"):
        build_model("conv", {"width": 3})
    with pytest.raises(ValueError, match="^blocks must be at least 0, got -1$"):
        ConvConfig(blocks=-1)
    with pytest.raises(ValueError, match="^history must be at least 1, got 0$"):
        build_model("conv", {"history": 0})
    with pytest.raises(ValueError, match="^embed_dim must be at least 1, got 0$"):
        build_model("recurrent", {"embed_dim": 0})
    assert ConvConfig.from_dict(ConvConfig(channels=8).to_dict()) == ConvConfig(channels=8)


def test_trainer_records_mask_and_architecture_and_evaluate_ranks_legal_moves(
        tmp_path: Path, capsys):
    ds = make_dataset(tmp_path / "ds", train_games=6, val_games=3)
    conv = ["--arch", "conv", "--channels", "8", "--blocks", "1", "--history-moves", "2"]
    run_trainer(trainer_args(ds, tmp_path / "conv", "--epochs", "1", *conv))
    run_trainer(trainer_args(ds, tmp_path / "raw", "--epochs", "1", "--no-legal-mask"))
    conv_model = load_model(tmp_path / "conv" / "model_best.pt")
    raw_model = load_model(tmp_path / "raw" / "model_best.pt")
    assert (conv_model.meta["legal_mask"], conv_model.meta["architecture"]) == (True, "conv")
    assert (raw_model.meta["legal_mask"], raw_model.meta["architecture"]) == (False, "recurrent")
    assert list((ds / ".encoded").iterdir())  # the encoded games were kept for the next run

    def result(model: str, *extra: str) -> dict:
        assert evaluate.main(["--model", str(tmp_path / model / "model_best.pt"), "--data",
                              str(ds / "val.jsonl"), "--json", *extra]) == 0
        return json.loads(capsys.readouterr().out)

    masked = result("conv")
    assert masked["model"]["legal_mask"] is True
    assert masked["legal_top1"] == 1.0 and masked["top1"] == masked["best_legal_top1"]
    lengths = [len(json.loads(line)["moves_uci"]) for line in
               (ds / "val.jsonl").read_text().splitlines()]
    assert masked["min_context"] == 2  # the checkpoint's own --runtime-min-context (TINY)
    assert masked["positions"] == sum(n - 2 for n in lengths)
    assert masked["per_ply"]["0-7"]["positions"] == sum(min(n, 8) - 2 for n in lengths)
    assert sum(b["positions"] for b in masked["per_ply"].values()) == masked["positions"]
    told = result("conv", "--min-context", "0")
    assert told["min_context"] == 0 and told["positions"] == sum(lengths)
    raw = result("raw")
    assert raw["model"]["legal_mask"] is False
    assert raw["raw_top1_illegal"] == pytest.approx(1 - raw["legal_top1"])


def test_time_budget_stops_training_after_the_first_step(tmp_path: Path):
    ds = make_dataset(tmp_path / "ds", train_games=6, val_games=3)
    metrics = run_trainer(trainer_args(ds, tmp_path / "out", "--epochs", "5",
                                       "--time-budget-min", "0.00001"))
    assert (metrics["epochs_run"], metrics["stopped_by_time_budget"]) == (1, True)
    assert metrics["history"][0]["train_targets"] == 0  # stopped before the first step
    assert metrics["cpu_s"] > 0


def test_flipped_conv_sees_a_position_and_its_colour_mirror_alike():
    torch.manual_seed(0)
    model = ConvPredictor(ConvConfig(channels=8, blocks=1, history=3, flip=True)).eval()
    with torch.no_grad():  # the side-to-move plane is the one input the mirror changes
        model.stem[0].weight[:, 12 + 2 * 3 + 4] = 0
    moves = ["e2e4", "c7c5", "e4e5", "d7d5", "d2d4"]  # black to move, en passant e5xd6 is not
    enc = encode_moves(moves, final=True).inputs
    t = torch.from_numpy
    black = model(t(enc.tokens).long()[None], t(enc.phase).long()[None],
                  t(enc.side).long()[None], t(enc.boards)[None])[0, -1]
    board = chess.Board()
    for uci in moves:
        board.push_uci(uci)
    mirrored = encode_moves([], fen=board.mirror().fen(), final=True).inputs
    history = [vocab.move_id(chess.Move(chess.square_mirror(m.from_square),
                                        chess.square_mirror(m.to_square)).uci())
               for m in map(chess.Move.from_uci, moves[-3:])]
    zeros = torch.zeros(1, 3, dtype=torch.long)
    white = model(torch.tensor([history]), zeros, zeros,
                  t(mirrored.boards)[None].expand(1, 3, 66).clone())[0, -1]
    mirror = t(vocab.mirror_classes())
    assert torch.allclose(black, white[mirror], atol=1e-5)
    assert sorted(mirror[mirror].tolist()) == list(range(vocab.NUM_MOVES))
    assert bool((mirror[mirror] == torch.arange(vocab.NUM_MOVES)).all())
