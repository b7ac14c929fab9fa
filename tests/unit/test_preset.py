"""One-command preset: dataset resolution, env -> flags, timing records, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from appliance import settings
from appliance.training import preset
from tests.utils.datasets import make_dataset

ROOT = Path(__file__).resolve().parents[2]


def _cfg(monkeypatch, **env: str) -> settings.TrainingSettings:
    for key in list(os.environ):
        if key.startswith("TRAIN_") or key in ("VAL_PATH",):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return settings.load(settings.TrainingSettings)


def test_dataset_resolution_order(tmp_path: Path, monkeypatch):
    older = make_dataset(tmp_path / "data" / "dataset" / "a", 2, 1)
    newer = make_dataset(tmp_path / "data" / "dataset" / "b", 2, 1)
    (tmp_path / "data" / "dataset" / "c_incomplete").mkdir()
    os.utime(older / "train.jsonl", (1, 1))
    cfg = _cfg(monkeypatch)
    assert preset.resolve_dataset(cfg, tmp_path) == (newer / "train.jsonl", newer / "val.jsonl")
    cfg = _cfg(monkeypatch, TRAIN_DATASET_DIR=str(older))
    assert preset.resolve_dataset(cfg, tmp_path) == (older / "train.jsonl", older / "val.jsonl")
    cfg = _cfg(monkeypatch, TRAIN_DATASET_DIR=str(older), TRAIN_PATH=str(newer / "train.jsonl"),
               VAL_PATH=str(older / "val.jsonl"))
    assert preset.resolve_dataset(cfg, tmp_path) == (newer / "train.jsonl", older / "val.jsonl")
    with pytest.raises(preset.PresetError, match="^TRAIN_PATH and VAL_PATH must be set together$"):
        preset.resolve_dataset(_cfg(monkeypatch, TRAIN_PATH="x.jsonl"), tmp_path)
    with pytest.raises(preset.PresetError) as err:
        preset.resolve_dataset(_cfg(monkeypatch), tmp_path / "elsewhere")
    assert str(err.value).startswith(
        f"no dataset found: no dir under {tmp_path / 'elsewhere' / 'data' / 'dataset'} has "
        "train.jsonl and val.jsonl")


def test_env_maps_to_trainer_flags(monkeypatch, tmp_path: Path):
    cfg = _cfg(monkeypatch, TRAIN_BATCH_SIZE="64", TRAIN_EPOCHS="7", TRAIN_LR="0.001",
               TRAIN_NUM_WORKERS="2", TRAIN_ENDGAME_PHASE_WEIGHT="1.5",
               TRAIN_RUNTIME_MIN_CONTEXT="4", TRAIN_RUNTIME_MIN_TARGET="2",
               TRAIN_RUNTIME_MAX_SAMPLES_PER_GAME="3", TRAIN_PROGRESS_JSONL_OUT="/tmp/p.jsonl",
               TRAIN_EXTRA_ARGS="--hidden-dim 64 --no-board-feature")
    cmd = preset.trainer_command(cfg, Path("t.jsonl"), Path("v.jsonl"), Path("out"), gpus=0)
    assert cmd[1:] == [
        "-m", "appliance.training.train", "--train", "t.jsonl", "--val", "v.jsonl",
        "--output-dir", "out", "--batch-size", "64", "--num-workers", "2", "--epochs", "7",
        "--lr", "0.001", "--endgame-phase-weight", "1.5", "--progress-jsonl-out",
        "/tmp/p.jsonl", "--runtime-min-context", "4", "--runtime-min-target", "2",
        "--runtime-max-samples-per-game", "3", "--hidden-dim", "64", "--no-board-feature"]
    multi = preset.trainer_command(_cfg(monkeypatch), Path("t"), Path("v"), Path("o"), gpus=4)
    assert multi[1:7] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4",
                          "-m", "appliance.training.train"]


def _preset(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TRAIN_")}
    return subprocess.run([sys.executable, "-m", "appliance.training.preset", *args],
                          env={**clean, **env}, cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_bad_env_value_names_the_variable(tmp_path: Path):
    r = _preset({"TRAIN_EPOCHS": "many", "REPO_DIR": str(tmp_path)})
    assert r.returncode == 2
    assert r.stderr.strip() == (
        "error: bad environment: TRAIN_EPOCHS='many': Input should be a valid integer, unable to "
        "parse string as an integer (Maximum epochs.)")


def test_preset_trains_evaluates_and_records_phases(tmp_path: Path):
    make_dataset(tmp_path / "data" / "dataset" / "tiny", 8, 3)
    r = _preset({"REPO_DIR": str(tmp_path), "RUN_ID": "run-1", "TRAIN_EPOCHS": "1",
                 "TRAIN_EXTRA_ARGS": "--embed-dim 8 --hidden-dim 8"})
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "artifacts" / "train" / "run-1" / "model_best.pt").is_file()
    assert "baseline: random legal" in r.stdout
    ev = json.loads((tmp_path / "artifacts" / "train" / "run-1" / "evaluation.json").read_text())
    assert ev["data"] == str(tmp_path / "data" / "dataset" / "tiny" / "val.jsonl")
    assert set(ev["baselines"]) == {"random_legal", "frequent_prefix"}
    row = next(line for line in r.stdout.splitlines() if line.startswith("model "))
    assert row.split()[1:3] == [str(ev["positions"]), f"{ev['top1'] * 100:.1f}%"]
    log = tmp_path / "artifacts" / "timings" / "runpod_phase_times.jsonl"
    recs = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(x["source"], x["run_id"], x["phase"], x["status"]) for x in recs] == [
        ("runpod_train_preset", "run-1", "resolve_dataset_paths", "ok"),
        ("runpod_train_preset", "run-1", "train_baseline", "ok"),
        ("runpod_train_preset", "run-1", "evaluate", "ok")]
    assert recs[1]["exit_code"] == 0 and "exit_code" not in recs[0]
    assert all(isinstance(x["elapsed_ms"], int) and x["ts_epoch_ms"] > 0 for x in recs)


def test_preset_failure_is_recorded(tmp_path: Path):
    make_dataset(tmp_path / "data" / "dataset" / "tiny", 2, 1)
    r = _preset({"REPO_DIR": str(tmp_path), "RUN_ID": "bad", "TRAIN_EXTRA_ARGS": "--dropout 2"})
    assert r.returncode == 2
    assert "argument --dropout: must be in [0, 1), got 2" in r.stderr
    log = tmp_path / "artifacts" / "timings" / "runpod_phase_times.jsonl"
    last = json.loads(log.read_text().splitlines()[-1])
    assert (last["phase"], last["status"], last["exit_code"]) == ("train_baseline", "error", 2)
    r = _preset({"REPO_DIR": str(tmp_path / "none")})
    assert r.returncode == 2 and r.stderr.startswith("error: no dataset found")
