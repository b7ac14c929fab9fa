"""One-command training: find the dataset, map TRAIN_* env vars to trainer flags, train, evaluate.

Dataset: TRAIN_PATH + VAL_PATH, else TRAIN_DATASET_DIR, else the newest dir under
$REPO_DIR/data/dataset/ holding train.jsonl and val.jsonl. The launch fits the pod
(`training.distributed`): a plain process on one GPU or CPU, torchrun with one process per GPU,
torchrun across the nodes on a RunPod Instant Cluster node (NUM_NODES > 1; run the preset on
every node). Each phase is timed into the phase-timing log (source=runpod_train_preset). The
evaluation is printed and written next to the model (evaluation.json), on the node that holds
global rank 0.

HF mode (HF_FETCH_LATEST_ALL_DATASETS=1): the newest version of every dataset in
HF_DATASET_REPO_ID is fetched (or HF_DATASET_FETCH_MANIFEST reused with
HF_USE_EXISTING_FETCH_MANIFEST=1; when that file does not exist, fetched as without it, as the
predecessor did), one row format is picked (HF_DATASET_SCHEMA_FILTER; auto
prefers game rows) and every file of it goes to the trainer as repeated --train / --val.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from appliance import settings
from appliance.datasets.fetch import fetch_to_manifest, read_fetch_manifest
from appliance.datasets.rows import GAME_FORMAT, LEGACY_FORMAT, DatasetError
from appliance.hf import HubClient, HubError, resolve_token
from appliance.model import BEST_MODEL
from appliance.timing import TimingLog
from appliance.training.distributed import (
    Launch,
    LaunchError,
    interface_env,
    launcher,
    plan_launch,
    rendezvous_failure,
)

SOURCE = "runpod_train_preset"
# The evaluation of the (first) val file, as JSON next to the model; the run report reads it.
EVALUATION = "evaluation.json"

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
                "with `python -m host_tools.datasets generate --out data/dataset/NAME` or set "
                "TRAIN_DATASET_DIR"
            )
        newest = max(dirs, key=lambda d: (d / "train.jsonl").stat().st_mtime)
        pair = (newest / "train.jsonl", newest / "val.jsonl")
    for p in pair:
        if not p.is_file():
            raise PresetError(f"{p}: file not found")
    return pair


SPLICE_VARS = ("TRAIN_RUNTIME_MIN_CONTEXT", "TRAIN_RUNTIME_MIN_TARGET",
               "TRAIN_RUNTIME_MAX_SAMPLES_PER_GAME")


def select_bucket(manifest: dict[str, Any], schema_filter: str, where: Path
                  ) -> tuple[str, list[Path], list[Path], list[str]]:
    """The row format to train on, its train and val files and its datasets (name@version),
    from a fetch manifest."""
    buckets = manifest["aggregate_by_format"]
    found = ", ".join(sorted(buckets)) or "none"
    if schema_filter == "auto":
        fmt = next((f for f in (GAME_FORMAT, LEGACY_FORMAT) if f in buckets), None)
        if fmt is None:
            raise PresetError(f"{where}: no dataset of a known row format (found: {found})")
    elif schema_filter in buckets:
        fmt = schema_filter
    else:
        raise PresetError(f"HF_DATASET_SCHEMA_FILTER={schema_filter}: no fetched dataset has "
                          f"that format (found: {found})")
    bucket = buckets[fmt]
    train = [Path(p) for p in bucket["train"]]
    val = [Path(p) for p in bucket["val"]]
    for p in train + val:
        if not p.is_file():
            raise PresetError(f"{p}: listed in {where} but missing; fetch again "
                              "(HF_USE_EXISTING_FETCH_MANIFEST=0)")
    return fmt, train, val, list(bucket["datasets"])


def resolve_hf_datasets(hf: settings.HfSettings, repo_dir: Path
                        ) -> tuple[str, list[Path], list[Path], list[str]]:
    """HF mode: fetch the newest version of every dataset (or reuse the fetch manifest)."""
    manifest_path = hf.fetch_manifest(repo_dir)
    reuse = hf.HF_USE_EXISTING_FETCH_MANIFEST
    if reuse and not manifest_path.exists():
        print(f"HF_USE_EXISTING_FETCH_MANIFEST=1: no fetch manifest at {manifest_path}; "
              "fetching the newest datasets instead", flush=True)
        reuse = False
    if reuse:
        manifest = read_fetch_manifest(manifest_path)
    else:
        if not hf.HF_DATASET_REPO_ID:
            raise PresetError("HF_FETCH_LATEST_ALL_DATASETS=1 needs HF_DATASET_REPO_ID (the "
                              "dataset repo, OWNER/NAME)")
        token, _ = resolve_token(None, hf.token, hf.HF_TOKEN_PATH)
        client = HubClient(hf.HF_ENDPOINT, token)
        _, manifest = fetch_to_manifest(
            client, hf.HF_DATASET_REPO_ID, hf.HF_DATASET_PATH_PREFIX,
            hf.dataset_cache_dir(repo_dir), manifest_path)
    return select_bucket(manifest, hf.HF_DATASET_SCHEMA_FILTER, manifest_path)


def trainer_command(
    cfg: settings.TrainingSettings, train: Path | Sequence[Path], val: Path | Sequence[Path],
    output_dir: Path, gpus: int, splice: bool = True, launch: Launch | None = None,
) -> list[str]:
    """`splice=False` leaves out the runtime splice flags (legacy rows are spliced already);
    `launch` (a cluster node) overrides the one `gpus` make."""
    launch = launch or Launch(max(gpus, 1))
    trains = [train] if isinstance(train, Path) else list(train)
    vals = [val] if isinstance(val, Path) else list(val)
    cmd = launcher(launch, cfg.TRAIN_RENDEZVOUS_TIMEOUT_SECONDS) + ["appliance.training.train"]
    cmd += [a for p in trains for a in ("--train", str(p))]
    cmd += [a for p in vals for a in ("--val", str(p))]
    cmd += ["--output-dir", str(output_dir)]
    for var, flag in FLAG_VARS.items():
        value = getattr(cfg, var)
        if value is not None and (splice or var not in SPLICE_VARS):
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
        hf = settings.load(settings.HfSettings)
        cluster = settings.load(settings.ClusterSettings)
    except settings.SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    run_id = paths.RUN_ID or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    timing = TimingLog(paths.timing_log, SOURCE, run_id)
    fmt = GAME_FORMAT
    try:
        if hf.HF_FETCH_LATEST_ALL_DATASETS:
            with timing.phase("fetch_datasets"):
                fmt, trains, vals, names = resolve_hf_datasets(hf, paths.REPO_DIR)
            print(f"dataset: HF {fmt}: {', '.join(names)} (manifest "
                  f"{hf.fetch_manifest(paths.REPO_DIR)})", flush=True)
        else:
            with timing.phase("resolve_dataset_paths"):
                train, val = resolve_dataset(cfg, paths.REPO_DIR)
            trains, vals = [train], [val]
    except (PresetError, DatasetError, HubError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    output_dir = cfg.TRAIN_OUTPUT_DIR or paths.REPO_DIR / "artifacts" / "train" / run_id
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    try:
        launch = plan_launch(cluster, gpus)
        cmd = trainer_command(cfg, trains, vals, output_dir, gpus, splice=fmt == GAME_FORMAT,
                              launch=launch)
    except (PresetError, LaunchError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"dataset: train {', '.join(map(str, trains))}, val {', '.join(map(str, vals))}",
          flush=True)
    nics = interface_env(cluster.NODE_ADDR, os.environ) if launch.is_cluster else {}
    if launch.is_cluster:
        print(f"cluster: node {launch.node_rank} of {launch.nnodes}, {launch.nproc} trainer "
              f"process(es) here, rendezvous {launch.endpoint}"
              + "".join(f", {k}={v}" for k, v in nics.items()), flush=True)
    print("trainer: " + shlex.join(cmd), flush=True)
    if args.dry_run:
        return 0
    timeout_s = cfg.TRAIN_RENDEZVOUS_TIMEOUT_SECONDS
    with tempfile.TemporaryDirectory(prefix="torchrun-") as tmp, \
            timing.phase("train_baseline") as res:
        error_file = Path(tmp) / "error.json"
        res["exit_code"] = subprocess.call(
            cmd, env={**os.environ, **nics, "TORCHELASTIC_ERROR_FILE": str(error_file)})
        failure = f"trainer exited with {res['exit_code']}"
        if res["exit_code"] and launch.is_cluster:
            failure = rendezvous_failure(error_file, launch, timeout_s) or failure
    if res["exit_code"] != 0:
        print(f"error: {failure}", file=sys.stderr)
        return int(res["exit_code"] or 1)
    if not launch.holds_rank0:
        print(f"done: node {launch.node_rank} trained its share; global rank 0 on the primary "
              "node wrote the model, metrics and evaluation", flush=True)
        return 0
    if args.evaluate:
        with timing.phase("evaluate") as res:
            train_data = [a for p in trains for a in ("--train-data", str(p))]
            for i, val in enumerate(vals, 1):  # evaluate takes one data file
                name = EVALUATION if i == 1 else f"evaluation-{i}.json"
                res["exit_code"] = subprocess.call(
                    [sys.executable, "-m", "appliance.training.evaluate", "--model",
                     str(output_dir / BEST_MODEL), "--data", str(val), *train_data,
                     "--json-out", str(output_dir / name)]
                )
                if res["exit_code"]:
                    break
        return int(res["exit_code"] or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
