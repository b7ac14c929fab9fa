"""Publish a dataset dir to the Hub: inspect and validate it (sizes, sha256, row counts, every
row checked), stage the version (archive, manifest.json, checksums.sha256) and upload it in one
commit, never over an existing version.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.atomic import atomic_write_json, sha256_file
from appliance.datasets.manifest import (
    ARCHIVE,
    ARCHIVE_FORMATS,
    CHECKSUMS,
    DATA_FILES,
    FORMATS,
    MANIFEST,
    REPO_TYPE,
    SPLITS,
    STATS,
    DatasetInfo,
    FileInfo,
    build_manifest,
    checksums_text,
)
from appliance.datasets.rows import (
    DatasetError,
    detect_format,
    encode_row,
    parse_line,
    row_format,
)
from appliance.hf import HubClient

VALIDATE_CHUNK_ROWS = 2000
GZIP_LEVEL = 6  # gzip's own default: level 9 is several times slower for 1-2 % smaller JSONL

Progress = Callable[[str, int], None]  # (what, amount done since the last call)


# -- inspecting and validating a dataset dir --


def _validate_chunk(path: str, first_line: int, lines: list[bytes], fmt: str) -> str | None:
    """First error of a run of lines as 'file:line: reason', or None (runs in a worker)."""
    for offset, raw in enumerate(lines):
        if not raw.strip():
            continue
        where = f"{path}:{first_line + offset}"
        try:
            row = parse_line(raw)
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
    except RecursionError:
        raise DatasetError(f"{path}: JSON nested too deeply") from None
    if not isinstance(stats, dict):
        raise DatasetError(f"{path}: must hold a JSON object")
    return stats


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
    fmt = declared or detect_format(directory / SPLITS[0])
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
        path = directory / STATS
        info.files[STATS] = FileInfo(STATS, path.stat().st_size, sha256_file(path))
    return info


# -- staging and uploading --


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
    atomic_write_json(staging / MANIFEST, manifest)
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
