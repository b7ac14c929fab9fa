"""The `publish` and `fetch` subcommands of the datasets CLI (host_tools/datasets.py): versioned
datasets on the Hugging Face Hub, over appliance.datasets.{manifest,publish,fetch}.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from appliance import settings
from appliance.datasets import fetch as hub_fetch
from appliance.datasets import manifest as hd
from appliance.datasets import publish
from appliance.datasets.rows import DatasetError
from appliance.hf import HubClient, resolve_token
from host_tools.cli import progress_wanted, recorded_command

SubParsers = Any  # argparse._SubParsersAction, private in typeshed


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


def _add_hub_args(p: argparse.ArgumentParser, token_help: str) -> None:
    p.add_argument("--repo", metavar="OWNER/NAME",
                   help="dataset repo on the Hub (default HF_DATASET_REPO_ID)")
    p.add_argument("--prefix", metavar="PATH",
                   help="folder in the repo (default HF_DATASET_PATH_PREFIX, validated_datasets)")
    p.add_argument("--token", metavar="TOKEN", help=token_help + " Visible to other local users "
                   "in the process list: prefer HF_TOKEN, HF_TOKEN_PATH or the keyring "
                   "(service huggingface, user codex_hf_write_token).")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")


def _settings() -> tuple[settings.PathSettings, settings.HfSettings]:
    return settings.load(settings.PathSettings), settings.load(settings.HfSettings)


def _repo_and_prefix(args: argparse.Namespace, cfg: settings.HfSettings) -> tuple[str, str]:
    repo = args.repo or cfg.HF_DATASET_REPO_ID
    if not repo:
        raise DatasetError("no dataset repo: pass --repo OWNER/NAME or set HF_DATASET_REPO_ID")
    if not re.fullmatch(settings.REPO_ID_PATTERN, repo):
        raise DatasetError(f"--repo {repo!r}: expected OWNER/NAME (letters, digits, '.', '_', "
                           "'-')")
    prefix = hd.check_prefix(args.prefix) if args.prefix else cfg.HF_DATASET_PATH_PREFIX
    return repo, prefix


def _client(args: argparse.Namespace, cfg: settings.HfSettings) -> HubClient:
    token, _ = resolve_token(args.token, cfg.token, cfg.HF_TOKEN_PATH)
    return HubClient(cfg.HF_ENDPOINT, token, progress=progress_wanted(args.json))


def _progress_bar(args: argparse.Namespace, total: int, desc: str
                  ) -> AbstractContextManager[Any]:
    if not progress_wanted(args.json):
        return nullcontext(None)
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, leave=False)


# -- publish --


def _add_publish(sub: SubParsers) -> None:
    p = sub.add_parser(
        "publish",
        help="dataset directory -> versioned dataset on the Hugging Face Hub",
        description=(
            "Validate train.jsonl and val.jsonl row by row against their format (legal moves "
            "included), write manifest.json (name, version, dataset_format, stats.json, row "
            "counts, sizes, sha256) and checksums.sha256, and upload them with the data (a "
            "tar.gz, or the raw files with --archive-format none) to "
            "<prefix>/<name>/<version>/ in one commit: a version is visible whole or not at "
            "all. Published versions are never overwritten."
        ),
    )
    p.add_argument("directory", type=Path, metavar="DIR",
                   help="dataset dir with train.jsonl, val.jsonl and optional stats.json")
    p.add_argument("--name", required=True, help=f"dataset name ({hd.NAME_RULE})")
    p.add_argument("--version", help="version (default validated-YYYYMMDDTHHMMSSZ, UTC now)")
    p.add_argument("--archive-format", choices=hd.ARCHIVE_FORMATS, default="tar.gz",
                   help="tar.gz bundles the files into data.tar.gz; none uploads them as they "
                   "are (default %(default)s)")
    p.add_argument("--no-validate", dest="validate", action="store_false",
                   help="skip the row-by-row validation (about 1000 rows/s per core)")
    p.add_argument("--dry-run", action="store_true",
                   help="validate and stage, show the path and files, upload nothing")
    _add_hub_args(p, "write token (default: HF_TOKEN, HF_TOKEN_PATH, then the keyring).")
    p.set_defaults(handler=_run_publish)


def _run_publish(args: argparse.Namespace, argv: Sequence[str]) -> int:
    paths, cfg = _settings()
    name = hd.check_name(args.name, "dataset name")
    version = hd.check_name(args.version, "version") if args.version else hd.default_version()
    repo, prefix = _repo_and_prefix(args, cfg)
    client = None if args.dry_run else _client(args, cfg)
    if client is not None:
        client.require_token(f"publish to {repo}")
    started = time.monotonic()
    directory = args.directory
    total = sum((directory / f).stat().st_size for f in hd.SPLITS
                if (directory / f).is_file())
    with _progress_bar(args, total, "validate" if args.validate else "hash") as bar:
        info = publish.inspect_dataset(directory, validate=args.validate,
                                  progress=(lambda _w, n: bar.update(n)) if bar else None)
    import huggingface_hub

    created_by = {"tool": "host_tools.datasets publish",
                  "command": recorded_command("host_tools.datasets", argv),
                  "validated": args.validate,
                  "huggingface_hub": huggingface_hub.__version__}
    with tempfile.TemporaryDirectory(prefix="publish-") as staging:
        with _progress_bar(args, total, "archive") as bar:
            plan = publish.stage(info, name, version, prefix, repo, args.archive_format,
                            Path(staging), created_by,
                            progress=(lambda _w, n: bar.update(n)) if bar else None)
        sizes = plan.sizes()
        commit = None
        if client is not None:
            commit = publish.upload_plan(client, plan)
    elapsed = time.monotonic() - started
    rows = plan.manifest["rows"]
    if args.json:
        print(json.dumps({
            "repo_id": repo, "path": plan.folder + "/", "dry_run": args.dry_run,
            "commit": commit, "files": [{"name": n, "size": s} for n, s in sizes],
            "elapsed_s": round(elapsed, 3), "manifest": plan.manifest,
        }))
        return 0
    files = ", ".join(f"{n} ({_human(s)})" for n, s in sizes)
    checked = "validated" if args.validate else "not validated"
    if args.dry_run:
        print(f"dry run: would publish {repo}:{plan.folder}/ (nothing uploaded)")
    else:
        assert commit is not None
        print(f"published {repo}:{plan.folder}/ in commit {commit[:12]} ({elapsed:.1f} s)")
    print(f"files: {files}")
    print(f"format {info.dataset_format} (from {info.format_source}), {checked}: "
          f"train {rows['train']} rows, val {rows['val']} rows")
    return 0


# -- fetch --


def _add_fetch(sub: SubParsers) -> None:
    p = sub.add_parser(
        "fetch",
        help="versioned dataset(s) on the Hugging Face Hub -> local directories",
        description=(
            "Download a published version, verify the size (and sha256) the Hub lists, "
            "checksums.sha256 and the manifest's sha256 of every file, and extract it to "
            "DEST/<name>/<version>/ (an already fetched, still valid copy is reused; a failed "
            "fetch leaves nothing behind). Versions published by the predecessor's publish "
            "tool are read too. --all-latest fetches the newest version (by the "
            "YYYYMMDDTHHMMSSZ in its name, else by name) of every dataset under the prefix, "
            "all from one commit, and writes an aggregate manifest with every train/val path "
            "and aggregate_by_format buckets. Versions without manifest.json (never fully "
            "published) are ignored."
        ),
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--name", help="dataset to fetch")
    which.add_argument("--all-latest", action="store_true",
                       help="the newest version of every dataset")
    p.add_argument("--version", help="with --name: this version (default: the newest)")
    p.add_argument("--dest", type=Path, metavar="DIR",
                   help="where datasets go (default HF_DATASET_CACHE_DIR, else "
                   "$REPO_DIR/data/hf_datasets)")
    p.add_argument("--manifest-out", type=Path, metavar="FILE",
                   help="write the fetch manifest here (with --all-latest default "
                   "HF_DATASET_FETCH_MANIFEST, else DEST/fetch_manifest.json)")
    _add_hub_args(p, "read token for private repos (default: HF_TOKEN, HF_TOKEN_PATH, then "
                  "the keyring).")
    p.set_defaults(handler=_run_fetch)


def _run_fetch(args: argparse.Namespace, argv: Sequence[str]) -> int:
    paths, cfg = _settings()
    if args.version and not args.name:
        raise DatasetError("--version needs --name")
    repo, prefix = _repo_and_prefix(args, cfg)
    dest = (args.dest or cfg.dataset_cache_dir(paths.REPO_DIR)).absolute()
    manifest_out = args.manifest_out
    if args.all_latest and manifest_out is None:
        manifest_out = cfg.HF_DATASET_FETCH_MANIFEST or dest / "fetch_manifest.json"
    started = time.monotonic()
    fetched, manifest = hub_fetch.fetch_to_manifest(_client(args, cfg), repo, prefix, dest,
                                                    manifest_out, args.name, args.version)
    elapsed = time.monotonic() - started
    if args.json:
        print(json.dumps({**manifest, "manifest_out": str(manifest_out) if manifest_out else None,
                          "elapsed_s": round(elapsed, 3)}))
        return 0
    for f in fetched:
        e = f.entry()
        how = "cached" if f.cached else "fetched"
        print(f"{how} {f.name} {f.version} ({e['dataset_format']}): train {e['train_rows']} "
              f"rows, val {e['val_rows']} rows -> {f.directory}")
    if manifest_out is not None:
        buckets = ", ".join(f"{fmt} {len(b['datasets'])}"
                            for fmt, b in manifest["aggregate_by_format"].items())
        print(f"manifest: {manifest_out} ({buckets})")
    print(f"from {repo}@{manifest['revision'][:12]} in {elapsed:.1f} s")
    return 0


SUBCOMMANDS: tuple[Callable[[SubParsers], None], ...] = (_add_publish, _add_fetch)
