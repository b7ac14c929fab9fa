"""Dataset rows: formats, validation messages, splice eligibility, batching."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from appliance.datasets.rows import (
    GAME_FORMAT,
    DatasetError,
    SpliceConfig,
    detect_format,
    encode_row,
    load_games,
    row_format,
)
from appliance.model import vocab
from appliance.training.batching import IGNORE, GameDataset, bucketed_batches, collate
from tests.utils.datasets import write_rows

GAME = ["e2e4", "e7e5", "g1f3", "b8c6", "f1b5", "a7a6", "b5a4", "g8f6", "e1g1", "f8e7"]


def _error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "rows.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DatasetError) as err:
        load_games([path])
    return str(err.value).replace(str(path), "rows.jsonl")


def test_bad_rows_name_file_line_and_reason(tmp_path: Path):
    ok = json.dumps({"moves_uci": GAME}) + "\n"
    assert _error(tmp_path, ok + "{broken\n") == (
        "rows.jsonl:2: broken JSON: Expecting property name enclosed in double quotes")
    assert _error(tmp_path, ok + '{"moves_uci": ["e2e4", "e7e9"]}\n') == (
        "rows.jsonl:2: moves_uci[1] = 'e7e9' is not a UCI move")
    assert _error(tmp_path, ok + '\n{"moves_uci": ["e2e4", "e2e4"]}\n') == (
        "rows.jsonl:3: moves_uci[1] = 'e2e4' is illegal: there is no black piece on e2 "
        "(position 'rnbqkbnr/pppppppp/8/8/4P3/8/PPPP1PPP/RNBQKBNR b KQkq - 0 1')")
    assert _error(tmp_path, '{"move": ["e2e4"]}\n') == (
        "rows.jsonl:1: missing field: a game row needs 'moves_uci' (or 'moves'), a legacy row "
        "needs 'context' and 'target'")
    assert _error(tmp_path, '{"moves": ["e2e4", "e2e5"]}\n').startswith(
        "rows.jsonl:1: moves[1] = 'e2e5' is illegal: there is no black piece on e2 (position ")
    assert _error(tmp_path, '{"moves": ["e2e4"], "moves_uci": ["d2d4"]}\n') == (
        "rows.jsonl:1: fields 'moves' and 'moves_uci' disagree; keep one of them")
    assert _error(tmp_path, '{"context": ["e2e4"], "target": "e7e6x"}\n') == (
        "rows.jsonl:1: context+target[1] = 'e7e6x' is not a UCI move")
    assert _error(tmp_path, '{"moves_uci": "e2e4"}\n') == (
        "rows.jsonl:1: field 'moves_uci' must be a list of UCI strings")
    assert _error(tmp_path, '{"moves_uci": ["e2e4"], "fen": "8/8/8 w"}\n').startswith(
        "rows.jsonl:1: bad FEN '8/8/8 w'")
    assert _error(tmp_path, "\n\n") == "rows.jsonl: dataset is empty (no rows)"
    assert _error(tmp_path, '[1, 2]\n') == "rows.jsonl:1: row must be a JSON object"
    with pytest.raises(DatasetError, match=r"nope\.jsonl: file not found"):
        load_games([tmp_path / "nope.jsonl"])


def test_game_and_legacy_rows_encode(tmp_path: Path):
    game = encode_row({"moves_uci": GAME, "random_plies": [0, 3], "result": "*"})
    assert len(game) == 10
    assert game.tokens[0] == vocab.BOS_ID and game.tokens[1] == vocab.move_id("e2e4")
    assert game.targets[0] == vocab.move_class("e2e4")
    assert game.side.tolist() == [0, 1] * 5
    assert game.trainable.tolist() == [False, True, True, False] + [True] * 6
    legacy = encode_row({"context": GAME[:4], "target": GAME[4]})
    assert legacy.spliced and legacy.trainable.tolist() == [False] * 4 + [True]
    assert legacy.targets[-1] == vocab.move_class("f1b5")
    fen_game = encode_row({"moves_uci": ["e1e2"], "fen": "4k3/8/8/8/8/8/8/4K3 w - - 0 1"})
    assert fen_game.phase.tolist() == [2]
    path = write_rows(tmp_path / "mixed.jsonl", [{"moves_uci": GAME},
                                                  {"context": GAME[:2], "target": GAME[2]}])
    games, counts = load_games([path])
    assert len(games) == 2
    assert counts == {"game_jsonl_runtime_splice_v1": 1, "splice_rows_legacy": 1}
    assert detect_format(path) == "game_jsonl_runtime_splice_v1"


def test_splice_eligibility():
    game = encode_row({"moves_uci": GAME, "random_plies": [9]})
    assert np.flatnonzero(game.eligible(SpliceConfig(8, 1, 0))).tolist() == [8]
    assert np.flatnonzero(game.eligible(SpliceConfig(2, 3, 0))).tolist() == [2, 3, 4, 5, 6, 7]
    assert np.flatnonzero(game.eligible(SpliceConfig(0, 1, 0))).tolist() == list(range(9))
    legacy = encode_row({"context": GAME[:3], "target": GAME[3]})
    assert np.flatnonzero(legacy.eligible(SpliceConfig(8, 5, 0))).tolist() == [3]
    with pytest.raises(ValueError, match="--runtime-min-target must be >= 1, got 0"):
        SpliceConfig(8, 0, 0)


def test_max_samples_per_game_draws_per_epoch_deterministically():
    games = [encode_row({"moves_uci": GAME})]
    ds = GameDataset(games, SpliceConfig(0, 1, 3), seed=7, sample=True)
    picks = []
    for epoch in range(4):
        ds.epoch = epoch
        mask = ds[0][1]
        assert mask.sum() == 3
        picks.append(tuple(np.flatnonzero(mask)))
        ds.epoch = epoch
        assert tuple(np.flatnonzero(ds[0][1])) == picks[-1]
    assert len(set(picks)) > 1
    val = GameDataset(games, SpliceConfig(0, 1, 3), seed=7, sample=False)
    assert val[0][1].sum() == 10


def test_collate_pads_and_weights_endgame():
    a = encode_row({"moves_uci": GAME[:4]})
    b = encode_row({"moves_uci": ["e1e2", "e8e7"], "fen": "4k3/8/8/8/8/8/8/4K3 w - - 0 1"})
    batch = collate([(a, np.ones(4, bool)), (b, np.array([True, False]))], endgame_weight=2.5)
    assert batch.tokens.shape == (2, 4)
    assert batch.tokens[1].tolist()[2:] == [vocab.PAD_ID, vocab.PAD_ID]
    assert batch.targets[1].tolist() == [vocab.move_class("e1e2"), IGNORE, IGNORE, IGNORE]
    assert batch.weights.tolist() == [[1, 1, 1, 1], [2.5, 0, 0, 0]]
    assert batch.num_targets == 5


def test_bucketed_batches_cover_each_game_once_and_split_evenly():
    lengths = [(i * 37) % 101 + 1 for i in range(103)]
    batches = bucketed_batches(lengths, 8, seed=1, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(103))
    assert batches == bucketed_batches(lengths, 8, seed=1, epoch=0)
    assert batches != bucketed_batches(lengths, 8, seed=1, epoch=1)
    r0 = bucketed_batches(lengths, 4, seed=1, epoch=0, rank=0, world_size=2)
    r1 = bucketed_batches(lengths, 4, seed=1, epoch=0, rank=1, world_size=2)
    # the global batches of 2 ranks x 4 games are one process's batches of 8, split by rank
    assert [sorted(a + b) for a, b in zip(r0, r1, strict=True)] == [sorted(b) for b in batches]
    assert not set(i for b in r0 for i in b) & set(i for b in r1 for i in b)


def test_a_rank_without_a_game_in_the_last_global_batch_gets_a_ghost(tmp_path: Path):
    lengths = [10] * 17  # 2 ranks x 8 games: 2 global batches, the second holds one game
    r0 = bucketed_batches(lengths, 8, seed=3, epoch=0, rank=0, world_size=2)
    r1 = bucketed_batches(lengths, 8, seed=3, epoch=0, rank=1, world_size=2)
    assert [len(b) for b in r0] == [len(b) for b in r1] and sorted(map(len, r0)) == [1, 8]
    assert sorted(i for b in r0 + r1 for i in b if i >= 0) == list(range(17))
    ghost = next(b for b in r0 + r1 if b[0] < 0)
    last = next(b for b in r0 + r1 if len(b) == 1 and b[0] >= 0)
    assert ghost == [~last[0]]
    write_rows(tmp_path / "t.jsonl", [{"moves_uci": ["e2e4", "e7e5", "g1f3"]}])
    ds = GameDataset(load_games([tmp_path / "t.jsonl"])[0], SpliceConfig(0, 1, 0), 0, True)
    assert ds[0][1].tolist() == [True, True, True]
    assert ds[~0][1].tolist() == [False, False, False]
    assert collate([ds[~0]]).num_targets == 0



def test_predecessor_moves_rows_are_game_rows(tmp_path: Path):
    """The predecessor's game datasets name the move list `moves`: read as `moves_uci`."""
    old = {"schema": "game_dataset_runtime_splice_v1", "game_id": "g1", "winner_side": "W",
           "result": "1-0", "plies": len(GAME), "moves": GAME}
    assert row_format(old) == GAME_FORMAT
    ours = encode_row({"moves_uci": GAME})
    theirs = encode_row(old)
    for field in ("tokens", "targets", "phase", "side", "boards", "trainable"):
        assert np.array_equal(getattr(theirs, field), getattr(ours, field)), field
    both = encode_row({"moves_uci": GAME, "moves": GAME})
    assert np.array_equal(both.targets, ours.targets)
    path = tmp_path / "train.jsonl"
    write_rows(path, [old, {"moves": GAME[:4]}])
    games, counts = load_games([path])
    assert [len(g) for g in games] == [10, 4] and counts[GAME_FORMAT] == 2
    assert detect_format(path) == GAME_FORMAT


def test_hostile_jsonl_names_file_and_line(tmp_path: Path):
    path = tmp_path / "rows.jsonl"
    ok = json.dumps({"moves_uci": GAME}).encode() + b"\n"
    path.write_bytes(ok + b"[" * 100_000 + b"]" * 100_000 + b"\n")
    with pytest.raises(DatasetError) as err:
        load_games([path])
    assert str(err.value) == f"{path}:2: JSON nested too deeply (a row is a flat object)"
    path.write_bytes(ok + ok + b"\x89PNG\r\n\x1a\n\x00\xff\xfe" + b"\n")
    with pytest.raises(DatasetError) as err:
        load_games([path])
    assert str(err.value) == (f"{path}:3: not UTF-8 text (byte 0x89 at column 1); is this a "
                              "JSONL file?")
    with pytest.raises(DatasetError) as err:
        detect_format(tmp_path)
    assert str(err.value) == f"{tmp_path}: is a directory, expected a JSONL file"
