"""Per-position features shared by training and inference: phase, side to move, board codes.

Game phase (one definition, used everywhere):
  - endgame:    non-pawn material of both sides together is at most 26 points
                (knight = bishop = 3, rook = 5, queen = 9; the start position has 62);
  - opening:    otherwise, while fewer than 20 plies have been played (`Board.ply()`, so a game
                from a FEN counts from that FEN's move number);
  - middlegame: everything else.
Side to move: 0 white, 1 black.
Board codes: 66 small integers per position: 64 squares (0 empty, 1..6 white P N B R Q K,
7..12 black P N B R Q K, squares a1..h8), then the castling rights as a 4-bit number
(white K, white Q, black K, black Q) and the en-passant file (0 none, 1..8 for a..h).
"""

from __future__ import annotations

import chess
import numpy as np

PHASES = ("opening", "middlegame", "endgame")
OPENING, MIDDLEGAME, ENDGAME = range(3)
SIDES = ("white", "black")
ENDGAME_MATERIAL_MAX = 26
OPENING_PLIES = 20
BOARD_CODES = 66
_PIECE_VALUE = {chess.KNIGHT: 3, chess.BISHOP: 3, chess.ROOK: 5, chess.QUEEN: 9}


def phase_of(material: np.ndarray | int, ply: np.ndarray | int) -> np.ndarray:
    """Phase ids from non-pawn material and plies played (the definition in the module doc)."""
    return np.where(
        np.asarray(material) <= ENDGAME_MATERIAL_MAX,
        ENDGAME,
        np.where(np.asarray(ply) < OPENING_PLIES, OPENING, MIDDLEGAME),
    ).astype(np.int8)


def snapshot(board: chess.Board) -> tuple[int, ...]:
    """What the features need from a position, as 10 integers (see `encode_snapshots`)."""
    ep = board.ep_square
    ep_file = chess.square_file(ep) + 1 if ep is not None and board.has_legal_en_passant() else 0
    cr = board.castling_rights
    castling = (
        bool(cr & chess.BB_H1) | bool(cr & chess.BB_A1) << 1
        | bool(cr & chess.BB_H8) << 2 | bool(cr & chess.BB_A8) << 3
    )
    return (board.pawns, board.knights, board.bishops, board.rooks, board.queens, board.kings,
            board.occupied_co[chess.WHITE], castling, ep_file, board.ply())


def encode_snapshots(snaps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n, 10) uint64 snapshots -> phase (n,) int8, side (n,) int8, board codes (n, 66) uint8."""
    n = snaps.shape[0]
    bits = np.unpackbits(
        snaps[:, :7].astype("<u8").view(np.uint8).reshape(n, 7, 8), axis=2, bitorder="little"
    )
    pieces, white = bits[:, :6], bits[:, 6]
    piece_type = (pieces * np.arange(1, 7, dtype=np.uint8)[None, :, None]).sum(1, dtype=np.uint8)
    codes = np.empty((n, BOARD_CODES), dtype=np.uint8)
    codes[:, :64] = piece_type + 6 * ((piece_type > 0) & (white == 0))
    codes[:, 64] = snaps[:, 7]
    codes[:, 65] = snaps[:, 8]
    counts = pieces.sum(2, dtype=np.int64)
    material = (counts[:, 1:4] @ np.array([3, 3, 5])) + 9 * counts[:, 4]
    ply = snaps[:, 9].astype(np.int64)
    return phase_of(material, ply), (ply % 2).astype(np.int8), codes


def non_pawn_material(board: chess.Board) -> int:
    return sum(
        value * chess.popcount(board.pieces_mask(piece, color))
        for piece, value in _PIECE_VALUE.items()
        for color in chess.COLORS
    )


def game_phase(board: chess.Board) -> int:
    """Phase id (see module doc) of the position on `board`."""
    return int(phase_of(non_pawn_material(board), board.ply()))


def side_to_move(board: chess.Board) -> int:
    return 0 if board.turn == chess.WHITE else 1


def board_codes(board: chess.Board) -> np.ndarray:
    """The 66 board codes (see module doc) of `board` as uint8."""
    return encode_snapshots(np.array([snapshot(board)], dtype=np.uint64))[2][0]

