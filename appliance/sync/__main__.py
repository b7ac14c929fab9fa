"""Artifact sync CLI (supervisord's `hf-sync` program runs `watch`): `once` uploads changed files in
one commit, `watch` keeps doing so on file events, `status` prints the pending count.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import NoReturn

from appliance import settings
from appliance.hf import HubClient, HubError, resolve_token
from appliance.redact import Redactor, setup_service_logging
from appliance.sync.once import SyncJob, sync_once
from appliance.sync.status import read_status
from appliance.sync.watcher import WatchConfig, Watcher

EXIT_FAILED = 2
log = logging.getLogger("appliance.sync")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_FAILED, f"{self.prog}: error: {message} (see --help)\n")


def _add_job_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", type=Path, metavar="DIR",
                   help="directory to sync (default HF_SYNC_SOURCE_DIR, else $REPO_DIR/artifacts)")
    p.add_argument("--repo", metavar="OWNER/NAME", help="repo to upload to (default HF_REPO_ID)")
    p.add_argument("--repo-type", choices=("model", "dataset"),
                   help="type of that repo (default HF_REPO_TYPE, model)")
    p.add_argument("--patterns", nargs="+", metavar="GLOB",
                   help="file-name globs, space or comma separated (default HF_SYNC_PATTERNS, "
                   "'*.pt,*.json'); hidden and *.tmp files are never synced")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m appliance.sync",
        description="Upload training artifacts to the Hugging Face Hub. Files are matched by "
        "name, compared with a local index of what was uploaded (sha256), and the changed ones "
        "go up in one commit. Token: HF_TOKEN, else the keyring "
        "(service huggingface, user codex_hf_write_token).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    once = sub.add_parser("once", help="upload what changed, once, and print what was done")
    _add_job_args(once)
    once.add_argument("--json", action="store_true", help="print the result as JSON")
    watch = sub.add_parser(
        "watch", help="upload on file events until stopped (the hf-sync program)",
        description="Watch the source directory (inotify, or polling on network filesystems or "
        "when inotify is unavailable); upload files once they are closed and quiet for the "
        "debounce time, in one commit per batch; retry failures with backoff. The pending count "
        "is written to $HF_SYNC_STATE_DIR/status.json.")
    _add_job_args(watch)
    watch.add_argument("--debounce", type=float, metavar="S",
                       help="quiet seconds before upload (default HF_SYNC_DEBOUNCE_SECONDS, 2)")
    watch.add_argument("--poll", type=float, metavar="S",
                       help="polling interval (default HF_SYNC_POLL_SECONDS, 10)")
    watch.add_argument("--mode", choices=("auto", "inotify", "poll"),
                       help="event source (default HF_SYNC_MODE, auto)")
    watch.add_argument("--retry-backoff", type=float, default=5.0, metavar="S",
                       help="wait after a failed upload, doubled after each further failure up "
                       "to 300 s (default %(default)s)")
    status = sub.add_parser("status", help="print the watcher's pending count and last upload")
    status.add_argument("--json", action="store_true", help="print status.json as is")
    return parser


def _job(args: argparse.Namespace, cfg: settings.HfSettings, repo_dir: Path) -> SyncJob:
    repo = args.repo or cfg.HF_REPO_ID
    if not repo:
        raise ValueError("no repo: pass --repo OWNER/NAME or set HF_REPO_ID")
    if not re.fullmatch(settings.REPO_ID_PATTERN, repo):
        raise ValueError(f"--repo {repo!r}: expected OWNER/NAME (letters, digits, '.', '_', '-')")
    patterns = cfg.sync_patterns
    if args.patterns:
        patterns = [p.strip() for arg in args.patterns for p in arg.split(",") if p.strip()]
        if not patterns:
            raise ValueError("--patterns: no pattern given")
    return SyncJob(
        source=(args.source or cfg.sync_source_dir(repo_dir)).absolute(),
        repo_id=repo, patterns=tuple(patterns), state_dir=cfg.sync_state_dir(repo_dir),
        repo_type=args.repo_type or cfg.HF_REPO_TYPE, endpoint=cfg.HF_ENDPOINT.rstrip("/"),
    )


def _run_once(job: SyncJob, client: HubClient, as_json: bool) -> int:
    if not job.source.is_dir():
        raise ValueError(f"source directory {job.source} does not exist (--source or "
                         "HF_SYNC_SOURCE_DIR)")
    result = sync_once(client, job)
    print(json.dumps(result.to_json()) if as_json else result.summary(job))
    return 0


def _run_watch(job: SyncJob, client: HubClient, args: argparse.Namespace,
               cfg: settings.HfSettings) -> int:
    wcfg = WatchConfig(
        debounce_s=args.debounce if args.debounce is not None else cfg.HF_SYNC_DEBOUNCE_SECONDS,
        poll_s=args.poll if args.poll is not None else cfg.HF_SYNC_POLL_SECONDS,
        mode=args.mode or cfg.HF_SYNC_MODE,
        backoff_s=args.retry_backoff,
    )
    if wcfg.debounce_s < 0 or wcfg.poll_s <= 0 or wcfg.backoff_s <= 0:
        raise ValueError("--debounce must be >= 0, --poll and --retry-backoff > 0")
    watcher = Watcher(job, lambda rels: sync_once(client, job, rels), wcfg)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        stop.set()
        watcher.wake.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("hf-sync: %s -> %s (%s), state in %s", job.source, job.repo_id, job.endpoint,
             job.state_dir)
    watcher.run(stop)
    return 0


def _run_status(state_dir: Path, as_json: bool) -> int:
    status = read_status(state_dir)
    if status is None:
        print(f"no watcher status in {state_dir}: pending 0")
        return 0
    if as_json:
        print((state_dir / "status.json").read_text(encoding="utf-8").strip())
        return 0
    print(f"pending {status.pending} ({status.mode}, pid {status.pid}); last commit "
          f"{status.last_commit or '-'}; last error {status.last_error or '-'}")
    for rel in status.pending_files:
        print(f"  {rel}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    where = f"hf-sync {args.command}"
    try:
        paths = settings.load(settings.PathSettings)
        cfg = settings.load(settings.HfSettings)
    except settings.SettingsError as exc:
        print(f"{where}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.command == "status":
        return _run_status(cfg.sync_state_dir(paths.REPO_DIR), args.json)
    try:
        token, _ = resolve_token(None, cfg.token, cfg.HF_TOKEN_PATH)
    except HubError as exc:
        print(f"{where}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    redact = Redactor([token])
    setup_service_logging("hf-sync", redact, sys.stderr, cfg.HF_SYNC_LOG_LEVEL)
    try:
        job = _job(args, cfg, paths.REPO_DIR)
        # The watcher retries on its own schedule, so each of its uploads is a single attempt.
        client = HubClient(cfg.HF_ENDPOINT, token, attempts=1 if args.command == "watch" else 4)
        if args.command == "once":
            return _run_once(job, client, args.json)
        return _run_watch(job, client, args, cfg)
    except (ValueError, HubError, OSError) as exc:
        print(f"{where}: error: {redact(str(exc))}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
