"""Versioned datasets on the Hugging Face Hub: publish a dataset dir to <prefix>/<name>/<version>/
(data, manifest.json, checksums.sha256 in one commit) and fetch versions back, verified.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from appliance.atomic import atomic_write_json
from appliance.datasets.rows import (
    GAME_FORMAT,
    LEGACY_FORMAT,
    DatasetError,
    encode_row,
    row_format,
)
from appliance.hf import HubClient

REPO_TYPE = "dataset"
MANIFEST = "manifest.json"
CHECKSUMS = "checksums.sha256"
ARCHIVE = "data.tar.gz"
STATS = "stats.json"
SPLITS = ("train.jsonl", "val.jsonl")
DATA_FILES = (*SPLITS, STATS)
FORMATS = (GAME_FORMAT, LEGACY_FORMAT)
ARCHIVE_FORMATS = ("tar.gz", "none")
MANIFEST_SCHEMA = "chessbot-dataset-manifest-v1"
FETCH_SCHEMA = "chessbot-fetch-manifest-v1"
NAME_RULE = "1-100 letters, digits, '.', '_' or '-', starting with a letter or digit"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
VALIDATE_CHUNK_ROWS = 2000
GZIP_LEVEL = 6  # gzip's own default: level 9 is several times slower for 1-2 % smaller JSONL

Progress = Callable[[str, int], None]  # (what, amount done since the last call)


def check_name(value: str, what: str) -> str:
    """A dataset name or version: one path segment, no tricks (no '/', '..', leading '.')."""
    if not _NAME.fullmatch(value) or value in (".", ".."):
        raise DatasetError(f"{what} {value!r} is not allowed: use {NAME_RULE}")
    return value


def check_prefix(value: str) -> str:
    """The repo folder holding the datasets: names joined by '/', no '..' or leading '/'."""
    if not all(_NAME.fullmatch(part) for part in value.split("/")):
        raise DatasetError(f"path prefix {value!r} is not allowed: use folder names ({NAME_RULE}) "
                           "joined by '/'")
    return value


def default_version(now: datetime | None = None) -> str:
    """`validated-YYYYMMDDTHHMMSSZ`: versions sort by publication time."""
    return (now or datetime.now(UTC)).strftime("validated-%Y%m%dT%H%M%SZ")


def _utc_iso() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


# -- inspecting and validating a dataset dir --


@dataclass
class FileInfo:
    name: str
    size: int
    sha256: str
    rows: int | None = None  # for train.jsonl and val.jsonl

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"size": self.size, "sha256": self.sha256}
        if self.rows is not None:
            out["rows"] = self.rows
        return out


@dataclass
class DatasetInfo:
    directory: Path
    dataset_format: str
    format_source: str  # "stats.json" or "rows"
    stats: dict[str, Any] | None
    files: dict[str, FileInfo] = field(default_factory=dict)


def _validate_chunk(path: str, first_line: int, lines: list[bytes], fmt: str) -> str | None:
    """First error of a run of lines as 'file:line: reason', or None (runs in a worker)."""
    for offset, raw in enumerate(lines):
        if not raw.strip():
            continue
        where = f"{path}:{first_line + offset}"
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as exc:
            return f"{where}: broken JSON: {exc.msg}"
        try:
            if not isinstance(row, dict):
                raise DatasetError("row must be a JSON object")
            kind = row_format(row)
            if kind != fmt:
                raise DatasetError(f"row format {kind} differs from the dataset's {fmt}")
            encode_row(row)
        except DatasetError as exc:
            return f"{where}: {exc}"
    return None


def _line_chunks(path: Path, digest: Any, progress: Progress | None
                 ) -> Iterator[tuple[int, list[bytes]]]:
    """(first line number, lines) runs of a file, hashing every byte on the way."""
    chunk: list[bytes] = []
    first = 1
    with path.open("rb") as fh:
        for line_no, line in enumerate(fh, 1):
            digest.update(line)
            if progress:
                progress(path.name, len(line))
            if not chunk:
                first = line_no
            chunk.append(line)
            if len(chunk) >= VALIDATE_CHUNK_ROWS:
                yield first, chunk
                chunk = []
    if chunk:
        yield first, chunk


def _read_stats(directory: Path) -> dict[str, Any] | None:
    path = directory / STATS
    if not path.exists():
        return None
    try:
        stats = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: broken JSON: {exc.msg} (line {exc.lineno})") from None
    if not isinstance(stats, dict):
        raise DatasetError(f"{path}: must hold a JSON object")
    return stats


def _first_row_format(path: Path) -> str:
    with path.open("rb") as fh:
        for line_no, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
                if not isinstance(row, dict):
                    raise DatasetError("row must be a JSON object")
                return row_format(row)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{line_no}: broken JSON: {exc.msg}") from None
            except DatasetError as exc:
                raise DatasetError(f"{path}:{line_no}: {exc}") from None
    raise DatasetError(f"{path}: dataset is empty (no rows)")


def _raise_first(errors: Iterable[str | None]) -> None:
    for error in errors:
        if error:
            raise DatasetError(error)


def inspect_dataset(directory: Path, *, validate: bool = True, workers: int | None = None,
                    progress: Progress | None = None) -> DatasetInfo:
    """Sizes, sha256 and row counts of a dataset dir; with `validate`, every row is checked
    against its format (legal moves included) and the first bad row is reported as file:line."""
    if not directory.is_dir():
        raise DatasetError(f"{directory}: not a directory")
    for split in SPLITS:
        if not (directory / split).is_file():
            raise DatasetError(f"{directory}: missing split {split} (a dataset dir needs "
                               f"{' and '.join(SPLITS)})")
    stats = _read_stats(directory)
    declared = stats.get("dataset_format") if stats else None
    if declared is not None and declared not in FORMATS:
        raise DatasetError(f"{directory / STATS}: dataset_format {declared!r} is unknown; "
                           f"expected one of {', '.join(FORMATS)}")
    fmt = declared or _first_row_format(directory / SPLITS[0])
    info = DatasetInfo(directory, fmt, "stats.json" if declared else "rows", stats)
    workers = workers or os.cpu_count() or 1
    pool = ProcessPoolExecutor(workers) if validate and workers > 1 else None
    try:
        for split in SPLITS:
            path = directory / split
            digest = hashlib.sha256()
            rows = 0
            pending: deque[Future[str | None]] = deque()
            for first, lines in _line_chunks(path, digest, progress):
                rows += sum(1 for x in lines if x.strip())
                if not validate:
                    continue
                if pool is None:
                    _raise_first([_validate_chunk(str(path), first, lines, fmt)])
                    continue
                pending.append(pool.submit(_validate_chunk, str(path), first, lines, fmt))
                if len(pending) > 4 * workers:  # bounds the lines held in memory
                    _raise_first([pending.popleft().result()])
            # In file order, so the first bad line is the one reported.
            _raise_first(f.result() for f in pending)
            if rows == 0:
                raise DatasetError(f"{path}: dataset is empty (no rows)")
            info.files[split] = FileInfo(split, path.stat().st_size, digest.hexdigest(), rows)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    if stats is not None:
        data = (directory / STATS).read_bytes()
        info.files[STATS] = FileInfo(STATS, len(data), hashlib.sha256(data).hexdigest())
    return info


# -- publishing --


@dataclass
class PublishPlan:
    repo_id: str
    folder: str  # <prefix>/<name>/<version>
    manifest: dict[str, Any]
    files: list[tuple[Path, str]]  # (local file, name inside the version folder)

    def sizes(self) -> list[tuple[str, int]]:
        return [(name, path.stat().st_size) for path, name in self.files]


class _HashingWriter(io.RawIOBase):
    """A write-only file that hashes and counts what passes through to `target`."""

    def __init__(self, target: io.BufferedWriter) -> None:
        self.target = target
        self.digest = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.digest.update(view)
        self.size += len(view)
        self.target.write(view)
        return len(view)


def _write_archive(info: DatasetInfo, out: Path, progress: Progress | None) -> FileInfo:
    import gzip

    names = [n for n in DATA_FILES if n in info.files]
    with out.open("wb") as raw:
        hashing = _HashingWriter(raw)
        # mtime=0 and fixed member metadata: the same dataset gives a byte-identical archive.
        with gzip.GzipFile(filename="", mode="wb", fileobj=hashing, compresslevel=GZIP_LEVEL,
                           mtime=0) as gz, tarfile.open(fileobj=gz, mode="w",
                                                        format=tarfile.PAX_FORMAT) as tar:
            for name in names:
                member = tarfile.TarInfo(name)
                member.size = info.files[name].size
                member.mode = 0o644
                with (info.directory / name).open("rb") as src:
                    tar.addfile(member, _ProgressReader(src, name, progress))
    return FileInfo(ARCHIVE, hashing.size, hashing.digest.hexdigest())


class _ProgressReader(io.RawIOBase):
    def __init__(self, src: Any, name: str, progress: Progress | None) -> None:
        self.src, self.name, self.progress = src, name, progress

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data: bytes = self.src.read(size)
        if self.progress and data:
            self.progress(self.name, len(data))
        return data


def build_manifest(name: str, version: str, info: DatasetInfo, archive: FileInfo | None,
                   created_by: dict[str, Any]) -> dict[str, Any]:
    return {
        "schema": MANIFEST_SCHEMA,
        "name": name,
        "version": version,
        "dataset_format": info.dataset_format,
        "dataset_format_source": info.format_source,
        "created_at": _utc_iso(),
        "created_by": created_by,
        "stats": info.stats,
        "rows": {s.removesuffix(".jsonl"): info.files[s].rows for s in SPLITS},
        "files": {n: f.to_json() for n, f in info.files.items()},
        "archive": None if archive is None else {"format": "tar.gz", "file": ARCHIVE,
                                                  **archive.to_json()},
    }


def checksums_text(entries: Sequence[tuple[str, str]]) -> str:
    """`sha256sum` format, so `sha256sum -c checksums.sha256` works in the version folder."""
    return "".join(f"{sha}  {name}\n" for name, sha in entries)


def stage(info: DatasetInfo, name: str, version: str, prefix: str, repo_id: str,
          archive_format: str, staging: Path, created_by: dict[str, Any],
          progress: Progress | None = None) -> PublishPlan:
    """Write what will be uploaded into `staging`: the data, manifest.json, checksums.sha256."""
    if archive_format not in ARCHIVE_FORMATS:
        raise DatasetError(f"archive format {archive_format!r} is unknown; expected one of "
                           f"{', '.join(ARCHIVE_FORMATS)}")
    files: list[tuple[Path, str]] = []
    archive = None
    if archive_format == "tar.gz":
        archive = _write_archive(info, staging / ARCHIVE, progress)
        files.append((staging / ARCHIVE, ARCHIVE))
        sums = [(ARCHIVE, archive.sha256)]
    else:
        files += [(info.directory / n, n) for n in DATA_FILES if n in info.files]
        sums = [(n, info.files[n].sha256) for n in DATA_FILES if n in info.files]
    manifest = build_manifest(name, version, info, archive, created_by)
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    (staging / CHECKSUMS).write_text(checksums_text(sums), encoding="utf-8")
    # manifest.json and checksums.sha256 ride in the same commit as the data: a version is
    # visible complete or not at all.
    files += [(staging / MANIFEST, MANIFEST), (staging / CHECKSUMS, CHECKSUMS)]
    return PublishPlan(repo_id, f"{prefix}/{name}/{version}", manifest, files)


def upload_plan(client: HubClient, plan: PublishPlan) -> str:
    """Upload a staged version in one commit; refuses a version that already exists."""
    client.require_token(f"publish to {plan.repo_id}")
    client.ensure_repo(plan.repo_id, REPO_TYPE)
    existing = client.list_files(plan.repo_id, REPO_TYPE, plan.folder)
    if existing:
        raise DatasetError(
            f"{plan.repo_id}/{plan.folder} already exists ({len(existing)} file(s)); published "
            "versions are never overwritten: pick another --version")
    result = client.upload(
        plan.repo_id, REPO_TYPE, [(src, f"{plan.folder}/{n}") for src, n in plan.files],
        f"publish dataset {plan.manifest['name']} {plan.manifest['version']} "
        f"({plan.manifest['dataset_format']})")
    return result.oid


# -- listing and fetching --


def list_versions(client: HubClient, repo_id: str, prefix: str, revision: str,
                  name: str | None = None) -> dict[str, dict[str, set[str]]]:
    """{name: {version: file names}} under `prefix` (or `prefix/name`), from one listing."""
    folder = f"{prefix}/{name}" if name else prefix
    found: dict[str, dict[str, set[str]]] = {}
    for f in client.list_files(repo_id, REPO_TYPE, folder, revision):
        parts = f.path[len(prefix) + 1:].split("/")
        if len(parts) == 3:
            found.setdefault(parts[0], {}).setdefault(parts[1], set()).add(parts[2])
    return found


def complete(files: set[str]) -> bool:
    """A version counts only once its manifest.json and checksums.sha256 exist."""
    return MANIFEST in files and CHECKSUMS in files


def newest_complete(versions: dict[str, set[str]]) -> str | None:
    done = [v for v, files in versions.items() if complete(files) and _NAME.fullmatch(v)]
    return max(done) if done else None


@dataclass
class Fetched:
    name: str
    version: str
    directory: Path
    manifest: dict[str, Any]
    cached: bool

    def entry(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "dataset_format": self.manifest["dataset_format"],
            "dir": str(self.directory),
            "train": str(self.directory / "train.jsonl"),
            "val": str(self.directory / "val.jsonl"),
            "train_rows": self.manifest["rows"]["train"],
            "val_rows": self.manifest["rows"]["val"],
            "manifest": str(self.directory / MANIFEST),
        }


def sha256_path(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while data := fh.read(1 << 20):
            digest.update(data)
    return digest.hexdigest()


def parse_checksums(text: str, where: str) -> dict[str, str]:
    sums: dict[str, str] = {}
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        sha, sep, name = line.partition("  ")
        name = name.lstrip("*")
        if not sep or not _SHA256.fullmatch(sha) or name not in (ARCHIVE, *DATA_FILES):
            raise DatasetError(f"{where}:{line_no}: expected '<sha256>  <file name>', got "
                               f"{line[:120]!r}")
        sums[name] = sha
    if not sums:
        raise DatasetError(f"{where}: lists no file")
    return sums


def _check_manifest(manifest: Any, name: str, version: str, where: str) -> dict[str, Any]:
    if not isinstance(manifest, dict):
        raise DatasetError(f"{where}: must hold a JSON object")
    problems = []
    if manifest.get("name") != name or manifest.get("version") != version:
        problems.append(f"it names {manifest.get('name')!r} {manifest.get('version')!r}")
    if manifest.get("dataset_format") not in FORMATS:
        problems.append(f"dataset_format {manifest.get('dataset_format')!r} is unknown")
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(s in files for s in SPLITS) or not all(
        isinstance(f, dict) and _SHA256.fullmatch(str(f.get("sha256"))) and
        isinstance(f.get("size"), int) for f in files.values()
    ):
        problems.append("'files' must give size and sha256 of train.jsonl and val.jsonl")
    if not isinstance(manifest.get("rows"), dict):
        problems.append("'rows' is missing")
    if problems:
        raise DatasetError(f"{where}: not a manifest of {name} {version}: {'; '.join(problems)}")
    return manifest


def _verify(path: Path, expected: str, what: str) -> None:
    got = sha256_path(path)
    if got != expected:
        raise DatasetError(f"{what}: sha256 mismatch: expected {expected}, got {got} (corrupt "
                           "download or altered file); nothing was kept")


def _extract(archive: Path, manifest: dict[str, Any], dest: Path, what: str) -> None:
    """Extract the manifest's files from the archive, checking each member's name, type and
    sha256; anything else in the archive is an error (no path tricks, no links)."""
    expected: dict[str, dict[str, Any]] = manifest["files"]
    seen: set[str] = set()
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            for member in tar:
                if member.name not in expected or member.name in seen:
                    raise DatasetError(f"{what}: unexpected archive member {member.name!r}")
                if not member.isfile():
                    raise DatasetError(f"{what}: archive member {member.name!r} is not a "
                                       "regular file")
                src = tar.extractfile(member)
                assert src is not None
                digest = hashlib.sha256()
                with (dest / member.name).open("wb") as out:
                    while data := src.read(1 << 20):
                        digest.update(data)
                        out.write(data)
                if digest.hexdigest() != expected[member.name]["sha256"]:
                    raise DatasetError(f"{what}: {member.name} in the archive does not match "
                                       "the manifest's sha256")
                seen.add(member.name)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DatasetError(f"{what}: archive is corrupt or truncated ({exc})") from None
    missing = sorted(set(expected) - seen)
    if missing:
        raise DatasetError(f"{what}: archive lacks {', '.join(missing)}")


def _cached(final: Path, name: str, version: str) -> dict[str, Any] | None:
    """The manifest of an earlier complete fetch whose files still match it, else None."""
    try:
        manifest = json.loads((final / MANIFEST).read_text(encoding="utf-8"))
        _check_manifest(manifest, name, version, str(final / MANIFEST))
        for fname, meta in manifest["files"].items():
            if sha256_path(final / fname) != meta["sha256"]:
                return None
    except (OSError, ValueError, DatasetError):
        return None
    return dict(manifest)


def fetch_version(client: HubClient, repo_id: str, prefix: str, name: str, version: str,
                  files: set[str], dest: Path, revision: str) -> Fetched:
    """Download one version into `dest/<name>/<version>/`, verified; on any failure nothing is
    left under that path."""
    check_name(name, "dataset name")
    check_name(version, "version")
    folder = f"{prefix}/{name}/{version}"
    if not complete(files):
        raise DatasetError(f"{repo_id}/{folder} is incomplete (no {MANIFEST} or {CHECKSUMS}); "
                           "it was never fully published")
    final = dest / name / version
    cached = _cached(final, name, version)
    if cached is not None:
        return Fetched(name, version, final, cached, True)
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".fetch-{version}-"))
    try:
        def get(fname: str) -> Path:
            return client.download(repo_id, REPO_TYPE, f"{folder}/{fname}", work / "dl", revision)

        manifest_path = get(MANIFEST)
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise DatasetError(f"{repo_id}/{folder}/{MANIFEST}: not JSON ({exc})") from None
        manifest = _check_manifest(manifest, name, version, f"{repo_id}/{folder}/{MANIFEST}")
        sums = parse_checksums(get(CHECKSUMS).read_text(encoding="utf-8"),
                               f"{repo_id}/{folder}/{CHECKSUMS}")
        out = work / "out"
        out.mkdir()
        archive = manifest.get("archive")
        if archive:
            if ARCHIVE not in sums:
                raise DatasetError(f"{repo_id}/{folder}/{CHECKSUMS}: no entry for {ARCHIVE}")
            path = get(ARCHIVE)
            _verify(path, sums[ARCHIVE], f"{repo_id}/{folder}/{ARCHIVE}")
            _extract(path, manifest, out, f"{repo_id}/{folder}/{ARCHIVE}")
        else:
            for fname, meta in manifest["files"].items():
                if sums.get(fname) != meta["sha256"]:
                    raise DatasetError(f"{repo_id}/{folder}: {CHECKSUMS} and {MANIFEST} "
                                       f"disagree on {fname}")
                path = get(fname)
                _verify(path, meta["sha256"], f"{repo_id}/{folder}/{fname}")
                os.replace(path, out / fname)
        (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        if final.exists():
            shutil.rmtree(final)  # an earlier fetch that no longer verifies
        os.replace(out, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return Fetched(name, version, final, manifest, False)


def fetch(client: HubClient, repo_id: str, prefix: str, name: str, version: str | None,
          dest: Path) -> tuple[Fetched, str]:
    """One version (default: the newest complete one) of one dataset; returns it and the
    repo revision it came from."""
    check_name(name, "dataset name")
    if version is not None:
        check_name(version, "version")
    revision = client.head(repo_id, REPO_TYPE)
    versions = list_versions(client, repo_id, prefix, revision, name).get(name, {})
    if not versions:
        raise DatasetError(f"dataset {name!r} not found under {repo_id}/{prefix}/")
    if version is None:
        version = newest_complete(versions)
        if version is None:
            raise DatasetError(f"dataset {name!r} has no complete version in {repo_id}")
    elif version not in versions:
        known = ", ".join(sorted(versions)[-5:])
        raise DatasetError(f"dataset {name!r} has no version {version!r} (newest: {known})")
    return fetch_version(client, repo_id, prefix, name, version, versions[version], dest,
                         revision), revision


def fetch_all_latest(client: HubClient, repo_id: str, prefix: str, dest: Path
                     ) -> tuple[list[Fetched], str]:
    """The newest complete version of every dataset under the prefix, all from one revision;
    versions without a manifest (never fully published) are ignored."""
    revision = client.head(repo_id, REPO_TYPE)
    everything = list_versions(client, repo_id, prefix, revision)
    fetched = []
    for name in sorted(everything):
        if not _NAME.fullmatch(name):
            continue
        version = newest_complete(everything[name])
        if version is None:
            continue
        fetched.append(fetch_version(client, repo_id, prefix, name, version,
                                     everything[name][version], dest, revision))
    if not fetched:
        raise DatasetError(f"no complete dataset version under {repo_id}/{prefix}/")
    return fetched, revision


def fetch_manifest(fetched: Sequence[Fetched], repo_id: str, prefix: str, revision: str
                   ) -> dict[str, Any]:
    """The aggregate manifest: every dataset, every train/val path, and buckets by format."""
    buckets: dict[str, dict[str, Any]] = {}
    for f in fetched:
        e = f.entry()
        b = buckets.setdefault(e["dataset_format"], {"datasets": [], "train": [], "val": [],
                                                     "train_rows": 0, "val_rows": 0})
        b["datasets"].append(f"{f.name}@{f.version}")
        b["train"].append(e["train"])
        b["val"].append(e["val"])
        b["train_rows"] += e["train_rows"]
        b["val_rows"] += e["val_rows"]
    return {
        "schema": FETCH_SCHEMA,
        "created_at": _utc_iso(),
        "repo_id": repo_id,
        "revision": revision,
        "prefix": prefix,
        "datasets": [f.entry() for f in fetched],
        "train": [f.entry()["train"] for f in fetched],
        "val": [f.entry()["val"] for f in fetched],
        "aggregate_by_format": buckets,
    }


def fetch_to_manifest(client: HubClient, repo: str, prefix: str, dest: Path,
                      manifest_out: Path | None, name: str | None = None,
                      version: str | None = None) -> tuple[list[Fetched], dict[str, Any]]:
    """Fetch one dataset (`name`) or the newest version of each, and write the aggregate
    manifest to `manifest_out`."""
    if name is not None:
        one, revision = fetch(client, repo, prefix, name, version, dest)
        fetched = [one]
    else:
        fetched, revision = fetch_all_latest(client, repo, prefix, dest)
    manifest = fetch_manifest(fetched, repo, prefix, revision)
    if manifest_out is not None:
        write_json_atomic(manifest_out, manifest)
    return fetched, manifest


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    atomic_write_json(path, data)


def read_fetch_manifest(path: Path) -> dict[str, Any]:
    """A fetch manifest written earlier, checked enough to train from."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{path}: fetch manifest not found") from None
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot read the fetch manifest: {exc}") from None
    if not isinstance(data, dict) or data.get("schema") != FETCH_SCHEMA or not isinstance(
        data.get("aggregate_by_format"), dict
    ):
        raise DatasetError(f"{path}: not a fetch manifest (schema {FETCH_SCHEMA})")
    return data

