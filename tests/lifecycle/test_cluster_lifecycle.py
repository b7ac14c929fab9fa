"""`provision.py cycle --nodes 2` against localpod running real containers of our image: two nodes
on a private container network of their own train together (torchrun, gloo on CPU), rank 0's
checkpoint comes back, and both containers and the network are gone afterwards; a node that
never starts its trainer makes the other fail within the rendezvous timeout, and cycle cleans up.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from host_tools.cli import Env, run_remote
from host_tools.emulators.localpod import LocalPodServer
from host_tools.emulators.localpod.containers import ContainerBackend
from host_tools.engine import Engine
from host_tools.podjobs import PRESET
from host_tools.provision import main
from tests.lifecycle.harness import exists, serve_localpod

ACCOUNT_KEY = "rpk_CLUSTER_LIFECYCLE_CANARY_7d1e"
NODES = ["--nodes", "2", "--template-name", "chessbot-appliance", "--gpu-type-id",
         "NVIDIA RTX A4000", "--poll-interval", "0.5", "--wait-timeout", "240"]
TINY_TRAIN = ["--train-env", "TRAIN_EPOCHS=1", "--train-env", "TRAIN_BATCH_SIZE=16",
              "--train-env", "TRAIN_EXTRA_ARGS=--embed-dim 32 --hidden-dim 64 --num-layers 1"]
RENDEZVOUS_S = 40

pytestmark = pytest.mark.timeout(900)


@pytest.fixture
def localpod(engine: Engine, image: str, client_key: Path, tmp_path: Path,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalPodServer]:
    with serve_localpod(engine, image, client_key, tmp_path, monkeypatch, ACCOUNT_KEY,
                        host_network=False, env={"REPO_DIR": str(tmp_path / "repo")}) as server:
        yield server


def cli(*argv: str, remote: object = None) -> tuple[int, str, str]:
    env = Env(out=io.StringIO(), err=io.StringIO(), is_tty=lambda: False)
    if remote is not None:
        env.remote = remote  # type: ignore[assignment]
    code = main(list(argv), env)
    out, err = env.out.getvalue(), env.err.getvalue()  # type: ignore[attr-defined]
    assert ACCOUNT_KEY not in out + err
    return code, out, err


def small_dataset(tmp_path: Path) -> Path:
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    sample = Path(__file__).resolve().parents[2] / "data" / "sample"
    for name, rows in (("train", 64), ("val", 16)):
        lines = (sample / f"{name}.jsonl").read_text().splitlines()[:rows]
        (dataset / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    return dataset


def gone(engine: Engine, localpod: LocalPodServer, pod_ids: list[str]) -> list[str]:
    """What of those pods' containers and volumes still exists."""
    left = []
    for pod_id in pod_ids:
        container, volume = ContainerBackend.names(localpod.account.pods[pod_id])
        left += [n for kind, n in (("container", container), ("volume", volume))
                 if exists(engine, kind, n)]
    return left


def test_cycle_trains_across_two_containers_and_removes_them(
        engine: Engine, localpod: LocalPodServer, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    code, out, err = cli("cycle", "--json", *NODES, *TINY_TRAIN,
                         "--dataset", str(small_dataset(tmp_path)), "--out", str(out_dir),
                         "--run-id", "lc-cluster", "--then", "terminate")
    assert code == 0, err
    summary = json.loads(out)
    assert len(summary["nodes"]) == 2
    assert {"artifacts/model_best.pt", "artifacts/checkpoint_last.pt",
            "artifacts/metrics.json"} <= set(summary["files"])
    metrics = json.loads((out_dir / "artifacts" / "metrics.json").read_text())
    assert metrics["world_size"] == 2, metrics  # one trainer per node, two nodes
    assert (out_dir / "nodes" / "node-1.log").stat().st_size > 0
    network = f"localpod-cluster-{summary['cluster']}"
    assert not exists(engine, "network", network)
    assert gone(engine, localpod, summary["nodes"]) == []
    assert summary["cluster"] not in localpod.account.clusters


def test_a_node_that_never_trains_fails_the_other_within_the_rendezvous_timeout(
        engine: Engine, localpod: LocalPodServer, tmp_path: Path,
        capfd: pytest.CaptureFixture[str]) -> None:
    account = localpod.account

    def remote(argv: list[str], stdin: Path | None, stdout: Path | None) -> int:
        alias = next(a for a in argv if a.startswith("HostKeyAlias=runpod-"))
        pod = account.pods[alias.removeprefix("HostKeyAlias=runpod-")]
        if argv[-1].endswith(PRESET) and pod.cluster is not None and pod.cluster.rank == 1:
            return 1  # node 1 never starts its trainer
        return run_remote(argv, stdin, stdout)

    started = time.monotonic()
    code, _, err = cli("cycle", *NODES, *TINY_TRAIN, "--train-env",
                       f"TRAIN_RENDEZVOUS_TIMEOUT_SECONDS={RENDEZVOUS_S}",
                       "--out", str(tmp_path / "out"), "--run-id", "lc-lonely", remote=remote)
    assert code == 1
    assert "error: the training failed on node(s) 0 (exit 1), 1 (exit 1)" in err, err
    # Rank 0's own output (followed here) names the rendezvous it gave up on.
    captured = capfd.readouterr().err
    assert "error: cluster rendezvous failed: node 0 of 2 did not meet every other node" \
        in captured
    assert f"within TRAIN_RENDEZVOUS_TIMEOUT_SECONDS={RENDEZVOUS_S}" in captured
    phases = [json.loads(line) for line in (tmp_path / "timings.jsonl").read_text().splitlines()]
    train = next(p for p in phases if p["source"] == "host_cycle" and p["phase"] == "train")
    assert train["status"] == "error"
    # The rendezvous timeout, plus ssh, the preset's start and torch's imports on a loaded
    # machine: the failure comes long before the training's own stall detection would.
    assert train["elapsed_ms"] < (RENDEZVOUS_S + 120) * 1000, train
    (cluster_id,) = account.clusters
    nodes = account.clusters[cluster_id].pod_ids
    # Training had started and nothing came back: the nodes are stopped, their volumes kept.
    assert [account.pods[p].status for p in nodes] == ["EXITED", "EXITED"]
    assert f"cleanup: cluster {cluster_id} stopped" in err
    assert all(not exists(engine, "container", ContainerBackend.names(account.pods[p])[0])
               for p in nodes)
    code, _, err = cli("cluster", "terminate", cluster_id, "--yes")
    assert code == 0, err
    assert gone(engine, localpod, nodes) == []
    assert not exists(engine, "network", f"localpod-cluster-{cluster_id}")
    assert time.monotonic() - started < 600
