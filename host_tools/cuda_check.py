"""`make check-cuda-image`: build the CUDA variant of the pod image and check, on a machine without
a GPU, what can be checked there. Too heavy for the test suite (gigabytes of wheels), so a target
of its own.

1. torch's CUDA wheel and its nvidia-* dependencies are downloaded once into a cache outside the
   checkout (`pip download --isolated`: the real package index, not this machine's find-links).
2. `make image TORCH_VARIANT=cuda` with that cache among pip's find-links (either build path).
3. In a container: torch.version.cuda is set; the inference API loads a model on the CPU and logs
   why; the idle watchdog reports NVML absent and keeps running. Then the image size is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from host_tools.engine import Engine, EngineError, detect_engine
from host_tools.image import TORCH_SPECS, ImageError, build, log, pip_config
from host_tools.settings import SettingsError

DEFAULT_CACHE = Path.home() / ".cache" / "chessbot" / "cuda-wheels"
REPO = "localhost/chessbot-appliance-cuda-check"
TINY_TRAIN = ("TRAIN_DATASET_DIR=/opt/chessbot/data/sample TRAIN_EPOCHS=1 TRAIN_BATCH_SIZE=64 "
              "TRAIN_OUTPUT_DIR=/workspace/chess-bot/artifacts/cuda-check "
              "TRAIN_RUNTIME_MAX_SAMPLES_PER_GAME=4 TRAIN_EXTRA_ARGS='--embed-dim 32 "
              "--hidden-dim 64 --num-layers 1 --max-steps-per-epoch 5' "
              "python -m appliance.training.preset")


class CheckFailed(RuntimeError):
    """A check of the CUDA image that did not hold; says what was seen."""


def download(cache: Path, python: str = sys.executable) -> None:
    """torch's CUDA wheel and its dependencies into `cache` (files already there are kept)."""
    cache.mkdir(parents=True, exist_ok=True)
    # --isolated drops pip's configuration (find-links holding the CPU wheel); a CA bundle it
    # names (a TLS-inspecting proxy) is still needed to reach the index.
    cert = [c for c in pip_config(python).get("cert", []) if Path(c).is_file()]
    argv = [python, "-m", "pip", "download", "--isolated", "-q", "--only-binary=:all:",
            *(["--cert", cert[0]] if cert else []), "-d", str(cache), TORCH_SPECS["cuda"]]
    log(f"downloading {TORCH_SPECS['cuda']} (CUDA) and its dependencies into {cache}")
    subprocess.run(argv, check=True)


def size_bytes(engine: Engine, ref: str) -> int:
    return int(subprocess.run(engine.cmd("image", "inspect", "-f", "{{.Size}}", ref),
                              capture_output=True, text=True, check=True).stdout.strip())


def wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise CheckFailed(f"{what} not within {timeout:.0f} s")
        time.sleep(1)


def check_container(engine: Engine, ref: str) -> dict[str, object]:
    """Start the image without a GPU and check CUDA torch, the inference fallback and NVML."""
    name = f"chessbot-cuda-check-{uuid.uuid4().hex[:8]}"
    env = {"START_SSHD": "0", "START_JUPYTER": "0", "START_IDLE_WATCHDOG": "1",
           "AUTOSTOP_ACTION": "none", "INFERENCE_MODEL_RESCAN_SECONDS": "1"}

    def sh(script: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(engine.cmd("exec", name, "bash", "-c", script),
                              capture_output=True, text=True, check=False, timeout=timeout)

    argv = engine.cmd("run", "-d", "--name", name, *engine.run_flags,
                      *(a for k in env for a in ("-e", k)), ref)
    subprocess.run(argv, check=True, capture_output=True, env={**os.environ, **env})
    try:
        out = sh("python -c 'import torch; print(torch.__version__, torch.version.cuda, "
                 "torch.cuda.is_available())'").stdout.split()
        if len(out) != 3 or out[1] == "None" or out[2] != "False":
            raise CheckFailed(f"torch in the image: {out} (want a CUDA build, no GPU here)")
        log(f"torch {out[0]}, built for CUDA {out[1]}; a GPU visible: {out[2]}")
        wait(lambda: sh("python -m appliance.runtime.status", 60).returncode == 0, 300,
             "every program RUNNING")
        trained = sh(TINY_TRAIN)
        if trained.returncode != 0:
            raise CheckFailed(f"training on the CPU failed: {trained.stderr[-1500:]}")
        logs = "/workspace/.appliance/logs"
        wait(lambda: "model ready" in sh(f"cat {logs}/inference.log").stdout, 300,
             "the inference API loading the model")
        inference = sh(f"cat {logs}/inference.log").stdout
        fallback = [line for line in inference.splitlines() if "device auto:" in line]
        ready = [line for line in inference.splitlines() if "model ready" in line]
        if not fallback or "device=cpu" not in ready[-1]:
            raise CheckFailed(f"no CPU fallback in the inference log:\n{inference[-1500:]}")
        log(f"inference: {fallback[0].split('device auto: ', 1)[1]}")
        explained = sh("python -m appliance.watchdog --explain --json")
        state = json.loads(explained.stdout)
        gpu = next(s for s in state["signals"] if s["name"] == "gpu")
        status = sh("supervisorctl status idle-watchdog").stdout
        if gpu["state"] != "unavailable" or "RUNNING" not in status:
            raise CheckFailed(f"watchdog: gpu signal {gpu}, program: {status.strip()}")
        log(f"idle watchdog: RUNNING, gpu signal unavailable: {gpu['detail']}")
        return {"torch": out[0], "cuda": out[1], "inference_fallback": fallback[0],
                "watchdog_gpu": gpu["detail"]}
    finally:
        for cmd in engine.remove(name, 0, volumes=True):
            subprocess.run(cmd, capture_output=True, check=False)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m host_tools.cuda_check",
                                description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--wheels", type=Path, default=DEFAULT_CACHE,
                   help=f"download cache of the CUDA wheels (default {DEFAULT_CACHE})")
    p.add_argument("--keep", action="store_true", help="keep the image afterwards")
    args = p.parse_args(argv)
    try:
        engine = detect_engine()
        download(args.wheels)
        # The cache joins pip's find-links for the build (both paths read pip's configuration).
        links = os.environ.get("PIP_FIND_LINKS", "")
        os.environ["PIP_FIND_LINKS"] = f"{args.wheels} {links}".strip()
        started = time.monotonic()
        ref = build(engine, variant="cuda", repo=REPO, tag="cuda", quiet=True)[0]
        seconds = time.monotonic() - started
        facts = check_container(engine, ref)
        print(json.dumps({"check": "cuda_image", "image": ref, "build_seconds": round(seconds),
                          "size_mib": round(size_bytes(engine, ref) / 2**20), **facts}))
        if not args.keep:
            subprocess.run(engine.cmd("rmi", ref, f"{REPO}:latest"), capture_output=True,
                           check=False)
    except (CheckFailed, ImageError, EngineError, SettingsError,
            subprocess.CalledProcessError) as exc:
        print(f"check-cuda-image: failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
