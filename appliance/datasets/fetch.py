"""Fetch dataset versions from the Hub: list the versions, download one (or the newest complete
one of each dataset) verified against checksums.sha256 and manifest.json, and write the
aggregate fetch manifest that training reads (`read_fetch_manifest`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.atomic import atomic_write_json, sha256_file
from appliance.datasets.manifest import (
    ARCHIVE,
    CHECKSUMS,
    MANIFEST,
    NAME_PATTERN,
    REPO_TYPE,
    check_manifest,
    check_name,
    parse_checksums,
    utc_iso,
)
from appliance.datasets.rows import DatasetError
from appliance.hf import HubClient

FETCH_SCHEMA = "chessbot-fetch-manifest-v1"


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
    done = [v for v, files in versions.items() if complete(files) and NAME_PATTERN.fullmatch(v)]
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


def _verify(path: Path, expected: str, what: str) -> None:
    got = sha256_file(path)
    if got != expected:
        raise DatasetError(f"{what}: sha256 mismatch: expected {expected}, got {got} (corrupt "
                           "download or altered file); nothing was kept")


def extract_archive(archive: Path, manifest: dict[str, Any], dest: Path, what: str) -> None:
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
        check_manifest(manifest, name, version, str(final / MANIFEST))
        for fname, meta in manifest["files"].items():
            if sha256_file(final / fname) != meta["sha256"]:
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
        manifest = check_manifest(manifest, name, version, f"{repo_id}/{folder}/{MANIFEST}")
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
            extract_archive(path, manifest, out, f"{repo_id}/{folder}/{ARCHIVE}")
        else:
            for fname, meta in manifest["files"].items():
                if sums.get(fname) != meta["sha256"]:
                    raise DatasetError(f"{repo_id}/{folder}: {CHECKSUMS} and {MANIFEST} "
                                       f"disagree on {fname}")
                path = get(fname)
                _verify(path, meta["sha256"], f"{repo_id}/{folder}/{fname}")
                os.replace(path, out / fname)
        atomic_write_json(out / MANIFEST, manifest)
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
        if not NAME_PATTERN.fullmatch(name):
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
        "created_at": utc_iso(),
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
        atomic_write_json(manifest_out, manifest)
    return fetched, manifest


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
