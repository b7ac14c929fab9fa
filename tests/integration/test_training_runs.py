"""Real training runs: the model learns, torchrun with two CPU processes, the CLI end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from appliance.model.checkpoint import load_model
from tests.utils.datasets import write_rows

ROOT = Path(__file__).resolve().parents[2]
GAMES = [
    ["e2e4", "e7e5", "g1f3", "b8c6", "f1b5", "a7a6", "b5a4", "g8f6", "e1g1", "f8e7", "f1e1"],
    ["d2d4", "d7d5", "c2c4", "e7e6", "b1c3", "g8f6", "c1g5", "f8e7", "e2e3", "e8g8", "g1f3"],
    ["c2c4", "e7e5", "b1c3", "g8f6", "g1f3", "b8c6", "g2g3", "d7d5", "c4d5", "f6d5", "f1g2"],
]
SMALL = ["--arch", "recurrent", "--embed-dim", "32", "--hidden-dim", "48", "--batch-size", "6",
         "--runtime-min-context", "0", "--dropout", "0"]


def _dataset(root: Path) -> Path:
    root.mkdir()
    write_rows(root / "train.jsonl", [{"moves_uci": g} for g in GAMES] * 4)
    write_rows(root / "val.jsonl", [{"moves_uci": g} for g in GAMES])
    return root


def _train(launcher: list[str], ds: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*launcher, "appliance.training.train", "--train", str(ds / "train.jsonl"), "--val",
         str(ds / "val.jsonl"), "--output-dir", str(out), *SMALL, *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_model_learns_games_it_has_seen(tmp_path: Path):
    ds = _dataset(tmp_path / "ds")
    r = _train([sys.executable, "-m"], ds, tmp_path / "out", "--epochs", "25", "--lr", "0.02")
    assert r.returncode == 0, r.stderr
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    # 33 targets; the first move of each game is ambiguous (3 choices), the other 30 are not
    assert metrics["val_targets"] == 33
    assert metrics["best_val_top1"] >= 0.9
    assert metrics["history"][-1]["val_loss"] < metrics["history"][0]["val_loss"] / 3
    r = subprocess.run([sys.executable, "-m", "appliance.training.evaluate", "--model",
                        str(tmp_path / "out" / "model_best.pt"), "--data",
                        str(ds / "val.jsonl"), "--json"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    result = json.loads(r.stdout)
    assert result["top1"] >= 0.9 and result["best_legal_legal"] == 1.0
    assert result["legal_top1"] >= 0.9
    assert result["baselines"]["frequent_prefix"]["top1"] >= 0.9


def test_torchrun_two_cpu_processes(tmp_path: Path):
    ds = _dataset(tmp_path / "ds")
    out = tmp_path / "ddp"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node=2", "-m"]
    r = _train(launcher, ds, out, "--epochs", "6", "--lr", "0.02", "--progress-jsonl-out",
               str(tmp_path / "p.jsonl"))
    assert r.returncode == 0, r.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["device"] == "cpu"
    # both ranks' targets are counted: 12 games / 6 per batch = 2 batches, one per rank
    assert [h["train_targets"] for h in metrics["history"]] == [33.0 * 4] * 6
    assert metrics["history"][-1]["val_loss"] < metrics["history"][0]["val_loss"]
    starts = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()
              if '"start"' in x]
    assert len(starts) == 1 and starts[0]["world_size"] == 2  # only rank 0 reports
    loaded = load_model(out / "model_best.pt")
    assert loaded.meta["metrics"]["world_size"] == 2
    r = _train(launcher, ds, out, "--epochs", "7", "--lr", "0.02", "--resume")
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "metrics.json").read_text())["epochs_run"] == 7
