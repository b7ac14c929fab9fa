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

from dataclasses import dataclass

import chess
import numpy as np

PHASES = ("opening", "middlegame", "endgame")
OPENING, MIDDLEGAME, ENDGAME = range(3)
SIDES = ("white", "black")
ENDGAME_MATERIAL_MAX = 26
OPENING_PLIES = 20
BOARD_CODES = 66
_PIECE_VALUE = {chess.KNIGHT: 3, chess.BISHOP: 3, chess.ROOK: 5, chess.QUEEN: 9}


def non_pawn_material(board: chess.Board) -> int:
    return sum(
        value * chess.popcount(board.pieces_mask(piece, color))
        for piece, value in _PIECE_VALUE.items()
        for color in chess.COLORS
    )


def game_phase(board: chess.Board) -> int:
    """Phase id (see module doc) of the position on `board`."""
    if non_pawn_material(board) <= ENDGAME_MATERIAL_MAX:
        return ENDGAME
    if board.ply() < OPENING_PLIES:
        return OPENING
    return MIDDLEGAME


def side_to_move(board: chess.Board) -> int:
    return 0 if board.turn == chess.WHITE else 1


_SQUARE_BITS = np.uint64(1) << np.arange(64, dtype=np.uint64)


def board_codes(board: chess.Board) -> np.ndarray:
    """The 66 board codes (see module doc) of `board` as uint8."""
    out = np.zeros(BOARD_CODES, dtype=np.uint8)
    for color_offset, color in ((0, chess.WHITE), (6, chess.BLACK)):
        for piece in chess.PIECE_TYPES:
            mask = board.pieces_mask(piece, color)
            if mask:
                out[:64][(np.uint64(mask) & _SQUARE_BITS) != 0] = piece + color_offset
    out[64] = (
        board.has_kingside_castling_rights(chess.WHITE)
        | board.has_queenside_castling_rights(chess.WHITE) << 1
        | board.has_kingside_castling_rights(chess.BLACK) << 2
        | board.has_queenside_castling_rights(chess.BLACK) << 3
    )
    ep = board.ep_square if board.has_legal_en_passant() else None
    out[65] = 0 if ep is None else chess.square_file(ep) + 1
    return out


@dataclass
class PositionFeatures:
    phase: int
    side: int
    board: np.ndarray


def position_features(board: chess.Board) -> PositionFeatures:
    return PositionFeatures(game_phase(board), side_to_move(board), board_codes(board))
