"""Image benchmarks, one JSON line each: for both build paths (default: pulled base and pip in
the build; offline: debootstrap base and host wheelhouse) a clean build (no layer cache) against
a rebuild after a one-line code change, and the image size; then container start to SSH-ready and
to /healthz 200.

The default path pulls `docker.io/library/debian:bookworm-slim`; with podman and no Hub it is
served from a loopback registry as docker.io's mirror (tests/utils/registry.py), as in the tests.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from host_tools.engine import Engine, detect_engine, push_flags  # noqa: E402
from host_tools.image import DEFAULT_OFFLINE_BASE, build, build_base, build_wheelhouse, pull  # noqa: E402
from host_tools.localup import free_port  # noqa: E402
from host_tools.settings import ImageSettings, load  # noqa: E402
from tests.utils.registry import hub_mirror_conf, loopback_registry  # noqa: E402

REPO = "localhost/chessbot-appliance-bench"


def emit(**record: object) -> None:
    print(json.dumps(record), flush=True)


def healthz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def poll(predicate, timeout: float = 300) -> float:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.1)
    raise SystemExit(f"not ready within {timeout} s")


def context_copy(dest: Path, wheels: Path | None) -> None:
    """The tracked tree (plus the wheelhouse, hard links): edits there leave the checkout alone."""
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True,
                           check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():  # appliance/runtime/templates -> supervisord.conf.d
            os.symlink(os.readlink(src), dest / rel)
        elif src.is_file():
            shutil.copy2(src, dest / rel)
    if wheels is not None:
        shutil.copytree(wheels, dest / wheels.relative_to(ROOT), copy_function=os.link)


@contextlib.contextmanager
def official_base(engine: Engine) -> Iterator[None]:
    """Make BASE_IMAGE pullable: as it is where the Hub answers, else (podman) from a loopback
    mirror serving the debootstrap base under the official name."""
    base = load(ImageSettings).BASE_IMAGE
    if pull(engine, base) is None or engine.name != "podman":
        yield
        return
    build_base(engine)
    with tempfile.TemporaryDirectory(prefix="bench-registry-") as tmp, \
            loopback_registry(Path(tmp)) as registry:
        mirrored = f"{registry.host}/library/debian:bookworm-slim"
        subprocess.run(engine.cmd("tag", DEFAULT_OFFLINE_BASE, mirrored), check=True)
        subprocess.run(engine.cmd("push", *push_flags(engine.name, False), mirrored),
                       check=True, capture_output=True)
        subprocess.run(engine.cmd("rmi", mirrored), check=True, capture_output=True)
        before = os.environ.get("CONTAINERS_REGISTRIES_CONF")
        os.environ["CONTAINERS_REGISTRIES_CONF"] = str(
            hub_mirror_conf(Path(tmp) / "registries.conf", registry.host))
        try:
            yield
        finally:
            if before is None:
                del os.environ["CONTAINERS_REGISTRIES_CONF"]
            else:
                os.environ["CONTAINERS_REGISTRIES_CONF"] = before


def size_mib(engine: Engine, ref: str) -> int:
    out = subprocess.run(engine.cmd("image", "inspect", "-f", "{{.Size}}", ref),
                         capture_output=True, text=True, check=True).stdout.strip()
    return round(int(out) / 2**20)


def bench_path(engine: Engine, path: str) -> str:
    """Clean build, then a one-line code change rebuilt with the layer cache; the image size."""
    offline = path == "offline"
    wheels = build_wheelhouse("cpu") if offline else None
    with tempfile.TemporaryDirectory(prefix="bench-image-") as tmp:
        ctx = Path(tmp)
        context_copy(ctx, wheels)
        start = time.monotonic()
        build(engine, repo=REPO, tag=f"{path}-clean", quiet=True, context=ctx, no_cache=True,
              offline=offline)
        clean = time.monotonic() - start
        with (ctx / "appliance" / "__init__.py").open("a") as fh:
            fh.write(f"# bench edit {uuid.uuid4().hex}\n")
        start = time.monotonic()
        refs = build(engine, repo=REPO, tag=f"{path}-edit", quiet=True, context=ctx,
                     offline=offline)
        rebuild = time.monotonic() - start
    emit(bench="image_rebuild_after_code_change", path=path, seconds=round(rebuild, 1),
         baseline="clean_build_no_layer_cache", baseline_seconds=round(clean, 1),
         ratio=round(rebuild / clean, 3))
    emit(bench="image_size", path=path, mib=size_mib(engine, refs[0]),
         baseline="debootstrap_bookworm_base", baseline_mib=size_mib(engine, DEFAULT_OFFLINE_BASE))
    return refs[0]


def bench_start(engine, image: str) -> None:  # type: ignore[no-untyped-def]
    model = ROOT / "artifacts" / "bench-image" / "model_best.pt"
    if not model.is_file():
        env = {**os.environ, "TRAIN_DATASET_DIR": str(ROOT / "data" / "sample"),
               "TRAIN_OUTPUT_DIR": str(model.parent), "TRAIN_EPOCHS": "1",
               "TRAIN_RUNTIME_MAX_SAMPLES_PER_GAME": "4", "RUNPOD_PHASE_TIMING_LOG":
               str(model.parent / "timings.jsonl"),
               "TRAIN_EXTRA_ARGS": "--embed-dim 32 --hidden-dim 64 --num-layers 1 "
               "--max-steps-per-epoch 5"}
        subprocess.run([sys.executable, "-m", "appliance.training.preset"], env=env,
                       check=True, capture_output=True)
    name = f"chessbot-bench-{uuid.uuid4().hex[:8]}"
    volume = f"{name}-ws"
    key = Path(tempfile.mkdtemp()) / "k"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    ssh_port = free_port()
    api_port = free_port()
    while api_port == ssh_port:
        api_port = free_port()
    env = {**os.environ, "PUBLIC_KEY": key.with_suffix(".pub").read_text().strip(),
           "INFERENCE_MODEL_PATH": "/workspace/model_best.pt"}
    try:
        # The model goes into the pod's volume before the start, as on a pod that trained
        # before: the figure is start -> ready, not training or copying.
        subprocess.run(engine.cmd("volume", "create", volume), check=True, capture_output=True)
        mountpoint = subprocess.run(
            engine.cmd("volume", "inspect", volume, "--format", "{{.Mountpoint}}"),
            check=True, capture_output=True, text=True).stdout.strip()
        shutil.copy(model, Path(mountpoint) / "model_best.pt")
        ssh = ["ssh", "-i", str(key), "-p", str(ssh_port), "-o", "BatchMode=yes", "-o",
               "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o",
               "ConnectTimeout=2", "-o", "LogLevel=ERROR", "runner@127.0.0.1", "true"]
        start = time.monotonic()
        subprocess.run(engine.cmd("run", "-d", "--name", name, "-v", f"{volume}:/workspace",
                                  *engine.run_flags, "-e", "PUBLIC_KEY", "-e",
                                  "INFERENCE_MODEL_PATH", "-p", f"127.0.0.1:{ssh_port}:22",
                                  "-p", f"127.0.0.1:{api_port}:8000", image),
                       check=True, capture_output=True, env=env)
        poll(lambda: subprocess.run(ssh, capture_output=True).returncode == 0)
        ssh_total = time.monotonic() - start
        poll(lambda: healthz(api_port) == 200)
        api_total = time.monotonic() - start
        emit(bench="container_start_to_ssh_ready", seconds=round(ssh_total, 2),
             baseline="container_start_to_healthz_200", baseline_seconds=round(api_total, 2),
             ratio=round(ssh_total / api_total, 3))
    finally:
        for argv in engine.remove(name, 0, volumes=True):
            subprocess.run(argv, capture_output=True)
        subprocess.run(engine.cmd("volume", "rm", "-f", volume), capture_output=True)
        shutil.rmtree(key.parent, ignore_errors=True)


def main() -> None:
    engine = detect_engine()
    with official_base(engine):
        image = bench_path(engine, "default")
    bench_path(engine, "offline")
    bench_start(engine, image)
    for tag in ("default-clean", "default-edit", "offline-clean", "offline-edit", "latest"):
        subprocess.run(engine.cmd("rmi", f"{REPO}:{tag}"), capture_output=True)


if __name__ == "__main__":
    main()
