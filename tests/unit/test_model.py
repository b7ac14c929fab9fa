"""Vocabulary, features, network and checkpoint format."""

from __future__ import annotations

import random
from pathlib import Path

import chess
import numpy as np
import pytest
import torch

import appliance.atomic
from appliance.model import features, vocab
from appliance.model.checkpoint import CheckpointError, load_model, read_checkpoint, save_checkpoint
from appliance.model.network import ModelConfig, MovePredictor, count_parameters
from tests.utils.datasets import random_game


def test_vocabulary_size_order_and_specials():
    moves = vocab.all_moves()
    assert len(moves) == 1968 and len(set(moves)) == 1968
    assert sum(len(m) == 4 for m in moves) == 1792
    assert sum(len(m) == 5 for m in moves) == 176
    assert moves[:3] == ("a1b1", "a1c1", "a1d1")
    assert moves[1792:1796] == ("a2a1q", "a2a1r", "a2a1b", "a2a1n")
    assert moves[-1] == "h7h8n"
    assert vocab.SPECIAL_TOKENS == ("<pad>", "<bos>", "<eos>", "<unk>")
    assert vocab.VOCAB_SIZE == 1972
    assert vocab.move_id("a1b1") == 4 and vocab.id_to_move(4) == "a1b1"
    assert vocab.move_class("h7h8n") == 1967
    for castle in ("e1g1", "e1c1", "e8g8", "e8c8"):
        assert vocab.is_vocab_move(castle)
    assert not vocab.is_vocab_move("a1a1") and not vocab.is_vocab_move("e2e5q")
    with pytest.raises(KeyError):
        vocab.id_to_move(vocab.BOS_ID)


def test_every_legal_move_of_random_games_is_in_vocabulary():
    rng = random.Random(3)
    for _ in range(100):
        board = chess.Board()
        for uci in random_game(rng, 400):
            assert vocab.is_vocab_move(uci)
            board.push_uci(uci)


@pytest.mark.parametrize(
    ("fen", "phase"),
    [
        (chess.STARTING_FEN, features.OPENING),
        # full material, move 11 with white to move = ply 20: middlegame
        ("r1bqkbnr/pppppppp/2n5/8/8/2N5/PPPPPPPP/R1BQKBNR w KQkq - 0 11", features.MIDDLEGAME),
        ("8/8/4k3/8/8/4K3/4R3/8 w - - 0 40", features.ENDGAME),
        # queens and one rook each: 28 points of non-pawn material, early move: opening
        ("3qk2r/8/8/8/8/8/8/3QK2R w - - 0 5", features.OPENING),
        # 17 points (Q + R + B against a bare king): endgame
        ("4k3/8/8/8/8/8/8/2BQK2R w - - 0 5", features.ENDGAME),
    ],
)
def test_game_phase_definition(fen, phase):
    assert features.game_phase(chess.Board(fen)) == phase


def test_board_codes_start_position_and_flags():
    codes = features.board_codes(chess.Board())
    assert codes[:8].tolist() == [4, 2, 3, 5, 6, 3, 2, 4]
    assert codes[8:16].tolist() == [1] * 8 and codes[48:56].tolist() == [7] * 8
    assert codes[56:64].tolist() == [10, 8, 9, 11, 12, 9, 8, 10]
    assert codes[64] == 15 and codes[65] == 0
    board = chess.Board()
    for uci in ("e2e4", "a7a6", "e4e5", "d7d5"):
        board.push_uci(uci)
    assert features.board_codes(board)[65] == 4  # en passant on the d file
    board = chess.Board("4k3/8/8/8/3p4/8/4P3/4K2R w K - 0 1")
    board.push_uci("e2e4")
    assert features.board_codes(board)[64] == 1 and features.board_codes(board)[65] == 5
    assert features.side_to_move(board) == 1


def _inputs(n: int, seq: int = 12):
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(4, vocab.VOCAB_SIZE, (n, seq), generator=gen)
    phase = torch.randint(0, 3, (n, seq), generator=gen)
    side = torch.randint(0, 2, (n, seq), generator=gen)
    boards = torch.randint(0, 13, (n, seq, 66), generator=gen, dtype=torch.long).to(torch.uint8)
    boards[..., 65] = 0
    return tokens, phase, side, boards


def test_network_shapes_and_seed_defaults():
    config = ModelConfig()
    assert (config.embed_dim, config.hidden_dim, config.num_layers, config.dropout) == (
        256, 512, 2, 0.15)
    history_only = MovePredictor(ModelConfig(board_feature=False))
    assert count_parameters(history_only) == 5_255_680
    assert count_parameters(MovePredictor(config)) == 5_978_880
    model = MovePredictor(ModelConfig(embed_dim=16, hidden_dim=24)).eval()
    logits = model(*_inputs(3))
    assert logits.shape == (3, 12, 1968)
    with pytest.raises(ValueError, match="uses the board feature"):
        model(*_inputs(1)[:3])
    with pytest.raises(ValueError, match="dropout must be in"):
        ModelConfig(dropout=1.0)


def test_network_is_causal():
    model = MovePredictor(ModelConfig(embed_dim=16, hidden_dim=24)).eval()
    tokens, phase, side, boards = _inputs(1)
    full = model(tokens, phase, side, boards)
    tokens2 = tokens.clone()
    tokens2[0, 8:] = 5
    changed = model(tokens2, phase, side, boards)
    assert torch.equal(full[0, :8], changed[0, :8])
    assert not torch.allclose(full[0, 8:], changed[0, 8:])


def test_checkpoint_roundtrip_loads_without_training_arguments(tmp_path: Path):
    model = MovePredictor(ModelConfig(embed_dim=16, hidden_dim=24, board_feature=False))
    save_checkpoint(tmp_path / "m.pt", model, metrics={"best_val_loss": 1.5})
    loaded = load_model(tmp_path / "m.pt")
    assert loaded.config == model.config
    assert loaded.meta["metrics"] == {"best_val_loss": 1.5}
    assert loaded.meta["features"] == {"history": True, "phase": True, "side_to_move": True,
                                       "board": False}
    assert loaded.meta["vocab_version"] == "uci1968-v1"
    assert not loaded.model.training
    x = _inputs(2)
    assert torch.equal(loaded.model(*x[:3]), model.eval()(*x[:3]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]  # no temp file left


def test_checkpoint_errors(tmp_path: Path):
    with pytest.raises(CheckpointError, match=r"missing\.pt: checkpoint not found"):
        load_model(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"junk\.pt: not a readable checkpoint"):
        load_model(tmp_path / "junk.pt")
    model = MovePredictor(ModelConfig(embed_dim=8, hidden_dim=8))
    save_checkpoint(tmp_path / "old.pt", model)
    payload = read_checkpoint(tmp_path / "old.pt")
    payload["vocab_version"] = "uci1880-v0"
    torch.save(payload, tmp_path / "old.pt")
    with pytest.raises(CheckpointError) as err:
        load_model(tmp_path / "old.pt")
    assert str(err.value) == (
        f"{tmp_path / 'old.pt'}: vocabulary version 'uci1880-v0' does not match this code's "
        "'uci1968-v1'; retrain the model or use the code version it was trained with"
    )


def test_board_feature_changes_predictions():
    torch.manual_seed(0)
    model = MovePredictor(ModelConfig(embed_dim=16, hidden_dim=24)).eval()
    tokens, phase, side, boards = _inputs(1)
    other = boards.clone()
    other[0, 5, :64] = torch.from_numpy(np.zeros(64, dtype=np.uint8))
    a = model(tokens, phase, side, boards)
    b = model(tokens, phase, side, other)
    assert torch.equal(a[0, :5], b[0, :5]) and not torch.allclose(a[0, 5], b[0, 5])


def _reference_codes(board: chess.Board) -> list[int]:
    codes = []
    for sq in chess.SQUARES:
        piece = board.piece_at(sq)
        codes.append(0 if piece is None else piece.piece_type + (0 if piece.color else 6))
    codes.append(board.has_kingside_castling_rights(chess.WHITE)
                 + 2 * board.has_queenside_castling_rights(chess.WHITE)
                 + 4 * board.has_kingside_castling_rights(chess.BLACK)
                 + 8 * board.has_queenside_castling_rights(chess.BLACK))
    ep = board.ep_square if board.has_legal_en_passant() else None
    codes.append(0 if ep is None else chess.square_file(ep) + 1)
    return codes


def test_game_encoding_matches_per_position_reference():
    from appliance.datasets.rows import encode_row
    rng = random.Random(11)
    for _ in range(30):
        moves = random_game(rng, 200)
        game = encode_row({"moves_uci": moves})
        board = chess.Board()
        for t, uci in enumerate(moves):
            assert game.boards[t].tolist() == _reference_codes(board), (t, board.fen())
            assert game.phase[t] == features.game_phase(board)
            assert game.side[t] == features.side_to_move(board)
            board.push_uci(uci)


def test_checkpoint_is_readable_by_other_accounts(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(appliance.atomic, "_UMASK", 0o022)
    save_checkpoint(tmp_path / "m.pt", MovePredictor(ModelConfig(embed_dim=8, hidden_dim=8)))
    # mkstemp alone leaves 0600, and inference (user runner) could not load a root's model
    assert (tmp_path / "m.pt").stat().st_mode & 0o777 == 0o644
