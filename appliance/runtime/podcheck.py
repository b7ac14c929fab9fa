"""The in-pod half of `provision.py smoke`: run as runner over SSH, it checks supervisord's
programs, the inference API (/healthz, /infer), Jupyter's REST API and one short training epoch,
and prints one JSON object per check (check, status PASS/FAIL/SKIP, detail, elapsed_ms).

It leaves the pod as it found it: the training epoch writes under a hidden directory of
$REPO_DIR/artifacts (artifact sync skips hidden paths) that is removed at the end. When the
inference API had no model, it serves the smoke's model for the /infer check and is restarted
afterwards, so it is back to "no model". Tokens come from the pod's secrets and are never printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import chess
import httpx

from appliance import settings
from appliance.model import BEST_MODEL
from appliance.runtime.health import local_url

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"
SMOKE_TRAIN_ENV = {
    "TRAIN_EPOCHS": "1", "TRAIN_BATCH_SIZE": "64", "TRAIN_RUNTIME_MAX_SAMPLES_PER_GAME": "4",
    "TRAIN_EXTRA_ARGS": "--embed-dim 32 --hidden-dim 64 --num-layers 1 --max-steps-per-epoch 10",
}
PROBE_MOVES = ["e2e4", "e7e5", "g1f3"]
STATES = {"STOPPED", "STARTING", "RUNNING", "BACKOFF", "STOPPING", "EXITED", "FATAL", "UNKNOWN"}


@dataclass
class Check:
    check: str
    status: str
    detail: str
    elapsed_ms: int = 0


class CheckFailed(Exception):
    pass


class Checks:
    """Runs the checks in order; `emit` gets each result as soon as it is known."""

    def __init__(self, emit: Callable[[Check], None]) -> None:
        self.emit = emit
        self.results: list[Check] = []

    @contextmanager
    def run(self, name: str) -> Iterator[dict[str, str]]:
        """The block sets out["detail"] (and out["status"]=SKIP); CheckFailed or any error fails
        the check with its message."""
        out = {"status": PASS, "detail": ""}
        start = time.monotonic()
        try:
            yield out
        except Exception as exc:  # noqa: BLE001 - every failure is a FAIL row, never a crash
            out = {"status": FAIL, "detail": str(exc) or type(exc).__name__}
        result = Check(name, out["status"], out["detail"],
                       int((time.monotonic() - start) * 1000))
        self.results.append(result)
        self.emit(result)


def supervisor_states(run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run
                      ) -> dict[str, str]:
    proc = run(["supervisorctl", "status"], capture_output=True, text=True, timeout=30,
               check=False)
    states = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1] in STATES:
            states[parts[0]] = parts[1]
    if not states:  # e.g. "unix:///... no such file" (exit 4): supervisord is not reachable
        raise CheckFailed(f"supervisorctl status answered nothing (exit {proc.returncode}): "
                          f"{(proc.stderr or proc.stdout).strip()[-300:]}")
    return states


def wait_listening(url: str, timeout: float) -> None:
    """Wait until something accepts connections at `url`'s host and port: supervisord calls a
    program RUNNING after its startsecs, which a loaded pod can reach before the port is bound."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=2).close()
            return
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise CheckFailed(f"nothing accepts connections on {host}:{port} after "
                                  f"{timeout:g} s ({exc.strerror or exc})") from None
        time.sleep(0.25)


def wait_healthy(url: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            resp = httpx.get(url, timeout=5)
            if resp.status_code == 200:
                return dict(resp.json())
            last = f"{resp.status_code} {resp.text[:200]}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.5)
    raise CheckFailed(f"{url} not healthy after {timeout:.0f} s (last: {last})")


def check_infer(base: str, token: str | None) -> str:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    resp = httpx.post(f"{base}/infer", json={"moves": PROBE_MOVES, "topk": 3}, headers=headers,
                      timeout=30)
    if resp.status_code != 200:
        raise CheckFailed(f"POST /infer answered {resp.status_code}: {resp.text[:200]}")
    body = resp.json()
    board = chess.Board()
    for move in PROBE_MOVES:
        board.push_uci(move)
    legal = {m.uci() for m in board.legal_moves}
    if body.get("best_legal") not in legal or len(body.get("topk", [])) != 3:
        raise CheckFailed(f"POST /infer gave no legal best move: {json.dumps(body)[:300]}")
    return f"best_legal {body['best_legal']} after {' '.join(PROBE_MOVES)}"


def train_epoch(repo_dir: Path, out_dir: Path, dataset: Path, timeout: float) -> str:
    env = {**os.environ, **SMOKE_TRAIN_ENV, "TRAIN_DATASET_DIR": str(dataset),
           "TRAIN_OUTPUT_DIR": str(out_dir), "RUN_ID": out_dir.name,
           "RUNPOD_PHASE_TIMING_LOG": str(out_dir / "timings.jsonl")}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "appliance.training.preset", "--no-evaluate"],
                          env=env, capture_output=True, text=True, timeout=timeout, check=False,
                          cwd=repo_dir)
    if proc.returncode != 0:
        raise CheckFailed(f"training preset exit {proc.returncode}: "
                          f"{(proc.stderr or proc.stdout).strip()[-400:]}")
    if not (out_dir / BEST_MODEL).is_file():
        raise CheckFailed(f"training ended but wrote no {out_dir / BEST_MODEL}")
    return f"1 epoch (at most 10 steps) on {dataset} in {time.monotonic() - start:.1f} s"


def run_checks(emit: Callable[[Check], None], dataset: Path | None = None,
               train_timeout: float = 600, restart_timeout: float = 120,
               settle_timeout: float = 90) -> list[Check]:
    paths = settings.load(settings.PathSettings)
    inference = settings.load(settings.InferenceSettings)
    jupyter = settings.load(settings.JupyterSettings)
    bind = settings.load(settings.RuntimeSettings).APPLIANCE_BIND_HOST
    checks = Checks(emit)
    states: dict[str, str] = {}
    with checks.run("supervisorctl") as out:
        # A pod whose sshd just answered may still have programs STARTING.
        deadline = time.monotonic() + settle_timeout
        states = supervisor_states()
        while "STARTING" in states.values() and time.monotonic() < deadline:
            time.sleep(1)
            states = supervisor_states()
        bad = {p: s for p, s in states.items() if s != "RUNNING"}
        if bad:
            raise CheckFailed("not RUNNING: " + ", ".join(f"{p} {s}" for p, s in bad.items()))
        out["detail"] = "RUNNING: " + " ".join(sorted(states))

    api = local_url(inference.listen_host(bind), inference.INFERENCE_PORT, "")
    served: dict[str, Any] | None = None
    no_model = False
    with checks.run("healthz") as out:
        if "inference" not in states:
            out.update(status=SKIP, detail="no inference program in this pod")
        else:
            wait_listening(api, settle_timeout)
            resp = httpx.get(f"{api}/healthz", timeout=10)
            body = resp.json()
            if resp.status_code == 200:
                served = body
                out["detail"] = f"200 ok, serving {body.get('model_path')}"
            elif resp.status_code == 503 and body.get("status") == "no_model":
                no_model = True
                out["detail"] = "503 no_model (the smoke trains one for /infer)"
            else:
                raise CheckFailed(f"GET /healthz answered {resp.status_code}: {body}")

    with checks.run("jupyter_api") as out:
        if "jupyter" not in states:
            out.update(status=SKIP, detail="no jupyter program in this pod")
        else:
            url = local_url(bind, jupyter.JUPYTER_PORT, "/api/status")
            wait_listening(url, settle_timeout)
            anonymous = httpx.get(url, timeout=10)
            resp = httpx.get(url, timeout=10,
                             headers={"Authorization": f"token {jupyter.token or ''}"})
            if resp.status_code != 200 or anonymous.status_code != 403:
                raise CheckFailed(f"GET /api/status: {resp.status_code} with the token, "
                                  f"{anonymous.status_code} without (want 200 and 403)")
            out["detail"] = (f"200 with the token, 403 without; kernels "
                             f"{resp.json().get('kernels')}")

    smoke_dir = paths.state_root / "artifacts" / f".smoke-{uuid.uuid4().hex[:8]}"
    restarted = False
    try:
        with checks.run("train_epoch") as out:
            out["detail"] = train_epoch(paths.code_dir, smoke_dir,
                                        dataset or paths.code_dir / "data" / "sample",
                                        train_timeout)
        with checks.run("infer") as out:
            token = (inference.INFERENCE_API_TOKEN.get_secret_value()
                     if inference.INFERENCE_API_TOKEN else None)
            if "inference" not in states:
                out.update(status=SKIP, detail="no inference program in this pod")
            elif served is None:
                if not no_model:
                    raise CheckFailed("not tried: /healthz failed")
                if not (smoke_dir / BEST_MODEL).is_file():
                    raise CheckFailed("no model is served and the training epoch made none")
                # The service looks for the newest *.pt under $REPO_DIR/artifacts on start.
                restarted = True
                subprocess.run(["supervisorctl", "restart", "inference"], capture_output=True,
                               timeout=120, check=False)
                body = wait_healthy(f"{api}/healthz", restart_timeout)
                out["detail"] = (check_infer(api, token) + " (smoke model "
                                 f"{Path(str(body.get('model_path'))).name})")
            else:
                out["detail"] = check_infer(api, token)
    finally:
        with checks.run("cleanup") as out:
            shutil.rmtree(smoke_dir, ignore_errors=True)
            if restarted:
                subprocess.run(["supervisorctl", "restart", "inference"], capture_output=True,
                               timeout=120, check=False)
            out["detail"] = f"removed {smoke_dir}" + (
                "; inference restarted without the smoke model" if restarted else "")
    return checks.results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m appliance.runtime.podcheck",
                                description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--dataset", type=Path, help="dir with train.jsonl and val.jsonl "
                   "(default data/sample of the code the pod runs)")
    p.add_argument("--train-timeout", type=float, default=600)
    args = p.parse_args(argv)

    def emit(result: Check) -> None:
        print(json.dumps(asdict(result)), flush=True)

    try:
        results = run_checks(emit, args.dataset, args.train_timeout)
    except settings.SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0 if all(r.status != FAIL for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
