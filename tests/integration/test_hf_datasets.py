"""`datasets.py publish|fetch` and the preset's HF mode against the Hub emulator with the real
huggingface_hub: round trips, --all-latest, bad input, corruption, Hub faults, no token leaks."""

from __future__ import annotations

import hashlib
import io
import json
import random
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from host_tools.emulators.hubemu import HubEmulator
from tests.utils.datasets import make_dataset, random_game, write_rows
from tests.utils.hubemu import (
    CANARY,
    assert_canary_never_in_urls,
    assert_no_canary,
    hf_env,
    run_cli,
    set_cli_env,
)

REPO_ID = "acme/chess-data"
PREFIX = "validated_datasets"


@pytest.fixture
def env(hub: HubEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    return set_cli_env(hub, tmp_path, monkeypatch, HF_DATASET_REPO_ID=REPO_ID)



def _legacy_dataset(root: Path, n_train: int = 12, n_val: int = 4, seed: int = 5) -> Path:
    rng = random.Random(seed)
    root.mkdir(parents=True)
    for name, n in (("train", n_train), ("val", n_val)):
        rows = []
        for _ in range(n):
            moves = random_game(rng, 20)
            k = rng.randrange(1, len(moves))
            rows.append({"context": moves[:k], "target": moves[k]})
        write_rows(root / f"{name}.jsonl", rows)
    return root


def _repo_files(hub: HubEmulator) -> dict[str, bytes]:
    repo = hub.state.store.get("dataset", REPO_ID)
    return {p: hub.state.store.object_path(e.sha256).read_bytes()
            for p, e in repo.head.files.items() if p != ".gitattributes"}


def _commits(hub: HubEmulator) -> int:
    return sum(1 for r in hub.requests() if "/commit/" in r.path and r.status == 200)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_publish_then_fetch_round_trip(env: dict[str, str], hub: HubEmulator, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]):
    src = make_dataset(tmp_path / "tiny")
    rc, out, err = run_cli(capsys, "publish", src, "--name", "tiny", "--version", "v1")
    assert (rc, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].startswith(f"published {REPO_ID}:{PREFIX}/tiny/v1/ in commit ")
    assert lines[1].startswith("files: data.tar.gz (") and "manifest.json" in lines[1]
    assert lines[2] == ("format game_jsonl_runtime_splice_v1 (from stats.json), validated: "
                        "train 24 rows, val 8 rows")
    assert _commits(hub) == 1  # data, manifest and checksums in one commit
    files = _repo_files(hub)
    folder = f"{PREFIX}/tiny/v1"
    assert sorted(files) == [f"{folder}/checksums.sha256", f"{folder}/data.tar.gz",
                             f"{folder}/manifest.json"]
    archive = files[f"{folder}/data.tar.gz"]
    assert files[f"{folder}/checksums.sha256"] == f"{_sha(archive)}  data.tar.gz\n".encode()
    manifest = json.loads(files[f"{folder}/manifest.json"])
    assert {k: manifest[k] for k in ("name", "version", "dataset_format", "rows")} == {
        "name": "tiny", "version": "v1", "dataset_format": "game_jsonl_runtime_splice_v1",
        "rows": {"train": 24, "val": 8}}
    assert manifest["stats"] == json.loads((src / "stats.json").read_text())
    for name in ("train.jsonl", "val.jsonl", "stats.json"):
        data = (src / name).read_bytes()
        assert manifest["files"][name] == {"size": len(data), "sha256": _sha(data),
                                           **({"rows": 24 if name == "train.jsonl" else 8}
                                              if name != "stats.json" else {})}
    assert manifest["archive"] == {"format": "tar.gz", "file": "data.tar.gz",
                                   "size": len(archive), "sha256": _sha(archive)}
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        assert tar.getnames() == ["train.jsonl", "val.jsonl", "stats.json"]

    dest = tmp_path / "fetched"
    rc, out, err = run_cli(capsys, "fetch", "--name", "tiny", "--dest", dest, "--manifest-out",
                        tmp_path / "one.json")
    assert (rc, err) == (0, "")
    assert out.splitlines()[0] == (f"fetched tiny v1 (game_jsonl_runtime_splice_v1): train 24 "
                                   f"rows, val 8 rows -> {dest / 'tiny' / 'v1'}")
    for name in ("train.jsonl", "val.jsonl", "stats.json"):
        assert (dest / "tiny" / "v1" / name).read_bytes() == (src / name).read_bytes()
    assert sorted(p.name for p in dest.iterdir()) == ["tiny"]  # no temp dirs left
    one = json.loads((tmp_path / "one.json").read_text())
    assert one["train"] == [str(dest / "tiny" / "v1" / "train.jsonl")]
    rc, out, _ = run_cli(capsys, "fetch", "--name", "tiny", "--dest", dest)
    assert out.startswith("cached tiny v1 ")

    # The published folder checks with plain coreutils too.
    if shutil.which("sha256sum"):
        plain = tmp_path / "plain"
        plain.mkdir()
        for name in ("data.tar.gz", "checksums.sha256"):
            (plain / name).write_bytes(files[f"{folder}/{name}"])
        check = subprocess.run(["sha256sum", "-c", "checksums.sha256"], cwd=plain,
                               capture_output=True, text=True)
        assert check.stdout == "data.tar.gz: OK\n"
    assert_canary_never_in_urls(hub)


def test_all_latest_skips_half_published_versions(env: dict[str, str], hub: HubEmulator,
                                                  tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]):
    games = make_dataset(tmp_path / "games", 6, 2)
    legacy = _legacy_dataset(tmp_path / "legacy")
    for version in ("v1", "v2"):
        rc, _, err = run_cli(capsys, "publish", games, "--name", "games", "--version", version,
                          "--archive-format", "none")
        assert rc == 0, err
    rc, out, err = run_cli(capsys, "publish", legacy, "--name", "legacy", "--no-validate")
    assert rc == 0, err
    assert "format splice_rows_legacy (from rows), not validated: train 12 rows, val 4 rows" in out
    assert out.split(":")[1].split("/")[2].startswith("validated-20")  # default version

    # A version whose upload never finished (data but no manifest) sorts newest: never picked.
    import huggingface_hub as hh

    api = hh.HfApi(endpoint=hub.url, token=CANARY)
    api.upload_file(path_or_fileobj=b"partial", path_in_repo=f"{PREFIX}/games/v3/data.tar.gz",
                    repo_id=REPO_ID, repo_type="dataset")
    dest = tmp_path / "cache"
    rc, out, err = run_cli(capsys, "fetch", "--all-latest", "--dest", dest)
    assert (rc, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == (f"fetched games v2 (game_jsonl_runtime_splice_v1): train 6 rows, val 2 "
                        f"rows -> {dest / 'games' / 'v2'}")
    assert lines[1].startswith("fetched legacy validated-20")
    assert lines[2] == (f"manifest: {dest / 'fetch_manifest.json'} "
                        "(game_jsonl_runtime_splice_v1 1, splice_rows_legacy 1)")
    manifest = json.loads((dest / "fetch_manifest.json").read_text())
    buckets = manifest["aggregate_by_format"]
    assert buckets["game_jsonl_runtime_splice_v1"]["datasets"] == ["games@v2"]
    assert buckets["game_jsonl_runtime_splice_v1"]["train"] == [
        str(dest / "games" / "v2" / "train.jsonl")]
    assert buckets["splice_rows_legacy"]["val_rows"] == 4
    assert manifest["train"] == [d["train"] for d in manifest["datasets"]]
    assert (dest / "games" / "v2" / "train.jsonl").read_bytes() == (
        games / "train.jsonl").read_bytes()

    rc, _, err = run_cli(capsys, "fetch", "--name", "games", "--version", "v3", "--dest", dest)
    assert rc == 2
    assert err == (f"datasets fetch: error: {REPO_ID}/{PREFIX}/games/v3 is incomplete (no "
                   "manifest.json or checksums.sha256); it was never fully published\n")


def test_dry_run_uploads_nothing(env: dict[str, str], hub: HubEmulator, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]):
    src = make_dataset(tmp_path / "tiny", 4, 2)
    rc, out, err = run_cli(capsys, "publish", src, "--name", "tiny", "--version", "v9", "--dry-run",
                        "--archive-format", "none")
    assert (rc, err) == (0, "")
    assert out.splitlines()[0] == (f"dry run: would publish {REPO_ID}:{PREFIX}/tiny/v9/ "
                                   "(nothing uploaded)")
    assert out.splitlines()[1].startswith("files: train.jsonl (")
    assert hub.requests() == []


def _bad_row(root: Path) -> Path:
    make_dataset(root, 3, 3)
    lines = (root / "val.jsonl").read_text().splitlines()
    lines[1] = json.dumps({"moves_uci": ["e2e4", "e7e5", "e4e5"]})
    (root / "val.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.parametrize(("make", "args", "message"), [
    (lambda p: (make_dataset(p, 2, 1), (p / "val.jsonl").unlink()), ["--name", "x"],
     "{src}: missing split val.jsonl (a dataset dir needs train.jsonl and val.jsonl)"),
    (_bad_row, ["--name", "x"],
     "{src}/val.jsonl:2: moves_uci[2] = 'e4e5' is illegal: the white pawn on e4 cannot move "
     "to e5 (position 'rnbqkbnr/pppp1ppp/8/4p3/4P3/8/PPPP1PPP/RNBQKBNR w KQkq - 0 2')"),
    (lambda p: make_dataset(p, 2, 1), ["--name", "../../etc"],
     "dataset name '../../etc' is not allowed: use 1-100 letters, digits, '.', '_' or '-', "
     "starting with a letter or digit"),
    (lambda p: make_dataset(p, 2, 1), ["--name", "ok", "--version", "v1/../../x"],
     "version 'v1/../../x' is not allowed: use 1-100 letters, digits, '.', '_' or '-', "
     "starting with a letter or digit"),
    (lambda p: make_dataset(p, 2, 1), ["--name", "ok", "--prefix", "/abs"],
     "path prefix '/abs' is not allowed: use folder names (1-100 letters, digits, '.', '_' or "
     "'-', starting with a letter or digit) joined by '/'"),
    (lambda p: (make_dataset(p, 2, 1), _legacy_dataset(p / "l"),
                shutil.copy(p / "l" / "val.jsonl", p / "val.jsonl")), ["--name", "x"],
     "{src}/val.jsonl:1: row format splice_rows_legacy differs from the dataset's "
     "game_jsonl_runtime_splice_v1"),
])
def test_publish_bad_input(env: dict[str, str], hub: HubEmulator, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str], make, args: list[str],
                           message: str):
    src = tmp_path / "ds"
    make(src)
    rc, out, err = run_cli(capsys, "publish", src, *args)
    assert (rc, out) == (2, "")
    assert err == "datasets publish: error: " + message.format(src=src) + "\n"
    assert not any("/commit/" in r.path for r in hub.requests())


def test_publish_refuses_existing_version_and_missing_token(
    env: dict[str, str], hub: HubEmulator, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
):
    src = make_dataset(tmp_path / "tiny", 3, 1)
    assert run_cli(capsys, "publish", src, "--name", "tiny", "--version", "v1")[0] == 0
    rc, _, err = run_cli(capsys, "publish", src, "--name", "tiny", "--version", "v1")
    assert rc == 2
    assert err == (f"datasets publish: error: {REPO_ID}/{PREFIX}/tiny/v1 already exists (3 "
                   "file(s)); published versions are never overwritten: pick another "
                   "--version\n")
    monkeypatch.delenv("HF_TOKEN")
    rc, _, err = run_cli(capsys, "publish", src, "--name", "tiny", "--version", "v2")
    assert rc == 2
    assert err == ("datasets publish: error: publish to acme/chess-data: no HF token found: set "
                   "HF_TOKEN (or HF_TOKEN_PATH), pass --token where the command has it, or "
                   "store it with `keyring set huggingface codex_hf_write_token`\n")
    token_file = tmp_path / "token"
    token_file.write_text(CANARY + "\n")
    monkeypatch.setenv("HF_TOKEN_PATH", str(token_file))
    assert run_cli(capsys, "publish", src, "--name", "tiny", "--version", "v2")[0] == 0


def test_corrupt_and_truncated_downloads_are_refused(env: dict[str, str], hub: HubEmulator,
                                                     tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]):
    src = make_dataset(tmp_path / "tiny", 6, 2)
    assert run_cli(capsys, "publish", src, "--name", "tiny", "--version", "v1")[0] == 0
    archive = _repo_files(hub)[f"{PREFIX}/tiny/v1/data.tar.gz"]
    stored = hub.state.store.object_path(_sha(archive))
    flipped = bytearray(archive)
    flipped[len(flipped) // 2] ^= 0xFF
    stored.write_bytes(bytes(flipped))  # bit rot on the server, same size
    dest = tmp_path / "dest"
    rc, _, err = run_cli(capsys, "fetch", "--name", "tiny", "--dest", dest)
    assert rc == 2
    assert err == (f"datasets fetch: error: {REPO_ID}/{PREFIX}/tiny/v1/data.tar.gz: checksum "
                   f"error: expected {len(archive)} bytes with sha256 {_sha(archive)}, got "
                   f"{len(archive)} bytes with sha256 {_sha(bytes(flipped))} (truncated or "
                   "altered on the Hub, or a corrupt download); nothing was kept\n")
    assert not dest.exists()  # nothing made for a fetch that failed

    # A publisher that uploaded a truncated archive with checksums of the truncated bytes.
    import huggingface_hub as hh

    short = archive[: len(archive) // 2]
    manifest = json.loads(_repo_files(hub)[f"{PREFIX}/tiny/v1/manifest.json"])
    manifest["version"] = "v2"
    staged = tmp_path / "v2"
    staged.mkdir()
    (staged / "data.tar.gz").write_bytes(short)
    (staged / "manifest.json").write_text(json.dumps(manifest))
    (staged / "checksums.sha256").write_text(f"{_sha(short)}  data.tar.gz\n")
    hh.HfApi(endpoint=hub.url, token=CANARY).upload_folder(
        folder_path=staged, path_in_repo=f"{PREFIX}/tiny/v2", repo_id=REPO_ID,
        repo_type="dataset")
    rc, _, err = run_cli(capsys, "fetch", "--name", "tiny", "--version", "v2", "--dest", dest)
    assert rc == 2
    assert err == (f"datasets fetch: error: {REPO_ID}/{PREFIX}/tiny/v2/data.tar.gz: checksum "
                   f"error: expected {len(archive)} bytes with sha256 {_sha(short)}, got "
                   f"{len(short)} bytes with sha256 {_sha(short)} (truncated or altered on the "
                   "Hub, or a corrupt download); nothing was kept\n")
    assert not dest.exists()


@pytest.mark.parametrize("archive_format", ["tar.gz", "none"])
def test_truncated_stored_object_is_a_checksum_error(env: dict[str, str], hub: HubEmulator,
                                                     tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str],
                                                     archive_format: str):
    src = make_dataset(tmp_path / "tiny", 6, 2)
    for version in ("v1", "v2"):
        rc, _, err = run_cli(capsys, "publish", src, "--name", "tiny", "--version", version,
                          "--archive-format", archive_format)
        assert rc == 0, err
    dest = tmp_path / "dest"
    rc, out, err = run_cli(capsys, "fetch", "--name", "tiny", "--version", "v1", "--dest", dest)
    assert rc == 0, err
    good = {p.name: p.read_bytes() for p in (dest / "tiny" / "v1").iterdir()}
    # The object store loses the end of what v2 needs (v1 was fetched before).
    fname = "data.tar.gz" if archive_format == "tar.gz" else "train.jsonl"
    repo = hub.state.store.get("dataset", REPO_ID)
    entry = repo.head.files[f"{PREFIX}/tiny/v2/{fname}"]
    data = hub.state.store.object_path(entry.sha256).read_bytes()
    hub.state.store.object_path(entry.sha256).write_bytes(data[: len(data) // 2])
    started = time.monotonic()
    rc, out, err = run_cli(capsys, "fetch", "--all-latest", "--dest", dest)
    assert time.monotonic() - started < 20  # no network timeouts
    assert (rc, out) == (2, "")
    listed = f" with sha256 {entry.sha256}" if entry.lfs else ""
    assert err == (f"datasets fetch: error: {REPO_ID}/{PREFIX}/tiny/v2/{fname}: checksum error: "
                   f"expected {len(data)} bytes{listed}, got {len(data) // 2} bytes with sha256 "
                   f"{_sha(data[: len(data) // 2])} (truncated or altered on the Hub, or a "
                   "corrupt download); nothing was kept\n")
    # The valid earlier copy is untouched, and nothing else is left behind.
    assert sorted(p.name for p in dest.iterdir()) == ["tiny"]
    assert sorted(p.name for p in (dest / "tiny").iterdir()) == ["v1"]
    assert {p.name: p.read_bytes() for p in (dest / "tiny" / "v1").iterdir()} == good
    assert not (dest / "fetch_manifest.json").exists()


def test_hub_faults_mid_publish(env: dict[str, str], hub: HubEmulator, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]):
    src = make_dataset(tmp_path / "tiny", 6, 2)
    # Rate limited, then the connection dies halfway through the archive upload: retried.
    hub.add_fault("/_lfs/upload/", method="PUT", status=429, retry_after=0)
    hub.add_fault("/_lfs/upload/", method="PUT", action="drop")
    rc, _, err = run_cli(capsys, "publish", src, "--name", "tiny", "--version", "v1")
    assert rc == 0, err
    puts = [r.status for r in hub.requests() if r.method == "PUT"]
    assert puts == [429, 0, 200]

    # The Hub keeps failing the commit: the publish gives up and v2 is not visible at all.
    hub.add_fault("/commit/", status=503, times=10)
    rc, _, err = run_cli(capsys, "publish", src, "--name", "tiny", "--version", "v2")
    assert rc == 2
    assert err == (f"datasets publish: error: commit 3 file(s) to {REPO_ID}: HTTP 503 from "
                   f"{hub.url} (gave up after 4 attempts)\n")
    assert not any("/tiny/v2/" in p for p in _repo_files(hub))
    rc, out, _ = run_cli(capsys, "fetch", "--all-latest", "--dest", tmp_path / "d")
    assert rc == 0 and out.startswith("fetched tiny v1 ")

    # The connection drops during the commit request: retried, committed once.
    hub.clear_faults()
    hub.add_fault("/commit/", action="drop")
    rc, _, err = run_cli(capsys, "publish", src, "--name", "tiny", "--version", "v2")
    assert rc == 0, err
    rc, out, _ = run_cli(capsys, "fetch", "--all-latest", "--dest", tmp_path / "d")
    assert out.startswith("fetched tiny v2 ")


def test_cli_subprocess_never_shows_the_token(hub: HubEmulator, tmp_path: Path):
    src = make_dataset(tmp_path / "tiny", 3, 1)
    env = hf_env(hub, tmp_path, HF_DATASET_REPO_ID=REPO_ID, HF_TOKEN="")
    script = [sys.executable, "-m", "host_tools.datasets"]
    done = subprocess.run([*script, "publish", str(src), "--name", "tiny", "--version", "v1",
                           "--token", CANARY], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    manifest = _repo_files(hub)[f"{PREFIX}/tiny/v1/manifest.json"].decode()
    assert json.loads(manifest)["created_by"]["command"] == (
        f"python -m host_tools.datasets publish {src} --name tiny --version v1")
    bad = subprocess.run([*script, "publish", str(src), "--name", "tiny", "--version", "v2",
                          "--token", "hf_WRONG_" + CANARY], env=env, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2
    assert bad.stderr == ("datasets publish: error: create dataset repo acme/chess-data: HTTP "
                          "401, the Hub refused the token: set HF_TOKEN (or HF_TOKEN_PATH), "
                          "pass --token where the command has it, or store it with `keyring "
                          "set huggingface codex_hf_write_token`\n")
    assert_no_canary(done.stdout, done.stderr, manifest, bad.stdout)
    assert_canary_never_in_urls(hub)


def _preset(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "appliance.training.preset", *args], env=env,
                          capture_output=True, text=True, timeout=300, cwd=env["PYTHONPATH"])


def test_preset_hf_mode_trains_on_fetched_data(hub: HubEmulator, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str],
                                               env: dict[str, str]):
    for name, seed in (("a", 1), ("b", 2)):
        src = make_dataset(tmp_path / name, 6, 2, seed=seed)
        assert run_cli(capsys, "publish", src, "--name", name, "--version", "v1")[0] == 0
    legacy = _legacy_dataset(tmp_path / "legacy")
    assert run_cli(capsys, "publish", legacy, "--name", "old", "--version", "v1")[0] == 0
    cache = tmp_path / "cache"
    penv = {**env, "HF_FETCH_LATEST_ALL_DATASETS": "1", "HF_DATASET_CACHE_DIR": str(cache),
            "RUN_ID": "hf", "TRAIN_EPOCHS": "1", "TRAIN_RUNTIME_MIN_CONTEXT": "2",
            "TRAIN_EXTRA_ARGS": "--embed-dim 8 --hidden-dim 8"}
    done = _preset(penv)
    assert done.returncode == 0, done.stderr
    trains = [str(cache / n / "v1" / "train.jsonl") for n in ("a", "b")]
    assert (f"dataset: HF game_jsonl_runtime_splice_v1: a@v1, b@v1 (manifest "
            f"{cache / 'fetch_manifest.json'})") in done.stdout
    trainer = next(x for x in done.stdout.splitlines() if x.startswith("trainer: "))
    assert f"--train {trains[0]} --train {trains[1]} --val " in trainer
    assert "--runtime-min-context 2" in trainer
    repo = Path(penv["REPO_DIR"])
    assert (repo / "artifacts" / "train" / "hf" / "model_best.pt").is_file()
    log = repo / "artifacts" / "timings" / "runpod_phase_times.jsonl"
    phases = [json.loads(x)["phase"] for x in log.read_text().splitlines()]
    assert phases == ["fetch_datasets", "train_baseline", "evaluate"]
    assert_no_canary(done.stdout, done.stderr)

    # Reusing the manifest makes no Hub request; the legacy bucket drops the splice flags.
    hub.clear_requests()
    reuse = _preset({**penv, "HF_USE_EXISTING_FETCH_MANIFEST": "1",
                     "HF_DATASET_SCHEMA_FILTER": "splice_rows_legacy"}, "--dry-run")
    assert reuse.returncode == 0, reuse.stderr
    trainer = next(x for x in reuse.stdout.splitlines() if x.startswith("trainer: "))
    assert f"--train {cache / 'old' / 'v1' / 'train.jsonl'} --val" in trainer
    assert "--runtime-min-context" not in trainer
    assert hub.requests() == []

    missing = _preset({**penv, "HF_DATASET_REPO_ID": "", "HF_DATASET_FETCH_MANIFEST":
                       str(tmp_path / "none.json")}, "--dry-run")
    assert (missing.returncode, missing.stderr) == (2, (
        "error: HF_FETCH_LATEST_ALL_DATASETS=1 needs HF_DATASET_REPO_ID (the dataset repo, "
        "OWNER/NAME)\n"))
