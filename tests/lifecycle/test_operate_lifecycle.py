"""Operating runs from the workstation against localpod with real containers of our image
(issue 16): a cycle watched to the end (each epoch's checkpoints copied home as it ends, the report
written), then on the same pod `cp` both ways, `ssh-config` with plain `ssh`, and a run whose
trainer is killed (the watcher sees the stall, collects, stops the pod); then a network volume
that outlives `terminate` and is read by the next pod, which `--max-hours` stops.

Small values, no fakes: `--stall-minutes` and `--max-hours` take fractions (0.2 min = 12 s,
0.02 h = 72 s); the pod with the hard cap polls every second (AUTOSTOP_POLL_SECONDS, default 60).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from host_tools.emulators.localpod import LocalPodServer
from host_tools.emulators.localpod.containers import ContainerBackend, network_volume_name
from host_tools.engine import Engine
from tests.lifecycle.harness import POD_ARGS, CliResult, exists, run_cli, serve_localpod
from tests.utils import wait_until

ACCOUNT_KEY = "rpk_OPERATE_LIFECYCLE_CANARY_8d1e4b"
RUN = "lc-watch"
STALL_RUN = "lc-stall"
MODEL = "--embed-dim 32 --hidden-dim 64 --num-layers 1"
CAP_HOURS = 0.02  # 72 s

pytestmark = pytest.mark.timeout(900)


@pytest.fixture
def localpod(engine: Engine, image: str, client_key: Path, tmp_path: Path,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalPodServer]:
    # RunPod answers a stop before the container goes: the hard cap's stop from inside the pod
    # gets its answer before it is killed.
    with serve_localpod(engine, image, client_key, tmp_path, monkeypatch, ACCOUNT_KEY,
                        stop_delay_s=2.0) as server:
        yield server


def cli(localpod: LocalPodServer, *argv: str, spy: Any = None) -> CliResult:
    pod_keys = [p.pod_key for p in localpod.account.pods.values()]
    return run_cli(argv, (ACCOUNT_KEY, *pod_keys), spy)


def json_values(text: str) -> list[Any]:
    """Every JSON value in `text`: the watcher's JSON lines, then cycle's indented summary."""
    decoder, values, pos = json.JSONDecoder(), [], 0
    while pos < len(text):
        if text[pos].isspace():
            pos += 1
            continue
        value, pos = decoder.raw_decode(text, pos)
        values.append(value)
    return values


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def checkpoint_epoch(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=False)
               ["train_state"]["progress"]["epoch"])


def dataset(tmp_path: Path, games: int) -> Path:
    ds = tmp_path / "dataset"
    ds.mkdir()
    sample = Path(__file__).resolve().parents[2] / "data" / "sample"
    for name, rows in (("train", games), ("val", 16)):
        lines = (sample / f"{name}.jsonl").read_text().splitlines()[:rows]
        (ds / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    return ds


def test_watched_cycle_cp_ssh_config_and_a_killed_run_that_stalls(
        engine: Engine, localpod: LocalPodServer, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # -- a: a cycle of three epochs watched to the end, into artifacts/cycle/RUN_ID ------------
    monkeypatch.setenv("REPO_DIR", str(tmp_path / "repo"))
    out = tmp_path / "repo" / "artifacts" / "cycle" / RUN
    copies: list[int] = []  # the epoch of each checkpoint_last.pt the watcher brought home

    def spy(argv: list[str], stdout: Path | None) -> None:
        if "cat" in argv[-1] and "checkpoint_last.pt" in argv[-1] and stdout is not None \
                and stdout.exists():
            copies.append(checkpoint_epoch(stdout))

    # ~150 games: an epoch takes seconds, longer than a copy, so each epoch gets its own.
    result = cli(localpod, "cycle", "--json", "--watch", "--stall-minutes", "3", *POD_ARGS,
                 "--train-env", "TRAIN_EPOCHS=3", "--train-env", "TRAIN_BATCH_SIZE=16",
                 "--train-env", f"TRAIN_EXTRA_ARGS={MODEL}", "--dataset",
                 str(dataset(tmp_path, 150)), "--run-id", RUN, "--then", "keep", spy=spy)
    assert result.code == 0, result.err
    *events, summary = json_values(result.out)
    pod_id = summary["pod"]
    assert summary["out"] == str(out)
    # Each epoch event is followed by the copy of that epoch's checkpoints, before the next; the
    # last epoch's copy folds into done's when both events arrive together.
    marks = [(e["what"] if e["event"] == "watch" else e["event"], e.get("epoch"))
             for e in events if e["event"] in ("epoch", "done", "watch")]
    last = [("copied", 3), ("done", None), ("copied", 3), ("done", None)]
    assert marks in ([("following", None), ("epoch", 1), ("copied", 1), ("epoch", 2),
                      ("copied", 2), ("epoch", 3), *tail] for tail in (last, last[1:])), marks
    copied = [e for e in events if e.get("what") == "copied"]
    assert all(e["files"] == [str(out / "artifacts" / "model_best.pt"),
                              str(out / "artifacts" / "checkpoint_last.pt")] for e in copied)
    # The files themselves: epoch 1, 2, 3 (and the final ones at done).
    assert copies == [1, 2, 3, 3][:len([m for m in marks if m[0] == "copied"])]
    assert [e["what"] for e in events if e["event"] == "watch"][-1] == "done"
    # The run's folder: the watcher's copies, then cycle's fetch, the log, and the report.
    assert checkpoint_epoch(out / "artifacts" / "checkpoint_last.pt") == 3
    assert "epoch 3/3: train loss" in (out / "train.log").read_text()
    assert summary["report"] == str(out / "report.md")
    report = json.loads((out / "report.json").read_text())
    assert [e["epoch"] for e in report["epochs"]] == [1, 2, 3]
    assert report["gpu"]["pod_id"] == pod_id
    assert (out / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert localpod.account.pods[pod_id].status == "RUNNING"  # --then keep

    # -- c: cp both ways ------------------------------------------------------------------------
    up = tmp_path / "up.bin"
    up.write_bytes(bytes(range(256)) * 800)
    result = cli(localpod, "cp", str(up), f"{pod_id}:/workspace/up.bin")
    assert result.code == 0, result.err
    via = ("rsync is not installed here: copying with scp\n" if shutil.which("rsync") is None
           else f"rsync is not in pod {pod_id}: copying with scp\n")  # the image has no rsync
    assert result.err.startswith(via), result.err
    result = cli(localpod, "ssh", pod_id, "--", "sha256sum /workspace/up.bin")
    assert result.ran == [f"{sha256(up.read_bytes())}  /workspace/up.bin\n"], result.err
    down = tmp_path / "down" / "model_best.pt"
    down.parent.mkdir()
    result = cli(localpod, "cp", f"{pod_id}:/workspace/cycle/{RUN}/artifacts/model_best.pt",
                 str(down))
    assert result.code == 0, result.err
    assert down.read_bytes() == (out / "artifacts" / "model_best.pt").read_bytes()

    # -- d: ssh-config, then plain ssh with that file alone ----------------------------------
    config = tmp_path / "ssh" / "chessbot"
    known_hosts = (tmp_path / "known_hosts").read_text()
    result = cli(localpod, "ssh-config", pod_id, "--file", str(config))
    assert result.code == 0, result.err
    assert result.out.splitlines()[0] == f"{config}: ssh chessbot-{pod_id}"
    proc = subprocess.run(["ssh", "-F", str(config), "-o", "BatchMode=yes", f"chessbot-{pod_id}",
                           "id -un && sha256sum /workspace/up.bin"], capture_output=True,
                          text=True, timeout=60, check=False, stdin=subprocess.DEVNULL)
    assert (proc.returncode, proc.stdout) == (
        0, f"runner\n{sha256(up.read_bytes())}  /workspace/up.bin\n"), proc.stderr
    # The same pinned host key, under the pod's alias: nothing was added to known_hosts.
    assert (tmp_path / "known_hosts").read_text() == known_hosts

    # -- b: a run whose trainer is killed: the stall is seen, collected, the pod stopped --------
    remote = f"/workspace/cycle/{STALL_RUN}"
    train = (f"python -m appliance.training.train --train /workspace/cycle/{RUN}/dataset/"
             f"train.jsonl --val /workspace/cycle/{RUN}/dataset/val.jsonl --output-dir "
             f"{remote}/artifacts --progress-jsonl-out {remote}/artifacts/progress.jsonl "
             f"--epochs 500 --early-stopping-patience 0 --max-steps-per-epoch 2 "
             f"--batch-size 16 {MODEL}")
    # In the background, detached from the ssh session; its pid kept to kill exactly it.
    result = cli(localpod, "ssh", pod_id, "--", f"mkdir -p {remote}; cd {remote} || exit 1; "
                 f"nohup {train} > train.log 2>&1 < /dev/null & echo $! > train.pid")
    assert result.code == 0, result.err
    wait_until(lambda: cli(localpod, "ssh", pod_id, "--", f"grep -q '\"start\"' "
                           f"{remote}/artifacts/progress.jsonl").code == 0, 120, 1,
               "the trainer's start event")
    stall_out = tmp_path / "stalled"
    watched: list[CliResult] = []
    watcher = threading.Thread(target=lambda: watched.append(cli(
        localpod, "watch", pod_id, "--run-id", STALL_RUN, "--out", str(stall_out), "--json",
        "--stall-minutes", "0.2", "--on-stall", "stop")), daemon=True)
    watcher.start()
    wait_until(lambda: (stall_out / "artifacts" / "checkpoint_last.pt").exists(), 120, 0.5,
               "the first epoch's copy")
    result = cli(localpod, "ssh", pod_id, "--", f"kill -9 $(cat {remote}/train.pid) && cd "
                 f"{remote}/artifacts && sleep 1 && sha256sum model_best.pt checkpoint_last.pt")
    assert result.code == 0, result.err
    in_pod = result.ran[0]  # what the trainer left, nothing writes there any more
    watcher.join(timeout=180)
    assert not watcher.is_alive() and watched[0].code == 1, watched
    lines = [json.loads(line) for line in watched[0].out.splitlines()]
    epochs = [e["epoch"] for e in lines if e["event"] == "epoch"]
    stalled = lines[-1]
    assert stalled["what"] == "stalled" and stalled["action"] == "stop", stalled
    assert stalled["files"] == [str(stall_out / "artifacts" / name) for name in (
        "model_best.pt", "checkpoint_last.pt", "progress.jsonl")]
    assert stalled["minutes"] >= 0.2 and epochs and epochs == list(range(1, len(epochs) + 1))
    # Collected: exactly what the trainer left when it died.
    assert in_pod == "".join(f"{sha256((stall_out / 'artifacts' / name).read_bytes())}  {name}\n"
                             for name in ("model_best.pt", "checkpoint_last.pt"))
    # The collected events make the stalled run's report.
    result = cli(localpod, "report", STALL_RUN, "--dir", str(stall_out), "--json")
    assert result.code == 0, result.err
    assert [e["epoch"] for e in json.loads(result.out)["epochs"]] == epochs
    assert localpod.account.pods[pod_id].status == "EXITED"
    container, volume = ContainerBackend.names(localpod.account.pods[pod_id])
    wait_until(lambda: not exists(engine, "container", container), 60, 0.5, "the stop")
    assert exists(engine, "volume", volume)  # stopped, not terminated: /workspace kept


def test_a_network_volume_outlives_its_pod_and_max_hours_stops_the_next(
        engine: Engine, image: str, localpod: LocalPodServer) -> None:
    # -- e: pod 1 writes on the network volume and is terminated; pod 2 reads it --------------
    result = cli(localpod, "volume", "create", "lc-shared", "--size", "10", "--data-center",
                 "LOCAL-1", "--json")
    assert result.code == 0, result.err
    volume_id = json.loads(result.out)["id"]
    netvol = network_volume_name(volume_id)
    result = cli(localpod, "provision", "--wait", "--json", "--name", "lc-vol-1", *POD_ARGS,
                 "--volume", volume_id)
    assert result.code == 0, result.err
    first = json.loads(result.out)["id"]
    result = cli(localpod, "ssh", first, "--", "echo written-by-pod-1 > /workspace/shared.txt")
    assert result.code == 0, result.err
    result = cli(localpod, "terminate", first, "--yes")
    assert (result.code, result.out) == (0, (
        f"terminated pod {first}: it is gone; its network volume {volume_id} keeps the data of "
        "/workspace\n")), result.err
    assert localpod.account.pods[first].status == "TERMINATED"
    assert not exists(engine, "container", ContainerBackend.names(localpod.account.pods[first])[0])
    assert exists(engine, "volume", netvol)

    # -- f: pod 2, on the same volume, with a hard cap of 72 s --------------------------------
    created = time.monotonic()
    result = cli(localpod, "provision", "--wait", "--json", "--name", "lc-vol-2", *POD_ARGS,
                 "--volume", volume_id, "--max-hours", f"{CAP_HOURS}",
                 "--env", "AUTOSTOP_POLL_SECONDS=1")
    assert result.code == 0, result.err
    second = json.loads(result.out)["id"]
    assert localpod.account.pods[second].env["AUTOSTOP_MAX_HOURS"] == "0.02"
    result = cli(localpod, "ssh", second, "--", "cat /workspace/shared.txt")
    assert (result.code, result.ran) == (0, ["written-by-pod-1\n"]), result.err
    wait_until(lambda: localpod.account.pods[second].status == "EXITED", 200, 1,
               "the hard cap's stop")
    stopped_after = time.monotonic() - created
    # The watchdog dates the container's start from the kernel's boot time, which /proc gives in
    # whole seconds: the cap may fall up to a second early.
    assert CAP_HOURS * 3600 - 1.5 <= stopped_after < CAP_HOURS * 3600 + 90, stopped_after
    # Stopped by the pod itself, through the API with its own key; never terminated.
    assert any(r["path"] == f"/v2/pods/{second}/action" for r in localpod.account.requests)
    container = ContainerBackend.names(localpod.account.pods[second])[0]
    wait_until(lambda: not exists(engine, "container", container), 60, 0.5, "the stop")
    # The watchdog's record, read from the network volume.
    cat = subprocess.run(engine.cmd(
        "run", "--rm", *engine.run_flags, "--network", "none", "--entrypoint", "cat", "-v",
        f"{netvol}:/workspace", image,
        "/workspace/chess-bot/artifacts/timings/runpod_phase_times.jsonl"),
        capture_output=True, text=True, timeout=120, check=True)
    stops = [r for r in map(json.loads, cat.stdout.splitlines())
             if r.get("source") == "idle_watchdog" and r.get("phase") == "autostop"]
    assert len(stops) == 1 and stops[0]["status"] == "ok", stops
    assert "(AUTOSTOP_MAX_HOURS=0.02), active or not" in stops[0]["reason"]
    assert stops[0]["reason"].startswith("hard cap: running 1m")
    assert stops[0]["reason"].endswith(f"action runpod_api: pod {second} stopped through the "
                                       "RunPod API (EXITED)")

    # The volume is refused for deletion while the stopped pod holds it, deleted after.
    result = cli(localpod, "volume", "delete", volume_id, "--yes")
    assert (result.code, result.err) == (1, (
        f"error: network volume lc-shared (id {volume_id}, 10 GB, data center LOCAL-1) is in use "
        f"by pod(s) {second}: terminate them first (`provision.py terminate POD`)\n"))
    assert cli(localpod, "terminate", second, "--yes").code == 0
    result = cli(localpod, "volume", "delete", volume_id, "--yes")
    assert result.code == 0, result.err
    assert not exists(engine, "volume", netvol)
