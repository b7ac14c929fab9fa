"""Data-parallel training with real torchrun processes on loopback (gloo, CPU).

Which equality holds, and why:
- 2 nodes x 1 process (two preset runs as RunPod cluster nodes, torchrun's static rendezvous)
  and 1 node x 2 processes (torchrun --standalone) give the *same bits*: global rank r gets the
  same games either way, and the same gloo all-reduce sums the same two gradients.
- One process with the global batch (batch size x 2) over the same games gives the same
  weights *up to float rounding*: the global batches are the same, and the all-reduced gradient
  of the weighted loss sums divided by the global weight sum is the gradient of the global
  batch's weighted mean, summed in another order. Dropout is 0 so no random draw differs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from appliance.model.checkpoint import read_checkpoint
from appliance.training.distributed import DataParallelStep, OutOfMemory
from tests.utils import free_port
from tests.utils.datasets import make_dataset
from tests.utils.training import toy_batch, toy_loss

ROOT = Path(__file__).resolve().parents[2]
# 25 games, 2 ranks x 4 games a step: 4 steps an epoch, and in the last global batch (one game)
# rank 1 steps on a ghost.
# The LSTM: without BatchNorm, one process with the global batch matches the ranks (docs/MODEL.md).
FLAGS = ["--arch", "recurrent", "--embed-dim", "16", "--hidden-dim", "24", "--dropout", "0",
         "--seed", "7", "--lr", "0.01", "--epochs", "2", "--runtime-min-context", "2"]
CLUSTER_VARS = ("NUM_NODES", "NODE_RANK", "NUM_TRAINERS", "PRIMARY_ADDR", "PRIMARY_PORT",
                "MASTER_ADDR", "MASTER_PORT", "NODE_ADDR", "WORLD_SIZE", "RANK", "LOCAL_RANK",
                "GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TRAIN_") and k not in CLUSTER_VARS}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def _trainer(launcher: list[str], ds: Path, out: Path, batch: int) -> None:
    r = subprocess.run(
        [*launcher, "appliance.training.train", "--train", str(ds / "train.jsonl"), "--val",
         str(ds / "val.jsonl"), "--output-dir", str(out), "--batch-size", str(batch), *FLAGS],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


def _node(rank: int, port: int, ds: Path, out: Path, timeout_s: int = 60,
          nodes: int = 2) -> subprocess.Popen[str]:
    env = _env(NUM_NODES=str(nodes), NODE_RANK=str(rank), PRIMARY_ADDR="127.0.0.1",
               NODE_ADDR="127.0.0.1",
               PRIMARY_PORT=str(port), TRAIN_RENDEZVOUS_TIMEOUT_SECONDS=str(timeout_s),
               TRAIN_DATASET_DIR=str(ds), TRAIN_OUTPUT_DIR=str(out), TRAIN_BATCH_SIZE="4",
               TRAIN_EXTRA_ARGS=" ".join(FLAGS), REPO_DIR=str(out.parent / f"repo{rank}"),
               TRAIN_PROGRESS_JSONL_OUT=str(out / "progress.jsonl"))
    return subprocess.Popen([sys.executable, "-m", "appliance.training.preset", "--no-evaluate"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(out / "checkpoint_last.pt")["state_dict"]


def _history(out: Path) -> list[dict]:
    return json.loads((out / "metrics.json").read_text())["history"]


def test_two_nodes_equal_two_processes_and_one_process_with_the_global_batch(tmp_path: Path):
    ds = make_dataset(tmp_path / "ds", 25, 6, seed=3)
    port = free_port()
    nodes = [_node(rank, port, ds, tmp_path / f"node{rank}") for rank in (0, 1)]
    outs = [p.communicate(timeout=300) for p in nodes]
    for p, (_, stderr) in zip(nodes, outs, strict=True):
        assert p.returncode == 0, stderr
    assert outs[1][0].splitlines()[-1] == (
        "done: node 1 trained its share; global rank 0 on the primary node wrote the model, "
        "metrics and evaluation")
    # only global rank 0 (on node 0) writes: node 1's output dir stays empty
    assert not (tmp_path / "node1").exists() or not any((tmp_path / "node1").iterdir())
    assert {p.name for p in (tmp_path / "node0").iterdir()} == {
        "checkpoint_last.pt", "model_best.pt", "metrics.json", "progress.jsonl"}
    two_nodes = tmp_path / "node0"

    one_node = tmp_path / "one_node"
    _trainer([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
              "-m"], ds, one_node, batch=4)
    single = tmp_path / "single"
    _trainer([sys.executable, "-m"], ds, single, batch=8)

    a, b, c = _weights(two_nodes), _weights(one_node), _weights(single)
    assert a.keys() == b.keys() == c.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name  # the same bits
        torch.testing.assert_close(a[name], c[name], rtol=1e-4, atol=5e-5)  # float rounding
    ha, hb, hc = _history(two_nodes), _history(one_node), _history(single)
    # every game once per epoch across the ranks: the same targets as the single process
    assert [h["train_targets"] for h in ha] == [h["train_targets"] for h in hc]
    assert [h["train_loss"] for h in ha] == [h["train_loss"] for h in hb]
    assert [h["train_loss"] for h in ha] == pytest.approx([h["train_loss"] for h in hc], rel=1e-5)
    assert ha[1]["train_loss"] < ha[0]["train_loss"]  # it trained
    assert json.loads((two_nodes / "metrics.json").read_text())["world_size"] == 2


def test_a_node_that_never_comes_ends_the_others_within_the_timeout(tmp_path: Path):
    ds = make_dataset(tmp_path / "ds", 4, 2)
    for rank, missing in ((1, "DistNetworkError: The client socket has timed out after 4000ms "
                              "while trying to connect to (127.0.0.1, {port})."),
                          (0, "DistStoreError: Timed out after ")):
        port = free_port()
        t0 = time.monotonic()
        p = _node(rank, port, ds, tmp_path / f"alone{rank}", timeout_s=4)
        _, stderr = p.communicate(timeout=120)
        assert p.returncode == 1
        assert time.monotonic() - t0 < 60
        last = stderr.strip().splitlines()[-1]
        assert last.startswith(
            f"error: cluster rendezvous failed: node {rank} of 2 did not meet every other node "
            f"at 127.0.0.1:{port} within TRAIN_RENDEZVOUS_TIMEOUT_SECONDS=4 ("
            + missing.format(port=port)), last
        assert last.endswith("); start the preset on every node")


def _ladder_rank(rank: int, port: int, fits: int, out: Path) -> None:
    """One of two gloo ranks; rank 1 runs out of memory above `fits` games a micro-batch."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    log: list[str] = []
    step = DataParallelStep(model, torch.optim.SGD(model.parameters(), lr=0.1),
                            toy_loss(model, fits if rank == 1 else None), torch.device("cpu"),
                            world=2, log=log.append)
    batch = toy_batch(8)
    share = type(batch)(batch.x[rank::2], batch.y[rank::2])
    error = ""
    try:
        step.step(share, " at epoch 1 step 0")
    except OutOfMemory as exc:
        error = str(exc)
    torch.save({"weights": [p.detach() for p in model.parameters()], "log": log,
                "retries": step.times["oom_retries"], "error": error}, out / f"{rank}.pt")
    # Both ranks leave together: rank 0 holds the store, and a rank 0 that exits while rank 1
    # still talks to it can abort in gloo's teardown ("terminate called ...", SIGABRT).
    dist.barrier()
    dist.destroy_process_group()


def _ladder(tmp_path: Path, fits: int) -> list[dict]:
    mp.spawn(_ladder_rank, args=(free_port(), fits, tmp_path), nprocs=2, join=True)
    return [torch.load(tmp_path / f"{r}.pt") for r in (0, 1)]


def test_one_rank_out_of_memory_retries_the_step_on_every_rank(tmp_path: Path):
    r0, r1 = _ladder(tmp_path, fits=1)
    assert r0["log"] == [] and r0["retries"] == r1["retries"] == 2
    assert [line.split(" micro-batches of ")[1].split(" ")[0] for line in r1["log"]] == ["2", "1"]
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    alone = DataParallelStep(model, torch.optim.SGD(model.parameters(), lr=0.1),
                             toy_loss(model, None), torch.device("cpu"))
    alone.step(toy_batch(8))
    for a, b, c in zip(r0["weights"], r1["weights"], model.parameters(), strict=True):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, c.detach())


def test_out_of_memory_with_one_game_on_one_rank_ends_every_rank(tmp_path: Path):
    r0, r1 = _ladder(tmp_path, fits=0)
    assert r1["error"] == ("out of memory on cpu with one game per micro-batch (at epoch 1 step "
                           "0); lower the model size (--hidden-dim, --embed-dim) or the longest "
                           "games")
    assert r0["error"] == ("out of memory on cpu with one game per micro-batch on another rank (at "
                           "epoch 1 step 0); lower the model size (--hidden-dim, --embed-dim) or "
                           "the longest games")
