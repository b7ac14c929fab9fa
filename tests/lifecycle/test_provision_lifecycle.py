"""The workstation CLI against localpod running real containers of our image (host network):
provision --wait -> ssh -> smoke -> stop -> start (volume kept, host key unchanged) -> terminate,
cycle end to end, and a failed create that never touches a pod which only shares its name. Only
the OpenSSH client's key and known-hosts file are the test's own.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from appliance.model.checkpoint import save_checkpoint
from appliance.model.network import ModelConfig, MovePredictor
from host_tools.emulators.localpod import Fault, LocalPodServer
from host_tools.emulators.localpod.containers import ContainerBackend
from host_tools.engine import Engine
from tests.lifecycle.harness import POD_ARGS, exists, run_cli, serve_localpod

ACCOUNT_KEY = "rpk_CLI_LIFECYCLE_CANARY_4f2a9c"
API_TOKEN = "api-CANARY-" + uuid.uuid4().hex
JUPYTER_TOKEN = "jt-CANARY-" + uuid.uuid4().hex
TINY_TRAIN = ["--train-env", "TRAIN_EPOCHS=1", "--train-env", "TRAIN_BATCH_SIZE=16",
              "--train-env", "TRAIN_EXTRA_ARGS=--embed-dim 32 --hidden-dim 64 --num-layers 1"]

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def localpod(engine: Engine, image: str, client_key: Path, tmp_path: Path,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalPodServer]:
    with serve_localpod(engine, image, client_key, tmp_path, monkeypatch, ACCOUNT_KEY) as server:
        yield server


def cli(*argv: str) -> tuple[int, str, str, list[str]]:
    """provision.py in-process; an interactive `ssh` runs for real with its output kept."""
    result = run_cli(argv, (ACCOUNT_KEY, API_TOKEN, JUPYTER_TOKEN))
    return result.code, result.out, result.err, result.ran


def test_provision_ssh_smoke_stop_start_terminate(engine: Engine, localpod: LocalPodServer,
                                                  tmp_path: Path) -> None:
    # The smoke reads the pod's tokens from its secrets dir: /infer and Jupyter need them.
    code, out, err, _ = cli("provision", "--wait", "--json", "--name", "lc-cli", *POD_ARGS,
                            "--env", f"INFERENCE_API_TOKEN={API_TOKEN}",
                            "--env", f"JUPYTER_TOKEN={JUPYTER_TOKEN}")
    assert code == 0, err
    pod = json.loads(out)
    pod_id, port = pod["id"], pod["ssh"]["port"]
    assert pod["status"] == "RUNNING" and f"{pod_id}: SSH answers" in err
    container, volume = ContainerBackend.names(localpod.account.pods[pod_id])

    code, _, err, ssh_out = cli("ssh", pod_id, "--", "echo kept > /workspace/marker && id -un")
    assert (code, ssh_out[0]) == (0, "runner\n"), err
    assert f"Permanently added 'runpod-{pod_id}' (ED25519)" in err
    known_hosts = (tmp_path / "known_hosts").read_text().splitlines()
    assert len(known_hosts) == 1  # the host key, pinned under the pod's alias

    code, out, err, _ = cli("smoke", pod_id)
    assert code == 0, out + err
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines()[1:-1]}
    assert rows == {"ssh": "PASS", "supervisorctl": "PASS", "healthz": "PASS",
                    "jupyter_api": "PASS", "train_epoch": "PASS", "infer": "PASS",
                    "cleanup": "PASS", "healthz_public": "PASS"}, out
    assert out.endswith("smoke: PASS\n")
    # The smoke left nothing behind: its model is gone and the API is back to "no model".
    code, _, _, ssh_out = cli("ssh", pod_id, "--", "ls -A /workspace/chess-bot/artifacts; "
                              "python -m appliance.runtime.status --json")
    assert code == 0 and ".smoke-" not in ssh_out[0], ssh_out

    code, out, err, _ = cli("stop", pod_id, "--yes")
    assert code == 0 and "EXITED" in out, err
    assert not exists(engine, "container", container) and exists(engine, "volume", volume)

    code, out, err, _ = cli("start", pod_id, "--wait", "--json", "--poll-interval", "0.5",
                            "--wait-timeout", "180")
    assert code == 0, err
    restarted = json.loads(out)
    assert restarted["status"] == "RUNNING" and restarted["ssh"]["port"] != port
    # New port, same pod: accept-new would refuse a changed key under the pod's alias.
    code, _, err, ssh_out = cli("ssh", pod_id, "--", "cat /workspace/marker")
    assert (code, ssh_out[0], err) == (0, "kept\n", ""), err
    assert (tmp_path / "known_hosts").read_text().splitlines() == known_hosts

    code, out, err, _ = cli("terminate", pod_id, "--yes")
    assert code == 0, err
    assert localpod.account.pods[pod_id].status == "TERMINATED"
    assert not exists(engine, "container", container) and not exists(engine, "volume", volume)


def test_cycle_trains_in_the_pod_and_brings_the_artifacts_back(
        engine: Engine, localpod: LocalPodServer, tmp_path: Path,
        capfd: pytest.CaptureFixture[str]) -> None:
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    sample = Path(__file__).resolve().parents[2] / "data" / "sample"
    for name, rows in (("train", 64), ("val", 16)):
        lines = (sample / f"{name}.jsonl").read_text().splitlines()[:rows]
        (dataset / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    out_dir = tmp_path / "out"
    previous = tmp_path / "previous.pt"  # the "previous best" the new model plays in the arena
    torch.manual_seed(0)
    save_checkpoint(previous, MovePredictor(ModelConfig(embed_dim=8, hidden_dim=8, num_layers=1,
                                                        feature_dim=4)))
    code, out, err, _ = cli("cycle", "--json", *POD_ARGS, *TINY_TRAIN, "--dataset", str(dataset),
                            "--out", str(out_dir), "--run-id", "lc-cycle", "--then", "terminate",
                            "--arena-against", str(previous), "--arena-games", "2")
    assert code == 0, err
    summary = json.loads(out)
    pod_id = summary["pod"]
    assert summary["files"] == ["artifacts/checkpoint_last.pt", "artifacts/evaluation.json",
                                "artifacts/metrics.json", "artifacts/model_best.pt",
                                "artifacts/progress.jsonl", "timings.jsonl"]
    metrics = json.loads((out_dir / "artifacts" / "metrics.json").read_text())
    assert metrics["best_epoch"] == 1
    # The run report, written at the end from what came back: one epoch, its loss curves.
    assert summary["report"] == str(out_dir / "report.md")
    report = json.loads((out_dir / "report.json").read_text())
    assert len(report["epochs"]) == 1 and report["gpu"]["pod_id"] == pod_id
    assert (out_dir / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The arena ran here after the pod was gone: the trained model against the previous one.
    arena = json.loads((out_dir / "arena.json").read_text())
    assert arena["players"]["a"]["spec"] == str(out_dir / "artifacts" / "model_best.pt")
    assert arena["players"]["b"]["spec"] == str(previous)
    assert arena["games"] == 2 == arena["wins"] + arena["draws"] + arena["losses"]
    assert report["arena"]["games"] == 2
    assert (out_dir / "arena.pgn").read_text().count('[Event "arena"]') == 2
    # The pod's training output streams onto this process's stderr as it comes.
    assert "epoch 1/1: train loss" in capfd.readouterr().err
    assert localpod.account.pods[pod_id].status == "TERMINATED"
    container, volume = ContainerBackend.names(localpod.account.pods[pod_id])
    assert not exists(engine, "container", container) and not exists(engine, "volume", volume)

    records = [json.loads(line) for line in (tmp_path / "timings.jsonl").read_text().splitlines()]
    host = [(r["phase"], r["status"]) for r in records if r["source"] == "host_cycle"]
    assert host == [("provision", "ok"), ("wait_ssh", "ok"), ("upload_dataset", "ok"),
                    ("train", "ok"), ("fetch_artifacts", "ok"), ("then_terminate", "ok"),
                    ("arena", "ok")]
    pod_phases = [r["phase"] for r in records if r["source"] == "runpod_train_preset"]
    assert pod_phases[:2] == ["resolve_dataset_paths", "train_baseline"]
    assert {r["run_id"] for r in records} == {"lc-cycle"}


def test_a_failed_create_never_touches_a_pod_that_only_shares_its_name(
        engine: Engine, localpod: LocalPodServer) -> None:
    code, out, err, _ = cli("provision", "--wait", "--json", "--name", "lc-same", *POD_ARGS)
    assert code == 0, err
    other = json.loads(out)["id"]
    container, volume = ContainerBackend.names(localpod.account.pods[other])
    left_alone = (f"pod {other} is also named 'lc-same', but it does not carry this request's "
                  "marker: left alone")

    # The create fails and creates nothing: the pod named alike is neither removed nor adopted.
    for mode in ("remove", "adopt"):
        localpod.account.faults.append(Fault(r"^POST /v2/pods$", status=500))
        code, out, err, _ = cli("provision", "--name", "lc-same", *POD_ARGS,
                                "--half-created", mode)
        assert (code, out) == (1, ""), err
        assert err.splitlines()[-2:] == [left_alone, (
            "error: create pod 'lc-same': Something went wrong. Please try again later or "
            "contact support. (HTTP 500); RunPod failed on its side; try again later; no pod "
            "carries this request's marker, so nothing it created bills; no other pod was "
            "touched")]

    # The create fails after creating: our own pod is found by its marker and removed.
    localpod.account.faults.append(Fault(r"^CREATE ", kind="create_then_500"))
    code, out, err, _ = cli("provision", "--name", "lc-same", *POD_ARGS, "--half-created",
                            "remove")
    ours = next(p for p in localpod.account.pods.values() if p.id != other)
    assert code == 1 and left_alone in err, err
    assert err.splitlines()[-1].endswith(f"the half-created pod {ours.id} (it carries this "
                                         "request's marker) was terminated")
    assert ours.status == "TERMINATED"
    assert not any(exists(engine, kind, name) for kind, name in zip(
        ("container", "volume"), ContainerBackend.names(ours), strict=True))

    # The pod named alike still runs on its volume, and answers over SSH.
    assert exists(engine, "container", container) and exists(engine, "volume", volume)
    code, out, err, _ = cli("status", "--json", other)
    assert (code, json.loads(out)["status"]) == (0, "RUNNING"), err
    code, _, err, ssh_out = cli("ssh", other, "--", "id -un")
    assert (code, ssh_out[0]) == (0, "runner\n"), err
