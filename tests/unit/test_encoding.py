"""The shared move encoding: its error type and messages, inputs with and without the final
position, and padding."""

from __future__ import annotations

import chess
import numpy as np
import pytest

from appliance.datasets.rows import DatasetError, encode_row
from appliance.model import features, vocab
from appliance.model.encoding import (
    EncodingError,
    encode_moves,
    pad_inputs,
    replay,
    short_repr,
    start_board,
)

GAME = ["e2e4", "e7e5", "g1f3", "b8c6", "f1b5"]


@pytest.mark.parametrize(
    ("fen", "uci", "reason"),
    [
        (None, "e7e5", "there is no white piece on e7"),
        (None, "g1g3", "the white knight on g1 cannot move to g3"),
        ("4k3/4r3/8/8/8/8/4B3/4K3 w - - 0 1", "e2d3", "it would leave the white king in check"),
        ("4k3/R7/8/8/8/8/8/4K3 w - - 0 1", "a7a8q", "only a pawn can promote, and a7 holds a rook"),
    ],
)
def test_illegal_move_reasons(fen, uci, reason):
    with pytest.raises(EncodingError) as err:
        encode_moves([uci], fen, field="moves")
    assert str(err.value).startswith(f"moves[0] = {uci!r} is illegal: {reason} (position ")


def test_error_type_is_a_value_error_and_not_a_dataset_error():
    with pytest.raises(EncodingError) as err:
        encode_moves(["e2e4", "zz"], field="moves")
    assert str(err.value) == "moves[1] = 'zz' is not a UCI move"
    assert isinstance(err.value, ValueError) and not isinstance(err.value, DatasetError)


def test_bad_fen_messages():
    with pytest.raises(EncodingError) as err:
        start_board("8/8/8 w")
    assert str(err.value).startswith("bad FEN '8/8/8 w': ")
    with pytest.raises(EncodingError) as err:
        start_board("8/8/8/8/8/8/8/8 w - - 0 1")  # no kings
    assert str(err.value).startswith("bad FEN '8/8/8/8/8/8/8/8 w - - 0 1': not a valid position (")


def test_long_inputs_are_cut_in_messages():
    huge = "x" * 500
    assert short_repr(huge) == f"{'x' * 100!r}... (500 chars)"
    with pytest.raises(EncodingError) as err:
        encode_moves([huge])
    assert str(err.value) == f"moves_uci[0] = {'x' * 100!r}... (500 chars) is not a UCI move"


def test_replay_accepts_exactly_the_moves_python_chess_calls_legal():
    """Replay checks pseudo-legality, then that the mover's king is not attacked once the move is
    pushed: the same verdict as `Board.is_legal` for every pseudo-legal move of real games'
    positions and of positions made for the hard cases (castling through an attacked square, en
    passant that uncovers the king, a pinned piece, evasions); an illegal move leaves the board
    as it was."""
    boards = [chess.Board(fen) for fen in (
        "4k3/8/8/8/8/8/5r2/R3K2R w KQ - 0 1",  # f1 attacked: no O-O; O-O-O is fine
        "8/8/8/K1pP3r/8/8/8/4k3 w - c6 0 1",  # d5xc6 e.p. opens the rank to the king
        "4k3/4r3/8/8/8/8/4B3/4K3 w - - 0 1",  # the bishop is pinned
        "4k3/8/8/8/1b6/8/3P4/4K3 w - - 0 1",  # in check: only evasions
    )]
    game = encode_row({"moves_uci": ["e2e4", "d7d5", "e4d5", "d8d5", "b1c3", "d5e5", "g1e2",
                                     "e5e4", "d2d3", "e4h4", "g2g3", "h4h5", "f1g2", "c8g4"]})
    board = chess.Board()
    for token in game.tokens[1:]:
        board.push_uci(vocab.id_to_move(int(token)))
        boards.append(board.copy())
    checked = illegal = 0
    for start in boards:
        for move in start.generate_pseudo_legal_moves():
            after = start.copy()
            try:
                list(replay([move.uci()], after, "moves"))
                legal = True
            except EncodingError as exc:
                legal = False
                illegal += 1
                assert after.fen() == start.fen() and str(exc).startswith(
                    f"moves[0] = {move.uci()!r} is illegal: ")
            assert legal == start.is_legal(move), (start.fen(), move.uci())
            checked += 1
    assert (checked, illegal) == (485, 49)


def test_replay_yields_before_pushing():
    board = start_board(None)
    seen = []
    for move in replay(GAME[:2], board):
        seen.append((move.uci(), board.fen()))
    assert seen[0] == ("e2e4", chess.STARTING_FEN)
    assert board.move_stack == [chess.Move.from_uci(m) for m in GAME[:2]]


def test_inputs_shift_tokens_by_one_and_final_adds_the_last_position():
    enc = encode_moves(GAME)
    assert len(enc.inputs) == len(GAME) and enc.targets.tolist() == [
        vocab.move_class(m) for m in GAME]
    assert enc.inputs.tokens.tolist() == [vocab.BOS_ID] + [vocab.move_id(m) for m in GAME[:-1]]
    final = encode_moves(GAME, final=True)
    assert len(final.inputs) == len(GAME) + 1
    assert final.inputs.tokens.tolist() == [vocab.BOS_ID] + [vocab.move_id(m) for m in GAME]
    # Training's positions are a prefix of inference's: one encoding for both.
    for name in ("tokens", "phase", "side", "boards"):
        assert np.array_equal(getattr(final.inputs, name)[:-1], getattr(enc.inputs, name))
    board = chess.Board()
    for m in GAME:
        board.push_uci(m)
    assert final.board.fen() == board.fen()
    assert final.inputs.boards[-1].tolist() == features.board_codes(board).tolist()
    assert final.inputs.side[-1] == 1
    empty = encode_moves([], final=True)
    assert empty.inputs.tokens.tolist() == [vocab.BOS_ID] and len(empty.targets) == 0


@pytest.mark.parametrize("last", [1, 3, 6, 7])
def test_last_encodes_only_the_last_positions_and_still_checks_every_move(last: int):
    full = encode_moves(GAME, final=True, legal=True)
    part = encode_moves(GAME, final=True, legal=True, last=last)
    keep = min(last, len(GAME) + 1)
    for name in ("tokens", "phase", "side", "boards"):
        assert np.array_equal(getattr(part.inputs, name), getattr(full.inputs, name)[-keep:])
    assert np.array_equal(part.targets, full.targets) and part.board == full.board
    assert part.legal is not None and full.legal is not None and len(part.legal) == keep
    for t in range(keep):
        assert np.array_equal(part.legal.of(t), full.legal.of(len(GAME) + 1 - keep + t))
    with pytest.raises(EncodingError, match=r"moves_uci\[1\] = 'e2e4' is illegal"):
        encode_moves(["e2e4", "e2e4", *GAME[2:]], final=True, last=1)


def test_pad_inputs_pads_shorter_games():
    a, b = encode_row({"moves_uci": GAME}), encode_moves(GAME[:2]).inputs
    tokens, phase, side, boards = pad_inputs([a, b])
    assert tokens.shape == phase.shape == side.shape == (2, len(GAME))
    assert boards.shape == (2, len(GAME), features.BOARD_CODES) and boards.dtype == np.uint8
    assert tokens.dtype == np.int64
    assert tokens[1, 2:].tolist() == [vocab.PAD_ID] * 3 and not boards[1, 2:].any()
    assert tokens[0].tolist() == a.tokens.tolist() and side[1, :2].tolist() == [0, 1]
