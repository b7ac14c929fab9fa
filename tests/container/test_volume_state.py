"""Nothing the pod keeps is written where a restart wipes it: training output, the phase log and
the sync index live under REPO_DIR=/workspace/chess-bot on the volume and outlive the container;
a REPO_URL alone is cloned there (around that state) and its code is what the services run.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from host_tools.engine import Engine
from host_tools.image import ROOT
from tests.container.test_image import http
from tests.utils import wait_until
from tests.utils.containers import Pod, TrackedContainers

STATE = "/workspace/chess-bot"
TIMINGS = f"{STATE}/artifacts/timings/runpod_phase_times.jsonl"
PRESET = "/opt/runpod_cloud_training/train_baseline_preset.sh"
HUB_PORT = 18999
# A few sample rows as a dataset under the state root, where the preset looks by default.
TINY_DATASET = (f"mkdir -p {STATE}/data/dataset/tiny && cd {STATE}/data/dataset/tiny && "
                "head -n 24 /opt/chessbot/data/sample/train.jsonl > train.jsonl && "
                "head -n 8 /opt/chessbot/data/sample/val.jsonl > val.jsonl")
TINY_TRAIN = ("RUN_ID=ct-run TRAIN_EPOCHS=1 TRAIN_BATCH_SIZE=8 "
              "TRAIN_RUNTIME_MAX_SAMPLES_PER_GAME=4 TRAIN_EXTRA_ARGS='--embed-dim 16 "
              "--hidden-dim 32 --num-layers 1 --max-steps-per-epoch 3'")
MODEL = f"{STATE}/artifacts/train/ct-run/model_best.pt"


@pytest.fixture(scope="module")
def image(engine: Engine, image: str) -> str:
    """By ID: another run on this machine may move the shared test tag meanwhile."""
    return subprocess.run(engine.cmd("image", "inspect", "-f", "{{.Id}}", image),
                          capture_output=True, text=True, check=True).stdout.strip()


def _rows(pod: Pod) -> list[dict]:
    return [json.loads(line) for line in pod.exec("cat", TIMINGS).stdout.splitlines()]


def _sync_once(pod: Pod) -> subprocess.CompletedProcess[str]:
    """One upload of the artifacts to a Hub emulator running inside the pod (its code is in the
    image), as runner; the token goes through the engine's environment, never argv."""
    env = {"HF_ENDPOINT": f"http://127.0.0.1:{HUB_PORT}", "HF_REPO_ID": "ct/models",
           "HF_TOKEN": "hf-ct-" + uuid.uuid4().hex}
    argv = pod.engine.cmd("exec", "-u", "runner", *(a for k in env for a in ("-e", k)), pod.name,
                          "python", "-m", "appliance.sync", "once", "--json")
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, **env})


def test_state_outlives_the_container(containers: TrackedContainers, engine: Engine) -> None:
    volume = f"chessbot-test-{uuid.uuid4().hex[:8]}-ws"
    containers.made.append(("", volume))
    env = {"START_JUPYTER": "0"}
    first = containers.run(env, volume=volume)
    boot = first.exec("cat", "/workspace/.appliance/logs/bootstrap.log").stdout
    assert (f"repo_sync: {STATE} holds no checkout and REPO_URL is empty: using the code baked "
            "in the image at /opt/chessbot (nothing copied); state under "
            f"{STATE}") in boot, boot[-2000:]
    assert first.exec("test", "-e", f"{STATE}/appliance", check=False).returncode == 1

    proc = first.ssh(f"{TINY_DATASET} && cd / && {TINY_TRAIN} {PRESET}", timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"{STATE}/data/dataset/tiny" in proc.stdout + proc.stderr
    digest = first.exec("sha256sum", MODEL).stdout.split()[0]

    subprocess.run(engine.cmd("exec", "-d", "-w", "/opt/chessbot", first.name, "python", "-m",
                              "host_tools.emulators.hubemu", "--dir", "/tmp/hub", "--port",
                              str(HUB_PORT)), check=True, capture_output=True)
    wait_until(lambda: first.exec("python", "-c", "import socket; socket.create_connection(("
                                  f"'127.0.0.1', {HUB_PORT}), 1)", check=False).returncode == 0,
               60, 0.5, what="hub emulator in the pod")
    synced = _sync_once(first)
    assert synced.returncode == 0, synced.stdout + synced.stderr
    index_path = f"{STATE}/.appliance/hf-sync/upload_index.json"
    index = first.exec("cat", index_path).stdout
    assert "train/ct-run/model_best.pt" in index, index
    rows = _rows(first)
    sources = {r["source"] for r in rows}
    assert {"runpod_entrypoint", "runpod_services", "runpod_train_preset"} <= sources, sources

    for argv in engine.remove(first.name, 5):
        subprocess.run(argv, capture_output=True, check=False)
    assert not first.running()
    second = containers.run(env, volume=volume)
    assert second.exec("sha256sum", MODEL).stdout.split()[0] == digest
    assert second.exec("cat", index_path).stdout == index
    after = _rows(second)
    assert after[:len(rows)] == rows  # the old rows are all there, the new boot's after them
    boots = {r["run_id"] for r in after if r["source"] == "runpod_entrypoint"}
    assert len(boots) == 2, boots
    starts = [r for r in after[len(rows):] if r["source"] == "runpod_services"]
    assert {r["program"] for r in starts} >= {"sshd", "inference", "fatal-reviver"}, starts
    # The newest *.pt under the state root is what the API serves, with nothing configured.
    wait_until(lambda: http(second.url(8000, "/healthz"))[0] == 200, 120, 0.5,
               what="/healthz 200")
    status, body = http(second.url(8000, "/healthz"))
    assert (status, body["status"], body["model_path"]) == (200, "ok", MODEL), body


def _bare_repo(tmp_path: Path) -> tuple[Path, str]:
    """This tree's HEAD as a bare repository, plus one commit whose `appliance` package notes
    every process that imports it, so the test can see which code runs."""
    work = tmp_path / "work"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(work)], check=True)
    marker = ("\nimport os as _os\n\ntry:\n    with open(f\"/tmp/checkout-imported.{_os.getuid()}\""
              ", \"a\") as _fh:\n        _fh.write(f\"{_os.getpid()} {__file__}\\n\")\n"
              "except OSError:\n    pass\n")
    init = work / "appliance" / "__init__.py"
    init.write_text(init.read_text() + marker)
    ident = ["-c", "user.name=ct", "-c", "user.email=ct@example.invalid"]
    subprocess.run(["git", *ident, "-C", str(work), "commit", "-qam", "mark imports"],
                   check=True)
    bare = tmp_path / "chess-bot.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], check=True)
    head = subprocess.run(["git", "-C", str(bare), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # The pod's git runs as runner (uid 1000) and refuses a repository owned by someone else.
    subprocess.run(["chown", "-R", "1000:1000", str(bare)], check=True)
    return bare, head


def test_repo_url_alone_is_cloned_onto_the_volume_and_run(containers: TrackedContainers,
                                                          tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the bare repository is given to the pod's uid 1000 (needs root)")
    bare, head = _bare_repo(tmp_path)
    pod = containers.run({"REPO_URL": "file:///srv/chess-bot.git", "START_JUPYTER": "0"},
                         mounts=(f"{bare}:/srv/chess-bot.git:ro",))
    boot = pod.exec("cat", "/workspace/.appliance/logs/bootstrap.log").stdout
    assert (f"repo_sync: cloned: file:///srv/chess-bot.git at default branch ({head}) into "
            f"{STATE}, keeping what was there (artifacts); code from the checkout in {STATE}; "
            f"services import it ahead of the image's (PYTHONPATH={STATE}); state under "
            f"{STATE}") in boot, boot[-3000:]
    assert pod.exec("git", "-C", STATE, "rev-parse", "--short", "HEAD",
                    user="runner").stdout.strip() == head
    assert pod.exec("stat", "-c", "%U", f"{STATE}/appliance").stdout.strip() == "runner"
    # The inference program (as runner) imported the checkout's package, not the image's.
    pid = pod.exec("supervisorctl", "pid", "inference").stdout.strip()
    imported = pod.exec("cat", "/tmp/checkout-imported.1000").stdout.splitlines()
    assert f"{pid} {STATE}/appliance/__init__.py" in imported, (pid, imported)
    # The predecessor's preset path runs the checkout's code too.
    proc = pod.ssh(f"cd / && {PRESET} --help", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    after = pod.exec("cat", "/tmp/checkout-imported.1000").stdout.splitlines()
    assert len(after) > len(imported) and all(
        line.endswith(f" {STATE}/appliance/__init__.py") for line in after)
