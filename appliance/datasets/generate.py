"""Stockfish self-play -> a game dataset directory: random openings and a share of random moves
(listed in `random_plies`), one engine process per worker, reproducible from the seed alone.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.util
import os
import random
import shutil
import statistics
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import chess
import chess.engine
from tqdm import tqdm

from appliance.datasets.dataset_dir import (
    DEFAULT_SEED,
    DEFAULT_VAL_FRACTION,
    DatasetWriter,
    utc_now_iso,
)
from appliance.parallel import spawn_imap

DEFAULT_ENGINE = "/usr/games/stockfish"
ENGINE_OPTIONS = {"Threads": 1, "Hash": 16}
ENGINE_START_TIMEOUT_S = 30.0


class GenerateError(RuntimeError):
    """Generation cannot run or failed; the message says what to do."""


@dataclass(frozen=True)
class GenerateConfig:
    games: int
    seed: int = DEFAULT_SEED
    depth: int | None = 1
    nodes: int | None = None
    max_plies: int = 300
    random_move_rate: float = 0.05
    opening_plies: tuple[int, int] = (2, 8)  # uniform random plies at the start, min..max
    engine: str | None = None  # None: `stockfish` on PATH, else DEFAULT_ENGINE

    def __post_init__(self) -> None:
        if self.games < 1:
            raise GenerateError(f"--games must be >= 1, got {self.games}")
        if (self.depth is None) == (self.nodes is None):
            raise GenerateError("set exactly one engine limit: --depth or --nodes")
        if self.depth is not None and self.depth < 1:
            raise GenerateError(f"--depth must be >= 1, got {self.depth}")
        if self.nodes is not None and self.nodes < 1:
            raise GenerateError(f"--nodes must be >= 1, got {self.nodes}")
        if self.max_plies < 1:
            raise GenerateError(f"--max-plies must be >= 1, got {self.max_plies}")
        if not 0.0 <= self.random_move_rate <= 1.0:
            raise GenerateError(
                f"--random-move-rate must be in [0, 1], got {self.random_move_rate}"
            )
        lo, hi = self.opening_plies
        if not 0 <= lo <= hi:
            raise GenerateError(
                f"--random-opening-plies must be N or MIN-MAX with 0 <= MIN <= MAX, got {lo}-{hi}"
            )

    def limit(self) -> chess.engine.Limit:
        return chess.engine.Limit(depth=self.depth, nodes=self.nodes)

    def limits(self) -> dict[str, int]:
        return {"depth": self.depth} if self.depth is not None else {"nodes": self.nodes or 0}


def resolve_engine(path: str | None) -> str:
    """The engine executable to run: `path`, else `stockfish` on PATH, else Debian's location."""
    wanted = path or shutil.which("stockfish") or DEFAULT_ENGINE
    found = shutil.which(wanted)
    if found is None:
        raise GenerateError(
            f"stockfish not found at {wanted}; install it with `apt-get install stockfish` "
            "or pass --engine PATH"
        )
    return found


def open_engine(path: str) -> chess.engine.SimpleEngine:
    try:
        engine = chess.engine.SimpleEngine.popen_uci(path, timeout=ENGINE_START_TIMEOUT_S)
    except (OSError, chess.engine.EngineError, TimeoutError) as exc:
        raise GenerateError(f"{path}: cannot start as a UCI engine: {exc}") from None
    try:
        engine.configure(ENGINE_OPTIONS)
    except chess.engine.EngineError as exc:
        engine.quit()
        raise GenerateError(f"{path}: engine rejected options {ENGINE_OPTIONS}: {exc}") from None
    return engine


def engine_name(path: str) -> str:
    engine = open_engine(path)
    try:
        return str(engine.id.get("name", "unknown"))
    finally:
        engine.quit()


def game_rng(seed: int, index: int) -> random.Random:
    # A str seed is hashed with SHA-512: the same stream on every run, platform and worker.
    return random.Random(f"generate-v1:{seed}:{index}")


def play_game(engine: chess.engine.SimpleEngine, config: GenerateConfig, index: int) -> dict:
    """Game number `index` of the run; depends only on (config, index), not on what the engine
    played before, because a new game id makes python-chess send `ucinewgame` (clears the hash)."""
    rng = game_rng(config.seed, index)
    board = chess.Board()
    opening = rng.randint(*config.opening_plies)
    limit = config.limit()
    moves: list[str] = []
    random_plies: list[int] = []
    result, termination = "*", "max_plies"
    for ply in range(config.max_plies + 1):
        outcome = board.outcome(claim_draw=True)
        if outcome is not None:
            result, termination = outcome.result(), outcome.termination.name.lower()
            break
        if ply == config.max_plies:
            break
        # Draw the roll every ply so the random stream does not depend on the opening length.
        roll = rng.random()
        if ply < opening or roll < config.random_move_rate:
            move = rng.choice(sorted(board.legal_moves, key=chess.Move.uci))
            random_plies.append(ply)
        else:
            played = engine.play(board, limit, game=("generate", config.seed, index))
            if played.move is None:
                raise GenerateError(f"engine returned no move in position {board.fen()}")
            move = played.move
        moves.append(move.uci())
        board.push(move)
    return {
        "moves_uci": moves,
        "random_plies": random_plies,
        "result": result,
        "termination": termination,
    }


_worker_engine: chess.engine.SimpleEngine | None = None
_worker_config: GenerateConfig | None = None


def _init_worker(config: GenerateConfig, engine_path: str) -> None:
    global _worker_engine, _worker_config
    _worker_config = config
    _worker_engine = open_engine(engine_path)
    # Pool workers skip atexit; a Finalize with a priority runs when the worker exits cleanly.
    multiprocessing.util.Finalize(None, _worker_engine.quit, exitpriority=10)


def _play_in_worker(index: int) -> dict:
    assert _worker_engine is not None and _worker_config is not None
    try:
        return play_game(_worker_engine, _worker_config, index)
    except chess.engine.EngineError as exc:
        raise GenerateError(f"engine failed in game {index}: {exc!r}") from None


def iter_games(config: GenerateConfig, workers: int) -> Iterator[dict]:
    """Games 0..games-1 in index order, played by `workers` engine processes."""
    workers = max(1, min(workers, config.games))
    engine_path = resolve_engine(config.engine)
    if workers == 1:
        engine = open_engine(engine_path)
        try:
            for index in range(config.games):
                yield play_game(engine, config, index)
        except chess.engine.EngineError as exc:
            raise GenerateError(f"engine failed: {exc!r}") from None
        finally:
            engine.quit()
        return
    yield from spawn_imap(workers, _init_worker, (config, engine_path), _play_in_worker,
                          config.games)


def generate_dataset(
    config: GenerateConfig,
    out_dir: Path,
    *,
    workers: int | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    force: bool = False,
    command: str = "",
    progress: bool = False,
) -> dict[str, Any]:
    """Play `config.games` games and write them as a dataset directory; returns stats.json."""
    engine_path = resolve_engine(config.engine)
    name = engine_name(engine_path)
    workers = workers or os.cpu_count() or 1
    results: Counter[str] = Counter()
    terminations: Counter[str] = Counter()
    plies: list[int] = []
    random_moves = 0
    with DatasetWriter(out_dir, seed=config.seed, val_fraction=val_fraction, force=force) as w:
        games = iter_games(config, workers)
        for row in tqdm(games, total=config.games, unit=" games", disable=not progress):
            if w.add(row) is None:
                continue  # a duplicate: the figures below describe the games written
            results[row["result"]] += 1
            terminations[row["termination"]] += 1
            plies.append(len(row["moves_uci"]))
            random_moves += len(row["random_plies"])
        return w.commit(
            {
                "games_generated": config.games,
                "games_kept": w.rows["train"] + w.rows["val"],
                "positions": sum(plies),
                "random_positions": random_moves,
                "plies": {
                    "mean": round(statistics.fmean(plies), 2),
                    "min": min(plies),
                    "max": max(plies),
                },
                "results": dict(sorted(results.items())),
                "terminations": dict(sorted(terminations.items())),
                "created_by": {
                    "tool": "generate",
                    "command": command,
                    "seed": config.seed,
                    "val_fraction": val_fraction,
                    "engine": {"name": name, "path": engine_path, "options": ENGINE_OPTIONS},
                    "limits": config.limits(),
                    "max_plies": config.max_plies,
                    "random_move_rate": config.random_move_rate,
                    "random_opening_plies": list(config.opening_plies),
                    "created_at": utc_now_iso(),
                },
            }
        )
