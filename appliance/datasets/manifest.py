"""What a published dataset version is made of, on the Hugging Face Hub and on disk: the names
(dataset, version, repo folder prefix) and their rules, the files of a version, manifest.json
(built at publish, checked at fetch) and checksums.sha256 (`sha256sum` format).

A version lives at <prefix>/<name>/<version>/ and holds the data (one archive or the plain
files), manifest.json and checksums.sha256, uploaded in one commit.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from appliance.datasets.rows import GAME_FORMAT, LEGACY_FORMAT, DatasetError

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
NAME_RULE = "1-100 letters, digits, '.', '_' or '-', starting with a letter or digit"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")


def check_name(value: str, what: str) -> str:
    """A dataset name or version: one path segment, no tricks (no '/', '..', leading '.')."""
    if not NAME_PATTERN.fullmatch(value) or value in (".", ".."):
        raise DatasetError(f"{what} {value!r} is not allowed: use {NAME_RULE}")
    return value


def check_prefix(value: str) -> str:
    """The repo folder holding the datasets: names joined by '/', no '..' or leading '/'."""
    if not all(NAME_PATTERN.fullmatch(part) for part in value.split("/")):
        raise DatasetError(f"path prefix {value!r} is not allowed: use folder names ({NAME_RULE}) "
                           "joined by '/'")
    return value


def default_version(now: datetime | None = None) -> str:
    """`validated-YYYYMMDDTHHMMSSZ`: versions sort by publication time."""
    return (now or datetime.now(UTC)).strftime("validated-%Y%m%dT%H%M%SZ")


def utc_iso() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


# -- the files of a version --


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


def build_manifest(name: str, version: str, info: DatasetInfo, archive: FileInfo | None,
                   created_by: dict[str, Any]) -> dict[str, Any]:
    return {
        "schema": MANIFEST_SCHEMA,
        "name": name,
        "version": version,
        "dataset_format": info.dataset_format,
        "dataset_format_source": info.format_source,
        "created_at": utc_iso(),
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


def parse_checksums(text: str, where: str) -> dict[str, str]:
    sums: dict[str, str] = {}
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        sha, sep, name = line.partition("  ")
        name = name.lstrip("*")
        if not sep or not SHA256_PATTERN.fullmatch(sha) or name not in (ARCHIVE, *DATA_FILES):
            raise DatasetError(f"{where}:{line_no}: expected '<sha256>  <file name>', got "
                               f"{line[:120]!r}")
        sums[name] = sha
    if not sums:
        raise DatasetError(f"{where}: lists no file")
    return sums


def check_manifest(manifest: Any, name: str, version: str, where: str) -> dict[str, Any]:
    if not isinstance(manifest, dict):
        raise DatasetError(f"{where}: must hold a JSON object")
    problems = []
    if manifest.get("name") != name or manifest.get("version") != version:
        problems.append(f"it names {manifest.get('name')!r} {manifest.get('version')!r}")
    if manifest.get("dataset_format") not in FORMATS:
        problems.append(f"dataset_format {manifest.get('dataset_format')!r} is unknown")
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(s in files for s in SPLITS) or not all(
        isinstance(f, dict) and SHA256_PATTERN.fullmatch(str(f.get("sha256"))) and
        isinstance(f.get("size"), int) for f in files.values()
    ):
        problems.append("'files' must give size and sha256 of train.jsonl and val.jsonl")
    if not isinstance(manifest.get("rows"), dict):
        problems.append("'rows' is missing")
    if problems:
        raise DatasetError(f"{where}: not a manifest of {name} {version}: {'; '.join(problems)}")
    return manifest
