"""README's "Deploy on RunPod", top to bottom, against localpod (pods as real containers) and a
loopback registry that needs a login: `make image push IMAGE_REPO=...` -> `registry-auth add` ->
`template-create --registry-auth` -> `provision --wait` (localpod pulls the image with that login)
-> `smoke` -> `cycle` -> `stop` / `terminate`. If the walkthrough drifts from the code, this fails.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest

from appliance.runpod import RunpodClient
from host_tools.cli import Env
from host_tools.emulators.localpod import LocalPodServer
from host_tools.engine import Engine
from host_tools.image import ROOT
from host_tools.provision import main
from tests.lifecycle.harness import serve_localpod
from tests.utils.registry import Registry, loopback_registry

ACCOUNT_KEY = "rpk_WALKTHROUGH_CANARY_81d3c0"
REGISTRY_PASSWORD = "reg-CANARY-" + uuid.uuid4().hex
API_TOKEN = "api-CANARY-" + uuid.uuid4().hex
SECRETS = (ACCOUNT_KEY, REGISTRY_PASSWORD, API_TOKEN)
GPU = ["--gpu-type-id", "NVIDIA RTX A4000", "--poll-interval", "0.5", "--wait-timeout", "180"]

pytestmark = pytest.mark.timeout(1500)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    (tmp_path / "registry").mkdir()
    with loopback_registry(tmp_path / "registry", login=("chess", REGISTRY_PASSWORD)) as reg:
        yield reg


@pytest.fixture
def localpod(engine: Engine, image: str, client_key: Path, tmp_path: Path,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalPodServer]:
    """localpod whose default image is NOT the one pushed: pods run what the template names."""
    with serve_localpod(engine, image, client_key, tmp_path, monkeypatch, ACCOUNT_KEY) as server:
        yield server


def cli(*argv: str) -> tuple[int, str, str]:
    """provision.py in-process; what it runs (ssh, rsync) runs for real, output kept. localpod's
    container actions (pull, `rm -t 10`) can outlast the client's 30 s on a loaded machine, and a
    retried stop then finds the pod EXITED: the client waits longer here."""
    env = Env(out=io.StringIO(), err=io.StringIO(), is_tty=lambda: False,
              client_factory=lambda: RunpodClient(timeout_s=180))

    def run(args: Sequence[str]) -> int:
        proc = subprocess.run(list(args), capture_output=True, text=True, timeout=300,
                              check=False)
        env.out.write(proc.stdout)
        env.err.write(proc.stderr)
        return proc.returncode

    env.run = run
    code = main(list(argv), env)
    out, err = env.out.getvalue(), env.err.getvalue()  # type: ignore[attr-defined]
    for secret in SECRETS:
        assert secret not in out + err
    return code, out, err


def engine_login(engine: Engine, registry: Registry, auth_dir: Path) -> dict[str, str]:
    """`docker login` / `podman login` into a private auth file (the user's own step)."""
    env = {**os.environ, "DOCKER_CONFIG": str(auth_dir),
           "REGISTRY_AUTH_FILE": str(auth_dir / "config.json")}
    assert registry.login is not None
    tls = ["--tls-verify=false"] if engine.name == "podman" else []
    proc = subprocess.run(engine.cmd("login", *tls, "-u", registry.login[0],
                                     "--password-stdin", registry.host),
                          input=registry.login[1], capture_output=True, text=True, env=env,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    return env


def test_deploy_on_runpod_walkthrough(engine: Engine, image: str, registry: Registry,
                                      localpod: LocalPodServer, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # 1. make image push IMAGE_REPO=<registry>/owner/chess-bot (make's own venv step is
    #    satisfied by this interpreter: PY and a fresh STAMP).
    repo = f"{registry.host}/owner/chess-bot"
    stamp = tmp_path / "installed"
    stamp.touch()
    env = engine_login(engine, registry, tmp_path / "auth")
    ref = f"{repo}:walkthrough"
    try:
        proc = subprocess.run(["make", "-s", "image", "push", f"IMAGE_REPO={repo}",
                               "IMAGE_TAG=walkthrough", f"PY={sys.executable}",
                               f"STAMP={stamp}"], cwd=ROOT, env=env, capture_output=True,
                              text=True, check=False, timeout=1200)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.splitlines()[-2:] == [ref, f"{repo}:latest"]  # after the build's output
        pushed = httpx.get(f"http://{registry.host}/v2/owner/chess-bot/tags/list",
                           auth=registry.login).json()
        assert sorted(pushed["tags"]) == ["latest", "walkthrough"]
        # Gone locally: the pod can only get it from the registry, with the login.
        subprocess.run(engine.cmd("rmi", ref, f"{repo}:latest"), check=True, capture_output=True)

        # 2. registry-auth add (the password from a variable, never argv) and template-create.
        monkeypatch.setenv("REGISTRY_PASSWORD", REGISTRY_PASSWORD)
        code, out, err = cli("registry-auth", "add", "walkthrough-registry", "--username", "chess",
                             "--password-env", "REGISTRY_PASSWORD")
        assert code == 0, err
        assert out.startswith("added registry auth walkthrough-registry (id ")
        code, out, err = cli("template-create", "chessbot-walkthrough", "--image", ref,
                             "--registry-auth", "walkthrough-registry")
        assert code == 0, err
        assert out.splitlines()[1] == f"  image     {ref}"
        assert "  INFERENCE_API_TOKEN  for INFERENCE_API_TOKEN (a value of your choice)" in out
        # The secret it lists, created as on RunPod's console (here: localpod's secrets route).
        created = httpx.post(f"{localpod.url}/_localpod/secrets",
                             json={"name": "INFERENCE_API_TOKEN", "value": API_TOKEN},
                             headers={"Authorization": f"Bearer {localpod.account.control_token}"})
        assert created.status_code in (200, 201), created.text

        # 3. provision --wait: localpod pulls the template's image with the registry auth.
        code, out, err = cli("provision", "--template-name", "chessbot-walkthrough", "--wait",
                             "--json", *GPU)
        assert code == 0, err
        pod = json.loads(out)
        pod_id = pod["id"]
        assert pod["status"] == "RUNNING" and f"{pod_id}: SSH answers" in err
        assert localpod.account.pods[pod_id].image == ref
        assert subprocess.run(engine.cmd("image", "inspect", ref), capture_output=True,
                              check=False).returncode == 0  # pulled back from the registry

        # 4. smoke: every check of the pod passes.
        code, out, err = cli("smoke", pod_id)
        assert code == 0, out + err
        assert out.endswith("smoke: PASS\n")

        # 5. cycle: a training run on its own pod from the same template, artifacts back here.
        dataset = tmp_path / "dataset"
        dataset.mkdir()
        for name, rows in (("train", 64), ("val", 16)):
            lines = (ROOT / "data" / "sample" / f"{name}.jsonl").read_text().splitlines()[:rows]
            (dataset / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
        code, out, err = cli("cycle", "--template-name", "chessbot-walkthrough", *GPU,
                             "--dataset", str(dataset), "--out", str(tmp_path / "run"),
                             "--run-id", "walkthrough", "--train-env", "TRAIN_EPOCHS=1",
                             "--train-env", "TRAIN_EXTRA_ARGS=--embed-dim 32 --hidden-dim 64 "
                             "--num-layers 1", "--then", "stop", "--json")
        assert code == 0, err
        summary = json.loads(out)
        assert (tmp_path / "run" / "artifacts" / "model_best.pt").is_file()
        cycled = summary["pod"]
        assert cycled != pod_id and localpod.account.pods[cycled].status == "EXITED"

        # 6. stop (the volume stays, billed as storage), then terminate both pods.
        code, out, err = cli("stop", pod_id, "--yes")
        assert code == 0 and "EXITED" in out, err
        for done in (pod_id, cycled):
            code, out, err = cli("terminate", done, "--yes")
            assert code == 0, err
            assert localpod.account.pods[done].status == "TERMINATED"
    finally:
        subprocess.run(engine.cmd("rmi", ref, f"{repo}:latest"), capture_output=True,
                       check=False)
