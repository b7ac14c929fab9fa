"""Dataset rows -> encoded games, with validation that names the file, line and reason.

Moves are encoded by `appliance.model.encoding` (the encoding inference uses too); its
EncodingError becomes a DatasetError here, which `load_games` prefixes with file:line.

Two row formats:
  - `game_jsonl_runtime_splice_v1`: `{"moves_uci": [...]}` plus optional `fen` (start position),
    `random_plies` (0-based move indexes chosen at random, never used as targets) and metadata;
    `moves` is read where `moves_uci` is absent, as the predecessor's game datasets name it;
  - `splice_rows_legacy`: `{"context": [...], "target": "..."}`: one target after its context.

Runtime splice settings (game rows only; legacy rows are already spliced) pick which positions of
a game are training targets. Position t is the one before move t (t moves already played):
  - `min_context` N: position t counts only when t >= N (at least N moves of history);
  - `min_target` N: position t counts only when at least N moves of the game remain from it,
    the target move included (1 = every move can be a target);
  - `max_samples_per_game` N: when > 0, at most N of the eligible positions of each game count,
    drawn anew each epoch from (seed, epoch, game); 0 = all of them.
Moves listed in `random_plies` are never targets.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from tqdm import tqdm

from appliance.model.encoding import EncodingError, LegalMoves, PositionInputs, encode_moves

GAME_FORMAT = "game_jsonl_runtime_splice_v1"
LEGACY_FORMAT = "splice_rows_legacy"


class DatasetError(ValueError):
    """A dataset problem, with the place it was found."""


@dataclass(frozen=True)
class SpliceConfig:
    min_context: int = 0
    min_target: int = 1
    max_samples_per_game: int = 0

    def __post_init__(self) -> None:
        if self.min_context < 0:
            raise ValueError(f"--runtime-min-context must be >= 0, got {self.min_context}")
        if self.min_target < 1:
            raise ValueError(f"--runtime-min-target must be >= 1, got {self.min_target}")
        if self.max_samples_per_game < 0:
            raise ValueError(
                f"--runtime-max-samples-per-game must be >= 0, got {self.max_samples_per_game}"
            )


@dataclass
class EncodedGame(PositionInputs):
    """Network inputs and targets for every position of one game (n = number of moves)."""

    targets: np.ndarray  # (n,) int16: output class of m1 .. mn
    trainable: np.ndarray  # (n,) bool: False for random plies and a legacy row's context
    spliced: bool  # True for a legacy row (its one target is fixed)
    legal: LegalMoves | None = None  # each position's legal moves, when encoded with them

    def eligible(self, cfg: SpliceConfig) -> np.ndarray:
        """Positions that count as targets under `cfg`, before max_samples_per_game."""
        if self.spliced:
            return self.trainable.copy()
        n = len(self)
        t = np.arange(n)
        return self.trainable & (t >= cfg.min_context) & ((n - t) >= cfg.min_target)


def row_format(row: dict[str, Any]) -> str:
    if "moves_uci" in row:
        return GAME_FORMAT
    if "context" in row and "target" in row:
        return LEGACY_FORMAT
    if "moves" in row:
        return GAME_FORMAT
    raise DatasetError(
        "missing field: a game row needs 'moves_uci' (or 'moves'), a legacy row needs "
        "'context' and 'target'"
    )


def move_field(row: dict[str, Any]) -> str:
    """The key holding a game row's moves: 'moves_uci', else the predecessor's 'moves'."""
    if "moves_uci" in row:
        if "moves" in row and row["moves"] != row["moves_uci"]:
            raise DatasetError("fields 'moves' and 'moves_uci' disagree; keep one of them")
        return "moves_uci"
    return "moves"


def _uci_list(value: Any, field: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
        raise DatasetError(f"field '{field}' must be a list of UCI strings")
    return value


def _game(moves: list[str], fen: str | None, field: str, legal: bool) -> EncodedGame:
    """Encode a move list with every position trainable; DatasetError names the bad move."""
    try:
        enc = encode_moves(moves, fen, field, legal=legal)
    except EncodingError as exc:
        raise DatasetError(str(exc)) from None
    inp = enc.inputs
    return EncodedGame(inp.tokens, inp.phase, inp.side, inp.boards, enc.targets,
                       np.ones(len(moves), dtype=bool), False, enc.legal)


def encode_row(row: Any, legal: bool = False) -> EncodedGame:
    """One row encoded (with each position's legal moves when `legal`)."""
    if not isinstance(row, dict):
        raise DatasetError("row must be a JSON object")
    kind = row_format(row)
    fen = row.get("fen")
    if fen is not None and not isinstance(fen, str):
        raise DatasetError("field 'fen' must be a string")
    if kind == GAME_FORMAT:
        key = move_field(row)
        moves = _uci_list(row[key], key)
        if not moves:
            raise DatasetError(f"field '{key}' is empty")
        game = _game(moves, fen, key, legal)
        random_plies = row.get("random_plies", [])
        if not isinstance(random_plies, list) or not all(
            isinstance(i, int) and 0 <= i < len(moves) for i in random_plies
        ):
            raise DatasetError(
                f"field 'random_plies' must list move indexes in 0..{len(moves) - 1}"
            )
        game.trainable[random_plies] = False
        return game
    context = _uci_list(row["context"], "context")
    target = row["target"]
    if not isinstance(target, str):
        raise DatasetError("field 'target' must be a UCI string")
    game = _game(context + [target], fen, "context+target", legal)
    game.trainable[:] = False
    game.trainable[-1] = True
    game.spliced = True
    return game


def parse_line(raw: bytes) -> Any:
    """One JSONL line -> its value; DatasetError says why not (bad UTF-8, broken or too deeply
    nested JSON), for the caller to prefix with file:line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at column "
                           f"{exc.start + 1}); is this a JSONL file?") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"broken JSON: {exc.msg}") from None
    except RecursionError:
        raise DatasetError("JSON nested too deeply (a row is a flat object)") from None


def open_data_file(path: Path, kind: str) -> BinaryIO:
    """`path` opened for binary reading; a missing, directory or unreadable path is a
    DatasetError naming it (`kind`, e.g. "JSONL", says what was expected)."""
    try:
        return path.open("rb")
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DatasetError(f"{path}: is a directory, expected a {kind} file") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read: {exc.strerror}") from None


def read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """Yield (line number, parsed row); blank lines are skipped."""
    with open_data_file(path, "JSONL") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = parse_line(line)
            except DatasetError as exc:
                raise DatasetError(f"{path}:{line_no}: {exc}") from None
            yield line_no, row


def load_games(
    paths: Iterable[Path | str], progress: bool = False, legal: bool = False
) -> tuple[list[EncodedGame], dict[str, int]]:
    """Encode every row of every file; returns the games and a count per row format.

    Memory: about 73 bytes per position (66 of them board codes), about 70 more with `legal`.
    """
    games: list[EncodedGame] = []
    counts = {GAME_FORMAT: 0, LEGACY_FORMAT: 0}
    for raw in paths:
        path = Path(raw)
        before = len(games)
        rows = read_jsonl(path)
        bar = tqdm(rows, desc=f"encode {path.name}", unit=" rows", disable=None if progress
                   else True, leave=False)
        for line_no, row in bar:
            try:
                counts[row_format(row) if isinstance(row, dict) else GAME_FORMAT] += 1
                games.append(encode_row(row, legal))
            except DatasetError as exc:
                raise DatasetError(f"{path}:{line_no}: {exc}") from None
        if len(games) == before:
            raise DatasetError(f"{path}: dataset is empty (no rows)")
    return games, counts


def detect_format(path: Path) -> str:
    """The row format of the first row of a JSONL file."""
    for line_no, row in read_jsonl(path):
        try:
            if not isinstance(row, dict):
                raise DatasetError("row must be a JSON object")
            return row_format(row)
        except DatasetError as exc:
            raise DatasetError(f"{path}:{line_no}: {exc}") from None
    raise DatasetError(f"{path}: dataset is empty (no rows)")
