"""HF sync and dataset benchmarks against the local Hub emulator, one JSON line each, each with a
baseline measured in the same run (BENCH_HF_MB sets the dataset size, default 200).

1. watcher_latency: file closed -> upload started (the Hub sees the preupload), inotify mode vs
   the polling fallback (1 s polls), same debounce.
2. resync_bytes: bytes and requests sent by a second `sync once` with nothing changed (must be 0)
   vs the first sync.
3. publish_throughput: `datasets publish --no-validate` of a ~200 MB dataset (hash, tar.gz,
   upload, one commit) vs `tar czf` + `sha256sum` on the same files.
4. fetch_throughput: `datasets fetch` of it (download, verify, extract) vs `sha256sum -c` +
   `tar xzf` of the same archive on local disk.
5. validate_rows: rows/s of publish's row validation (legal moves, all cores) vs json.loads only.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from appliance.datasets.publish import inspect_dataset  # noqa: E402
from appliance.hf import HubClient  # noqa: E402
from appliance.sync.once import SyncJob, sync_once  # noqa: E402
from host_tools.emulators.hubemu import HubEmulator  # noqa: E402
from tests.utils import wait_until  # noqa: E402

TOKEN = "hf_bench_token_0000000000"
DATASET_MB = float(os.environ.get("BENCH_HF_MB", "200"))
WATCH_FILES = 5
DEBOUNCE_S = 0.5


def emit(name: str, **fields: object) -> None:
    print(json.dumps({"benchmark": name, **fields}), flush=True)


def env_for(hub: HubEmulator, tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRAIN_"))}
    env.update(HF_ENDPOINT=hub.url, HF_TOKEN=TOKEN, HF_HUB_DISABLE_XET="1",
               HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1",
               HF_HOME=str(tmp / "hf_home"), PYTHONPATH=str(ROOT),
               PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring", **extra)
    return env


def watcher_latency(hub: HubEmulator, tmp: Path, mode: str) -> list[float]:
    """Seconds from close() to the Hub's first request for each of WATCH_FILES files."""
    src, state = tmp / f"src-{mode}", tmp / f"state-{mode}"
    src.mkdir()
    env = env_for(hub, tmp, HF_REPO_ID=f"bench/watch-{mode}", HF_SYNC_SOURCE_DIR=str(src),
                  HF_SYNC_STATE_DIR=str(state), HF_SYNC_MODE=mode, HF_SYNC_POLL_SECONDS="1",
                  HF_SYNC_DEBOUNCE_SECONDS=str(DEBOUNCE_S))
    proc = subprocess.Popen([sys.executable, "-m", "appliance.sync", "watch"], env=env,
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latencies = []
    try:
        wait_until(lambda: (state / "status.json").exists(), 30, 0.01)
        time.sleep(0.3)
        for i in range(WATCH_FILES):
            before = len(hub.requests())
            with (src / f"ckpt_{i}.pt").open("wb") as fh:
                fh.write(os.urandom(1 << 20))
            closed = time.time()

            wait_until(lambda b=before: any("/preupload/" in r.path
                                            for r in hub.requests()[b:]), 30, 0.01)
            first = next(r for r in hub.requests()[before:] if "/preupload/" in r.path)
            latencies.append(first.ts - closed)
            wait_until(lambda b=before: any("/commit/" in r.path
                                            for r in hub.requests()[b:]), 30, 0.01)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    return latencies


def resync_bytes(hub: HubEmulator, tmp: Path) -> None:
    src = tmp / "artifacts"
    for run in range(4):
        (src / f"run{run}").mkdir(parents=True)
        (src / f"run{run}" / "model_best.pt").write_bytes(os.urandom(4 << 20))
        (src / f"run{run}" / "metrics.json").write_text(json.dumps({"run": run}))
    client = HubClient(hub.url, TOKEN)
    job = SyncJob(src, "bench/artifacts", ("*.pt", "*.json"), tmp / "sync-state",
                  endpoint=hub.url)
    hub.clear_requests()
    first = sync_once(client, job)
    sent_first = sum(r.body_bytes for r in hub.requests())
    hub.clear_requests()
    second = sync_once(client, job)
    emit("resync_bytes", bytes_reuploaded=second.bytes,
         bytes_sent=sum(r.body_bytes for r in hub.requests()), requests=len(hub.requests()),
         baseline_first_sync_bytes=first.bytes, baseline_first_sync_bytes_sent=sent_first,
         files=len(first.uploaded))


def make_big_dataset(root: Path, megabytes: float) -> int:
    """The bundled sample's rows repeated up to `megabytes` (9:1 train/val); returns bytes."""
    root.mkdir(parents=True)
    sample = ROOT / "data" / "sample"
    train, val = (sample / "train.jsonl").read_bytes(), (sample / "val.jsonl").read_bytes()
    target = int(megabytes * 1e6)
    with (root / "train.jsonl").open("wb") as fh:
        written = 0
        while written < target * 0.9:
            fh.write(train)
            written += len(train)
    with (root / "val.jsonl").open("wb") as fh:
        while written < target:
            fh.write(val)
            written += len(val)
    shutil.copy(sample / "stats.json", root / "stats.json")
    return sum(p.stat().st_size for p in root.iterdir())


def timed_run(cmd: list[str], **kwargs: object) -> float:
    started = time.monotonic()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, **kwargs)  # type: ignore[call-overload]
    return time.monotonic() - started


def dataset_throughput(hub: HubEmulator, tmp: Path) -> None:
    data = tmp / "big"
    size = make_big_dataset(data, DATASET_MB)
    mb = size / 1e6
    env = env_for(hub, tmp, HF_DATASET_REPO_ID="bench/datasets")
    cli = [sys.executable, str(ROOT / "host_tools" / "datasets.py")]
    publish_s = timed_run([*cli, "publish", str(data), "--name", "big", "--version", "v1",
                           "--no-validate"], env=env)
    names = ["train.jsonl", "val.jsonl", "stats.json"]
    plain = tmp / "plain"
    plain.mkdir()
    baseline_s = timed_run(
        ["sh", "-c", f"tar czf {plain}/data.tar.gz {' '.join(names)} && "
         f"sha256sum {' '.join(names)} {plain}/data.tar.gz > {plain}/checksums.sha256"],
        cwd=data)
    emit("publish_throughput", dataset_mb=round(mb, 1), publish_s=round(publish_s, 2),
         publish_mb_per_s=round(mb / publish_s, 1), baseline_tar_sha256sum_s=round(baseline_s, 2),
         baseline_mb_per_s=round(mb / baseline_s, 1), ratio=round(publish_s / baseline_s, 2))

    dest = tmp / "fetched"
    fetch_s = timed_run([*cli, "fetch", "--name", "big", "--dest", str(dest)], env=env)
    extracted = tmp / "extracted"
    extracted.mkdir()
    (plain / "archive.sha256").write_text(
        (plain / "checksums.sha256").read_text().splitlines()[-1] + "\n")
    baseline_fetch_s = timed_run(
        ["sh", "-c", f"sha256sum -c --quiet {plain}/archive.sha256 && "
         f"tar xzf {plain}/data.tar.gz -C {extracted}"], cwd="/")
    same = all((dest / "big" / "v1" / n).read_bytes() == (data / n).read_bytes() for n in names)
    emit("fetch_throughput", dataset_mb=round(mb, 1), fetch_s=round(fetch_s, 2),
         fetch_mb_per_s=round(mb / fetch_s, 1),
         baseline_sha256sum_tar_x_s=round(baseline_fetch_s, 2),
         baseline_mb_per_s=round(mb / baseline_fetch_s, 1),
         ratio=round(fetch_s / baseline_fetch_s, 2), identical=same)


def validate_rows(tmp: Path) -> None:
    sample = ROOT / "data" / "sample"
    rows = sum(1 for line in (sample / "train.jsonl").open("rb") if line.strip()) + sum(
        1 for line in (sample / "val.jsonl").open("rb") if line.strip())
    started = time.monotonic()
    inspect_dataset(sample, validate=True)
    validate_s = time.monotonic() - started
    started = time.monotonic()
    for name in ("train.jsonl", "val.jsonl"):
        for line in (sample / name).open("rb"):
            json.loads(line)
    parse_s = time.monotonic() - started
    emit("validate_rows", rows=rows, workers=os.cpu_count(),
         validate_rows_per_s=round(rows / validate_s), validate_mb_per_s=round(
             sum((sample / n).stat().st_size for n in ("train.jsonl", "val.jsonl")) / 1e6
             / validate_s, 2),
         baseline_json_only_rows_per_s=round(rows / parse_s),
         ratio=round(validate_s / parse_s, 1))


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bench-hf-") as tmp_name:
        tmp = Path(tmp_name)
        with HubEmulator(tmp / "hub") as hub:
            inotify = watcher_latency(hub, tmp, "inotify")
            poll = watcher_latency(hub, tmp, "poll")
            emit("watcher_latency", debounce_s=DEBOUNCE_S, files=WATCH_FILES,
                 inotify_p50_s=round(statistics.median(inotify), 3),
                 inotify_max_s=round(max(inotify), 3),
                 baseline_poll_1s_p50_s=round(statistics.median(poll), 3),
                 baseline_poll_1s_max_s=round(max(poll), 3),
                 ratio=round(statistics.median(poll) / statistics.median(inotify), 2))
            resync_bytes(hub, tmp)
            dataset_throughput(hub, tmp)
        validate_rows(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
