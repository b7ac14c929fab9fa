"""`provision.py cycle --nodes N` on a RunPod Instant Cluster: create it (clusters.py), wait for
every node's SSH, upload the dataset to every node, start the training preset on every node at
once, follow rank 0's output, copy rank 0's artifacts back, then stop or terminate every node.

The preset in each node reads RunPod's cluster env and runs torchrun across the nodes; only global
rank 0 (node 0) writes the artifacts. After a failure (or Ctrl-C) the cluster is terminated, or
its nodes only stopped when rank 0's volume may hold artifacts not copied back: no node is left
running.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
from pathlib import Path

from appliance import settings
from appliance.runpod import Cluster, Pod, RunpodClient
from appliance.timing import TimingLog
from host_tools.cli import CliError, Env, emit, load_settings
from host_tools.clusters import (
    MAX_NODES,
    ClusterRequest,
    create_cluster,
    stop_nodes,
    terminate_ours,
    wait_nodes,
)
from host_tools.pod_args import create_request, wait_request
from host_tools.podjobs import (
    CYCLE_SOURCE,
    Phases,
    cycle_inputs,
    fetch_artifacts,
    preset_command,
    tar_dir,
    untar_command,
)
from host_tools.pods import ssh_argv, ssh_settings


def node_remote(env: Env, node: Pod, args: argparse.Namespace, command: str,
                stdin: Path | None = None, stdout: Path | None = None) -> int:
    return env.remote(ssh_argv(node, ssh_settings(), args.user, [command], batch=True),
                      stdin, stdout)


def train_nodes(env: Env, nodes: list[Pod], args: argparse.Namespace, command: str,
                out: Path) -> dict[int, int]:
    """The preset on every node at once: rank 0's output followed on stderr, the others' in
    OUT/nodes/node-<rank>.log; each node's exit status, by rank, once all have ended (a node
    that never comes makes the others end within the rendezvous timeout)."""
    logs = out / "nodes"
    logs.mkdir(parents=True, exist_ok=True)
    codes: dict[int, int] = {}

    def run(rank: int, node: Pod) -> None:
        try:
            codes[rank] = node_remote(env, node, args, command,
                                      stdout=None if rank == 0 else logs / f"node-{rank}.log")
        except Exception as exc:  # noqa: BLE001 - reported as the node's failure
            print(f"node {rank} ({node.id}): {exc}", file=env.err)
            codes[rank] = -1

    threads = [threading.Thread(target=run, args=(rank, node), name=f"cluster-node-{rank}",
                                daemon=True) for rank, node in enumerate(nodes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return codes


def cycle_cluster(env: Env, args: argparse.Namespace) -> int:
    """`cycle --nodes N`: see the module doc."""
    if args.nodes < 2 or args.nodes > MAX_NODES:
        raise CliError(f"--nodes {args.nodes}: a cluster has 2 to {MAX_NODES} nodes", 2)
    if args.watch:
        raise CliError("--watch follows one pod: with --nodes rank 0's output is followed "
                       "on stderr", 2)
    train_env, run_id, out = cycle_inputs(args)
    req = ClusterRequest(create_request(args, f"chessbot-{run_id}", {"RUN_ID": run_id}),
                         args.nodes)
    req.check()
    remote = f"{args.remote_root.rstrip('/')}/{run_id}"
    phases = Phases(TimingLog(load_settings(settings.PathSettings).timing_log, CYCLE_SOURCE,
                              run_id), env.err)
    cluster: Cluster | None = None
    state = {"train_started": False, "fetched": False}
    with env.client_factory() as client:
        try:
            with phases.phase("provision_cluster", f"{args.nodes} nodes"):
                cluster = create_cluster(env, client, req)
            with phases.phase("wait_ssh", f"{args.nodes} nodes"):
                nodes = wait_nodes(env, client, cluster, wait_request(args, left_running=False))
            dataset = f"{args.pod_repo_dir}/data/sample"
            if args.dataset is not None:
                dataset = f"{remote}/dataset"
                with phases.phase("upload_dataset", f"{args.dataset} to every node"), \
                        tempfile.TemporaryDirectory() as tmp:
                    archive = Path(tmp) / "dataset.tar"
                    tar_dir(args.dataset, archive)
                    for node in nodes:
                        if node_remote(env, node, args, untar_command(dataset),
                                       stdin=archive) != 0:
                            raise CliError(f"uploading {args.dataset} to node {node.id} failed")
            command = preset_command(run_id, dataset, remote, train_env)
            state["train_started"] = True
            with phases.phase("train", f"the preset on {len(nodes)} nodes, following rank 0"):
                codes = train_nodes(env, nodes, args, command, out)
                failed = {rank: code for rank, code in sorted(codes.items()) if code != 0}
                if failed:
                    raise CliError("the training failed on node(s) " + ", ".join(
                        f"{rank} (exit {code})" for rank, code in failed.items())
                        + f"; rank 0's output is above, the others' in {out / 'nodes'}")
            with phases.phase("fetch_artifacts", f"rank 0 ({nodes[0].id}) to {out}"):
                files = fetch_artifacts(env, nodes[0], args, remote, out)
                state["fetched"] = True
            phases.merge(out / "timings.jsonl")
            with phases.phase(f"then_{args.then}"):
                finish(client, cluster.id, args.then)
        except (Exception, KeyboardInterrupt) as exc:
            if cluster is not None:
                cleanup_on_failure(env, client, cluster, args, phases, state)
            if isinstance(exc, KeyboardInterrupt):
                raise CliError("interrupted", 130) from None
            raise
    summary = {"run_id": run_id, "cluster": cluster.id, "nodes": [n.id for n in nodes],
               "then": args.then, "out": str(out), "files": files, "phases": phases.done,
               "timing_log": str(phases.path)}
    emit(env, args.json, summary, f"{phases.table()}\n\ncycle {run_id}: cluster {cluster.id} "
         f"({len(nodes)} nodes) {THEN_TEXT[args.then]}; rank 0's artifacts in {out} "
         f"({len(files)} files); timings in {phases.path}")
    return 0


THEN_TEXT = {"stop": "stopped, every node's /workspace kept",
             "terminate": "terminated, nothing left billing",
             "keep": "still RUNNING and billing: stop or terminate it"}


def finish(client: RunpodClient, cluster_id: str, then: str) -> None:
    if then == "stop":
        stop_nodes(client, cluster_id)
    elif then == "terminate":
        terminate_ours(client, cluster_id)


def cleanup_on_failure(env: Env, client: RunpodClient, cluster: Cluster,
                       args: argparse.Namespace, phases: Phases, state: dict[str, bool]) -> None:
    if args.keep_on_failure:
        phases.record("keep_on_failure", "ok", 0)
        print(f"--keep-on-failure: cluster {cluster.id} is still there and billing: "
              f"`provision.py cluster status {cluster.id}`", file=env.err)
        return
    action = "stop" if state["train_started"] and not state["fetched"] else "terminate"
    why = (f"only stopped: rank 0's {args.remote_root}/... may hold artifacts not copied back"
           if action == "stop" else "")
    try:
        with phases.phase(f"cleanup_{action}", why):
            finish(client, cluster.id, action)
        print(f"cleanup: cluster {cluster.id} {THEN_TEXT[action]}" + (
            f" (`provision.py cluster terminate {cluster.id}` deletes them)"
            if action == "stop" else ""), file=env.err)
    except Exception as exc:  # noqa: BLE001 - the original error is the one to raise
        print(f"cleanup failed: {exc}; cluster {cluster.id} may still bill: `provision.py "
              f"cluster {action} {cluster.id}`", file=env.err)
