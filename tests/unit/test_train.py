"""Trainer: outputs, resume equivalence, whole-game vs spliced equivalence, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from appliance.datasets.rows import SpliceConfig, encode_row
from appliance.model.checkpoint import load_model, read_checkpoint
from appliance.training import train
from appliance.training.batching import collate
from tests.utils.datasets import make_dataset, write_rows
from tests.utils.training import run_trainer, trainer_args


def test_training_writes_checkpoints_metrics_and_progress(tmp_path: Path):
    ds = make_dataset(tmp_path / "ds")
    out = tmp_path / "out"
    progress = tmp_path / "progress.jsonl"
    metrics = run_trainer(trainer_args(ds, out, "--epochs", "2",
                                       "--progress-jsonl-out", str(progress)))
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint_last.pt", "metrics.json", "model_best.pt"]
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["epochs_run"] == 2 and len(on_disk["history"]) == 2
    assert on_disk["train_games"] == 24 and on_disk["val_games"] == 8
    assert on_disk["dataset_formats"] == {"game_jsonl_runtime_splice_v1": 32}
    assert on_disk["runtime_splice"] == {"min_context": 2, "min_target": 1,
                                         "max_samples_per_game": 0}
    assert metrics["best_val_loss"] == min(h["val_loss"] for h in on_disk["history"])
    events = [json.loads(line)["event"] for line in progress.read_text().splitlines()]
    assert events[0] == "start" and events[-1] == "done" and events.count("epoch") == 2
    loaded = load_model(out / "model_best.pt")
    assert loaded.config.embed_dim == 16 and loaded.meta["metrics"]["epochs_run"] == 2
    assert loaded.meta["train_args"]["train"] == [str(ds / "train.jsonl")]


def test_resume_gives_the_same_result_as_an_uninterrupted_run(tmp_path: Path):
    ds = make_dataset(tmp_path / "ds")
    full = tmp_path / "full"
    run_trainer(trainer_args(ds, full, "--epochs", "3", "--runtime-max-samples-per-game", "5"))

    part = tmp_path / "part"

    def interrupt(epoch: int) -> None:
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_trainer(trainer_args(ds, part, "--epochs", "3", "--runtime-max-samples-per-game", "5"),
             on_epoch_end=interrupt)
    assert read_checkpoint(part / "checkpoint_last.pt")["train_state"]["progress"]["epoch"] == 2
    run_trainer(trainer_args(ds, part, "--epochs", "3", "--runtime-max-samples-per-game", "5",
                             "--resume"))
    a = read_checkpoint(full / "checkpoint_last.pt")
    b = read_checkpoint(part / "checkpoint_last.pt")
    for key, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][key]), key
    ha = [h["val_loss"] for h in a["metrics"]["history"]]
    hb = [h["val_loss"] for h in b["metrics"]["history"]]
    assert ha == hb and len(ha) == 3


def test_early_stopping(tmp_path: Path):
    ds = make_dataset(tmp_path / "ds", train_games=8, val_games=4)
    metrics = run_trainer(trainer_args(ds, tmp_path / "out", "--epochs", "30", "--lr", "0.05",
                         "--early-stopping-patience", "1"))
    assert metrics["stopped_early"] is True
    assert metrics["epochs_run"] == metrics["best_epoch"] + 1


def test_whole_game_pass_equals_one_pass_per_spliced_sample():
    torch.manual_seed(0)
    from appliance.model.network import ModelConfig, MovePredictor
    model = MovePredictor(ModelConfig(embed_dim=16, hidden_dim=24)).eval()
    moves = ["e2e4", "c7c5", "g1f3", "d7d6", "d2d4", "c5d4", "f3d4", "g8f6"]
    game = encode_row({"moves_uci": moves})
    b = collate([(game, np.ones(len(game), bool))])
    whole = model(b.tokens, b.phase, b.side, b.boards)[0]
    for t in range(1, len(moves)):
        spliced = encode_row({"context": moves[:t], "target": moves[t]})
        sb = collate([(spliced, spliced.eligible(SpliceConfig()))])
        last = model(sb.tokens, sb.phase, sb.side, sb.boards)[0, -1]
        assert torch.allclose(last, whole[t], atol=1e-5)


def test_legacy_rows_train(tmp_path: Path):
    moves = ["e2e4", "e7e5", "g1f3", "b8c6", "f1c4", "f8c5"]
    rows = [{"context": moves[:i], "target": moves[i]} for i in range(1, 6)]
    write_rows(tmp_path / "train.jsonl", rows)
    write_rows(tmp_path / "val.jsonl", rows[:2])
    metrics = run_trainer(trainer_args(tmp_path, tmp_path / "out", "--epochs", "1"))
    assert metrics["train_targets"] == 5 and metrics["val_targets"] == 2
    assert metrics["dataset_formats"] == {"splice_rows_legacy": 7}


def _main(capsys, argv: list[str]) -> tuple[int, str]:
    try:
        code = train.main(argv)
    except SystemExit as exc:  # argparse
        code = int(exc.code or 0)
    return code, capsys.readouterr().err.strip().splitlines()[-1]


def test_bad_input_gives_one_clear_error(tmp_path: Path, capsys):
    ds = make_dataset(tmp_path / "ds", train_games=4, val_games=2)
    out = str(tmp_path / "out")
    assert _main(capsys, trainer_args(ds, tmp_path / "o", "--epochs", "0")) == (
        2, "python -m appliance.training.train: error: argument --epochs: must be >= 1, got 0")
    assert _main(capsys, trainer_args(ds, tmp_path / "o", "--lr", "abc"))[1].endswith(
        "argument --lr: expected a number, got 'abc'")
    assert _main(capsys, trainer_args(ds, tmp_path / "o", "--lr", "0"))[1].endswith(
        "argument --lr: must be > 0, got 0")
    assert _main(capsys, trainer_args(ds, tmp_path / "o", "--batch-size", "2.5"))[1].endswith(
        "argument --batch-size: expected an integer, got '2.5'")
    code, err = _main(capsys, ["--train", str(tmp_path / "none.jsonl"), "--val",
                               str(ds / "val.jsonl"), "--output-dir", out])
    assert (code, err) == (2, f"error: {tmp_path / 'none.jsonl'}: file not found")
    (tmp_path / "empty.jsonl").write_text("")
    code, err = _main(capsys, ["--train", str(tmp_path / "empty.jsonl"), "--val",
                               str(ds / "val.jsonl"), "--output-dir", out])
    assert (code, err) == (2, f"error: {tmp_path / 'empty.jsonl'}: dataset is empty (no rows)")
    code, err = _main(capsys, trainer_args(ds, tmp_path / "o", "--runtime-min-context", "500"))
    assert code == 2 and err.startswith("error: no training targets: every position was excluded")
    code, err = _main(capsys, trainer_args(ds, tmp_path / "o", "--device", "cuda"))
    assert (code, err) == (2, "error: --device cuda: CUDA is not available on this machine")
    code, err = _main(capsys, trainer_args(ds, tmp_path / "o", "--device", "tpu"))
    assert (code, err) == (2, "error: --device 'tpu': expected auto, cpu, cuda or cuda:N")
    code, err = _main(capsys, trainer_args(ds, tmp_path / "fresh", "--resume"))
    assert (code, err) == (
        2, f"error: --resume: {tmp_path / 'fresh' / 'checkpoint_last.pt'}: checkpoint not found")


def test_dataloader_workers_give_the_same_result(tmp_path: Path):
    ds = make_dataset(tmp_path / "ds", train_games=12, val_games=4)
    extra = ["--epochs", "2", "--runtime-max-samples-per-game", "4"]
    a = run_trainer(trainer_args(ds, tmp_path / "w0", *extra))
    b = run_trainer(trainer_args(ds, tmp_path / "w2", *extra, "--num-workers", "2"))
    assert [h["val_loss"] for h in a["history"]] == [h["val_loss"] for h in b["history"]]
