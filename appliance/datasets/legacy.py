"""Versions published by the predecessor's publish tool, read by `fetch` next to ours.

Its layout, under the same `<prefix>/<name>/<version>/` folders:
  - `manifest.json` with `kind` "chess-bot-validated-dataset", `schema_version` 1,
    `dataset_name`, `version`, `dataset_format` ("unknown" when it could not tell), `stats_json`,
    `files` (a list of `{path, size_bytes, sha256}`, paths relative to the dataset dir, cache
    files in subfolders included) and `distribution` (`{mode: "archive"|"files",
    archive_name}`);
  - `checksums.sha256`: `sha256sum` lines of those same dataset files (not of the archive);
  - the data: `<archive_name>` (a tar.gz holding the dataset dir as `dataset/...`, folders
    included), or every file under `files/<path>`.
Its fetch tool's aggregate manifest (no `schema`; `aggregate_by_format` buckets of
`train_paths` / `val_paths`; `datasets` with `dataset_name`, `version`, `dataset_format`) is read
by `fetch_buckets`. `from_legacy` turns a version's manifest into ours (the shape
`check_manifest` accepts), so a fetched copy is checked and reused the same way whoever
published it.
"""

from __future__ import annotations

import re
from typing import Any

from appliance.datasets.manifest import (
    FORMATS,
    MANIFEST,
    MANIFEST_SCHEMA,
    SHA256_PATTERN,
    SPLITS,
)
from appliance.datasets.rows import DatasetError

KIND = "chess-bot-validated-dataset"
ARCHIVE_ROOT = "dataset"  # the folder the archive holds the dataset dir as
FILES_DIR = "files"  # the folder holding the data in "files" mode
_ARCHIVE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}\.tar\.gz")


def is_legacy(manifest: Any) -> bool:
    return isinstance(manifest, dict) and manifest.get("kind") == KIND


def safe_path(path: Any) -> bool:
    """A relative path that stays inside the folder it is joined to: no leading '/', no '.' or
    '..' parts, no empty parts, no backslash or NUL (hidden files like `.gitkeep` are fine)."""
    return isinstance(path, str) and bool(path) and all(
        part not in ("", ".", "..") and len(part) <= 255 and not {"\\", "\0"} & set(part)
        for part in path.split("/"))


def from_legacy(manifest: dict[str, Any], name: str, version: str, where: str
                ) -> tuple[dict[str, Any], str | None]:
    """Our manifest for a predecessor's one (rows and an unknown format are left for the
    fetch to fill in from the data), and the archive's file name (None in "files" mode)."""
    problems = []
    if manifest.get("dataset_name") != name or manifest.get("version") != version:
        problems.append(f"it names {manifest.get('dataset_name')!r} {manifest.get('version')!r}")
    fmt = manifest.get("dataset_format")
    if fmt not in (*FORMATS, "unknown", None):
        problems.append(f"dataset_format {fmt!r} is unknown")
    files: dict[str, dict[str, Any]] = {}
    entries = manifest.get("files")
    for entry in entries if isinstance(entries, list) else [None]:
        if not (isinstance(entry, dict) and safe_path(entry.get("path"))
                and isinstance(entry.get("size_bytes"), int)
                and SHA256_PATTERN.fullmatch(str(entry.get("sha256")))):
            problems.append("'files' must list path, size_bytes and sha256 of every file")
            break
        files[entry["path"]] = {"size": entry["size_bytes"], "sha256": entry["sha256"]}
    if not problems and not all(s in files for s in SPLITS):
        problems.append(f"'files' lacks {' or '.join(s for s in SPLITS if s not in files)}")
    if MANIFEST in files:
        problems.append(f"a dataset file named {MANIFEST} is not supported")
    dist = manifest.get("distribution")
    mode = dist.get("mode") if isinstance(dist, dict) else None
    archive = dist.get("archive_name") if isinstance(dist, dict) else None
    if mode not in ("archive", "files"):
        problems.append(f"distribution mode {mode!r} is unknown")
    elif mode == "archive" and not (isinstance(archive, str) and _ARCHIVE_NAME.fullmatch(archive)):
        problems.append(f"archive_name {archive!r} is not a .tar.gz file name")
    if problems:
        raise DatasetError(f"{where}: not a manifest of {name} {version}: {'; '.join(problems)}")
    stats = manifest.get("stats_json")
    ours = {
        "schema": MANIFEST_SCHEMA,
        "name": name,
        "version": version,
        "dataset_format": fmt if fmt in FORMATS else None,
        "dataset_format_source": "stats.json" if fmt in FORMATS else "rows",
        "created_at": manifest.get("created_at_utc"),
        "created_by": {"tool": "the predecessor's publish tool", "kind": KIND,
                       "schema_version": manifest.get("schema_version")},
        "stats": stats if isinstance(stats, dict) else None,
        "rows": None,
        "files": files,
        "archive": None,
    }
    return ours, archive if mode == "archive" else None


def check_checksums(text: str, files: dict[str, dict[str, Any]], where: str) -> None:
    """checksums.sha256 must list every file with the manifest's sha256."""
    sums: dict[str, str] = {}
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        sha, sep, path = line.partition("  ")
        if not sep or not SHA256_PATTERN.fullmatch(sha) or not safe_path(path.lstrip("*")):
            raise DatasetError(f"{where}:{line_no}: expected '<sha256>  <file path>', got "
                               f"{line[:120]!r}")
        sums[path.lstrip("*")] = sha
    for path, meta in files.items():
        if sums.get(path) != meta["sha256"]:
            raise DatasetError(f"{where}: checksums.sha256 and {MANIFEST} disagree on {path}")


def fetch_buckets(data: dict[str, Any], where: str) -> dict[str, dict[str, Any]]:
    """Our `aggregate_by_format` buckets from the predecessor's fetch manifest."""
    listed = data.get("datasets")
    datasets: list[Any] = listed if isinstance(listed, list) else []
    buckets: dict[str, dict[str, Any]] = {}
    for fmt, b in data["aggregate_by_format"].items():
        if not (isinstance(b, dict) and all(
            isinstance(b.get(k), list) and all(isinstance(p, str) for p in b[k])
            for k in ("train_paths", "val_paths")
        )):
            raise DatasetError(f"{where}: aggregate_by_format[{fmt!r}] needs the lists "
                               "train_paths and val_paths")
        names = [f"{d.get('dataset_name')}@{d.get('version')}" for d in datasets
                 if isinstance(d, dict) and str(d.get("dataset_format") or "unknown") == fmt]
        buckets[fmt] = {"datasets": names, "train": b["train_paths"], "val": b["val_paths"]}
    return buckets
