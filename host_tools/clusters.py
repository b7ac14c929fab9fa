"""provision.py's RunPod Instant Cluster commands, `cluster create|status|stop|terminate`, and the
steps `cycle --nodes N` (cluster_cycle.py) shares: create a cluster, wait for its nodes, stop or
terminate them.

A cluster has no stop of its own in RunPod's API: stopping one stops each node; terminating it
(DELETE /v2/clusters/{id}) deletes every node and its volume. As for pods (pods.py), a cluster is
acted on after a failed create only when this run can prove it created it: by the request's
marker, which every node of the cluster carries in its env (names are not unique).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

from appliance.runpod import (
    Cluster,
    ClusterSpec,
    NoCapacityError,
    Pod,
    RunpodClient,
    RunpodError,
    ServerError,
    Template,
    TransportError,
)
from host_tools.cli import CliError, Env, confirm, emit, find_by_ref, table
from host_tools.pod_args import create_request, provision_options, wait_request
from host_tools.pods import (
    MARKER_ENV,
    CreateRequest,
    WaitRequest,
    new_marker,
    wait_ready,
)
from host_tools.volumes import AddCommand

MAX_NODES = 250  # RunPod's ClusterCompute.podCount maximum


def node_count(text: str) -> int:
    try:
        nodes = int(text)
    except ValueError:
        nodes = 0
    if not 2 <= nodes <= MAX_NODES:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of nodes from 2 to "
                                         f"{MAX_NODES}")
    return nodes


# -- create ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterRequest:
    """A cluster to create: `nodes` pods like `pod` (its first --gpu-type-id, its image or
    template, env, ports and disks; no registry auth or network volume: the cluster request has
    neither)."""

    pod: CreateRequest
    nodes: int

    def check(self) -> None:
        if len(self.pod.gpu_type_ids) != 1:
            raise CliError("a cluster needs exactly one --gpu-type-id (every node has the same "
                           "GPU type; there is no fallback to another)", 2)
        if not (self.pod.image or self.pod.template_id or self.pod.template_name):
            raise CliError("give --template-id, --template-name or --image", 2)
        if self.pod.registry_auth or self.pod.network_volume:
            raise CliError("--registry-auth and --volume are for pods: RunPod's cluster request "
                           "has neither", 2)
        if MARKER_ENV in self.pod.env:
            raise CliError(f"--env {MARKER_ENV}: provision sets it, to a fresh value for each "
                           "create request", 2)


def find_template(client: RunpodClient, req: CreateRequest) -> Template | None:
    """The template by --template-id, else by exact --template-name (never an ambiguous one)."""
    ref = req.template_id or req.template_name
    if not ref:
        return None
    return find_by_ref(client.list_templates(), ref, "template", "provision.py template-list")


def cluster_spec(client: RunpodClient, req: ClusterRequest, marker: str) -> ClusterSpec:
    """RunPod's cluster request names no template: a template's image, env, ports and disks
    are sent in it, the request's own on top."""
    pod, template = req.pod, find_template(client, req.pod)
    image = pod.image or (template.image if template else "")
    if not image:
        raise CliError(f"template {template.id if template else '?'} names no image: give "
                       "--image", 2)
    return ClusterSpec(
        name=pod.name, gpu_type_id=pod.gpu_type_ids[0], pod_count=req.nodes, image=image,
        gpu_count_per_pod=pod.gpu_count,
        ports=list(pod.ports if pod.ports or not template else template.ports),
        env={**(template.env if template else {}), **pod.env, MARKER_ENV: marker},
        disk_gb=pod.disk_gb, volume_gb=pod.volume_gb)


def find_marked_clusters(env: Env, client: RunpodClient, name: str, marker: str
                         ) -> list[Cluster]:
    """The clusters named `name` whose every node carries `marker`; others are left alone."""
    found = []
    for cluster in client.list_clusters():
        if cluster.name != name:
            continue
        nodes = client.cluster_pods(cluster.id)
        if nodes and all(p.env.get(MARKER_ENV) == marker for p in nodes):
            found.append(cluster)
        else:
            print(f"cluster {cluster.id} is also named {name!r}, but its nodes do not carry "
                  "this request's marker: left alone", file=env.err)
    return found


def create_cluster(env: Env, client: RunpodClient, req: ClusterRequest,
                   marker: Callable[[], str] = new_marker) -> Cluster:
    """Create the cluster (no waiting). After a failed create the cluster this request made, if
    any, is found by its marker and adopted or terminated (--half-created)."""
    req.check()
    spec = cluster_spec(client, req, marker())
    mark = spec.env[MARKER_ENV]
    try:
        cluster = client.create_cluster(spec)
    except NoCapacityError as exc:
        raise CliError(f"no capacity for {req.nodes} x {spec.gpu_count_per_pod} "
                       f"{spec.gpu_type_id} ({exc.message}); try fewer nodes, another GPU "
                       "type, or later") from None
    except (ServerError, TransportError) as exc:
        print(f"warning: {exc}; looking for a half-created cluster named {spec.name!r} whose "
              f"nodes carry this request's marker {MARKER_ENV}={mark}", file=env.err)
        try:
            found = find_marked_clusters(env, client, spec.name, mark)
        except RunpodError as lookup:
            raise CliError(f"{exc}; looking for the half-created cluster failed too ({lookup});"
                           " `provision.py cluster status ID` shows a cluster's nodes: check "
                           "their env for the marker above before removing it") from None
        if len(found) != 1:
            raise CliError(f"{exc}; " + (
                "no cluster carries this request's marker, so nothing it created bills; no "
                "other cluster was touched" if not found else
                f"clusters {', '.join(c.id for c in found)} all carry this request's marker, "
                "so none was touched")) from None
        cluster = found[0]
        if req.pod.half_created == "remove":
            client.terminate_cluster(cluster.id)
            raise CliError(f"{exc}; the half-created cluster {cluster.id} (its nodes carry "
                           "this request's marker) was terminated") from None
        print(f"cluster {cluster.id} was created despite the error (its nodes carry this "
              "request's marker); continuing with it", file=env.err)
    print(f"created cluster {cluster.id} ({spec.name}): {req.nodes} x "
          f"{spec.gpu_count_per_pod} {spec.gpu_type_id}", file=env.err)
    return cluster


def nodes_by_rank(client: RunpodClient, cluster_id: str) -> list[Pod]:
    nodes = client.cluster_pods(cluster_id)
    return sorted(nodes, key=lambda p: (p.cluster_rank is None, p.cluster_rank or 0))


def wait_nodes(env: Env, client: RunpodClient, cluster: Cluster, wait: WaitRequest) -> list[Pod]:
    """Every node RUNNING with SSH answering, by rank."""
    nodes = nodes_by_rank(client, cluster.id)
    if len(nodes) != cluster.pod_count:
        raise CliError(f"cluster {cluster.id} has {len(nodes)} nodes, not {cluster.pod_count}")
    return [wait_ready(env, client, node, wait) for node in nodes]


def stop_nodes(client: RunpodClient, cluster_id: str) -> list[str]:
    """Stop every node that runs; the ids stopped. A node whose stop fails does not keep the
    others running: each is tried, and a failure counts only if the node is not stopped when
    read again (a stop retried after a timeout finds it stopped already)."""
    stopped, failed = [], []
    for node in nodes_by_rank(client, cluster_id):
        if node.status not in ("RUNNING", "STARTING", "PROVISIONING"):
            continue
        try:
            client.stop_pod(node.id)
        except RunpodError as exc:
            try:
                now = client.get_pod(node.id).status
            except RunpodError:
                now = "unknown"
            if now not in ("EXITED", "TERMINATED"):
                failed.append(f"{node.id} ({now}: {exc})")
                continue
        stopped.append(node.id)
    if failed:
        raise CliError(f"cluster {cluster_id}: stopping node(s) {', '.join(failed)} failed; "
                       f"they may still bill: `provision.py cluster stop {cluster_id}`")
    return stopped


def terminate_ours(client: RunpodClient, cluster_id: str) -> None:
    """DELETE a cluster this run created. A 404 is success when the cluster is gone: a DELETE
    retried after a timeout finds its first try done."""
    try:
        client.terminate_cluster(cluster_id)
    except RunpodError as exc:
        if exc.status != 404:
            raise
        try:
            client.get_cluster(cluster_id)
        except RunpodError as again:
            if again.status == 404:
                return
        raise


# -- cluster create|status|stop|terminate ---------------------------------------------------------


def stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def node_rows(nodes: list[Pod]) -> str:
    rows = []
    for p in nodes:
        endpoint = p.ssh_endpoint()
        rows.append([str(p.cluster_rank if p.cluster_rank is not None else "-"), p.id,
                     p.status, p.cluster_ip or "-",
                     f"{endpoint[0]}:{endpoint[1]}" if endpoint else "-"])
    return table(rows, ["RANK", "POD", "STATUS", "ADDRESS", "SSH"])


def cluster_json(cluster: Cluster, nodes: list[Pod]) -> dict[str, object]:
    return {**cluster.to_dict(), "nodes": [p.to_dict() | {"rank": p.cluster_rank}
                                           for p in nodes]}


def cmd_cluster_create(env: Env, args: argparse.Namespace) -> int:
    req = ClusterRequest(create_request(args, f"chessbot-cluster-{stamp()}"), args.nodes)
    with env.client_factory() as client:
        cluster = create_cluster(env, client, req)
        nodes = (wait_nodes(env, client, cluster, wait_request(args)) if args.wait
                 else nodes_by_rank(client, cluster.id))
    emit(env, args.json, cluster_json(cluster, nodes),
         f"cluster {cluster.id} ({cluster.name}): {len(nodes)} nodes\n{node_rows(nodes)}")
    return 0


def cmd_cluster_status(env: Env, args: argparse.Namespace) -> int:
    with env.client_factory() as client:
        cluster = client.get_cluster(args.cluster)
        nodes = nodes_by_rank(client, cluster.id)
    emit(env, args.json, cluster_json(cluster, nodes),
         f"cluster {cluster.id} ({cluster.name}): {cluster.pod_count} x "
         f"{cluster.gpu_count_per_pod} {cluster.gpu_id}\n{node_rows(nodes)}")
    return 0


def cmd_cluster_stop(env: Env, args: argparse.Namespace) -> int:
    confirm(env, args.yes, f"Stop every node of cluster {args.cluster}? Their GPUs are "
            "released; each node's /workspace is kept and billed as storage.")
    with env.client_factory() as client:
        stopped = stop_nodes(client, args.cluster)
    emit(env, args.json, {"id": args.cluster, "stopped": stopped},
         f"stopped {len(stopped)} node(s) of cluster {args.cluster} (volumes kept; "
         f"`provision.py cluster terminate {args.cluster}` deletes them)")
    return 0


def cmd_cluster_terminate(env: Env, args: argparse.Namespace) -> int:
    confirm(env, args.yes, f"TERMINATE cluster {args.cluster}? Every node and its /workspace "
            "volume are deleted for good.")
    with env.client_factory() as client:
        client.terminate_cluster(args.cluster)
    emit(env, args.json, {"id": args.cluster, "terminated": True},
         f"terminated cluster {args.cluster}: its nodes and their volumes are gone")
    return 0


# -- parser ---------------------------------------------------------------------------------------


def add_commands(add: AddCommand) -> None:
    """Register `cluster create|status|stop|terminate` with provision.py's parser."""
    sp = add("cluster", "RunPod Instant Clusters (several pods on a private network): create, "
             "status, stop, terminate", cmd_cluster_status)
    verbs = sp.add_subparsers(dest="verb", required=True, metavar="VERB")
    create_sp = verbs.add_parser("create", help="create a cluster of N pods of one GPU type")
    create_sp.add_argument("--nodes", type=node_count, required=True, metavar="N",
                           help=f"pods in the cluster, 2 to {MAX_NODES}")
    provision_options(create_sp)
    create_sp.add_argument("--template", dest="template_name", metavar="NAME|ID",
                           help="the template whose id, else exact name, this is: its image, "
                           "env, ports and disks go into the cluster request")
    create_sp.add_argument("--wait", action="store_true",
                           help="wait until every node runs and SSH answers")
    create_sp.set_defaults(func=cmd_cluster_create)
    status_sp = verbs.add_parser("status", help="a cluster and its nodes")
    status_sp.set_defaults(func=cmd_cluster_status)
    stop_sp = verbs.add_parser("stop", help="stop every node: GPUs released, volumes KEPT")
    stop_sp.set_defaults(func=cmd_cluster_stop)
    term_sp = verbs.add_parser("terminate", help="TERMINATE the cluster: every node AND its "
                               "volume are deleted")
    term_sp.set_defaults(func=cmd_cluster_terminate)
    for verb in (status_sp, stop_sp, term_sp):
        verb.add_argument("cluster", metavar="ID")
    for verb in (stop_sp, term_sp):
        verb.add_argument("--yes", action="store_true", help="do not ask")
    for verb in (create_sp, status_sp, stop_sp, term_sp):  # --json before or after the verb
        verb.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                          help="machine-readable output")
