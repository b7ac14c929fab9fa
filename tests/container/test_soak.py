"""Soak: a pod trains with HF sync on while supervisord programs are killed at random and an SSH
session stays open. Afterwards every checkpoint the trainer reported is on the Hub emulator byte
for byte, the SSH session never dropped, and no program is left FATAL.

Bounded in time: SOAK_SECONDS (default 120) of training and kills, then the settling checks.
SOAK_KILL_INTERVAL_SECONDS (default 4) paces the kills; at most SOAK_SECONDS / interval of them.

What is killed (kill -9 of the pid supervisorctl reports, as a crash would): jupyter, inference,
hf-sync, idle-watchdog and the fatal-reviver event listener. The reviver is included on purpose:
it is a supervisord process that can crash too, and a crash of it must not leave a FATAL program
unrevived. sshd is never killed (the SSH session must hold); neither is the trainer, which is no
supervisord program. Once per soak a program is driven into FATAL (killed each time it starts,
until supervisord gives up) and the reviver is killed before its cool-down ends: the next
reviver must still bring the program back.

The trainer reports each checkpoint as an `epoch` event in its progress JSONL; an in-pod driver
hard-links the checkpoint_last.pt of each reported epoch to epochs/checkpoint_epoch_NNNN.pt (the
trainer replaces the file by rename, so the link keeps that epoch's bytes), so every reported
checkpoint is a file the sync must deliver.

The pod shares the host's network so it reaches the Hub emulator, which listens on 127.0.0.1
only (as tests/lifecycle does); its sshd, Jupyter and inference API listen on free loopback ports.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from appliance.atomic import sha256_file
from host_tools.emulators.hubemu import HubEmulator
from host_tools.emulators.hubemu.store import Commit, HubError
from tests.utils import free_port, wait_until
from tests.utils.containers import Pod, TrackedContainers
from tests.utils.hubemu import CANARY

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "120"))
KILL_INTERVAL_S = float(os.environ.get("SOAK_KILL_INTERVAL_SECONDS", "4"))
MAX_KILLS = max(1, int(SOAK_SECONDS / KILL_INTERVAL_S))
# APPLIANCE_FATAL_COOLDOWN_SECONDS: long enough that the reviver is killed before it revives,
# short enough for a soak (revivals come on the reviver's 5 s tick).
COOLDOWN_S = 10
HEARTBEAT_MAX_GAP_S = 5.0
KILLABLE = ("jupyter", "inference", "hf-sync", "idle-watchdog", "fatal-reviver")
CAN_BE_FATAL = ("jupyter", "inference", "hf-sync")  # startsecs > 0: kills while STARTING count
HF_REPO = "acme/soak-artifacts"
SOURCE = "/workspace/artifacts"
OUT = f"{SOURCE}/soak"
WORK = "/workspace/soak"
PROGRESS = f"{WORK}/progress.jsonl"
LOG_DIR = "/workspace/.appliance/logs"
# A slice of the sample (120 train, 12 val games): epochs of seconds even on a busy machine.
TRAIN_ENV = (f"TRAIN_PATH={WORK}/train.jsonl VAL_PATH={WORK}/val.jsonl TRAIN_EPOCHS=100000 "
             f"TRAIN_BATCH_SIZE=16 TRAIN_OUTPUT_DIR={OUT} TRAIN_PROGRESS_JSONL_OUT={PROGRESS} "
             "TRAIN_RUNTIME_MAX_SAMPLES_PER_GAME=2 TRAIN_EXTRA_ARGS='--embed-dim 32 "
             "--hidden-dim 64 --num-layers 1 --max-steps-per-epoch 4 "
             "--early-stopping-patience 0'")

# Runs in the pod as runner (`python -` over SSH): trains through the preset for SECONDS, links
# each reported epoch's checkpoint, stops the trainer, and prints what the source dir holds.
DRIVER = r'''
import json, os, signal, subprocess, sys, time
from pathlib import Path
from appliance.atomic import sha256_file
from appliance.model.checkpoint import read_checkpoint
from appliance.sync.index import scan

seconds, source, out, progress = float(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), \
    Path(sys.argv[4])
snaps = out / "epochs"
snaps.mkdir(parents=True, exist_ok=True)
progress.parent.mkdir(parents=True, exist_ok=True)
for split, games in (("train", 120), ("val", 12)):
    rows = Path(f"/opt/chessbot/data/sample/{split}.jsonl").read_text().splitlines(True)
    (progress.parent / f"{split}.jsonl").write_text("".join(rows[:games]))
with (progress.parent / "train.log").open("ab") as log:
    proc = subprocess.Popen([sys.executable, "-m", "appliance.training.preset"], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
done, epochs = 0, []

def consume():
    global done
    try:
        data = progress.read_bytes()
    except FileNotFoundError:
        return
    whole = data[:data.rfind(b"\n") + 1]
    for line in whole[done:].decode().splitlines():
        event = json.loads(line)
        if event["event"] == "epoch":
            n = event["epoch"]
            os.link(out / "checkpoint_last.pt", snaps / f"checkpoint_epoch_{n:04d}.pt")
            epochs.append(n)
    done = len(whole)

deadline = time.monotonic() + seconds
while time.monotonic() < deadline and proc.poll() is None:
    consume()
    time.sleep(0.1)
ended_by_itself = proc.poll()
if ended_by_itself is None:
    os.killpg(proc.pid, signal.SIGTERM)
proc.wait()
consume()
inside = {}
for snap in sorted(snaps.iterdir()):
    if not snap.name.startswith("."):
        inside[snap.name] = read_checkpoint(snap)["train_state"]["progress"]["epoch"]
files = {rel: sha256_file(source / rel) for rel in scan(source, ("*.pt", "*.json"))}
print(json.dumps({"ended_by_itself": ended_by_itself, "epochs": epochs, "inside": inside,
                  "files": files}))
'''


@dataclass
class Heartbeat:
    """An SSH session printing a counter every second; arrival times are taken on the host."""

    pod: Pod
    beats: list[tuple[float, int]] = field(default_factory=list)
    proc: subprocess.Popen[str] | None = None
    reader: threading.Thread | None = None

    def start(self) -> None:
        cmd = "i=0; while :; do i=$((i+1)); echo $i; sleep 1; done"
        self.proc = subprocess.Popen([*self.pod.ssh_argv(), "-T", cmd], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                                     bufsize=1)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.beats.append((time.monotonic(), int(line)))

    def stop(self) -> str:
        """Ends the session; returns its stderr. Call `alive()` first."""
        assert self.proc is not None and self.reader is not None
        self.proc.kill()
        _, err = self.proc.communicate(timeout=30)
        self.reader.join(10)
        return err

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def start_pod(containers: TrackedContainers, env: dict[str, str]) -> Pod:
    """Like containers.run, but in the host's network on free loopback ports."""
    name = f"chessbot-test-{uuid.uuid4().hex[:8]}"
    volume = f"{name}-ws"
    containers.made.append((name, volume))
    ports = {inner: free_port() for inner in (22, 8888, 8000)}
    env = {"PUBLIC_KEY": containers.key.with_suffix(".pub").read_text().strip(),
           "APPLIANCE_BIND_HOST": "127.0.0.1", "SSH_PORT": str(ports[22]),
           "JUPYTER_PORT": str(ports[8888]), "INFERENCE_PORT": str(ports[8000]), **env}
    engine = containers.engine
    argv = engine.cmd("run", "-d", "--name", name, "--network", "host", "-v",
                      f"{volume}:/workspace", *engine.run_flags)
    for k in env:
        argv += ["-e", k]  # values come from the engine's env, never argv (the token)
    subprocess.run([*argv, containers.image], check=True, capture_output=True,
                   env={**os.environ, **env})
    pod = Pod(engine, name, volume, ports, containers.key)
    pod.wait_ssh()
    pod.wait_all_running()
    return pod


def pid_of(pod: Pod, program: str) -> int:
    out = pod.exec("supervisorctl", "pid", program, check=False).stdout.strip()
    return int(out) if out.isdigit() else 0


def kill(pod: Pod, program: str) -> bool:
    pid = pid_of(pod, program)
    return pid > 0 and pod.exec("kill", "-9", str(pid), check=False).returncode == 0


def drive_to_fatal(pod: Pod, program: str, timeout: float = 120) -> int:
    """Kill `program` each time it is STARTING until supervisord gives up on it (FATAL)."""
    kills = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = pod.supervisor_status().get(program)
        if state == "FATAL":
            return kills
        if state in ("STARTING", "RUNNING") and kill(pod, program):
            kills += 1
        time.sleep(0.2)
    raise AssertionError(f"{program} not FATAL after {kills} kills in {timeout:g} s")


def on_hub(hub: HubEmulator, files: dict[str, str]) -> dict[str, str]:
    """The files not (yet) on the Hub's main branch with these sha256s, with what is there."""
    try:
        head: Commit | None = hub.state.store.get("model", HF_REPO).head
    except HubError:
        head = None
    missing = {}
    for rel, sha in files.items():
        entry = head.files.get(rel) if head is not None else None
        if entry is None or entry.sha256 != sha:
            missing[rel] = entry.sha256 if entry else "absent"
    return missing


@pytest.mark.slow
@pytest.mark.timeout(int(SOAK_SECONDS) + 1200)  # the image build on a cold cache included
def test_soak_training_with_sync_while_programs_are_killed(
        containers: TrackedContainers, hub: HubEmulator, tmp_path: Path) -> None:
    pod = start_pod(containers, {
        "START_HF_SYNC": "1", "HF_ENDPOINT": hub.url, "HF_TOKEN": CANARY, "HF_REPO_ID": HF_REPO,
        "HF_HUB_DISABLE_XET": "1", "HF_SYNC_SOURCE_DIR": SOURCE, "HF_SYNC_DEBOUNCE_SECONDS": "1",
        "START_IDLE_WATCHDOG": "1", "AUTOSTOP_ACTION": "none", "AUTOSTOP_POLL_SECONDS": "5",
        "APPLIANCE_FATAL_COOLDOWN_SECONDS": str(COOLDOWN_S),
    })
    seed = os.environ.get("SOAK_SEED") or uuid.uuid4().hex  # SOAK_SEED replays a soak's choices
    rng = random.Random(seed)
    heartbeat = Heartbeat(pod)
    heartbeat.start()
    wait_until(lambda: len(heartbeat.beats) >= 2, 30, 0.2, what="first heartbeats")
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    with script.open() as stdin:
        driver = subprocess.Popen([*pod.ssh_argv(), f"{TRAIN_ENV} python - {SOAK_SECONDS} "
                                   f"{SOURCE} {OUT} {PROGRESS}"], stdin=stdin,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    started = time.monotonic()
    deadline = started + SOAK_SECONDS
    kills: list[str] = []
    fatal: tuple[str, int] | None = None
    while time.monotonic() < deadline and len(kills) < MAX_KILLS:
        if fatal is None and time.monotonic() >= started + SOAK_SECONDS / 4:
            target = rng.choice(CAN_BE_FATAL)
            fatal = (target, drive_to_fatal(pod, target))
            wait_until(lambda: kill(pod, "fatal-reviver"), 30, 0.5, what="fatal-reviver killed")
            kills.append(f"{target} (to FATAL)")
            kills.append("fatal-reviver")
            continue
        running = [p for p, s in pod.supervisor_status().items() if p in KILLABLE
                   and s == "RUNNING"]
        if running:
            program = rng.choice(running)
            if kill(pod, program):
                kills.append(program)
        time.sleep(KILL_INTERVAL_S)
    soak_s = time.monotonic() - started
    print(f"soak of {soak_s:.0f} s (SOAK_SEED={seed}), {len(kills)} kills: {', '.join(kills)}")

    out, err = driver.communicate(timeout=300)
    assert driver.returncode == 0, err[-3000:]
    report = json.loads(out)
    assert report["ended_by_itself"] is None, pod.exec("cat", f"{WORK}/train.log").stdout
    epochs = report["epochs"]
    assert epochs and epochs == list(range(1, len(epochs) + 1)), \
        pod.exec("cat", f"{WORK}/train.log").stdout[-3000:]
    # Each snapshot holds the checkpoint of the epoch it is named after.
    assert report["inside"] == {f"checkpoint_epoch_{n:04d}.pt": n for n in epochs}
    files = report["files"]
    for n in epochs:
        assert f"soak/epochs/checkpoint_epoch_{n:04d}.pt" in files
    assert {"soak/checkpoint_last.pt", "soak/model_best.pt"} <= set(files)

    # No program is left FATAL: the one driven there is revived though its reviver was killed.
    def settled() -> dict[str, str]:
        states = pod.supervisor_status()
        return states if set(states.values()) == {"RUNNING"} else {}

    try:
        states = wait_until(settled, 4 * COOLDOWN_S + 60, 1, what="every program RUNNING")
    except AssertionError:
        reviver_log = pod.exec("cat", f"{LOG_DIR}/fatal-reviver.log", check=False).stdout
        raise AssertionError(f"{pod.supervisor_status()} after FATAL of {fatal}; reviver log:\n"
                             f"{reviver_log[-3000:]}") from None
    assert set(states) == {"sshd", *KILLABLE}, states
    assert fatal is not None
    reviver_log = pod.exec("cat", f"{LOG_DIR}/fatal-reviver.log").stdout
    assert f"{fatal[0]} is FATAL (found in supervisord's states, its event missed" in \
        reviver_log, reviver_log[-3000:]

    # Every reported checkpoint (and the rest of the source dir) is on the Hub, byte-identical.
    try:
        wait_until(lambda: not on_hub(hub, files), 180, 1, what="every file on the Hub")
    except AssertionError:
        sync_log = pod.exec("cat", f"{LOG_DIR}/hf-sync.log", check=False).stdout
        raise AssertionError(f"not on the Hub: {on_hub(hub, files)}; hf-sync log:\n"
                             f"{sync_log[-3000:]}") from None
    store = hub.state.store
    for rel, sha in files.items():
        assert sha256_file(store.object_path(sha)) == sha, rel

    # The SSH session never dropped: alive now, every beat there, none late.
    assert heartbeat.alive(), heartbeat.stop()
    assert time.monotonic() - heartbeat.beats[-1][0] < HEARTBEAT_MAX_GAP_S, "heartbeat stalled"
    assert heartbeat.stop() == ""
    counters = [n for _, n in heartbeat.beats]
    assert counters == list(range(1, len(counters) + 1)), counters
    gaps = [b[0] - a[0] for a, b in zip(heartbeat.beats, heartbeat.beats[1:], strict=False)]
    assert max(gaps) < HEARTBEAT_MAX_GAP_S, max(gaps)

    logs = pod.exec("sh", "-c", f"cat {LOG_DIR}/*.log").stdout
    assert CANARY not in logs and CANARY not in out + err
    print(f"{len(epochs)} checkpoints reported, {len(files)} files on the Hub byte-identical; "
          f"{fatal[0] if fatal else '-'} driven FATAL and revived; {len(counters)} heartbeats, "
          f"longest gap {max(gaps):.1f} s")
