"""Evaluation: metric definitions, baselines, JSON output and errors."""

from __future__ import annotations

import json
from pathlib import Path

import chess
import pytest

from appliance.model.checkpoint import save_checkpoint
from appliance.model.network import ModelConfig, MovePredictor
from appliance.training import evaluate
from tests.utils.datasets import make_dataset, write_rows
from tests.utils.training import run_trainer, trainer_args

OPENING = ["e2e4", "e7e5", "g1f3", "b8c6", "f1b5", "a7a6"]


@pytest.fixture()
def model_path(tmp_path: Path) -> Path:
    path = tmp_path / "m.pt"
    save_checkpoint(path, MovePredictor(ModelConfig(embed_dim=8, hidden_dim=8)))
    return path


def _json(capsys, argv: list[str]) -> dict:
    assert evaluate.main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_out_writes_the_printed_result(tmp_path: Path, model_path: Path, capsys):
    train = write_rows(tmp_path / "train.jsonl", [{"moves_uci": OPENING}] * 2)
    argv = ["--model", str(model_path), "--data", str(train), "--train-data", str(train)]
    printed = _json(capsys, [*argv, "--json-out", str(tmp_path / "ev" / "evaluation.json")])
    assert json.loads((tmp_path / "ev" / "evaluation.json").read_text()) == printed
    (tmp_path / "file").write_text("")
    assert evaluate.main([*argv, "--json-out", str(tmp_path / "file" / "x.json")]) == 2
    assert capsys.readouterr().err == f"error: --json-out {tmp_path / 'file' / 'x.json'}: " \
        "cannot write it (File exists)\n"


def test_metrics_and_baselines(tmp_path: Path, model_path: Path, capsys):
    train = write_rows(tmp_path / "train.jsonl", [{"moves_uci": OPENING}] * 2)
    val = write_rows(tmp_path / "val.jsonl", [{"moves_uci": OPENING, "random_plies": [5]}])
    r = _json(capsys, ["--model", str(model_path), "--data", str(val), "--train-data", str(train)])
    assert set(r) >= {"top1", "top5", "legal_top1", "best_legal_legal", "per_phase", "baselines"}
    assert r["positions"] == 5  # the random ply is not a target
    assert r["best_legal_legal"] == 1.0
    assert r["per_phase"]["opening"]["positions"] == 5
    assert r["per_phase"]["endgame"]["positions"] == 0
    board, inv = chess.Board(), []
    for uci in OPENING[:5]:
        inv.append(1 / board.legal_moves.count())
        board.push_uci(uci)
    rand = r["baselines"]["random_legal"]
    assert rand["top1"] == pytest.approx(sum(inv) / 5)
    assert rand["top5"] == pytest.approx(sum(min(5, 1 / x) * x for x in inv) / 5)
    freq = r["baselines"]["frequent_prefix"]
    assert (freq["top1"], freq["prefix_coverage"], freq["legal_top1"]) == (1.0, 1.0, 1.0)
    for key in ("top1", "top5", "legal_top1", "best_legal_top1"):
        assert 0.0 <= r[key] <= 1.0


def test_unseen_prefix_falls_back_to_frequent_legal_move(tmp_path: Path, model_path: Path, capsys):
    train = write_rows(tmp_path / "train.jsonl", [{"moves_uci": ["d2d4", "d7d5"]}])
    val = write_rows(tmp_path / "val.jsonl", [{"moves_uci": ["e2e4", "d7d5"]}])
    r = _json(capsys, ["--model", str(model_path), "--data", str(val), "--train-data", str(train)])
    freq = r["baselines"]["frequent_prefix"]
    # ply 0: the empty prefix is known, "d2d4" is wrong; ply 1: prefix "e2e4" is unknown, the
    # fallback (most frequent legal training move) is "d7d5", which is right
    assert (freq["top1"], freq["prefix_coverage"]) == (0.5, 0.5)


def test_table_output_and_training_files_from_checkpoint(tmp_path: Path, capsys):
    ds = make_dataset(tmp_path / "ds", train_games=6, val_games=3)
    run_trainer(trainer_args(ds, tmp_path / "out", "--epochs", "1"))
    assert evaluate.main(["--model", str(tmp_path / "out" / "model_best.pt"), "--data",
                          str(ds / "val.jsonl")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["positions", "top1", "top5", "legal_top1", "best_legal_top1",
                                "best_legal_legal", "raw_top1_illegal"]
    assert [line[:26].strip() for line in lines[2:]] == [
        "model", "opening", "middlegame", "endgame", "plies 0-7", "plies 8-19",
        "plies 20-39", "plies 40-79", "plies 80+", "baseline: random legal",
        "baseline: frequent prefix"]


def test_errors(tmp_path: Path, model_path: Path, capsys):
    val = write_rows(tmp_path / "val.jsonl", [{"moves_uci": ["e2e4", "e7e4"]}])
    assert evaluate.main(["--model", str(model_path), "--data", str(val), "--train-data",
                          str(val)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {val}:1: moves_uci[1] = 'e7e4' is illegal: the black pawn on e7 cannot move to "
        "e4 (position 'rnbqkbnr/pppppppp/8/8/4P3/8/PPPP1PPP/RNBQKBNR b KQkq - 0 1')")
    assert evaluate.main(["--model", str(model_path), "--data", str(val)]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: frequent-prefix baseline needs the training data: pass --train-data (not found: "
        "none recorded)")
    assert evaluate.main(["--model", str(tmp_path / "x.pt"), "--data", str(val)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'x.pt'}: checkpoint not found"
