"""training.distributed: the launch for what the pod is, rendezvous errors, the out-of-memory
ladder, the defaults that fit the pod, and hf-sync only on the primary cluster node."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from appliance import settings
from appliance.runtime.config import PodConfig
from appliance.runtime.render import plan
from appliance.training import distributed, preset
from appliance.training.distributed import DataParallelStep, Launch, LaunchError
from tests.utils.training import toy_batch, toy_loss

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_VARS = ("NUM_NODES", "NODE_RANK", "NUM_TRAINERS", "PRIMARY_ADDR", "PRIMARY_PORT",
                "MASTER_ADDR", "MASTER_PORT", "NODE_ADDR", "TRAIN_RENDEZVOUS_TIMEOUT_SECONDS",
                "GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")


def _cluster(monkeypatch, **env: str) -> settings.ClusterSettings:
    for key in CLUSTER_VARS:
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return settings.load(settings.ClusterSettings)


NODE = {"NUM_NODES": "2", "NODE_RANK": "1", "PRIMARY_ADDR": "10.65.0.2", "PRIMARY_PORT": "29400"}


def test_the_launch_follows_what_the_pod_is(monkeypatch):
    lone = _cluster(monkeypatch)
    assert distributed.plan_launch(lone, gpus=0) == Launch(1)
    assert distributed.plan_launch(lone, gpus=1) == Launch(1)
    assert distributed.plan_launch(lone, gpus=4) == Launch(4)
    assert distributed.launcher(Launch(1), 300) == [sys.executable, "-m"]
    assert distributed.launcher(Launch(4), 300)[1:] == [
        "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", "-m"]
    node = distributed.plan_launch(_cluster(monkeypatch, **NODE, NUM_TRAINERS="8"), gpus=8)
    assert node == Launch(8, 2, 1, "10.65.0.2:29400")
    assert not node.holds_rank0 and node.is_cluster
    assert distributed.launcher(node, 45)[1:] == [
        "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=8", "--node-rank=1",
        "--rdzv-backend=static", "--rdzv-endpoint=10.65.0.2:29400", "--rdzv-id=chess-bot-train",
        "--rdzv-conf=timeout=45", "--max-restarts=0", "-m"]
    # a CPU node runs NUM_TRAINERS processes (default 1); RunPod's legacy MASTER_* names work
    cpu = _cluster(monkeypatch, NUM_NODES="3", NODE_RANK="0", MASTER_ADDR="fd00::1",
                   MASTER_PORT="7000")
    assert distributed.plan_launch(cpu, gpus=0) == Launch(1, 3, 0, "[fd00::1]:7000")
    two = _cluster(monkeypatch, **NODE, NUM_TRAINERS="2")
    assert distributed.plan_launch(two, gpus=0).nproc == 2


def test_a_cluster_without_its_variables_is_refused(monkeypatch):
    with pytest.raises(LaunchError) as err:
        distributed.plan_launch(_cluster(monkeypatch, NUM_NODES="2"), gpus=1)
    assert str(err.value) == (
        "NUM_NODES=2 (a cluster node) needs PRIMARY_ADDR and PRIMARY_PORT (or MASTER_ADDR and "
        "MASTER_PORT), which RunPod sets on every node of an Instant Cluster")
    with pytest.raises(LaunchError, match=r"^NODE_RANK=2: must be below NUM_NODES=2$"):
        distributed.plan_launch(_cluster(monkeypatch, **{**NODE, "NODE_RANK": "2"}), gpus=1)


def _preset(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("TRAIN_") and k not in CLUSTER_VARS}
    return subprocess.run([sys.executable, "-m", "appliance.training.preset", *args],
                          env={**clean, **env}, cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_preset_dry_run_on_a_cluster_node(tmp_path: Path):
    from tests.utils.datasets import make_dataset

    ds = make_dataset(tmp_path / "ds", 2, 1)
    env = {"REPO_DIR": str(tmp_path), "TRAIN_DATASET_DIR": str(ds), "RUN_ID": "r",
           "TRAIN_RENDEZVOUS_TIMEOUT_SECONDS": "30", **NODE}
    r = _preset(env, "--dry-run")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[1] == ("cluster: node 1 of 2, 1 trainer process(es) here, rendezvous "
                        "10.65.0.2:29400")
    r = _preset({**env, "NODE_ADDR": "127.0.0.1"}, "--dry-run")
    assert r.stdout.splitlines()[1] == (
        "cluster: node 1 of 2, 1 trainer process(es) here, rendezvous 10.65.0.2:29400, "
        "GLOO_SOCKET_IFNAME=lo, NCCL_SOCKET_IFNAME=lo")
    assert lines[2].startswith(
        "trainer: " + " ".join([sys.executable, "-m", "torch.distributed.run", "--nnodes=2",
                                "--nproc-per-node=1", "--node-rank=1"]))
    assert "--rdzv-conf=timeout=30 --max-restarts=0 -m appliance.training.train" in lines[2]
    r = _preset({**env, "PRIMARY_ADDR": ""}, "--dry-run")
    assert r.returncode == 2
    assert r.stderr.startswith("error: NUM_NODES=2 (a cluster node) needs PRIMARY_ADDR")
    r = _preset({**env, "TRAIN_RENDEZVOUS_TIMEOUT_SECONDS": "0"}, "--dry-run")
    assert r.returncode == 2
    assert r.stderr.startswith("error: bad environment: TRAIN_RENDEZVOUS_TIMEOUT_SECONDS='0': "
                               "Input should be greater than 0 (Cluster training: ")


def test_trainer_command_keeps_its_single_node_form(monkeypatch):
    cfg = settings.load(settings.TrainingSettings)
    cmd = preset.trainer_command(cfg, Path("t"), Path("v"), Path("o"), gpus=1)
    assert cmd[:4] == [sys.executable, "-m", "appliance.training.train", "--train"]


def test_gloo_and_nccl_use_the_interface_that_holds_node_addr():
    assert distributed.interface_of("127.0.0.1") == "lo"
    assert distributed.interface_of("203.0.113.77") is None
    assert distributed.interface_env("127.0.0.1", {}) == {
        "GLOO_SOCKET_IFNAME": "lo", "NCCL_SOCKET_IFNAME": "lo"}
    assert distributed.interface_env("127.0.0.1", {"NCCL_SOCKET_IFNAME": "ens1"}) == {
        "GLOO_SOCKET_IFNAME": "lo"}
    assert distributed.interface_env(None, {}) == {}
    assert distributed.interface_env("203.0.113.77", {}) == {}


def test_rendezvous_failure_reads_torchruns_error_file(tmp_path: Path):
    launch = Launch(1, 2, 1, "10.65.0.2:29400")
    f = tmp_path / "error.json"
    assert distributed.rendezvous_failure(f, launch, 60) is None  # no file: not a rendezvous
    f.write_text(json.dumps({"message": {"message": "DistNetworkError: The client socket has "
                                         "timed out after 60000ms while trying to connect to "
                                         "(10.65.0.2, 29400).\nmore", "extraInfo": {}}}))
    assert distributed.rendezvous_failure(f, launch, 60) == (
        "cluster rendezvous failed: node 1 of 2 did not meet every other node at "
        "10.65.0.2:29400 within TRAIN_RENDEZVOUS_TIMEOUT_SECONDS=60 (DistNetworkError: The "
        "client socket has timed out after 60000ms while trying to connect to (10.65.0.2, "
        "29400).); start the preset on every node")
    f.write_text(json.dumps({"message": {"message": "ValueError: bad flag"}}))
    assert distributed.rendezvous_failure(f, launch, 60) is None
    f.write_text("not json")
    assert distributed.rendezvous_failure(f, launch, 60) is None


# -- the data-parallel step and its out-of-memory ladder ---------------------------------------

def _stepper(fits: int | None, log: list[str]) -> DataParallelStep:
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    return DataParallelStep(model, torch.optim.SGD(model.parameters(), lr=0.1),
                            toy_loss(model, fits), torch.device("cpu"), log=log.append)


def test_out_of_memory_halves_the_micro_batch_and_keeps_the_result():
    plain_log: list[str] = []
    plain = _stepper(None, plain_log)
    log: list[str] = []
    ladder = _stepper(2, log)
    batch = toy_batch(8)
    assert ladder.step(batch, " at epoch 1 step 0") == pytest.approx(plain.step(batch))
    assert log == [
        "out of memory at epoch 1 step 0 with 8 games per micro-batch on cpu: retrying the step "
        "in micro-batches of 4 (gradients accumulate, so the result stays the same)",
        "out of memory at epoch 1 step 0 with 4 games per micro-batch on cpu: retrying the step "
        "in micro-batches of 2 (gradients accumulate, so the result stays the same)"]
    assert ladder.times["oom_retries"] == 2 and ladder.micro == 2 and plain_log == []
    for a, b in zip(ladder.model.parameters(), plain.model.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    ladder.step(batch, " at epoch 1 step 1")  # the smaller size is kept: no new rung
    assert len(log) == 2 and ladder.times["oom_retries"] == 2


def test_out_of_memory_with_one_game_ends_with_a_clear_error():
    log: list[str] = []
    stuck = _stepper(0, log)
    with pytest.raises(distributed.OutOfMemory) as err:
        stuck.step(toy_batch(2), " at epoch 3 step 7")
    assert str(err.value) == (
        "out of memory on cpu with one game per micro-batch (at epoch 3 step 7); lower the "
        "model size (--hidden-dim, --embed-dim) or the longest games")
    assert [line.split(" with ")[1].split(" games")[0] for line in log] == ["2"]


def test_split_batch_cuts_along_the_games():
    parts = list(distributed.split_batch(toy_batch(5), 2))
    assert [len(p.x) for p in parts] == [2, 2, 1]
    torch.testing.assert_close(torch.cat([p.y for p in parts]), toy_batch(5).y)


# -- defaults that fit the pod ------------------------------------------------------------------

def test_batch_size_and_workers_fit_the_pod():
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert distributed.auto_batch_size(cpu) == 32
    gib = 2**30
    assert [distributed.auto_batch_size(gpu, n * gib) for n in (8, 16, 24, 80, 141)] == [
        32, 64, 64, 256, 512]
    assert distributed.auto_workers(cpu, 1, cpus=16) == 0
    assert distributed.auto_workers(gpu, 2, cpus=16) == 7
    assert distributed.auto_workers(gpu, 8, cpus=8) == 0
    assert distributed.auto_workers(gpu, 1, cpus=64) == 8
    assert distributed.available_cpus() >= 1


# -- hf-sync runs where rank 0 writes ------------------------------------------------------------

def test_hf_sync_runs_on_the_primary_node_only(monkeypatch):
    monkeypatch.setenv("START_HF_SYNC", "1")
    for rank, wanted in (("0", True), ("1", False)):
        _cluster(monkeypatch, **{**NODE, "NODE_RANK": rank})
        cfg = PodConfig.load()
        p = plan(cfg.services, True, None, cfg.uploads)
        assert ("hf-sync" in p.programs) is wanted
    assert p.left_out == {"hf-sync": "a cluster node other than the primary (NODE_RANK > 0): "
                          "global rank 0 writes the artifacts on the primary, which uploads them"}
    _cluster(monkeypatch)
    assert PodConfig.load().uploads
