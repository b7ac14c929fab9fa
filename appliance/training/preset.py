"""One-command training: find the dataset, map TRAIN_* env vars to trainer flags, train, evaluate.

Dataset: TRAIN_PATH + VAL_PATH, else TRAIN_DATASET_DIR, else the newest dir under
$REPO_DIR/data/dataset/ holding train.jsonl and val.jsonl. Uses torchrun when several GPUs are
visible. Each phase is timed into the phase-timing log (source=runpod_train_preset).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from appliance import settings
from appliance.timing import TimingLog
from appliance.training.train import BEST

SOURCE = "runpod_train_preset"

# TRAIN_* variable -> trainer flag (the rest of the variables choose paths).
FLAG_VARS = {
    "TRAIN_BATCH_SIZE": "--batch-size",
    "TRAIN_NUM_WORKERS": "--num-workers",
    "TRAIN_EPOCHS": "--epochs",
    "TRAIN_LR": "--lr",
    "TRAIN_ENDGAME_PHASE_WEIGHT": "--endgame-phase-weight",
    "TRAIN_PROGRESS_JSONL_OUT": "--progress-jsonl-out",
    "TRAIN_RUNTIME_MIN_CONTEXT": "--runtime-min-context",
    "TRAIN_RUNTIME_MIN_TARGET": "--runtime-min-target",
    "TRAIN_RUNTIME_MAX_SAMPLES_PER_GAME": "--runtime-max-samples-per-game",
}


class PresetError(ValueError):
    pass


def has_split(d: Path) -> bool:
    return (d / "train.jsonl").is_file() and (d / "val.jsonl").is_file()


def resolve_dataset(cfg: settings.TrainingSettings, repo_dir: Path) -> tuple[Path, Path]:
    if cfg.TRAIN_PATH or cfg.VAL_PATH:
        if not (cfg.TRAIN_PATH and cfg.VAL_PATH):
            raise PresetError("TRAIN_PATH and VAL_PATH must be set together")
        pair = (cfg.TRAIN_PATH, cfg.VAL_PATH)
    elif cfg.TRAIN_DATASET_DIR:
        d = cfg.TRAIN_DATASET_DIR
        if not has_split(d):
            raise PresetError(f"TRAIN_DATASET_DIR={d}: needs train.jsonl and val.jsonl")
        pair = (d / "train.jsonl", d / "val.jsonl")
    else:
        root = repo_dir / "data" / "dataset"
        dirs = [d for d in root.iterdir() if d.is_dir() and has_split(d)] if root.is_dir() else []
        if not dirs:
            raise PresetError(
                f"no dataset found: no dir under {root} has train.jsonl and val.jsonl; build one "
                "with `python host_tools/datasets.py generate --out data/dataset/NAME` or set "
                "TRAIN_DATASET_DIR"
            )
        newest = max(dirs, key=lambda d: (d / "train.jsonl").stat().st_mtime)
        pair = (newest / "train.jsonl", newest / "val.jsonl")
    for p in pair:
        if not p.is_file():
            raise PresetError(f"{p}: file not found")
    return pair


def trainer_command(
    cfg: settings.TrainingSettings, train: Path, val: Path, output_dir: Path, gpus: int
) -> list[str]:
    launcher = [sys.executable, "-m"]
    if gpus > 1:
        launcher += ["torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}", "-m"]
    cmd = launcher + ["appliance.training.train", "--train", str(train), "--val", str(val),
                      "--output-dir", str(output_dir)]
    for var, flag in FLAG_VARS.items():
        value = getattr(cfg, var)
        if value is not None:
            cmd += [flag, str(value)]
    try:
        cmd += shlex.split(cfg.TRAIN_EXTRA_ARGS)
    except ValueError as exc:
        raise PresetError(f"TRAIN_EXTRA_ARGS: cannot split ({exc})") from None
    return cmd


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m appliance.training.preset",
                                description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="print the trainer command and stop")
    p.add_argument("--evaluate", action=argparse.BooleanOptionalAction, default=True,
                   help="print the evaluation table on the val split after training")
    args = p.parse_args(argv)
    try:
        paths = settings.load(settings.PathSettings)
        cfg = settings.load(settings.TrainingSettings)
    except settings.SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    run_id = paths.RUN_ID or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    timing = TimingLog(paths.timing_log, SOURCE, run_id)
    try:
        with timing.phase("resolve_dataset_paths"):
            train, val = resolve_dataset(cfg, paths.REPO_DIR)
    except PresetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    output_dir = cfg.TRAIN_OUTPUT_DIR or paths.REPO_DIR / "artifacts" / "train" / run_id
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    try:
        cmd = trainer_command(cfg, train, val, output_dir, gpus)
    except PresetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"dataset: train {train}, val {val}", flush=True)
    print("trainer: " + shlex.join(cmd), flush=True)
    if args.dry_run:
        return 0
    with timing.phase("train_baseline") as res:
        res["exit_code"] = subprocess.call(cmd)
    if res["exit_code"] != 0:
        print(f"error: trainer exited with {res['exit_code']}", file=sys.stderr)
        return int(res["exit_code"] or 1)
    if args.evaluate:
        with timing.phase("evaluate") as res:
            res["exit_code"] = subprocess.call(
                [sys.executable, "-m", "appliance.training.evaluate", "--model",
                 str(output_dir / BEST), "--data", str(val), "--train-data", str(train)]
            )
        return int(res["exit_code"] or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
