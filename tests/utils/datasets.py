"""Small deterministic datasets for the tests: random legal games, row files, a dataset dir."""

from __future__ import annotations

import json
import random
from pathlib import Path

import chess


def random_game(rng: random.Random, max_plies: int = 60) -> list[str]:
    board = chess.Board()
    moves: list[str] = []
    while not board.is_game_over() and len(moves) < max_plies:
        move = rng.choice(list(board.legal_moves))
        moves.append(move.uci())
        board.push(move)
    return moves


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def make_dataset(root: Path, train_games: int = 24, val_games: int = 8, seed: int = 0,
                 max_plies: int = 40) -> Path:
    """A dataset dir of random legal games (game row format)."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", train_games), ("val", val_games)):
        write_rows(root / f"{name}.jsonl",
                   [{"moves_uci": random_game(rng, max_plies)} for _ in range(n)])
    (root / "stats.json").write_text(json.dumps({
        "dataset_format": "game_jsonl_runtime_splice_v1",
        "train_rows": train_games, "val_rows": val_games,
        "created_by": {"tool": "tests.utils.datasets.make_dataset", "seed": seed},
    }))
    return root

