"""Dataset publishing pieces without a Hub: names, validation, manifests, checksums, archive
safety on extraction, and the preset's choice of files in HF mode."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from appliance import settings
from appliance.datasets import fetch, legacy, publish
from appliance.datasets.manifest import check_name, check_prefix, default_version, parse_checksums
from appliance.datasets.rows import DatasetError
from appliance.training import preset
from tests.utils.datasets import make_dataset, write_rows

GAME = "game_jsonl_runtime_splice_v1"
LEGACY = "splice_rows_legacy"
NAME_RULE = "use 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit"


@pytest.mark.parametrize("bad", ["", "..", ".hidden", "a/b", "a\\b", "x" * 101, "ü", "a b"])
def test_names_reject_path_tricks(bad: str):
    with pytest.raises(DatasetError) as err:
        check_name(bad, "dataset name")
    assert str(err.value) == f"dataset name {bad!r} is not allowed: {NAME_RULE}"


def test_default_version_sorts_by_time():
    assert default_version(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == (
        "validated-20260102T030405Z")
    assert check_name(default_version(), "version").startswith("validated-20")
    assert check_prefix("validated_datasets/v2") == "validated_datasets/v2"


def test_inspect_detects_format_and_counts(tmp_path: Path):
    d = make_dataset(tmp_path / "g", 5, 2)
    (d / "stats.json").unlink()
    info = publish.inspect_dataset(d, workers=1)
    assert (info.dataset_format, info.format_source, info.stats) == (GAME, "rows", None)
    assert {n: f.rows for n, f in info.files.items()} == {"train.jsonl": 5, "val.jsonl": 2}
    data = (d / "train.jsonl").read_bytes()
    assert info.files["train.jsonl"].sha256 == hashlib.sha256(data).hexdigest()
    parallel = publish.inspect_dataset(d, workers=2)
    assert parallel.files == info.files


@pytest.mark.parametrize(("setup", "message"), [
    (lambda d: (d / "stats.json").write_text('{"dataset_format": "csv"}'),
     "{d}/stats.json: dataset_format 'csv' is unknown; expected one of "
     "game_jsonl_runtime_splice_v1, splice_rows_legacy"),
    (lambda d: (d / "stats.json").write_text("{oops"),
     "{d}/stats.json: broken JSON: Expecting property name enclosed in double quotes (line 1)"),
    (lambda d: (d / "stats.json").write_text("[]"), "{d}/stats.json: must hold a JSON object"),
    (lambda d: (d / "val.jsonl").write_text("\n\n"), "{d}/val.jsonl: dataset is empty (no rows)"),
    (lambda d: (d / "train.jsonl").write_text('{"moves_uci": []}\n'),
     "{d}/train.jsonl:1: field 'moves_uci' is empty"),
    (lambda d: (d / "val.jsonl").write_text('{"moves_uci": ["e2e4"]}\n[1]\n'),
     "{d}/val.jsonl:2: row must be a JSON object"),
    (lambda d: (d / "val.jsonl").write_text('{"moves_uci": ["e2e4"]}\n{"a": \n'),
     "{d}/val.jsonl:2: broken JSON: Expecting value"),
    (lambda d: (d / "train.jsonl").unlink(),
     "{d}: missing split train.jsonl (a dataset dir needs train.jsonl and val.jsonl)"),
    (lambda d: (d / "val.jsonl").write_bytes(b'{"moves_uci": ["e2e4"]}\n' + b"[" * 100_000
                                             + b"]" * 100_000 + b"\n"),
     "{d}/val.jsonl:2: JSON nested too deeply (a row is a flat object)"),
    (lambda d: (d / "val.jsonl").write_bytes(b'{"moves_uci": ["e2e4"]}\n\x1f\x8b\x08\x00\xff\n'),
     "{d}/val.jsonl:2: not UTF-8 text (byte 0x8b at column 2); is this a JSONL file?"),
    (lambda d: (d / "stats.json").write_text("[" * 100_000), "{d}/stats.json: JSON nested too "
     "deeply"),
    (lambda d: (d / "train.jsonl").write_text(json.dumps(
        {"moves_uci": ["e2e4"], "fen": "rnbqkbnr/pppppppp/8/8/8/8/PPPPPPPP/RNBQKBNR w KQkq - 0 "
         "99999999999999999999"}) + "\n"),
     "{d}/train.jsonl:1: bad FEN 'rnbqkbnr/pppppppp/8/8/8/8/PPPPPPPP/RNBQKBNR w KQkq - 0 "
     "99999999999999999999': full-move number 99999999999999999999 is out of range (1 to "
     "10,000)"),
])
def test_inspect_bad_datasets(tmp_path: Path, setup, message: str):
    d = make_dataset(tmp_path / "g", 3, 2)
    setup(d)
    with pytest.raises(DatasetError) as err:
        publish.inspect_dataset(d, workers=1)
    assert str(err.value) == message.format(d=d)


def test_first_bad_row_is_reported_with_parallel_validation(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(publish, "VALIDATE_CHUNK_ROWS", 3)
    d = make_dataset(tmp_path / "g", 20, 2)
    lines = (d / "train.jsonl").read_text().splitlines()
    for bad in (7, 16):
        lines[bad - 1] = json.dumps({"context": ["e2e4"], "target": "e7e5"})
    (d / "train.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError) as err:
        publish.inspect_dataset(d, workers=2)
    assert str(err.value) == (f"{d}/train.jsonl:7: row format splice_rows_legacy differs from "
                              "the dataset's game_jsonl_runtime_splice_v1")
    assert publish.inspect_dataset(d, validate=False).files["train.jsonl"].rows == 20
    lines[6] = "[" * 100_000
    lines[8] = "\udcff"
    (d / "train.jsonl").write_bytes("\n".join(lines).encode("utf-8", "surrogateescape") + b"\n")
    with pytest.raises(DatasetError) as err:
        publish.inspect_dataset(d, workers=2)
    assert str(err.value) == (f"{d}/train.jsonl:7: JSON nested too deeply (a row is a flat "
                              "object)")


def test_archive_is_reproducible_and_manifest_complete(tmp_path: Path):
    d = make_dataset(tmp_path / "g", 4, 2)
    info = publish.inspect_dataset(d, workers=1)
    plans = []
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        plans.append(publish.stage(info, "g", "v1", "validated_datasets", "acme/d", "tar.gz",
                                   tmp_path / run, {"tool": "test"}))
    assert (tmp_path / "a" / "data.tar.gz").read_bytes() == (
        tmp_path / "b" / "data.tar.gz").read_bytes()
    plan = plans[0]
    assert plan.folder == "validated_datasets/g/v1"
    assert [n for _, n in plan.files] == ["data.tar.gz", "manifest.json", "checksums.sha256"]
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["schema"] == "chessbot-dataset-manifest-v1"
    assert sorted(manifest["files"]) == ["stats.json", "train.jsonl", "val.jsonl"]
    raw = publish.stage(info, "g", "v1", "p", "acme/d", "none", tmp_path / "a", {})
    assert [n for _, n in raw.files] == ["train.jsonl", "val.jsonl", "stats.json",
                                         "manifest.json", "checksums.sha256"]
    sums = parse_checksums((tmp_path / "a" / "checksums.sha256").read_text(), "c")
    assert sums["train.jsonl"] == info.files["train.jsonl"].sha256
    with pytest.raises(DatasetError) as err:
        publish.stage(info, "g", "v1", "p", "acme/d", "zip", tmp_path / "a", {})
    assert str(err.value) == "archive format 'zip' is unknown; expected one of tar.gz, none"


@pytest.mark.parametrize(("text", "message"), [
    ("", "sums: lists no file"),
    ("abc  data.tar.gz\n", "sums:1: expected '<sha256>  <file name>', got 'abc  data.tar.gz'"),
    ("a" * 64 + "  ../etc/passwd\n",
     "sums:1: expected '<sha256>  <file name>', got '" + "a" * 64 + "  ../etc/passwd'"),
])
def test_checksum_file_errors(text: str, message: str):
    with pytest.raises(DatasetError) as err:
        parse_checksums(text, "sums")
    assert str(err.value) == message


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return path


def _manifest(**files: bytes) -> dict[str, object]:
    return {"files": {n.replace("_", "."): {"sha256": hashlib.sha256(b).hexdigest(),
                                             "size": len(b)} for n, b in files.items()}}


@pytest.mark.parametrize(("member", "message"), [
    (tarfile.TarInfo("../evil.jsonl"), "unexpected archive member '../evil.jsonl'"),
    (tarfile.TarInfo("/etc/passwd"), "unexpected archive member '/etc/passwd'"),
])
def test_extraction_refuses_path_tricks(tmp_path: Path, member: tarfile.TarInfo, message: str):
    archive = _tar(tmp_path / "a.tar.gz", [(member, b"x")])
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DatasetError) as err:
        fetch.extract_archive(archive, _manifest(train_jsonl=b"x"), out, "A")
    assert str(err.value) == f"A: {message}"
    assert list(out.iterdir()) == [] and not (tmp_path / "evil.jsonl").exists()


def test_extraction_refuses_links_and_mismatches(tmp_path: Path):
    link = tarfile.TarInfo("train.jsonl")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    out = tmp_path / "out"
    out.mkdir()
    archive = _tar(tmp_path / "l.tar.gz", [(link, b"")])
    with pytest.raises(DatasetError) as err:
        fetch.extract_archive(archive, _manifest(train_jsonl=b"x"), out, "A")
    assert str(err.value) == "A: archive member 'train.jsonl' is not a regular file"
    archive = _tar(tmp_path / "m.tar.gz", [(tarfile.TarInfo("train.jsonl"), b"other")])
    with pytest.raises(DatasetError) as err:
        fetch.extract_archive(archive, _manifest(train_jsonl=b"x"), out, "A")
    assert str(err.value) == "A: train.jsonl in the archive does not match the manifest's sha256"
    archive = _tar(tmp_path / "s.tar.gz", [(tarfile.TarInfo("train.jsonl"), b"x")])
    with pytest.raises(DatasetError) as err:
        fetch.extract_archive(archive, _manifest(train_jsonl=b"x", val_jsonl=b"y"), out, "A")
    assert str(err.value) == "A: archive lacks val.jsonl"


def test_predecessor_archives_extract_under_their_root_and_refuse_tricks(tmp_path: Path):
    folder = tarfile.TarInfo("dataset")
    folder.type = tarfile.DIRTYPE
    sub = tarfile.TarInfo("dataset/cache")
    sub.type = tarfile.DIRTYPE
    manifest = {"files": {"train.jsonl": {"sha256": hashlib.sha256(b"t").hexdigest()},
                          "cache/a.bin": {"sha256": hashlib.sha256(b"a").hexdigest()}}}
    good = [(folder, b""), (tarfile.TarInfo("dataset/train.jsonl"), b"t"), (sub, b""),
            (tarfile.TarInfo("dataset/cache/a.bin"), b"a")]
    out = tmp_path / "out"
    out.mkdir()
    fetch.extract_archive(_tar(tmp_path / "g.tar.gz", good), manifest, out, "A", root="dataset")
    assert (out / "train.jsonl").read_bytes() == b"t"
    assert (out / "cache" / "a.bin").read_bytes() == b"a"
    for name in ("train.jsonl", "dataset/../train.jsonl", "other/train.jsonl"):
        bad = _tar(tmp_path / "b.tar.gz", [(folder, b""), (tarfile.TarInfo(name), b"t")])
        with pytest.raises(DatasetError) as err:
            fetch.extract_archive(bad, manifest, tmp_path / "out2", "A", root="dataset")
        assert str(err.value) == f"A: unexpected archive member {name!r}"
    escape = tarfile.TarInfo("dataset/../../x")
    escape.type = tarfile.DIRTYPE
    with pytest.raises(DatasetError) as err:
        fetch.extract_archive(_tar(tmp_path / "e.tar.gz", [(escape, b"")]), manifest,
                              tmp_path / "out2", "A", root="dataset")
    assert str(err.value) == "A: unexpected archive member 'dataset/../../x'"


def _old_manifest(**changes: object) -> dict[str, object]:
    sha = "a" * 64
    return {"kind": "chess-bot-validated-dataset", "schema_version": 1, "dataset_name": "d",
            "version": "v", "dataset_format": "unknown", "stats_json": None,
            "files": [{"path": p, "size_bytes": 1, "sha256": sha}
                      for p in ("train.jsonl", "val.jsonl", ".gitkeep")],
            "distribution": {"mode": "archive", "archive_name": "d_v.tar.gz"}, **changes}


def test_predecessor_manifest_is_read_as_ours():
    ours, archive = legacy.from_legacy(_old_manifest(), "d", "v", "M")
    assert archive == "d_v.tar.gz"
    assert ours["files"][".gitkeep"] == {"size": 1, "sha256": "a" * 64}
    assert (ours["dataset_format"], ours["dataset_format_source"]) == (None, "rows")
    files_mode = _old_manifest(distribution={"mode": "files", "archive_name": None})
    assert legacy.from_legacy(files_mode, "d", "v", "M")[1] is None


@pytest.mark.parametrize(("changes", "problem"), [
    ({"dataset_name": "e"}, "it names 'e' 'v'"),
    ({"dataset_format": "pgn"}, "dataset_format 'pgn' is unknown"),
    ({"files": [{"path": "../x", "size_bytes": 1, "sha256": "a" * 64}]},
     "'files' must list path, size_bytes and sha256 of every file"),
    ({"files": [{"path": "train.jsonl", "size_bytes": 1, "sha256": "a" * 64}]},
     "'files' lacks val.jsonl"),
    ({"distribution": {"mode": "zip"}}, "distribution mode 'zip' is unknown"),
    ({"distribution": {"mode": "archive", "archive_name": "../x.tar.gz"}},
     "archive_name '../x.tar.gz' is not a .tar.gz file name"),
])
def test_predecessor_manifest_problems(changes: dict[str, object], problem: str):
    with pytest.raises(DatasetError) as err:
        legacy.from_legacy(_old_manifest(**changes), "d", "v", "M")
    assert str(err.value) == f"M: not a manifest of d v: {problem}"


def test_versions_sort_by_their_timestamp():
    names = ["v2", "validated-20251101T000000Z", "20260227T044455Z", "v10",
             "validated-20260101T000000Z"]
    assert sorted(names, key=fetch.version_key) == [
        "v10", "v2", "validated-20251101T000000Z", "validated-20260101T000000Z",
        "20260227T044455Z"]


def _fetch_manifest(tmp_path: Path, formats: dict[str, list[str]]) -> dict[str, object]:
    buckets = {}
    for fmt, names in formats.items():
        files = {"train": [], "val": []}
        for name in names:
            for split in ("train", "val"):
                p = tmp_path / name / f"{split}.jsonl"
                p.parent.mkdir(parents=True, exist_ok=True)
                write_rows(p, [{"moves_uci": ["e2e4"]}])
                files[split].append(str(p))
        buckets[fmt] = {"datasets": [f"{n}@v1" for n in names], **files}
    return {"schema": fetch.FETCH_SCHEMA, "aggregate_by_format": buckets}


def test_preset_picks_a_bucket(tmp_path: Path):
    both = _fetch_manifest(tmp_path, {LEGACY: ["old"], GAME: ["a", "b"]})
    fmt, train, val, names = preset.select_bucket(both, "auto", tmp_path / "m.json")
    assert (fmt, names) == (GAME, ["a@v1", "b@v1"])
    assert train == [tmp_path / "a" / "train.jsonl", tmp_path / "b" / "train.jsonl"]
    assert preset.select_bucket(both, LEGACY, tmp_path / "m.json")[0] == LEGACY
    legacy_only = _fetch_manifest(tmp_path, {LEGACY: ["old"]})
    assert preset.select_bucket(legacy_only, "auto", tmp_path / "m.json")[0] == LEGACY
    with pytest.raises(preset.PresetError) as err:
        preset.select_bucket(legacy_only, GAME, tmp_path / "m.json")
    assert str(err.value) == ("HF_DATASET_SCHEMA_FILTER=game_jsonl_runtime_splice_v1: no "
                              "fetched dataset has that format (found: splice_rows_legacy)")
    os.unlink(tmp_path / "old" / "val.jsonl")
    with pytest.raises(preset.PresetError) as err:
        preset.select_bucket(legacy_only, "auto", tmp_path / "m.json")
    assert str(err.value) == (f"{tmp_path / 'old' / 'val.jsonl'}: listed in {tmp_path / 'm.json'}"
                              " but missing; fetch again (HF_USE_EXISTING_FETCH_MANIFEST=0)")


def test_reading_a_fetch_manifest(tmp_path: Path):
    with pytest.raises(DatasetError) as err:
        fetch.read_fetch_manifest(tmp_path / "none.json")
    assert str(err.value) == f"{tmp_path / 'none.json'}: fetch manifest not found"
    (tmp_path / "x.json").write_text('{"schema": "other"}')
    with pytest.raises(DatasetError) as err:
        fetch.read_fetch_manifest(tmp_path / "x.json")
    assert str(err.value) == (f"{tmp_path / 'x.json'}: not a fetch manifest (schema "
                              "chessbot-fetch-manifest-v1)")


def test_reading_the_predecessors_fetch_manifest(tmp_path: Path):
    """Its fetch tool's --output-manifest: reused by the preset as ours."""
    train, val = (tmp_path / "a" / "dataset" / f"{s}.jsonl" for s in ("train", "val"))
    old = {
        "repo_id": "o/r", "repo_type": "dataset", "all_latest": True,
        "repo_path_prefix": "validated_datasets",
        "datasets": [{"dataset_name": "a", "version": "20260227T044455Z",
                      "dataset_format": "game_jsonl_runtime_splice_v1",
                      "train_path": str(train), "val_path": str(val)},
                     {"dataset_name": "b", "version": "v1", "dataset_format": None}],
        "aggregate": {"dataset_count": 2, "train_paths": [str(train)], "val_paths": [str(val)]},
        "aggregate_by_format": {
            "game_jsonl_runtime_splice_v1": {"dataset_count": 1, "train_paths": [str(train)],
                                             "val_paths": [str(val)], "train_count": 1,
                                             "val_count": 1},
            "unknown": {"dataset_count": 1, "train_paths": [], "val_paths": [],
                        "train_count": 0, "val_count": 0}},
    }
    path = tmp_path / "hf_fetch_manifest.json"
    path.write_text(json.dumps(old))
    manifest = fetch.read_fetch_manifest(path)
    assert manifest["aggregate_by_format"] == {
        "game_jsonl_runtime_splice_v1": {"datasets": ["a@20260227T044455Z"],
                                         "train": [str(train)], "val": [str(val)]},
        "unknown": {"datasets": ["b@v1"], "train": [], "val": []}}
    train.parent.mkdir(parents=True)
    write_rows(train, [{"moves": ["e2e4"]}])
    write_rows(val, [{"moves": ["d2d4"]}])
    assert preset.select_bucket(manifest, "auto", path) == (
        "game_jsonl_runtime_splice_v1", [train], [val], ["a@20260227T044455Z"])
    old["aggregate_by_format"]["unknown"] = {"train_paths": "x"}
    path.write_text(json.dumps(old))
    with pytest.raises(DatasetError) as err:
        fetch.read_fetch_manifest(path)
    assert str(err.value) == (f"{path}: aggregate_by_format['unknown'] needs the lists "
                              "train_paths and val_paths")


def test_trainer_command_repeats_files_and_drops_splice_flags_for_legacy(monkeypatch):
    monkeypatch.setenv("TRAIN_RUNTIME_MIN_CONTEXT", "4")
    monkeypatch.setenv("TRAIN_EPOCHS", "2")
    cfg = settings.load(settings.TrainingSettings)
    cmd = preset.trainer_command(cfg, [Path("a"), Path("b")], [Path("va"), Path("vb")],
                                 Path("o"), gpus=0)
    assert cmd[3:] == ["--train", "a", "--train", "b", "--val", "va", "--val", "vb",
                       "--output-dir", "o", "--epochs", "2", "--runtime-min-context", "4"]
    legacy = preset.trainer_command(cfg, [Path("a")], [Path("v")], Path("o"), 0, splice=False)
    assert "--runtime-min-context" not in legacy and "--epochs" in legacy


def test_hf_settings_defaults_and_errors(monkeypatch, tmp_path: Path):
    for key in [k for k in os.environ if k.startswith("HF_")]:
        monkeypatch.delenv(key)
    cfg = settings.load(settings.HfSettings)
    assert cfg.sync_patterns == ["*.pt", "*.json"]
    assert cfg.sync_state_dir(tmp_path) == tmp_path / ".appliance" / "hf-sync"
    assert cfg.fetch_manifest(tmp_path) == tmp_path / "data" / "hf_datasets" / "fetch_manifest.json"
    monkeypatch.setenv("HF_DATASET_SCHEMA_FILTER", "csv")
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value_123")
    with pytest.raises(settings.SettingsError) as err:
        settings.load(settings.HfSettings)
    assert str(err.value) == (
        "bad environment: HF_DATASET_SCHEMA_FILTER='csv': Input should be 'auto', "
        "'game_jsonl_runtime_splice_v1' or 'splice_rows_legacy' (Preset: row format to train "
        "on; auto prefers game rows.)")
