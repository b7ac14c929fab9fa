"""Stockfish game generation for real: determinism across workers, row validity, CLI errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import chess
import pytest

from appliance.datasets.generate import (
    DEFAULT_ENGINE,
    GenerateConfig,
    GenerateError,
    generate_dataset,
    resolve_engine,
)
from appliance.datasets.rows import GAME_FORMAT, encode_row

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "host_tools.datasets"]


@pytest.fixture(scope="module")
def stockfish() -> str:
    found = shutil.which("stockfish") or shutil.which(DEFAULT_ENGINE)
    if found is None:
        why = "stockfish is not installed (apt-get install stockfish)"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    return found


def _files(out: Path) -> dict[str, str]:
    return {name: (out / name).read_text() for name in ("train.jsonl", "val.jsonl")}


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for text in _files(out).values() for line in text.splitlines()]


def _stable(stats: dict) -> dict:
    made = {k: v for k, v in stats["created_by"].items() if k not in ("created_at", "command")}
    return {**stats, "created_by": made}


def test_same_seed_same_games_whatever_the_workers(stockfish: str, tmp_path: Path):
    config = GenerateConfig(games=6, seed=11, engine=stockfish)
    two = generate_dataset(config, tmp_path / "two", workers=2, val_fraction=0.3)
    again = generate_dataset(config, tmp_path / "again", workers=2, val_fraction=0.3)
    one = generate_dataset(config, tmp_path / "one", workers=1, val_fraction=0.3)
    assert _files(tmp_path / "two") == _files(tmp_path / "again") == _files(tmp_path / "one")
    assert _stable(two) == _stable(again) == _stable(one)
    other = generate_dataset(
        GenerateConfig(games=6, seed=12, engine=stockfish), tmp_path / "other", workers=2
    )
    assert sorted(map(str, _rows(tmp_path / "other"))) != sorted(map(str, _rows(tmp_path / "two")))
    assert other["games_generated"] == 6

    assert two["dataset_format"] == GAME_FORMAT
    assert two["train_rows"] + two["val_rows"] == two["games_kept"] == 6
    assert two["train_positions"] + two["val_positions"] == two["positions"]
    made = two["created_by"]
    assert made["tool"] == "generate" and made["seed"] == 11
    assert made["engine"]["name"].startswith("Stockfish")
    assert made["engine"]["options"] == {"Threads": 1, "Hash": 16}
    assert made["limits"] == {"depth": 1}
    assert made["random_opening_plies"] == [2, 8] and made["random_move_rate"] == 0.05


def test_rows_are_legal_games_with_their_random_plies(stockfish: str, tmp_path: Path):
    config = GenerateConfig(games=4, seed=3, random_move_rate=0.2, max_plies=60, engine=stockfish)
    stats = generate_dataset(config, tmp_path / "out", workers=2)
    rows = _rows(tmp_path / "out")
    assert len(rows) == 4
    assert sum(len(r["random_plies"]) for r in rows) == stats["random_positions"]
    for row in rows:
        assert list(row) == ["moves_uci", "random_plies", "result", "termination"]
        moves, random_plies = row["moves_uci"], row["random_plies"]
        assert random_plies == sorted(set(random_plies))
        assert {0, 1} <= set(random_plies)  # at least 2 opening plies are random
        board = chess.Board()
        for uci in moves:
            assert chess.Move.from_uci(uci) in board.legal_moves
            board.push_uci(uci)
        assert all(0 <= i < len(moves) for i in random_plies)
        outcome = board.outcome(claim_draw=True)
        if outcome is None:
            assert (len(moves), row["result"], row["termination"]) == (60, "*", "max_plies")
        else:
            assert row["result"] == outcome.result()
            assert row["termination"] == outcome.termination.name.lower()
    games = [encode_row(row) for row in rows]  # what the trainer sees: random plies masked
    assert sum(int((~g.trainable).sum()) for g in games) == stats["random_positions"]


def test_nodes_limit_and_config_errors(stockfish: str, tmp_path: Path):
    config = GenerateConfig(games=1, depth=None, nodes=200, max_plies=20, engine=stockfish)
    stats = generate_dataset(config, tmp_path / "out", workers=1)
    assert stats["created_by"]["limits"] == {"nodes": 200}
    with pytest.raises(GenerateError, match="set exactly one engine limit: --depth or --nodes"):
        GenerateConfig(games=1, depth=2, nodes=10)
    with pytest.raises(GenerateError) as err:
        resolve_engine(str(tmp_path / "nope"))
    assert str(err.value) == (
        f"stockfish not found at {tmp_path / 'nope'}; install it with "
        "`apt-get install stockfish` or pass --engine PATH"
    )


def _cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *map(str, args)], capture_output=True, text=True, timeout=120, cwd=REPO
    )


def test_cli_generate_json_and_refusals(stockfish: str, tmp_path: Path):
    out = tmp_path / "out"
    args: list[str | Path] = [
        "generate",
        "--out",
        out,
        "--games",
        "3",
        "--workers",
        "2",
        "--seed",
        "5",
    ]
    done = _cli(*args, "--engine", stockfish, "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["out"] == str(out) and result["stats"]["games_kept"] == 3
    first = _files(out)
    assert result["stats"]["created_by"]["command"].startswith("python -m host_tools.datasets ")
    again = _cli(*args, "--engine", stockfish)
    assert (again.returncode, again.stdout) == (2, "")
    assert again.stderr == (
        f"datasets generate: error: {out}: output directory is not empty; "
        "pass --force to overwrite\n"
    )
    forced = _cli(*args, "--engine", stockfish, "--force")
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout.startswith("generated 3 games with Stockfish")
    assert _files(out) == first


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--engine", "/nonexistent/stockfish"],
            "datasets generate: error: stockfish not found at /nonexistent/stockfish; "
            "install it with `apt-get install stockfish` or pass --engine PATH",
        ),
        (
            ["--games", "0"],
            "datasets generate: error: argument --games: must be >= 1, got 0 (see --help)",
        ),
        (
            ["--random-move-rate", "2"],
            "datasets generate: error: argument --random-move-rate: must be in [0, 1], got 2 "
            "(see --help)",
        ),
        (
            ["--random-opening-plies", "8-2"],
            "datasets generate: error: argument --random-opening-plies: "
            "expected 0 <= MIN <= MAX, got '8-2' (see --help)",
        ),
        (
            ["--depth", "2", "--nodes", "100"],
            "datasets generate: error: argument --nodes: not allowed with argument --depth "
            "(see --help)",
        ),
    ],
)
def test_cli_generate_bad_input(tmp_path: Path, args: list[str], message: str):
    done = _cli("generate", "--out", tmp_path / "out", "--games", "2", *args)
    assert (done.returncode, done.stdout, done.stderr) == (2, "", message + "\n")
    assert not (tmp_path / "out").exists()
