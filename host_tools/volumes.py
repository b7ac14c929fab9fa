"""provision.py's network volume commands: `volume create|list|delete`, and `find_volume`, which
`provision --volume` / `cycle --volume` use to name one. A RunPod network volume lives in one data
center and outlives pods: a pod created with it mounts it at /workspace instead of a pod volume,
is pinned to its data center, and `terminate` leaves the data for the next pod.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from appliance.runpod import NetworkVolume, RunpodClient
from host_tools.cli import CliError, Env, confirm, emit, find_by_ref, table

MIN_GB, MAX_GB = 10, 4096  # RunPod's limits on a network volume's size

AddCommand = Callable[[str, str, Callable[[Env, argparse.Namespace], int]],
                      argparse.ArgumentParser]


def size_gb(text: str) -> int:
    try:
        size = int(text)
    except ValueError:
        size = 0
    if not MIN_GB <= size <= MAX_GB:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a whole number of GB from {MIN_GB} to {MAX_GB}")
    return size


def find_volume(client: RunpodClient, ref: str) -> NetworkVolume:
    """The network volume whose id or name is `ref` (ids first; a name two volumes share is an
    error)."""
    return find_by_ref(client.list_network_volumes(), ref, "network volume",
                       "provision.py volume list")


def volume_text(volume: NetworkVolume) -> str:
    return (f"network volume {volume.name} (id {volume.id}, {volume.size_gb} GB, "
            f"data center {volume.data_center})")


def cmd_volume_create(env: Env, args: argparse.Namespace) -> int:
    with env.client_factory() as client:
        created = client.create_network_volume(args.name, args.size, args.data_center)
    emit(env, args.json, created.to_dict(),
         f"created {volume_text(created)}; use it with `provision --volume {created.id}` "
         "(pods on it run in its data center)")
    return 0


def cmd_volume_list(env: Env, args: argparse.Namespace) -> int:
    with env.client_factory() as client:
        volumes = client.list_network_volumes()
    rows = [[v.id, v.name, f"{v.size_gb} GB", v.data_center, v.type] for v in volumes]
    emit(env, args.json, [v.to_dict() for v in volumes],
         table(rows, ["ID", "NAME", "SIZE", "DATA CENTER", "TYPE"]) if rows
         else "no network volumes")
    return 0


def cmd_volume_delete(env: Env, args: argparse.Namespace) -> int:
    """Refused while a pod (running or stopped) has the volume mounted."""
    with env.client_factory() as client:
        found = find_volume(client, args.volume)
        users = [p.id for p in client.list_pods()
                 if p.network_volume_id == found.id and p.status != "TERMINATED"]
        if users:
            raise CliError(f"{volume_text(found)} is in use by pod(s) {', '.join(users)}: "
                           "terminate them first (`provision.py terminate POD`)")
        confirm(env, args.yes, f"DELETE {volume_text(found)}? Its data is gone for good.")
        client.delete_network_volume(found.id)
    emit(env, args.json, {**found.to_dict(), "deleted": True},
         f"deleted {volume_text(found)}: its data is gone")
    return 0


def add_commands(add: AddCommand) -> None:
    """Register `volume create|list|delete` with provision.py's parser."""
    sp = add("volume", "RunPod network volumes (data that outlives pods): create, list, delete",
             cmd_volume_list)
    verbs = sp.add_subparsers(dest="verb", required=True, metavar="VERB")
    create_sp = verbs.add_parser("create", help="create one in a data center")
    create_sp.add_argument("name")
    create_sp.add_argument("--size", type=size_gb, required=True, metavar="GB",
                           help=f"{MIN_GB} to {MAX_GB} GB")
    create_sp.add_argument("--data-center", required=True, metavar="ID",
                           help="e.g. EU-RO-1; pods on the volume run there")
    create_sp.set_defaults(func=cmd_volume_create)
    list_sp = verbs.add_parser("list", help="list them")
    list_sp.set_defaults(func=cmd_volume_list)
    delete_sp = verbs.add_parser("delete", help="delete one and its data (refused while a pod "
                                 "uses it)")
    delete_sp.add_argument("volume", metavar="NAME|ID")
    delete_sp.add_argument("--yes", action="store_true", help="do not ask")
    delete_sp.set_defaults(func=cmd_volume_delete)
    for verb in (create_sp, list_sp, delete_sp):  # --json before or after the verb
        verb.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                          help="machine-readable output")
