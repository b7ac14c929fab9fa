"""A local pod in one command (`make up` / `make down`) and the local smoke run (`make smoke`):
`python -m host_tools.localup up|down|smoke` or `appliance-localup`.

State (SSH key if the user has none, generated tokens, the env file) lives in config/local-pod/,
mode 0600; tokens reach the container through that env file, never through process arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from appliance import settings
from appliance.model import BEST_MODEL
from appliance.timing import TimingLog
from host_tools.engine import Engine, EngineError, detect_engine
from host_tools.image import IMAGE_CODE_DIR, ROOT, ImageError, build, image_exists, shown, tags
from host_tools.settings import LocalPodSettings, SettingsError, SmokeSettings, load

CONFIG_DIR = ROOT / "config" / "local-pod"
CONTAINER = "chessbot-local"
# (container port, preferred host port): 22 on the host is usually the host's own sshd.
PORTS = {"ssh": (settings.default(settings.SshSettings, "SSH_PORT"), 2222),
         "jupyter": (settings.default(settings.JupyterSettings, "JUPYTER_PORT"), 8888),
         "api": (settings.default(settings.InferenceSettings, "INFERENCE_PORT"), 8000)}
USER = settings.default(settings.RuntimeSettings, "APPLIANCE_USER")
# The image's state root is REPO_DIR=/workspace/chess-bot (on the volume); its code with the
# sample data is APPLIANCE_CODE_DIR=/opt/chessbot.
MODEL_DIR = "/workspace/chess-bot/artifacts/local-up"
SAMPLE_DIR = f"{IMAGE_CODE_DIR}/data/sample"
# Seconds of training, not a good model: enough for /infer to answer.
TINY_TRAIN_ENV = {
    "TRAIN_DATASET_DIR": SAMPLE_DIR, "TRAIN_OUTPUT_DIR": MODEL_DIR, "TRAIN_EPOCHS": "1",
    "TRAIN_BATCH_SIZE": "64", "TRAIN_LR": "2e-3", "TRAIN_RUNTIME_MAX_SAMPLES_PER_GAME": "4",
    "TRAIN_EXTRA_ARGS": "--embed-dim 32 --hidden-dim 64 --num-layers 1 --max-steps-per-epoch 20",
}


class UpError(RuntimeError):
    """What stopped `make up`/`down`/`smoke`, with what to do about it."""


def say(message: str) -> None:
    print(message, flush=True)


def note(message: str) -> None:
    print(f"up: {message}", file=sys.stderr, flush=True)


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pick_port(preferred: int) -> int:
    return preferred if port_free(preferred) else free_port()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str,
             interval: float = 0.5) -> float:
    """Poll until true; returns the seconds it took, raises naming what never happened."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(interval)
    raise UpError(f"{what} not ready within {timeout:.0f} s")


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    path.chmod(0o600)


# -- the user's side --------------------------------------------------------------------------
@dataclass(frozen=True)
class SshKey:
    private: Path
    public_text: str


def ssh_key(config: Path = CONFIG_DIR, home: Path | None = None) -> SshKey:
    """The user's own key (ed25519, ecdsa, rsa), else one created under config/local-pod/."""
    home = home or Path.home()
    for name in ("id_ed25519", "id_ecdsa", "id_rsa"):
        pub = home / ".ssh" / f"{name}.pub"
        if pub.is_file() and (home / ".ssh" / name).is_file():
            return SshKey(home / ".ssh" / name, pub.read_text(encoding="utf-8").strip())
    key = config / "id_ed25519"
    if not key.is_file():
        config.mkdir(parents=True, exist_ok=True)
        config.chmod(0o700)
        if not shutil.which("ssh-keygen"):
            raise UpError("no SSH key in ~/.ssh and no ssh-keygen to make one: install "
                          "openssh-client")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C",
                        "chessbot-local-pod", "-f", str(key)], check=True)
        note(f"no SSH key in {home / '.ssh'}: created {shown(key, ROOT)}")
    return SshKey(key, key.with_suffix(".pub").read_text(encoding="utf-8").strip())


def token(config: Path, name: str) -> str:
    """A generated token kept across up/down, so bookmarked URLs keep working."""
    path = config / "secrets" / name
    if path.is_file():
        value = path.read_text(encoding="utf-8").strip()
        if value:
            return value
    value = secrets.token_urlsafe(24)
    _write_private(path, value)
    return value


def env_file(config: Path, values: dict[str, str]) -> Path:
    """KEY=value lines for --env-file (0600): the values never appear in any argv."""
    for k, v in values.items():
        if "\n" in v:
            raise UpError(f"{k} holds a newline; an env file cannot carry it")
    path = config / "pod.env"
    _write_private(path, "".join(f"{k}={v}\n" for k, v in values.items()))
    return path


# -- the engine side --------------------------------------------------------------------------
def run_command(argv: Sequence[str], timeout: float = 120, check: bool = True
                ) -> subprocess.CompletedProcess[str]:
    """An engine command, output captured; with `check` a failure is an UpError naming it."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                          check=False)
    if check and proc.returncode != 0:
        raise UpError(f"{' '.join(argv[:3])} ... failed ({proc.returncode}): "
                      f"{proc.stderr.strip()[-600:]}")
    return proc


def running(engine: Engine, name: str) -> bool:
    proc = run_command(engine.cmd("inspect", "-f", "{{.State.Running}}", name), check=False)
    return proc.returncode == 0 and proc.stdout.strip() == "true"


def published(engine: Engine, name: str, container_port: int) -> int:
    out = run_command(engine.cmd("port", name, f"{container_port}/tcp")).stdout.strip()
    return int(out.splitlines()[0].rsplit(":", 1)[1])


def http_status(url: str, headers: dict[str, str] | None = None, timeout: float = 3) -> int:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (loopback)
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, urllib.error.URLError):
        return 0


def ensure_image(engine: Engine) -> str:
    ref = load(LocalPodSettings).LOCAL_POD_IMAGE or tags()[1]
    if not image_exists(engine, ref):
        note(f"{ref} not built yet: building it (first time: a few minutes)")
        build(engine, quiet=True)
    return ref


@dataclass
class LocalPod:
    engine: Engine
    name: str = CONTAINER
    config: Path = CONFIG_DIR

    @property
    def volume(self) -> str:
        return f"{self.name}-workspace"

    def exec(self, *cmd: str, user: str | None = None, env: dict[str, str] | None = None,
             timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = self.engine.cmd("exec")
        if user:
            argv += ["-u", user]
        for k in env or {}:
            argv += ["-e", k]
        argv += [self.name, *cmd]
        # -e NAME reads the value from the engine's environment, never from argv.
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              check=False, env={**os.environ, **(env or {})})
        if check and proc.returncode != 0:
            raise UpError(f"{' '.join(cmd[:3])} in {self.name} failed ({proc.returncode}): "
                          f"{(proc.stderr or proc.stdout).strip()[-800:]}")
        return proc

    def start(self, image: str, key: SshKey) -> dict[str, int]:
        run_command(self.engine.cmd("rm", "-f", self.name), check=False)
        if run_command(self.engine.cmd("volume", "inspect", self.volume), check=False).returncode:
            run_command(self.engine.cmd("volume", "create", self.volume))
        ports = {what: pick_port(pref) for what, (_, pref) in PORTS.items()}
        values = {"PUBLIC_KEY": key.public_text,
                  "JUPYTER_TOKEN": token(self.config, "JUPYTER_TOKEN"),
                  "INFERENCE_API_TOKEN": token(self.config, "INFERENCE_API_TOKEN"),
                  "INFERENCE_MODEL_PATH": f"{MODEL_DIR}/{BEST_MODEL}",
                  "INFERENCE_MODEL_RESCAN_SECONDS": "2"}
        argv = self.engine.cmd("run", "-d", "--name", self.name, "--hostname", self.name,
                               "-v", f"{self.volume}:/workspace",
                               "--env-file", str(env_file(self.config, values)),
                               *self.engine.run_flags)
        for what, (inner, _) in PORTS.items():
            argv += ["-p", f"127.0.0.1:{ports[what]}:{inner}"]
        run_command([*argv, image])
        return ports

    def ports(self) -> dict[str, int]:
        return {what: published(self.engine, self.name, inner)
                for what, (inner, _) in PORTS.items()}

    def supervisor_up(self) -> bool:
        # appliance.runtime.status exits 3 while supervisord cannot be reached, 0/1 once it can.
        proc = self.exec("python", "-m", "appliance.runtime.status", "--json", check=False,
                         timeout=30)
        return proc.returncode in (0, 1)

    def has_model(self) -> bool:
        return self.exec("test", "-f", f"{MODEL_DIR}/{BEST_MODEL}", check=False).returncode == 0

    def train_tiny(self) -> None:
        self.exec("python", "-m", "appliance.training.preset", user=USER,
                  env=TINY_TRAIN_ENV, timeout=900)
        # Picks the new checkpoint up at once instead of at the next rescan.
        self.exec("supervisorctl", "restart", "inference", check=False, timeout=60)


def summary(ports: dict[str, int], key: SshKey, config: Path) -> list[str]:
    jupyter = token(config, "JUPYTER_TOKEN")
    api_token_file = config / "secrets" / "INFERENCE_API_TOKEN"
    rel = os.path.relpath(api_token_file, Path.cwd())
    return [
        "local pod is up:",
        f"  SSH      ssh -i {key.private} -p {ports['ssh']} runner@127.0.0.1",
        # Shown once on the user's terminal, as Jupyter itself does; never written to a log.
        f"  Jupyter  http://127.0.0.1:{ports['jupyter']}/lab?token={jupyter}",
        f"  API      http://127.0.0.1:{ports['api']}  (token in {rel})",
        f"  try      curl -s http://127.0.0.1:{ports['api']}/infer "
        f"-H \"Authorization: Bearer $(cat {rel})\" -d '{{\"moves\": [\"e2e4\", \"e7e5\"], "
        "\"topk\": 3}'",
        "  stop     make down   (the /workspace volume is kept)",
    ]


def up(engine: Engine, config: Path = CONFIG_DIR, name: str = CONTAINER) -> dict[str, int]:
    pod = LocalPod(engine, name, config)
    key = ssh_key(config)
    if running(engine, name):
        note(f"{name} is already running")
        ports = pod.ports()
    else:
        image = ensure_image(engine)
        ports = pod.start(image, key)
        note(f"started {name} from {image}; waiting for supervisord")
    wait_for(pod.supervisor_up, 120, "supervisord in the container")
    if not pod.has_model():
        note("no model on the volume yet: training a tiny one on data/sample (seconds)")
        pod.train_tiny()
    api = f"http://127.0.0.1:{ports['api']}/healthz"
    wait_for(lambda: http_status(api) == 200, 180, f"the inference API ({api})")
    for line in summary(ports, key, config):
        say(line)
    return ports


def down(engine: Engine, name: str = CONTAINER) -> bool:
    procs = [run_command(argv, check=False) for argv in engine.remove(name)]
    proc = procs[-1]  # rm: names the container it removed
    if proc.returncode != 0 or not proc.stdout.strip():
        note(f"{name} is not running")
        return False
    note(f"{name} stopped; volume {name}-workspace kept ({engine.name} volume rm "
         f"{name}-workspace deletes it)")
    return True


# -- make smoke -------------------------------------------------------------------------------
SMOKE_SOURCE = "local_runpod_smoke"


def smoke(engine: Engine, out_root: Path | None = None, sample: Path = ROOT / "data" / "sample"
          ) -> Path:
    """The image's training preset on a small dataset; host and container phases, one log."""
    cfg = load(SmokeSettings)
    train_rows, val_rows = cfg.SMOKE_TRAIN_ROWS, cfg.SMOKE_VAL_ROWS
    progress_out = str(cfg.SMOKE_PROGRESS_JSONL_OUT or "")  # "": not copied out
    run_id = cfg.RUN_ID or time.strftime("smoke-%Y%m%dT%H%M%SZ", time.gmtime())
    out = (out_root or ROOT / "artifacts" / "smoke") / run_id
    log_path = out / "runpod_phase_times.jsonl"
    timing = TimingLog(log_path, SMOKE_SOURCE, run_id)
    dataset = out / "dataset"
    with timing.phase("prepare_smoke_dataset"):
        dataset.mkdir(parents=True, exist_ok=True)
        for name, rows in (("train", train_rows), ("val", val_rows)):
            src = sample / f"{name}.jsonl"
            with src.open(encoding="utf-8") as fh:
                lines = [line for _, line in zip(range(rows), fh, strict=False)]
            if len(lines) < rows:
                raise UpError(f"SMOKE_{name.upper()}_ROWS={rows}: {src} has only {len(lines)}")
            (dataset / f"{name}.jsonl").write_text("".join(lines), encoding="utf-8")
        (dataset / "stats.json").write_text(json.dumps({
            "dataset_format": "game_jsonl_runtime_splice_v1", "train_rows": train_rows,
            "val_rows": val_rows, "created_by": {"tool": "host_tools.localup smoke",
                                                 "source": str(sample)}}) + "\n")
    with timing.phase("prepare_timing_log_file"):
        # The container writes its own log inside itself; we copy it out afterwards. A bind
        # mount would leave the rows to the uid mapping (rootless engines lost them).
        log_path.touch()
    image = ensure_image(engine)
    name = f"chessbot-smoke-{run_id.lower()}"
    inner = "/tmp/smoke"
    env = {"RUN_ID": run_id, "RUNPOD_PHASE_TIMING_LOG": f"{inner}/timings.jsonl",
           "TRAIN_DATASET_DIR": inner, "TRAIN_OUTPUT_DIR": f"{inner}/out",
           "TRAIN_EPOCHS": str(cfg.SMOKE_EPOCHS), "TRAIN_BATCH_SIZE": str(cfg.SMOKE_BATCH_SIZE),
           "TRAIN_PROGRESS_JSONL_OUT": f"{inner}/progress.jsonl",
           "START_SSHD": "0", "START_JUPYTER": "0", "START_INFERENCE_API": "0"}
    code = 1
    with timing.phase("docker_run_smoke_training") as result:
        argv = engine.cmd("create", "--name", name, *engine.run_flags)
        for k in env:
            argv += ["-e", k]
        # The entrypoint's bootstrap (its phases: runpod_entrypoint), then the preset instead
        # of supervisord (its phases: runpod_train_preset), all into one in-container log.
        argv += ["--entrypoint", "/usr/bin/tini", image, "--", "/bin/sh", "-c",
                 "python -m appliance.runtime.bootstrap --no-exec && "
                 "exec python -m appliance.training.preset"]
        run_command(engine.cmd("rm", "-f", "-v", name), check=False)
        subprocess.run(argv, check=True, capture_output=True, env={**os.environ, **env})
        try:
            # A missing destination dir is created holding the dataset's files.
            run_command(engine.cmd("cp", str(dataset), f"{name}:{inner}"))
            proc = subprocess.run(engine.cmd("start", "-a", name), check=False)
            code = proc.returncode
            result["exit_code"] = code
            with tempfile.TemporaryDirectory() as tmp:
                copies: list[tuple[str, str | None]] = [("timings.jsonl", None),
                                                        ("progress.jsonl", progress_out)]
                for fname, dst in copies:
                    got = Path(tmp) / fname
                    if run_command(engine.cmd("cp", f"{name}:{inner}/{fname}", str(got)),
                            check=False).returncode != 0:
                        continue
                    if dst is None:
                        timing.merge(got)
                    elif dst:
                        Path(dst).parent.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(got, dst)
        finally:
            run_command(engine.cmd("rm", "-f", "-v", name), check=False)
    say(f"smoke run {run_id}: exit {code}; timing log {log_path}")
    if code != 0:
        raise UpError(f"the training preset in the container failed (exit {code}); see "
                      f"{log_path}")
    return log_path


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m host_tools.localup",
                                description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--engine", choices=("docker", "podman"),
                   help="container engine (default: Docker if its daemon answers, else podman)")
    p.add_argument("--name", help="container name (the volume is NAME-workspace; default "
                   "LOCAL_POD_NAME, chessbot-local)")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("up", help="build if needed, run the local pod, print how to reach it")
    sub.add_parser("down", help="stop and remove the local pod, keep its volume")
    sub.add_parser("smoke", help="the training preset in the image on a small dataset "
                   "(SMOKE_TRAIN_ROWS, SMOKE_VAL_ROWS, SMOKE_EPOCHS, SMOKE_BATCH_SIZE)")
    args = p.parse_args(argv)
    try:
        name = args.name or load(LocalPodSettings).LOCAL_POD_NAME
        engine = detect_engine(args.engine)
        if args.cmd == "up":
            up(engine, name=name)
        elif args.cmd == "down":
            down(engine, name)
        else:
            smoke(engine)
    except (UpError, ImageError, EngineError, SettingsError) as exc:
        print(f"{args.cmd}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
