"""Moves -> network inputs, the one encoding that training and inference both feed the network.

Owns the start board (from an optional FEN), the replay of UCI moves with a reason for each
illegal one, and the inputs of each position. Position t is the one before move t (t moves
played); its input token is the move that led to it (BOS for the start position), its features
(phase, side to move, board codes; see `features`) are those of position t itself, and its
target is move t. With `legal`, `encode_moves` also lists the legal moves of each position as
output classes (`LegalMoves`, one flat array for the whole game: the training loss and ranking
look only at these). `pad_inputs` lays games of different lengths out as (games, positions)
arrays, as the network reads them. Errors are `EncodingError`, whose message says which move
(`field[i]`) or FEN is wrong and why. `start_board` is where every FEN enters (API, datasets, PGN
import, evaluation): it refuses a move counter beyond any real game (a huge one used to overflow
the features' integer arrays).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import chess
import numpy as np

from appliance.model import features, vocab

# No game reaches move 10,000: the 75-move rule ends every game before move 8,850.
MAX_FULLMOVE = 10_000
MAX_HALFMOVE_CLOCK = 2 * MAX_FULLMOVE


class EncodingError(ValueError):
    """Moves or a FEN that cannot be encoded; the message names the culprit and the reason."""


@dataclass
class PositionInputs:
    """What the network reads for each of n positions of one game."""

    tokens: np.ndarray  # (n,) int16: the move leading to each position; BOS for the first
    phase: np.ndarray  # (n,) int8
    side: np.ndarray  # (n,) int8
    boards: np.ndarray  # (n, 66) uint8

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


@dataclass
class LegalMoves:
    """The legal moves of n positions as output classes, flat: position t's are
    classes[offsets[t]:offsets[t + 1]]."""

    classes: np.ndarray  # (total,) int16
    offsets: np.ndarray  # (n + 1,) int64

    def __len__(self) -> int:
        return int(self.offsets.shape[0]) - 1

    def of(self, t: int) -> np.ndarray:
        return self.classes[self.offsets[t] : self.offsets[t + 1]]

    def mask(self) -> np.ndarray:
        """(n, NUM_MOVES) bool: True at each position's legal moves."""
        out = np.zeros((len(self), vocab.NUM_MOVES), dtype=bool)
        rows = np.repeat(np.arange(len(self)), np.diff(self.offsets))
        out[rows, self.classes] = True
        return out


def legal_keys(board: chess.Board) -> list[int]:
    """Move keys (`vocab.MOVE_KEYS`) of the legal moves on `board`."""
    return [(m.promotion or 0) << 12 | m.from_square << 6 | m.to_square
            for m in board.generate_legal_moves()]


def legal_moves(keys: list[list[int]]) -> LegalMoves:
    """The legal move lists of several positions (`legal_keys` each), in one table lookup."""
    counts = np.fromiter((len(k) for k in keys), dtype=np.int64, count=len(keys))
    offsets = np.zeros(len(keys) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    flat = np.fromiter((k for ks in keys for k in ks), dtype=np.int64, count=int(offsets[-1]))
    return LegalMoves(vocab.key_to_class()[flat], offsets)


@dataclass
class EncodedMoves:
    """A move list encoded: the inputs, the target class of each move, and the final board."""

    inputs: PositionInputs  # n positions (n + 1 with `final`: the one after the last move)
    targets: np.ndarray  # (n,) int16: output class of each move
    board: chess.Board  # the position after the last move
    legal: LegalMoves | None = None  # with `legal`: the legal moves of each input position


def _cut(text: str, limit: int) -> str:
    """`text`, cut so an error message never echoes a huge input."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def short_repr(text: str, limit: int = 100) -> str:
    """repr of `text`, cut so an error message never echoes a huge input."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} chars)"


def start_board(fen: str | None) -> chess.Board:
    """The standard start position, or the valid position `fen` describes."""
    if fen is None:
        return chess.Board()
    try:
        board = chess.Board(fen)
    except ValueError as exc:
        raise EncodingError(f"bad FEN {short_repr(fen)}: {_cut(str(exc), 160)}") from None
    for what, value, low, high in (
        ("half-move clock", board.halfmove_clock, 0, MAX_HALFMOVE_CLOCK),
        ("full-move number", board.fullmove_number, 1, MAX_FULLMOVE),
    ):
        if not low <= value <= high:
            raise EncodingError(f"bad FEN {short_repr(fen)}: {what} {_cut(str(value), 30)} is "
                                f"out of range ({low} to {high:,})")
    status = board.status()
    if status != chess.STATUS_VALID:
        raise EncodingError(f"bad FEN {short_repr(fen)}: not a valid position ({status!r})")
    return board


def illegal_reason(board: chess.Board, move: chess.Move) -> str:
    """Why `move` is not legal on `board`, in words."""
    color = "white" if board.turn == chess.WHITE else "black"
    src, dst = chess.square_name(move.from_square), chess.square_name(move.to_square)
    piece = board.piece_at(move.from_square)
    if piece is None or piece.color != board.turn:
        return f"there is no {color} piece on {src}"
    if board.is_pseudo_legal(move):
        return f"it would leave the {color} king in check"
    name = chess.piece_name(piece.piece_type)
    if move.promotion and piece.piece_type != chess.PAWN:
        return f"only a pawn can promote, and {src} holds a {name}"
    return f"the {color} {name} on {src} cannot move to {dst}"


def replay(moves: list[str], board: chess.Board, field: str = "moves_uci") -> Iterator[chess.Move]:
    """Push each move on `board`, yielding it first; EncodingError names the bad move. A move is
    legal when it is pseudo-legal and, once pushed, its own king is not attacked (python-chess's
    `is_legal` answers the same, at twice the cost: replay is most of a request's work)."""
    parsed = vocab.parsed_moves()
    for i, uci in enumerate(moves):
        move = parsed.get(uci)
        if move is None:
            raise EncodingError(f"{field}[{i}] = {short_repr(uci)} is not a UCI move")
        if not board.is_pseudo_legal(move):
            raise _illegal(field, i, board, move)
        yield move
        board.push(move)
        if board.was_into_check():
            board.pop()
            raise _illegal(field, i, board, move)


def _illegal(field: str, i: int, board: chess.Board, move: chess.Move) -> EncodingError:
    return EncodingError(f"{field}[{i}] = {move.uci()!r} is illegal: "
                         f"{illegal_reason(board, move)} (position {board.fen()!r})")


def encode_moves(
    moves: list[str], fen: str | None = None, field: str = "moves_uci", final: bool = False,
    legal: bool = False, last: int | None = None,
) -> EncodedMoves:
    """Encode the positions before each move; with `final`, also the one after the last move
    (what inference predicts from); with `legal`, list each position's legal moves; with
    `last`, the inputs (and legal moves) of the last `last` positions only, what a network
    with a fixed context reads (every move is still replayed and checked). `field` names the
    moves in error messages."""
    board = start_board(fen)
    n = len(moves)
    positions = n + 1 if final else n
    first = 0 if last is None else max(0, positions - last)
    snaps = np.empty((positions - first, 10), dtype=np.uint64)
    keys: list[list[int]] = []
    for i, _ in enumerate(replay(moves, board, field)):
        if i >= first:
            snaps[i - first] = features.snapshot(board)
            if legal:
                keys.append(legal_keys(board))
    if final:
        snaps[n - first] = features.snapshot(board)
        if legal:
            keys.append(legal_keys(board))
    # Every move is known now: token ids in one pass (the input at t is the move before t).
    ids = np.fromiter(map(vocab.move_ids().__getitem__, moves), dtype=np.int16, count=n)
    tokens = np.concatenate(([vocab.BOS_ID], ids)).astype(np.int16)[:positions]
    phase, side, boards = features.encode_snapshots(snaps)
    return EncodedMoves(PositionInputs(tokens[first:], phase, side, boards),
                        ids - vocab.NUM_SPECIAL, board, legal_moves(keys) if legal else None)


def pad_inputs(
    games: Sequence[PositionInputs],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """tokens, phase, side (int64) and boards (uint8) as (games, longest) arrays; shorter games
    are padded with PAD tokens and zero features after their end."""
    b = len(games)
    t = max(len(g) for g in games)
    tokens = np.full((b, t), vocab.PAD_ID, dtype=np.int64)
    phase = np.zeros((b, t), dtype=np.int64)
    side = np.zeros((b, t), dtype=np.int64)
    boards = np.zeros((b, t, features.BOARD_CODES), dtype=np.uint8)
    for i, g in enumerate(games):
        n = len(g)
        tokens[i, :n], phase[i, :n], side[i, :n], boards[i, :n] = (
            g.tokens, g.phase, g.side, g.boards)
    return tokens, phase, side, boards
