"""Workstation CLI for RunPod pods: gpu-search, template-list, provision (--wait), pods, status,
stop, start, terminate, ssh, doctor, (host_tools/podjobs.py) cycle and smoke, and
(host_tools/templates.py) template-create/-update/-show and registry-auth, (host_tools/report.py)
report, (host_tools/watch.py) watch, (host_tools/podfiles.py) logs, cp and ssh-config,
(host_tools/clusters.py) cluster create|status|stop|terminate and cycle --nodes; a thin
layer over appliance.runpod. Runs as `python host_tools/provision.py`, `python -m
host_tools.provision` or `appliance-provision`. The lifecycle steps are in pods.py, their options
in pod_args.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from appliance.runpod import NoApiKeyError, Pod, RunpodClient, RunpodError
from appliance.settings import SettingsError
from host_tools import clusters, podfiles, podjobs, report, templates, volumes
from host_tools.cli import CliError, Env, confirm, emit, price, table, usd
from host_tools.engine import installed
from host_tools.pod_args import create_request, filters, provision_options, wait_request, waiting
from host_tools.pods import (
    MARKER_ENV,
    SSH_USER,
    create_pod,
    filter_gpus,
    match_templates,
    pod_json,
    pod_text,
    ssh_argv,
    ssh_settings,
    wait_ready,
)

# -- commands -------------------------------------------------------------------------------------


def cmd_gpu_search(env: Env, args: argparse.Namespace) -> int:
    """Each GPU type at the price of the cloud `provision` with the same --cloud would create it
    in (for "all" the cheaper one); --max-price applies to that price."""
    with env.client_factory() as client:
        gpus = client.list_gpus(cloud=args.cloud.upper(), gpu_count=args.gpu_count)
    ranked = filter_gpus(gpus, args.cloud.upper(), args.min_memory, args.max_price,
                         args.include_unavailable)
    data = [{**g.to_dict(), "rank": i, "price": o.price, "cloud": o.cloud}
            for i, (g, o) in enumerate(ranked, 1)]
    rows = [[str(i), g.id, f"{g.memory_gb} GB", price(o.price), o.cloud.lower(),
             g.availability] for i, (g, o) in enumerate(ranked, 1)]
    text = table(rows, ["#", "GPU TYPE ID", "MEMORY", "PRICE", "CLOUD", "AVAILABILITY"]) \
        if rows else "no GPU type matches these filters"
    emit(env, args.json, data, text)
    return 0


def cmd_template_list(env: Env, args: argparse.Namespace) -> int:
    with env.client_factory() as client:
        templates = match_templates(client.list_templates(), args.name)
    rows = [[t.id, t.name, t.image, ",".join(t.ports)] for t in templates]
    emit(env, args.json, [t.to_dict() for t in templates],
         table(rows, ["ID", "NAME", "IMAGE", "PORTS"]) if rows else "no templates")
    return 0


def cmd_provision(env: Env, args: argparse.Namespace) -> int:
    with env.client_factory() as client:
        pod = create_pod(env, client, create_request(args))
        if args.wait:
            pod = wait_ready(env, client, pod, wait_request(args))
        else:
            pod = client.get_pod(pod.id)
    emit(env, args.json, pod_json(pod), pod_text(pod))
    return 0


def ours(pod: Pod) -> bool:
    """Created by provision.py (it carries the create marker)."""
    return MARKER_ENV in pod.env


def cmd_pods(env: Env, args: argparse.Namespace) -> int:
    """This tool's pods (those carrying the create marker); --all: every pod of the account,
    with the run id of ours (RUN_ID, set by cycle)."""
    with env.client_factory() as client:
        listed = client.list_pods()
    now = env.clock()
    pods = listed if args.all else [p for p in listed if ours(p)]
    rows = []
    for p in pods:
        endpoint = p.ssh_endpoint()
        run = (p.env.get("RUN_ID") or "-") if ours(p) else "(not ours)"
        rows.append([p.id, p.name, p.status, f"{p.gpu_count}x {p.gpu_id}",
                     price(p.cost_per_hr), usd(p.cost_so_far(now)), run,
                     f"{endpoint[0]}:{endpoint[1]}" if endpoint else "-"])
    text = table(rows, ["ID", "NAME", "STATUS", "GPU", "$/H", "SO FAR", "RUN", "SSH"]) \
        if rows else "no pods"
    hidden = len(listed) - len(pods)
    if hidden:
        text += (f"\n({hidden} more pod{'s' if hidden > 1 else ''} not created by provision.py: "
                 "`provision.py pods --all`)")
    data = [{**pod_json(p, now), "ours": ours(p), "runId": p.env.get("RUN_ID") if ours(p)
             else None} for p in pods]
    emit(env, args.json, data, text)
    return 0


def cmd_status(env: Env, args: argparse.Namespace) -> int:
    with env.client_factory() as client:
        pod = client.get_pod(args.pod)
    now = env.clock()
    emit(env, args.json, pod_json(pod, now), pod_text(pod, now))
    return 0


def cmd_stop(env: Env, args: argparse.Namespace) -> int:
    confirm(env, args.yes, f"Stop pod {args.pod}? Its GPU is released; /workspace is kept "
            "and billed as storage.")
    with env.client_factory() as client:
        client.stop_pod(args.pod)
        pod = client.get_pod(args.pod)
    emit(env, args.json, pod_json(pod), f"stopped pod {args.pod}: {pod.status} (/workspace "
         f"kept; `provision.py start {args.pod}` resumes it)")
    return 0


def cmd_start(env: Env, args: argparse.Namespace) -> int:
    with env.client_factory() as client:
        client.start_pod(args.pod, gpu_count=args.gpu_count)
        pod = client.get_pod(args.pod)
        if args.wait:
            pod = wait_ready(env, client, pod, wait_request(args))
    emit(env, args.json, pod_json(pod), pod_text(pod))
    return 0


def cmd_terminate(env: Env, args: argparse.Namespace) -> int:
    with env.client_factory() as client:
        kept = client.get_pod(args.pod).network_volume_id
        confirm(env, args.yes, f"TERMINATE pod {args.pod}? " + (
            f"The pod is deleted for good; its network volume {kept} keeps /workspace." if kept
            else "The pod and its /workspace volume are deleted for good."))
        client.terminate_pod(args.pod)
    emit(env, args.json,
         {"id": args.pod, "status": "TERMINATED", "networkVolumeKept": kept or None},
         f"terminated pod {args.pod}: " + (
             f"it is gone; its network volume {kept} keeps the data of /workspace" if kept
             else "it and its volume are gone"))
    return 0


def cmd_ssh(env: Env, args: argparse.Namespace) -> int:
    settings = ssh_settings()
    with env.client_factory() as client:
        pod = client.get_pod(args.pod)
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    argv = ssh_argv(pod, settings, args.user, command)
    if args.print:
        print(" ".join(argv), file=env.out)
        return 0
    settings.known_hosts_path().parent.mkdir(parents=True, exist_ok=True)
    return env.run(argv)


def cmd_doctor(env: Env, args: argparse.Namespace) -> int:
    checks: list[tuple[str, bool, str, str]] = []  # name, ok, detail, fix
    ssh = env.which("ssh")
    checks.append(("ssh client", ssh is not None, ssh or "not found",
                   "install OpenSSH (apt-get install openssh-client)"))
    engine = installed(env.which)
    checks.append(("container engine", engine is not None, engine or "neither podman nor docker",
                   "install podman (apt-get install podman runc) or Docker"))
    client: RunpodClient | None = None
    try:
        client = env.client_factory()
        checks.append(("API key", True, f"found in {client.key_source} (not shown)", ""))
    except NoApiKeyError as exc:
        checks.append(("API key", False, exc.message, exc.action))
    except SettingsError as exc:
        checks.append(("API settings", False, str(exc), "fix the variable named"))
    if client is not None:
        with client:
            try:
                client.list_pods()
                checks.append(("API", True, f"{client.rest_url} answers and accepts the key", ""))
            except RunpodError as exc:
                checks.append(("API", False, f"{exc.call}: {exc.message}", exc.action))
    try:
        host_ssh = ssh_settings()
        known = host_ssh.known_hosts_path()
        parent = next((p for p in [known.parent, *known.parent.parents] if p.exists()), None)
        writable = parent is not None and parent.is_dir() and _writable(parent)
        checks.append(("known hosts", writable, str(known),
                       f"make {known.parent} writable or set RUNPOD_SSH_KNOWN_HOSTS_FILE"))
        identity = host_ssh.RUNPOD_SSH_IDENTITY_FILE
        if identity is not None:
            checks.append(("ssh identity", identity.expanduser().is_file(), str(identity),
                           "point RUNPOD_SSH_IDENTITY_FILE at your private key, or unset it"))
    except CliError as exc:
        checks.append(("known hosts", False, str(exc), "fix RUNPOD_SSH_KNOWN_HOSTS_FILE"))
    if args.json:
        print(json.dumps([{"check": n, "ok": ok, "detail": d, "fix": f if not ok else ""}
                          for n, ok, d, f in checks], indent=2), file=env.out)
    else:
        for name, ok, detail, fix in checks:
            line = f"{'ok  ' if ok else 'FAIL'} {name}: {detail}"
            print(line + (f"\n     fix: {fix}" if not ok and fix else ""), file=env.out)
    return 0 if all(ok for _, ok, _, _ in checks) else 1


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK)


# -- parser ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="provision.py",
        description="Find GPUs, provision and manage RunPod pods of the chess-bot appliance. The "
        "API key comes from RUNPOD_API_KEY or the keyring (service runpod, username "
        "RUNPOD_API_KEY), never from the command line. RUNPOD_REST_URL and RUNPOD_GRAPHQL_URL "
        "point it elsewhere (e.g. at localpod).",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_: str, func: Callable[[Env, argparse.Namespace], int]
            ) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.add_argument("--json", action="store_true", help="machine-readable output")
        sp.set_defaults(func=func)
        return sp

    sp = add("gpu-search", "GPU types with price and availability, cheapest first", cmd_gpu_search)
    filters(sp)
    sp.add_argument("--include-unavailable", action="store_true",
                    help="also list GPU types with no stock now")

    sp = add("template-list", "templates of the account", cmd_template_list)
    sp.add_argument("--name", metavar="SUBSTR", help="only names containing SUBSTR")

    sp = add("provision", "create a pod (cheapest matching GPU unless --gpu-type-id)",
             cmd_provision)
    provision_options(sp)
    sp.add_argument("--wait", action="store_true",
                    help="wait until the pod runs and SSH answers")

    sp = add("pods", "this tool's pods with $/h and the cost so far", cmd_pods)
    sp.add_argument("--all", action="store_true",
                    help="every pod of the account, not only those provision.py created")
    sp = add("status", "one pod's state, SSH endpoint and proxy URLs", cmd_status)
    sp.add_argument("pod")
    sp = add("stop", "STOP a pod: GPU released, /workspace volume KEPT (and billed as storage)",
             cmd_stop)
    sp.add_argument("pod")
    sp.add_argument("--yes", action="store_true", help="do not ask")
    sp = add("start", "start (resume) a stopped pod on its volume", cmd_start)
    sp.add_argument("pod")
    sp.add_argument("--gpu-count", type=int, default=1)
    sp.add_argument("--wait", action="store_true", help="wait until the pod runs and SSH answers")
    waiting(sp)
    sp = add("terminate", "TERMINATE a pod: the pod AND its /workspace volume are deleted",
             cmd_terminate)
    sp.add_argument("pod")
    sp.add_argument("--yes", action="store_true", help="do not ask")
    sp = add("ssh", "OpenSSH into a pod (host keys pinned in a persistent known-hosts file)",
             cmd_ssh)
    sp.add_argument("pod")
    sp.add_argument("--user", default=SSH_USER, help="default %(default)s")
    sp.add_argument("--print", action="store_true", help="print the ssh command, do not run it")
    sp.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD to run in the pod")
    add("doctor", "check the local setup: ssh, container engine, API key, API, known hosts",
        cmd_doctor)
    podjobs.add_commands(add)
    templates.add_commands(add)
    report.add_command(add)
    podfiles.add_commands(add)
    volumes.add_commands(add)
    clusters.add_commands(add)
    return p


def main(argv: Sequence[str] | None = None, env: Env | None = None) -> int:
    env = env or Env()
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(env, args))
    except CliError as exc:
        print(f"error: {exc}", file=env.err)
        return exc.code
    except RunpodError as exc:
        print(f"error: {exc}", file=env.err)
        return 1
    except (SettingsError, ValueError) as exc:
        print(f"error: {exc}", file=env.err)
        return 2


if __name__ == "__main__":
    sys.exit(main())
