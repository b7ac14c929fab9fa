"""Workstation CLI benchmarks through localpod running real containers (host network), one JSON
line each, each against a baseline measured in the same run:

1. provision_wait_to_ssh: `provision.py provision --wait` until SSH answers (BENCH_PROVISION_ROUNDS
   rounds, default 3, each pod terminated after), against `podman run` of the same image polled
   for the SSH banner at the same interval (the container alone, no control plane, no API polls).
2. cycle: one full `provision.py cycle` (tiny training on 64 sample games, --then terminate), per
   phase from the phase-timing log, against the same preset run on this machine without a pod.
"""

from __future__ import annotations

import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from host_tools.cli import Env  # noqa: E402
from host_tools.emulators.localpod import Account, LocalPodServer  # noqa: E402
from host_tools.emulators.localpod.containers import ContainerBackend  # noqa: E402
from host_tools.engine import detect_engine  # noqa: E402
from host_tools.image import build  # noqa: E402
from host_tools.localup import free_port  # noqa: E402
from host_tools.pods import ssh_answers  # noqa: E402
from host_tools.provision import main  # noqa: E402

REPO, TAG = "localhost/chessbot-appliance-test", "current"  # the tests' image: cached layers
ROUNDS = int(os.environ.get("BENCH_PROVISION_ROUNDS", "3"))
POLL_S = 0.5
KEY = "rpk_bench_" + uuid.uuid4().hex
POD_ARGS = ["--template-name", "chessbot-appliance", "--gpu-type-id", "NVIDIA RTX A4000",
            "--poll-interval", str(POLL_S), "--wait-timeout", "300"]
TRAIN = {"TRAIN_EPOCHS": "1", "TRAIN_BATCH_SIZE": "16",
         "TRAIN_EXTRA_ARGS": "--embed-dim 32 --hidden-dim 64 --num-layers 1"}


def emit(**record: object) -> None:
    print(json.dumps(record), flush=True)


def cli(*argv: str) -> dict:  # type: ignore[type-arg]
    env = Env(out=io.StringIO(), err=io.StringIO(), is_tty=lambda: False)
    code = main(list(argv), env)
    if code != 0:
        raise SystemExit(f"provision.py {argv[0]} failed ({code}): "
                         f"{env.err.getvalue()[-2000:]}")  # type: ignore[attr-defined]
    return dict(json.loads(env.out.getvalue()))  # type: ignore[attr-defined]


def baseline_container(engine, image: str, public_key: str) -> float:  # type: ignore[no-untyped-def]
    name = f"chessbot-bench-{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = {**os.environ, "PUBLIC_KEY": public_key, "SSH_PORT": str(port),
           "APPLIANCE_BIND_HOST": "127.0.0.1", "JUPYTER_PORT": str(free_port()),
           "INFERENCE_PORT": str(free_port())}
    argv = engine.cmd("run", "-d", "--name", name, "--network", "host", "-v",
                      f"{name}-ws:/workspace", *engine.run_flags)
    for k in ("PUBLIC_KEY", "SSH_PORT", "APPLIANCE_BIND_HOST", "JUPYTER_PORT", "INFERENCE_PORT"):
        argv += ["-e", k]
    try:
        start = time.monotonic()
        subprocess.run([*argv, image], check=True, capture_output=True, env=env)
        while not ssh_answers("127.0.0.1", port):
            if time.monotonic() - start > 300:
                raise SystemExit("the baseline container's sshd never answered")
            time.sleep(POLL_S)
        return time.monotonic() - start
    finally:
        for argv in engine.remove(name, 0):
            subprocess.run(argv, capture_output=True)
        subprocess.run(engine.cmd("volume", "rm", "-f", f"{name}-ws"), capture_output=True)


def bench_provision(engine, image: str, public_key: str) -> None:  # type: ignore[no-untyped-def]
    cli_s, base_s = [], []
    for _ in range(ROUNDS):
        start = time.monotonic()
        pod = cli("provision", "--wait", "--json", *POD_ARGS)
        cli_s.append(time.monotonic() - start)
        cli("terminate", pod["id"], "--yes", "--json")
        base_s.append(baseline_container(engine, image, public_key))
    emit(bench="provision_wait_to_ssh", rounds=ROUNDS, median_s=round(statistics.median(cli_s), 2),
         max_s=round(max(cli_s), 2), baseline="podman_run_to_ssh_banner",
         baseline_median_s=round(statistics.median(base_s), 2),
         ratio=round(statistics.median(cli_s) / statistics.median(base_s), 2))


def bench_cycle(tmp: Path) -> None:
    dataset = tmp / "dataset"
    dataset.mkdir()
    for name, rows in (("train", 64), ("val", 16)):
        lines = (ROOT / "data" / "sample" / f"{name}.jsonl").read_text().splitlines()[:rows]
        (dataset / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    train_env = [a for k, v in TRAIN.items() for a in ("--train-env", f"{k}={v}")]
    start = time.monotonic()
    summary = cli("cycle", "--json", *POD_ARGS, *train_env, "--dataset", str(dataset), "--out",
                  str(tmp / "out"), "--then", "terminate")
    total = time.monotonic() - start
    phases = {r["phase"]: round(r["elapsed_ms"] / 1000, 2) for r in summary["phases"]}
    env = {**os.environ, **TRAIN, "TRAIN_DATASET_DIR": str(dataset),
           "TRAIN_OUTPUT_DIR": str(tmp / "local"),
           "RUNPOD_PHASE_TIMING_LOG": str(tmp / "local.jsonl")}
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "appliance.training.preset"], env=env, check=True,
                   capture_output=True, cwd=ROOT)
    local = time.monotonic() - start
    emit(bench="cycle", total_s=round(total, 2), phases_s=phases,
         baseline="same_preset_on_this_machine", baseline_s=round(local, 2),
         ratio=round(total / local, 2), train_phase_vs_baseline=round(phases["train"] / local, 2))


def main_() -> None:
    engine = detect_engine()
    image = build(engine, repo=REPO, tag=TAG, quiet=True)[0]
    with tempfile.TemporaryDirectory(prefix="bench-provision-") as d:
        tmp = Path(d)
        key = tmp / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                       check=True)
        public_key = key.with_suffix(".pub").read_text().strip()
        server = LocalPodServer(Account(ContainerBackend(engine.name, host_network=True), {KEY},
                                        boot_polls=0, image=image, public_key=public_key))
        server.start()
        os.environ.update(RUNPOD_API_KEY=KEY, RUNPOD_REST_URL=server.rest_url,
                          RUNPOD_GRAPHQL_URL=server.graphql_url,
                          RUNPOD_SSH_KNOWN_HOSTS_FILE=str(tmp / "known_hosts"),
                          RUNPOD_SSH_IDENTITY_FILE=str(key),
                          RUNPOD_PHASE_TIMING_LOG=str(tmp / "timings.jsonl"))
        try:
            bench_provision(engine, image, public_key)
            bench_cycle(tmp)
        finally:
            server.stop()  # terminates whatever a failed round left


if __name__ == "__main__":
    main_()
