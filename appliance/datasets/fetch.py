"""Fetch dataset versions from the Hub: list the versions, download one (or the newest complete
one of each dataset) verified against the Hub's listing, checksums.sha256 and manifest.json, and
write the aggregate fetch manifest that training reads (`read_fetch_manifest`). Versions laid out
by the predecessor's publish tool are read too (`legacy`); the local copy then carries our
manifest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.atomic import atomic_write_json, sha256_file
from appliance.datasets import legacy
from appliance.datasets.manifest import (
    ARCHIVE,
    CHECKSUMS,
    MANIFEST,
    NAME_PATTERN,
    REPO_TYPE,
    SPLITS,
    check_manifest,
    check_name,
    parse_checksums,
    utc_iso,
)
from appliance.datasets.rows import DatasetError, detect_format
from appliance.hf import HubClient, RemoteFile

FETCH_SCHEMA = "chessbot-fetch-manifest-v1"
_TIMESTAMP = re.compile(r"\d{8}T\d{6}Z")


def list_versions(client: HubClient, repo_id: str, prefix: str, revision: str,
                  name: str | None = None) -> dict[str, dict[str, dict[str, RemoteFile]]]:
    """{name: {version: {path inside the version folder: listed file}}} under `prefix` (or
    `prefix/name`), from one listing."""
    folder = f"{prefix}/{name}" if name else prefix
    found: dict[str, dict[str, dict[str, RemoteFile]]] = {}
    for f in client.list_files(repo_id, REPO_TYPE, folder, revision):
        parts = f.path[len(prefix) + 1:].split("/")
        if len(parts) >= 3:
            found.setdefault(parts[0], {}).setdefault(parts[1], {})["/".join(parts[2:])] = f
    return found


def complete(files: Collection[str]) -> bool:
    """A version counts only once its manifest.json and checksums.sha256 exist."""
    return MANIFEST in files and CHECKSUMS in files


def version_key(version: str) -> tuple[int, str, str]:
    """Newest last: by the UTC timestamp in the name (YYYYMMDDTHHMMSSZ, as in ours
    `validated-...` and the predecessor's bare ones), then by name."""
    m = _TIMESTAMP.search(version)
    return (1, m.group(0), version) if m else (0, "", version)


def newest_complete(versions: dict[str, dict[str, RemoteFile]]) -> str | None:
    done = [v for v, files in versions.items() if complete(files) and NAME_PATTERN.fullmatch(v)]
    return max(done, key=version_key) if done else None


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


def _check(path: Path, what: str, size: int, sha256: str | None) -> None:
    """`path` must have `size` bytes (and `sha256`): else a checksum error naming both."""
    got_size = path.stat().st_size
    if got_size == size and sha256 is None:
        return
    got = sha256_file(path)
    if got_size != size or got != sha256:
        expected = f"{size} bytes" + (f" with sha256 {sha256}" if sha256 else "")
        raise DatasetError(f"{what}: checksum error: expected {expected}, got {got_size} bytes "
                           f"with sha256 {got} (truncated or altered on the Hub, or a corrupt "
                           "download); nothing was kept")


def extract_archive(archive: Path, manifest: dict[str, Any], dest: Path, what: str,
                    root: str | None = None) -> None:
    """Extract the manifest's files from the archive, checking each member's name, type and
    sha256; anything else in the archive is an error (no path tricks, no links). With `root`,
    the files are `root/<path>` and folders are allowed (the predecessor's archives)."""
    expected: dict[str, dict[str, Any]] = manifest["files"]
    seen: set[str] = set()
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            for member in tar:
                name = member.name.rstrip("/")
                if root and member.isdir() and (name == root or (
                        name.startswith(root + "/") and legacy.safe_path(name))):
                    continue  # folders are made as their files need them
                if root:
                    name = name[len(root) + 1:] if name.startswith(root + "/") else ""
                if name not in expected or name in seen:
                    raise DatasetError(f"{what}: unexpected archive member {member.name!r}")
                if not member.isfile():
                    raise DatasetError(f"{what}: archive member {member.name!r} is not a "
                                       "regular file")
                src = tar.extractfile(member)
                assert src is not None
                digest = hashlib.sha256()
                target = dest / name
                target.parent.mkdir(parents=True, exist_ok=True)
                with target.open("wb") as out:
                    while data := src.read(1 << 20):
                        digest.update(data)
                        out.write(data)
                if digest.hexdigest() != expected[name]["sha256"]:
                    raise DatasetError(f"{what}: {name} in the archive does not match "
                                       "the manifest's sha256")
                seen.add(name)
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


class _Version:
    """Downloads of one version folder, each checked against the Hub's listing."""

    def __init__(self, client: HubClient, repo_id: str, folder: str,
                 files: dict[str, RemoteFile], work: Path, revision: str) -> None:
        self.client, self.repo_id, self.folder = client, repo_id, folder
        self.files, self.work, self.revision = files, work, revision

    def where(self, fname: str) -> str:
        return f"{self.repo_id}/{self.folder}/{fname}"

    def get(self, fname: str, size: int | None = None, sha256: str | None = None) -> Path:
        """Download `fname`; it must have the size the Hub lists, and `size` and `sha256`
        when given (else the listed sha256, known for LFS files): hashed once either way."""
        path = self.client.download(self.repo_id, REPO_TYPE, f"{self.folder}/{fname}", self.work,
                                    self.revision)
        listed = self.files.get(fname)
        if listed is not None and (sha256 is None or path.stat().st_size != listed.size):
            _check(path, self.where(fname), listed.size, listed.sha256)
        if sha256 is not None:
            _check(path, self.where(fname), path.stat().st_size if size is None else size,
                   sha256)
        return path

    def json(self, fname: str) -> Any:
        try:
            return json.loads(self.get(fname).read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise DatasetError(f"{self.where(fname)}: not JSON ({exc})") from None

    def text(self, fname: str) -> str:
        try:
            return self.get(fname).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise DatasetError(f"{self.where(fname)}: not UTF-8 text") from None


def _fetch_ours(v: _Version, raw: Any, name: str, version: str, out: Path) -> dict[str, Any]:
    manifest = check_manifest(raw, name, version, v.where(MANIFEST))
    sums = parse_checksums(v.text(CHECKSUMS), v.where(CHECKSUMS))
    archive = manifest.get("archive")
    if archive:
        if ARCHIVE not in sums:
            raise DatasetError(f"{v.where(CHECKSUMS)}: no entry for {ARCHIVE}")
        size = archive.get("size") if isinstance(archive, dict) else None
        path = v.get(ARCHIVE, size if isinstance(size, int) else None, sums[ARCHIVE])
        extract_archive(path, manifest, out, v.where(ARCHIVE))
        return manifest
    for fname, meta in manifest["files"].items():
        if sums.get(fname) != meta["sha256"]:
            raise DatasetError(f"{v.repo_id}/{v.folder}: {CHECKSUMS} and {MANIFEST} disagree "
                               f"on {fname}")
        os.replace(v.get(fname, meta["size"], meta["sha256"]), out / fname)
    return manifest


def _count_rows(path: Path) -> int:
    with path.open("rb") as fh:
        return sum(1 for line in fh if line.strip())


def _fetch_legacy(v: _Version, raw: dict[str, Any], name: str, version: str, out: Path
                  ) -> dict[str, Any]:
    """A version the predecessor's publish tool laid out (see `legacy`)."""
    manifest, archive = legacy.from_legacy(raw, name, version, v.where(MANIFEST))
    legacy.check_checksums(v.text(CHECKSUMS), manifest["files"], v.where(CHECKSUMS))
    if archive is not None:
        extract_archive(v.get(archive), manifest, out, v.where(archive), root=legacy.ARCHIVE_ROOT)
    else:
        for fname, meta in manifest["files"].items():
            path = v.get(f"{legacy.FILES_DIR}/{fname}", meta["size"], meta["sha256"])
            (out / fname).parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, out / fname)
    if manifest["dataset_format"] is None:
        manifest["dataset_format"] = detect_format(out / "train.jsonl")
    manifest["rows"] = {s.removesuffix(".jsonl"): _count_rows(out / s) for s in SPLITS}
    return manifest


def _new_dirs(path: Path) -> list[Path]:
    """`path` and those of its parents that do not exist yet, deepest first."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def fetch_version(client: HubClient, repo_id: str, prefix: str, name: str, version: str,
                  files: dict[str, RemoteFile], dest: Path, revision: str) -> Fetched:
    """Download one version (ours or the predecessor's layout) into `dest/<name>/<version>/`,
    verified; on any failure nothing new is left under `dest` (an earlier copy stays)."""
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
    created = _new_dirs(final.parent)
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".fetch-{version}-"))
    try:
        v = _Version(client, repo_id, folder, files, work / "dl", revision)
        out = work / "out"
        out.mkdir()
        raw = v.json(MANIFEST)
        if legacy.is_legacy(raw):
            manifest = _fetch_legacy(v, raw, name, version, out)
        else:
            manifest = _fetch_ours(v, raw, name, version, out)
        atomic_write_json(out / MANIFEST, manifest)
        if final.exists():
            shutil.rmtree(final)  # an earlier fetch that no longer verifies
        os.replace(out, final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        for d in created:
            with contextlib.suppress(OSError):
                d.rmdir()  # only while empty
        raise
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
    if isinstance(data, dict) and "schema" not in data and isinstance(
        data.get("aggregate_by_format"), dict
    ):
        # The predecessor's fetch manifest, so its runbooks' reuse mode keeps working.
        return {"schema": FETCH_SCHEMA, "repo_id": data.get("repo_id"),
                "prefix": data.get("repo_path_prefix"),
                "aggregate_by_format": legacy.fetch_buckets(data, str(path))}
    if not isinstance(data, dict) or data.get("schema") != FETCH_SCHEMA or not isinstance(
        data.get("aggregate_by_format"), dict
    ):
        raise DatasetError(f"{path}: not a fetch manifest (schema {FETCH_SCHEMA})")
    return data
