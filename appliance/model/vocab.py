"""The move vocabulary: every UCI string legal chess can produce, in one fixed order.

Token ids: 0..3 are the special tokens (PAD, BOS, EOS, UNK); 4..1971 are the 1968 moves.
Move order: the 1792 from-to pairs sorted by (from square, to square), then the 176 promotions
sorted by (from square, to square, piece q r b n); squares use python-chess numbering (a1=0,
b1=1, ..., h8=63). The network's output classes are the moves alone, class = token id - 4.
"""

from __future__ import annotations

from functools import lru_cache

import chess
import numpy as np

VOCAB_VERSION = "uci1968-v1"
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(4)
NUM_SPECIAL = len(SPECIAL_TOKENS)
NUM_MOVES = 1968
VOCAB_SIZE = NUM_SPECIAL + NUM_MOVES
PROMOTION_PIECES = "qrbn"


def _reachable(src: int, dst: int) -> bool:
    """True when a queen or a knight could move from src to dst on an empty board."""
    df = abs(chess.square_file(src) - chess.square_file(dst))
    dr = abs(chess.square_rank(src) - chess.square_rank(dst))
    queen_like = df == 0 or dr == 0 or df == dr
    knight_like = {df, dr} == {1, 2}
    return src != dst and (queen_like or knight_like)


@lru_cache(maxsize=1)
def all_moves() -> tuple[str, ...]:
    """The 1968 UCI move strings in vocabulary order."""
    plain = [
        chess.square_name(s) + chess.square_name(d)
        for s in chess.SQUARES
        for d in chess.SQUARES
        if _reachable(s, d)
    ]
    promotions = []
    for src in chess.SQUARES:
        rank = chess.square_rank(src)
        if rank not in (1, 6):
            continue
        step = 8 if rank == 6 else -8
        for dst in sorted(src + step + df for df in (-1, 0, 1)):
            if abs(chess.square_file(dst) - chess.square_file(src)) > 1:
                continue
            for piece in PROMOTION_PIECES:
                promotions.append(chess.square_name(src) + chess.square_name(dst) + piece)
    moves = tuple(plain + promotions)
    assert len(moves) == NUM_MOVES, len(moves)
    return moves


@lru_cache(maxsize=1)
def move_ids() -> dict[str, int]:
    """Token id of each vocabulary move, by UCI string."""
    return {m: i + NUM_SPECIAL for i, m in enumerate(all_moves())}


def move_id(uci: str) -> int:
    """Token id of a UCI move string; KeyError when it is not in the vocabulary."""
    return move_ids()[uci]


def is_vocab_move(uci: str) -> bool:
    return uci in move_ids()


@lru_cache(maxsize=1)
def parsed_moves() -> dict[str, chess.Move]:
    """Each vocabulary move as a python-chess Move, by UCI string: parsed once, so replaying a
    game looks each move up instead of parsing it."""
    return {m: chess.Move.from_uci(m) for m in all_moves()}


def id_to_move(token: int) -> str:
    """UCI string of a move token id (not a special token)."""
    if token < NUM_SPECIAL or token >= VOCAB_SIZE:
        raise KeyError(f"token id {token} is not a move")
    return all_moves()[token - NUM_SPECIAL]


def class_to_move(cls: int) -> str:
    """UCI string of an output class (0..1967)."""
    return all_moves()[cls]


def move_class(uci: str) -> int:
    """Output class (0..1967) of a UCI move."""
    return move_ids()[uci] - NUM_SPECIAL


# Move key: promotion piece (python-chess code, 0 for none) * 4096 + from square * 64 + to square.
MOVE_KEYS = 6 * 4096


@lru_cache(maxsize=1)
def key_to_class() -> np.ndarray:
    """(MOVE_KEYS,) int16: output class of each move key, -1 where no vocabulary move has it."""
    table = np.full(MOVE_KEYS, -1, dtype=np.int16)
    for cls, uci in enumerate(all_moves()):
        move = chess.Move.from_uci(uci)
        table[(move.promotion or 0) * 4096 + move.from_square * 64 + move.to_square] = cls
    return table


@lru_cache(maxsize=1)
def token_squares() -> np.ndarray:
    """(VOCAB_SIZE, 2) int64: from and to square of each move token; 64 for special tokens."""
    table = np.full((VOCAB_SIZE, 2), 64, dtype=np.int64)
    for cls, uci in enumerate(all_moves()):
        move = chess.Move.from_uci(uci)
        table[cls + NUM_SPECIAL] = (move.from_square, move.to_square)
    return table


@lru_cache(maxsize=1)
def mirror_classes() -> np.ndarray:
    """(NUM_MOVES,) int64: the class of each move mirrored top to bottom (a1 <-> a8), which is
    how a move looks from the other side of the board; the vocabulary is closed under it."""
    ids = move_ids()
    out = np.empty(NUM_MOVES, dtype=np.int64)
    for cls, uci in enumerate(all_moves()):
        move = chess.Move.from_uci(uci)
        mirrored = chess.Move(chess.square_mirror(move.from_square),
                              chess.square_mirror(move.to_square), move.promotion)
        out[cls] = ids[mirrored.uci()] - NUM_SPECIAL
    return out
