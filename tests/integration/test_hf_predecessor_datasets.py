"""Datasets laid out exactly as the predecessor's publish tool lays them out, served by the Hub
emulator: `datasets fetch` and the preset's HF mode read them (manifest with `kind`,
`dataset_name`, a `files` list and `distribution`; checksums of the dataset files; the data as
`<name>_<version>.tar.gz` holding `dataset/...`, or under `files/`), and the game rows' `moves`
field trains like `moves_uci`."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import subprocess
import sys
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from host_tools.emulators.hubemu import HubEmulator
from tests.utils.datasets import make_dataset, random_game, write_rows
from tests.utils.hubemu import CANARY, assert_no_canary, run_cli, set_cli_env

REPO_ID = "acme/chess-bot-datasets"
PREFIX = "validated_datasets"
GAME_FORMAT = "game_jsonl_runtime_splice_v1"
CACHE_FILES = ("paths.json", "path_ids.u32.bin", "offsets.u64.bin", "splice_indices.u32.bin",
               "sample_phase_ids.u8.bin")


def predecessor_dataset(root: Path, seed: int, n_train: int = 6, n_val: int = 2) -> Path:
    """A compact game dataset dir as the predecessor built them: `moves` rows, train/val/test,
    stats.json and the runtime splice cache its publish tool requires."""
    rng = random.Random(seed)
    root.mkdir(parents=True)
    for split, n in (("train", n_train), ("val", n_val), ("test", 1)):
        rows = []
        for i in range(n):
            moves = random_game(rng, 30)
            rows.append({"schema": "game_dataset_runtime_splice_v1", "game_id": f"{split}{i}",
                         "winner_side": "W", "result": "1-0", "plies": len(moves),
                         "moves": moves})
        write_rows(root / f"{split}.jsonl", rows)
    (root / "stats.json").write_text(json.dumps({"train_games": n_train, "val_games": n_val}))
    cache = root / "runtime_splice_cache"
    cache.mkdir()
    (cache / "manifest.json").write_text(json.dumps({"kind": "runtime_splice_cache"}))
    for split in ("train", "val", "test"):
        (cache / split).mkdir()
        for name in CACHE_FILES:
            (cache / split / name).write_bytes(bytes(rng.randrange(256) for _ in range(64)))
    return root


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stage_like_predecessor(dataset_dir: Path, name: str, version: str, archive: bool,
                           stage: Path) -> Path:
    """The staging folder the predecessor's publish tool uploads to <prefix>/<name>/<version>/."""
    stage.mkdir(parents=True)
    files = sorted(p for p in dataset_dir.rglob("*") if p.is_file())
    metas = [{"path": p.relative_to(dataset_dir).as_posix(), "size_bytes": p.stat().st_size,
              "sha256": _sha(p)} for p in files]
    archive_name = None
    if archive:
        archive_name = f"{name}_{version}.tar.gz"
        with tarfile.open(stage / archive_name, mode="w:gz") as tf:
            tf.add(dataset_dir, arcname="dataset")
    else:
        for p in files:
            target = stage / "files" / p.relative_to(dataset_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, target)
    stats = json.loads((dataset_dir / "stats.json").read_text())
    manifest = {
        "schema_version": 1,
        "kind": "chess-bot-validated-dataset",
        "created_at_utc": datetime.now(UTC).isoformat(),
        "dataset_name": name,
        "version": version,
        "source_dir": str(dataset_dir),
        "file_count": len(metas),
        "total_bytes": sum(m["size_bytes"] for m in metas),
        "dataset_format": GAME_FORMAT,  # its sniff: a first row with "moves"
        "runtime_splice_cache": json.loads(
            (dataset_dir / "runtime_splice_cache" / "manifest.json").read_text()),
        "required_files_present": {"train.jsonl": True, "val.jsonl": True},
        "stats_json": stats,
        "files": metas,
        "distribution": {"mode": "archive" if archive else "files",
                         "archive_name": archive_name},
    }
    (stage / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    lines = [f"{m['sha256']}  {m['path']}" for m in metas]
    (stage / "checksums.sha256").write_text("\n".join(lines) + "\n")
    return stage


def publish_like_predecessor(hub: HubEmulator, tmp_path: Path, dataset_dir: Path, name: str,
                             version: str, archive: bool = True) -> None:
    import huggingface_hub as hh

    api = hh.HfApi(endpoint=hub.url, token=CANARY)
    api.create_repo(repo_id=REPO_ID, repo_type="dataset", private=False, exist_ok=True)
    stage = stage_like_predecessor(dataset_dir, name, version, archive,
                                   tmp_path / f"stage_{name}_{version}")
    api.upload_folder(repo_id=REPO_ID, repo_type="dataset", folder_path=str(stage),
                      path_in_repo=f"{PREFIX}/{name}/{version}",
                      commit_message=f"upload datasets (1) version={version}")


@pytest.fixture
def env(hub: HubEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    return set_cli_env(hub, tmp_path, monkeypatch, HF_DATASET_REPO_ID=REPO_ID)



@pytest.mark.parametrize("archive", [True, False], ids=["archive", "files"])
def test_fetch_reads_the_predecessor_layout(env: dict[str, str], hub: HubEmulator,
                                            tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            archive: bool):
    src = predecessor_dataset(tmp_path / "elite_2025-11_game", seed=1)
    version = "20260227T044455Z"
    publish_like_predecessor(hub, tmp_path, src, "elite_2025-11_game", version, archive)
    dest = tmp_path / "dest"
    rc, out, err = run_cli(capsys, "fetch", "--name", "elite_2025-11_game", "--dest", dest)
    assert (rc, err) == (0, "")
    local = dest / "elite_2025-11_game" / version
    assert out.splitlines()[0] == (f"fetched elite_2025-11_game {version} ({GAME_FORMAT}): "
                                   f"train 6 rows, val 2 rows -> {local}")
    published = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
    fetched = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    assert fetched == sorted([*published, "manifest.json"])
    for rel in published:
        assert (local / rel).read_bytes() == (src / rel).read_bytes(), rel
    manifest = json.loads((local / "manifest.json").read_text())
    assert (manifest["name"], manifest["version"], manifest["rows"]) == (
        "elite_2025-11_game", version, {"train": 6, "val": 2})
    assert manifest["created_by"]["kind"] == "chess-bot-validated-dataset"
    assert manifest["stats"] == {"train_games": 6, "val_games": 2}
    rc, out, _ = run_cli(capsys, "fetch", "--name", "elite_2025-11_game", "--dest", dest)
    assert (rc, out.split(" (")[0]) == (0, f"cached elite_2025-11_game {version}")


def test_all_latest_mixes_layouts_and_orders_versions_by_timestamp(
    env: dict[str, str], hub: HubEmulator, tmp_path: Path, capsys: pytest.CaptureFixture[str],
):
    old = predecessor_dataset(tmp_path / "old", seed=2)
    new = predecessor_dataset(tmp_path / "new", seed=3, n_train=4)
    # A bare timestamp (the predecessor's default) is newer than an older validated-* one.
    publish_like_predecessor(hub, tmp_path, old, "elite_game", "validated-20251101T000000Z")
    publish_like_predecessor(hub, tmp_path, new, "elite_game", "20260227T044455Z")
    ours = make_dataset(tmp_path / "ours", 5, 2)
    rc, _, err = run_cli(capsys, "publish", ours, "--name", "ours", "--version",
                      "validated-20260101T000000Z")
    assert rc == 0, err
    dest = tmp_path / "dest"
    rc, out, err = run_cli(capsys, "fetch", "--all-latest", "--dest", dest)
    assert (rc, err) == (0, "")
    assert out.splitlines()[:3] == [
        f"fetched elite_game 20260227T044455Z ({GAME_FORMAT}): train 4 rows, val 2 rows -> "
        f"{dest / 'elite_game' / '20260227T044455Z'}",
        f"fetched ours validated-20260101T000000Z ({GAME_FORMAT}): train 5 rows, val 2 rows -> "
        f"{dest / 'ours' / 'validated-20260101T000000Z'}",
        f"manifest: {dest / 'fetch_manifest.json'} ({GAME_FORMAT} 2)",
    ]


def test_tampered_predecessor_version_is_refused(env: dict[str, str], hub: HubEmulator,
                                                 tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]):
    src = predecessor_dataset(tmp_path / "ds", seed=4)
    version = "20260227T044455Z"
    stage = stage_like_predecessor(src, "ds", version, True, tmp_path / "stage")
    manifest = json.loads((stage / "manifest.json").read_text())
    manifest["files"][0]["sha256"] = "0" * 64  # runtime_splice_cache/manifest.json
    (stage / "manifest.json").write_text(json.dumps(manifest))
    import huggingface_hub as hh

    api = hh.HfApi(endpoint=hub.url, token=CANARY)
    api.create_repo(repo_id=REPO_ID, repo_type="dataset", exist_ok=True)
    api.upload_folder(repo_id=REPO_ID, repo_type="dataset", folder_path=str(stage),
                      path_in_repo=f"{PREFIX}/ds/{version}")
    rc, _, err = run_cli(capsys, "fetch", "--name", "ds", "--dest", tmp_path / "dest")
    assert rc == 2
    assert err == (f"datasets fetch: error: {REPO_ID}/{PREFIX}/ds/{version}/checksums.sha256: "
                   "checksums.sha256 and manifest.json disagree on "
                   "runtime_splice_cache/manifest.json\n")
    assert not (tmp_path / "dest").exists()


def _preset(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "appliance.training.preset", *args], env=env,
                          capture_output=True, text=True, timeout=300, cwd=env["PYTHONPATH"])


def test_preset_hf_mode_trains_on_predecessor_datasets(hub: HubEmulator, tmp_path: Path,
                                                       env: dict[str, str]):
    for name, seed in (("elite_2025-10_game", 5), ("elite_2025-11_game", 6)):
        src = predecessor_dataset(tmp_path / name, seed=seed)
        publish_like_predecessor(hub, tmp_path, src, name, "20260227T044455Z",
                                 archive=name.endswith("11_game"))
    cache = tmp_path / "cache"
    manifest = tmp_path / "hf_fetch_manifest.json"
    penv = {**env, "HF_FETCH_LATEST_ALL_DATASETS": "1", "HF_DATASET_CACHE_DIR": str(cache),
            "HF_DATASET_FETCH_MANIFEST": str(manifest), "HF_USE_EXISTING_FETCH_MANIFEST": "1",
            "RUN_ID": "old", "TRAIN_EPOCHS": "1", "TRAIN_RUNTIME_MIN_CONTEXT": "2",
            "TRAIN_EXTRA_ARGS": "--embed-dim 8 --hidden-dim 8"}
    done = _preset(penv)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == (f"HF_USE_EXISTING_FETCH_MANIFEST=1: no fetch manifest at {manifest}; "
                        "fetching the newest datasets instead")
    assert lines[1] == (f"dataset: HF {GAME_FORMAT}: elite_2025-10_game@20260227T044455Z, "
                        f"elite_2025-11_game@20260227T044455Z (manifest {manifest})")
    trains = [cache / n / "20260227T044455Z" / "train.jsonl"
              for n in ("elite_2025-10_game", "elite_2025-11_game")]
    trainer = next(x for x in lines if x.startswith("trainer: "))
    assert f"--train {trains[0]} --train {trains[1]} --val " in trainer
    repo = Path(penv["REPO_DIR"])
    assert (repo / "artifacts" / "train" / "old" / "model_best.pt").is_file()
    assert manifest.is_file()
    assert_no_canary(done.stdout, done.stderr)

    # Now the manifest exists: it is reused, and the Hub is not asked.
    hub.clear_requests()
    again = _preset(penv, "--dry-run")
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[0].startswith(f"dataset: HF {GAME_FORMAT}: ")
    assert hub.requests() == []
