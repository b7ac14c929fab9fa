"""`provision.py cluster ...` and `cycle --nodes N` (host_tools/clusters.py) against localpod in
records mode with a fake ssh per node: what runs on which node, rank 0's artifacts, and that a
failure at each step leaves no node billing (terminated, or stopped when rank 0 may hold
artifacts not copied back), acting only on the cluster this run created.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from appliance.runpod import RunpodClient
from appliance.runpod.errors import NotFoundError
from host_tools.emulators.localpod import Fault
from host_tools.podjobs import PRESET
from host_tools.pods import MARKER_ENV
from host_tools.provision import main
from tests.unit.podjobs_harness import GPU, FakePod, Harness, make_dataset, pod_files, tar_files
from tests.utils.localpod import CANARY, make_cli_env

pytestmark = pytest.mark.timeout(60)
REMOTE = "/workspace/cycle/r1"


class FakeNodes(FakePod):
    """Env.remote for a cluster: each call's node (by its pinned host key alias), and per node
    what its preset exits with (a node missing from `train_codes` exits 0)."""

    def __init__(self, train_codes: dict[int, int] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.train_codes = dict(train_codes or {})
        self.ranks: dict[str, int] = {}  # pod id -> rank, set by the test
        self.ran: list[tuple[int, str, Path | None]] = []  # rank, command, stdout

    def __call__(self, argv: list[str], stdin: Path | None, stdout: Path | None) -> int:
        alias = next(a for a in argv if a.startswith("HostKeyAlias="))
        rank = self.ranks[alias.removeprefix("HostKeyAlias=runpod-")]
        command = argv[-1]
        self.ran.append((rank, command, stdout))
        if command.endswith(PRESET):
            return self.train_codes.get(rank, 0)
        if "tar -cf -" in command:
            assert stdout is not None
            if self.fetch_code == 0:
                tar_files(stdout, self.files, [])
            return self.fetch_code
        return super().__call__(argv, stdin, stdout)


def nodes_of(h: Harness) -> list[Any]:
    (cluster,) = h.server.account.clusters.values()
    return [h.server.account.pods[p] for p in cluster.pod_ids]


def learn_ranks(h: Harness, fake: FakeNodes) -> None:
    """The fake learns each node's rank when the cluster exists (before any ssh)."""
    account = h.server.account
    original = account.create_cluster

    def create(*args: Any, **kwargs: Any) -> Any:
        cluster, pods = original(*args, **kwargs)
        fake.ranks.update({p.id: p.cluster.rank for p in pods})
        return cluster, pods

    account.create_cluster = create  # type: ignore[method-assign]


def cluster_cycle(h: Harness, fake: FakeNodes, *extra: str) -> tuple[int, Any]:
    h.pod = fake
    learn_ranks(h, fake)
    return h.run("cycle", "--nodes", "2", *GPU, "--run-id", "r1", "--out", str(h.tmp / "out"),
                 "--poll-interval", "0.5", *extra)


def events(h: Harness) -> list[str]:
    return [kind for kind, _ in h.backend.events if kind.endswith("network")]


def test_cluster_create_status_stop_terminate(h: Harness) -> None:
    code, cli = h.run("cluster", "create", "--nodes", "2", "--gpu-type", "NVIDIA RTX A4000",
                      "--template", "chessbot-appliance", "--name", "cl", "--env", "A=b",
                      "--wait", "--poll-interval", "0.5", "--json")
    assert code == 0, cli.err
    created = json.loads(cli.out)
    cluster_id = created["id"]
    assert [(n["rank"], n["status"], n["name"]) for n in created["nodes"]] == [
        (0, "RUNNING", "cl-0"), (1, "RUNNING", "cl-1")]
    record = h.server.account.clusters[cluster_id]
    nodes = nodes_of(h)
    marker = nodes[0].env[MARKER_ENV]
    assert [n.env for n in nodes] == [{"A": "b", MARKER_ENV: marker}] * 2
    assert [n.image for n in nodes] == [h.server.account.templates[0]["image"]] * 2
    assert record.template_id is None and created["compute"] == {
        "gpuTypeId": "NVIDIA RTX A4000", "gpuCountPerPod": 1, "podCount": 2}

    code, cli = h.run("cluster", "status", cluster_id)
    assert code == 0, cli.err
    lines = cli.out.splitlines()
    assert lines[0] == f"cluster {cluster_id} (cl): 2 x 1 NVIDIA RTX A4000"
    assert lines[1].split() == ["RANK", "POD", "STATUS", "ADDRESS", "SSH"]
    base = record.cidr.rsplit(".", 1)[0]
    assert [line.split()[:4] for line in lines[2:]] == [
        ["0", nodes[0].id, "RUNNING", f"{base}.10"], ["1", nodes[1].id, "RUNNING", f"{base}.11"]]

    code, cli = h.run("cluster", "stop", cluster_id, "--yes")
    assert (code, cli.out) == (0, f"stopped 2 node(s) of cluster {cluster_id} (volumes kept; "
                               f"`provision.py cluster terminate {cluster_id}` deletes them)\n")
    assert [n.status for n in nodes] == ["EXITED", "EXITED"]

    code, cli = h.run("cluster", "terminate", cluster_id, "--yes", "--json")
    assert (code, json.loads(cli.out)) == (0, {"id": cluster_id, "terminated": True})
    assert [n.status for n in nodes] == ["TERMINATED", "TERMINATED"]
    assert h.server.account.clusters == {}
    assert events(h) == ["create-network", "remove-network"]
    h.assert_no_canary()


def test_cluster_create_refuses_one_node_and_a_twin_gpu_type(h: Harness) -> None:
    with pytest.raises(SystemExit) as exited:
        h.run("cluster", "create", "--nodes", "1", *GPU)
    assert exited.value.code == 2
    code, cli = h.run("cluster", "create", "--nodes", "2", *GPU, "--gpu-type-id", "NVIDIA A40")
    assert (code, cli.err) == (2, "error: a cluster needs exactly one --gpu-type-id (every node "
                               "has the same GPU type; there is no fallback to another)\n")
    code, cli = h.run("cycle", "--nodes", "2", *GPU, "--watch")
    assert (code, cli.err) == (2, "error: --watch follows one pod: with --nodes rank 0's output "
                               "is followed on stderr\n")
    assert not any(r["path"] == "/v2/clusters" and r["method"] == "POST"
                   for r in h.server.account.requests)


def test_cycle_nodes_trains_on_every_node_and_fetches_rank_0(h: Harness) -> None:
    dataset = make_dataset(h.tmp / "ds", "train.jsonl", "val.jsonl")
    fake = FakeNodes()
    code, cli = cluster_cycle(h, fake, "--dataset", str(dataset), "--then", "terminate",
                              "--train-env", "TRAIN_EPOCHS=2", "--json")
    assert code == 0, cli.err
    summary = json.loads(cli.out)
    preset = (f"mkdir -p {REMOTE} && cd {REMOTE} && env RUN_ID=r1 TRAIN_DATASET_DIR="
              f"{REMOTE}/dataset TRAIN_OUTPUT_DIR={REMOTE}/artifacts RUNPOD_PHASE_TIMING_LOG="
              f"{REMOTE}/timings.jsonl TRAIN_PROGRESS_JSONL_OUT={REMOTE}/artifacts/"
              f"progress.jsonl TRAIN_EPOCHS=2 {PRESET}")
    upload = f"mkdir -p {REMOTE}/dataset && tar -xf - -C {REMOTE}/dataset"
    fetch = f"cd {REMOTE} && tar -cf - artifacts $(test -f timings.jsonl && echo timings.jsonl)"
    out = h.tmp / "out"
    assert sorted((rank, command, stdout) for rank, command, stdout in fake.ran
                  if command != preset) == [(0, fetch, fake.ran[-1][2]), (0, upload, None),
                                            (1, upload, None)]
    assert sorted((rank, stdout) for rank, command, stdout in fake.ran if command == preset) \
        == [(0, None), (1, out / "nodes" / "node-1.log")]
    assert fake.ran[-1][:2] == (0, fetch)
    assert (out / "artifacts" / "model_best.pt").read_bytes() == b"weights"
    assert summary["files"] == sorted(name for name, _ in pod_files())
    assert [(p["phase"], p["status"]) for p in summary["phases"]] == [
        ("provision_cluster", "ok"), ("wait_ssh", "ok"), ("upload_dataset", "ok"),
        ("train", "ok"), ("fetch_artifacts", "ok"), ("then_terminate", "ok")]
    assert summary["cluster"] not in h.server.account.clusters
    assert all(p.status == "TERMINATED" for p in h.server.account.pods.values())
    assert events(h) == ["create-network", "remove-network"]
    h.assert_no_canary()


@pytest.mark.parametrize(("step", "fake", "left", "phase"), [
    ("upload", FakeNodes(upload_code=1), "TERMINATED", "cleanup_terminate"),
    ("train", FakeNodes(train_codes={1: 1}), "EXITED", "cleanup_stop"),
    ("fetch", FakeNodes(fetch_code=2), "EXITED", "cleanup_stop"),
])
def test_a_failed_step_leaves_no_node_billing(h: Harness, step: str, fake: FakeNodes,
                                              left: str, phase: str) -> None:
    dataset = make_dataset(h.tmp / "ds", "train.jsonl", "val.jsonl")
    code, cli = cluster_cycle(h, fake, "--dataset", str(dataset), "--then", "keep")
    assert code == 1
    pods = list(h.server.account.pods.values())
    assert [p.status for p in pods] == [left, left]
    assert all(p.cost() == 0.0 for p in pods)
    assert h.phases()[-1] == (phase, "ok")
    errors = {"upload": f"error: uploading {dataset} to node {pods[0].id} failed",
              "train": "error: the training failed on node(s) 1 (exit 1); rank 0's output is "
                       f"above, the others' in {h.tmp / 'out' / 'nodes'}",
              "fetch": f"error: copying {REMOTE}/artifacts from pod {pods[0].id} failed"}
    assert cli.err.splitlines()[-1] == errors[step]
    cluster_id = pods[0].cluster.cluster_id
    assert (f"cleanup: cluster {cluster_id} " + (
        "terminated, nothing left billing" if left == "TERMINATED" else
        "stopped, every node's /workspace kept (`provision.py cluster terminate "
        f"{cluster_id}` deletes them)")) in cli.err


def test_ssh_that_never_answers_terminates_the_cluster(h: Harness) -> None:
    h.backend.port_map[22] = 9  # discard: nothing greets like sshd there
    code, cli = cluster_cycle(h, FakeNodes(), "--wait-timeout", "1")
    assert code == 1
    assert [p.status for p in h.server.account.pods.values()] == ["TERMINATED", "TERMINATED"]
    assert h.server.account.clusters == {}
    assert h.phases()[-2:] == [("wait_ssh", "error"), ("cleanup_terminate", "ok")]


@pytest.mark.parametrize("half_created", ["adopt", "remove"])
def test_a_500_after_create_finds_the_cluster_by_its_marker(h: Harness,
                                                            half_created: str) -> None:
    twin = h.run("cluster", "create", "--nodes", "2", *GPU, "--name", "chessbot-r1")
    assert twin[0] == 0, twin[1].err
    (twin_id,) = h.server.account.clusters
    h.server.account.add_fault(Fault(match="CREATE /v2/clusters", kind="create_then_500"))
    code, cli = cluster_cycle(h, FakeNodes(), "--then", "terminate",
                              "--half-created", half_created)
    assert f"cluster {twin_id} is also named 'chessbot-r1', but its nodes do not carry this " \
           "request's marker: left alone" in cli.err
    ours = [c for c in h.server.account.pods.values() if c.cluster.cluster_id != twin_id]
    assert [p.status for p in ours] == ["TERMINATED", "TERMINATED"]
    assert list(h.server.account.clusters) == [twin_id]  # never touched
    if half_created == "adopt":
        assert code == 0, cli.err
        assert "was created despite the error (its nodes carry this request's marker); " \
               "continuing with it" in cli.err
    else:
        assert code == 1
        assert cli.err.splitlines()[-1].endswith(
            f"the half-created cluster {ours[0].cluster.cluster_id} (its nodes carry this "
            "request's marker) was terminated")


def test_a_500_without_a_cluster_touches_nothing(h: Harness) -> None:
    h.server.account.add_fault(Fault(match="CREATE /v2/clusters", status=500))
    code, cli = cluster_cycle(h, FakeNodes())
    assert code == 1
    assert cli.err.splitlines()[-1].endswith(
        "no cluster carries this request's marker, so nothing it created bills; no other "
        "cluster was touched")
    assert h.server.account.pods == {} and events(h) == []
    assert CANARY not in cli.err


def test_a_failed_node_stop_does_not_keep_the_other_nodes_running(h: Harness) -> None:
    dataset = make_dataset(h.tmp / "ds", "train.jsonl", "val.jsonl")
    # The first stop answers 409 and stops nothing: node 1 is still stopped, and the run says
    # which node may still bill.
    h.server.account.add_fault(Fault(match=r"POST /v2/pods/\w+/action", status=409,
                                     message="busy"))
    code, cli = cluster_cycle(h, FakeNodes(train_codes={0: 1}), "--dataset", str(dataset))
    assert code == 1
    pods = list(h.server.account.pods.values())
    assert [p.status for p in pods] == ["RUNNING", "EXITED"]
    cluster_id = pods[0].cluster.cluster_id
    assert (f"cleanup failed: cluster {cluster_id}: stopping node(s) {pods[0].id} (RUNNING: "
            f"stop pod {pods[0].id}: busy (HTTP 409)") in cli.err
    assert f"`provision.py cluster stop {cluster_id}`" in cli.err


def test_a_delete_whose_first_try_went_through_counts_as_done(h: Harness) -> None:
    class Retried(RunpodClient):  # the DELETE is done, but its retry answers 404
        def terminate_cluster(self, cluster_id: str) -> None:
            super().terminate_cluster(cluster_id)
            raise NotFoundError(f"delete cluster {cluster_id}", "resource not found",
                                status=404)

    fake = FakeNodes()
    h.pod = fake
    learn_ranks(h, fake)
    cli = make_cli_env()
    cli.env.remote = fake
    cli.env.client_factory = lambda: Retried(keyring_lookup=lambda: None)
    code = main(["cycle", "--nodes", "2", *GPU, "--run-id", "r1", "--out", str(h.tmp / "o"),
                 "--poll-interval", "0.5", "--then", "terminate"], cli.env)
    assert code == 0, cli.err
    assert h.server.account.clusters == {}
    assert "terminated, nothing left billing" in cli.out
