"""How a new pod and the wait for it are spelled on the command line: the argparse options that
provision.py and its pod jobs (podjobs.py) share, and the CreateRequest/WaitRequest a handler
builds from them (pods.py does the work).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

from host_tools.cli import CliError
from host_tools.pods import DEFAULT_PORTS, CreateRequest, WaitRequest

DEFAULT_IMAGE_HINT = "localhost/chessbot-appliance:latest"
MAX_HOURS_ENV = "AUTOSTOP_MAX_HOURS"


def positive_hours(text: str) -> float:
    try:
        hours = float(text)
    except ValueError:
        hours = 0.0
    if not 0 < hours < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of hours above 0")
    return hours


def parse_env_pairs(pairs: Sequence[str], env_file: Path | None, flag: str = "--env"
                    ) -> dict[str, str]:
    """KEY=VALUE from an env file (# comments) then from the flags; a bad line is a usage error
    naming where it is."""
    result: dict[str, str] = {}
    lines: list[tuple[str, str]] = []
    if env_file is not None:
        try:
            text = env_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise CliError(f"--env-file {env_file}: {exc.strerror}", 2) from None
        lines += [(f"{env_file}:{n}", line.strip()) for n, line in
                  enumerate(text.splitlines(), 1)
                  if line.strip() and not line.lstrip().startswith("#")]
    lines += [(flag, p) for p in pairs]
    for where, item in lines:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not key.strip().replace("_", "").isalnum():
            raise CliError(f"{where}: {item.split('=')[0][:60]!r} is not KEY=VALUE with a "
                           "variable name of letters, digits and _", 2)
        result[key.strip()] = value
    return result


def parse_ports(spec: str) -> list[str]:
    ports = []
    for item in (p.strip() for p in spec.split(",") if p.strip()):
        number, _, kind = item.partition("/")
        if not number.isdigit() or not 1 <= int(number) <= 65535 or kind not in ("tcp", "http"):
            raise CliError(f"--ports: {item!r} is not PORT/tcp or PORT/http", 2)
        ports.append(item)
    return ports


def create_request(args: argparse.Namespace, default_name: str | None = None,
                   own_env: dict[str, str] | None = None) -> CreateRequest:
    """The pod the provision options describe; bad --env/--ports are usage errors. The name
    defaults to `default_name`, else chessbot-<local time>. `own_env`: variables the caller
    sets (e.g. cycle's RUN_ID); --env may not set them, nor AUTOSTOP_MAX_HOURS with --max-hours."""
    extra_env = parse_env_pairs(args.env or [], args.env_file)
    own = dict(own_env or {})
    if args.max_hours is not None:
        own[MAX_HOURS_ENV] = f"{args.max_hours:g}"
    for name in own:
        if name in extra_env:
            flag = "--max-hours" if name == MAX_HOURS_ENV else getattr(args, "command", "it")
            raise CliError(f"--env {name}: {flag} sets it", 2)
    extra_env.update(own)
    ports = parse_ports(args.ports)
    return CreateRequest(
        name=args.name or default_name or f"chessbot-{time.strftime('%Y%m%d-%H%M%S')}",
        image=args.image or "", template_id=str(args.template_id or ""),
        template_name=args.template_name or "", gpu_type_ids=tuple(args.gpu_type_id or ()),
        candidates=args.candidates, cloud=args.cloud, min_memory=args.min_memory,
        max_price=args.max_price, gpu_count=args.gpu_count, ports=tuple(ports), env=extra_env,
        disk_gb=args.disk_gb, volume_gb=args.volume_gb, half_created=args.half_created,
        registry_auth=args.registry_auth or "", network_volume=args.volume or "")


def wait_request(args: argparse.Namespace, left_running: bool = True) -> WaitRequest:
    return WaitRequest(args.wait_timeout, args.poll_interval, left_running)


# -- options --------------------------------------------------------------------------------------


def waiting(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--wait-timeout", type=float, default=900.0, metavar="S",
                    help="how long to wait for SSH (default %(default)s)")
    sp.add_argument("--poll-interval", type=float, default=3.0, metavar="S")


def filters(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--cloud", choices=["secure", "community", "all"], default="all",
                    help="the cloud pods go on; all: each GPU type on the cheaper one "
                    "(default %(default)s)")
    sp.add_argument("--min-memory", type=int, default=0, metavar="GB",
                    help="minimum GPU memory")
    sp.add_argument("--max-price", type=float, metavar="USD",
                    help="maximum price per GPU-hour, in the cloud the pod is created in")
    sp.add_argument("--gpu-count", type=int, default=1, metavar="N", help="GPUs per pod")


def provision_options(sp: argparse.ArgumentParser) -> None:
    """What a new pod is: GPU filters and candidates, template or image, ports, env, disks."""
    filters(sp)
    sp.set_defaults(cloud="secure")
    sp.add_argument("--gpu-type-id", action="append", metavar="ID",
                    help="GPU type id, e.g. 'NVIDIA RTX A4000' (repeat for fallbacks); works "
                    "when the catalog call is denied")
    sp.add_argument("--candidates", type=int, default=3, metavar="N",
                    help="cheapest GPU types to try when there is no capacity (default 3)")
    sp.add_argument("--template-id", metavar="ID")
    sp.add_argument("--template-name", metavar="SUBSTR", help="template whose name contains "
                    "SUBSTR (several matches are an error)")
    sp.add_argument("--image", help=f"image without a template (e.g. {DEFAULT_IMAGE_HINT})")
    sp.add_argument("--name", help="pod name (default chessbot-<time>)")
    sp.add_argument("--ports", default=",".join(DEFAULT_PORTS), help="default %(default)s")
    sp.add_argument("--env", action="append", metavar="K=V",
                    help="extra environment for the pod (repeatable), on top of the "
                    "template's; provision adds APPLIANCE_CREATE_MARKER")
    sp.add_argument("--env-file", type=Path, metavar="FILE", help="K=V lines (# comments)")
    sp.add_argument("--disk-gb", type=int, default=30, help="container disk (default 30)")
    sp.add_argument("--volume-gb", type=int, default=20,
                    help="/workspace volume, kept on stop (default 20)")
    sp.add_argument("--registry-auth", metavar="NAME|ID", help="container registry auth to "
                    "pull a private image with (`provision.py registry-auth add`)")
    sp.add_argument("--volume", metavar="NAME|ID", help="network volume at /workspace instead "
                    "of a pod volume (`provision.py volume create`): the pod runs in its data "
                    "center and terminate keeps its data")
    sp.add_argument("--max-hours", type=positive_hours, metavar="H",
                    help=f"the pod stops itself H hours after it starts, whatever it is doing "
                    f"(the idle watchdog's hard cap, {MAX_HOURS_ENV}; pending uploads first)")
    sp.add_argument("--half-created", choices=["adopt", "remove"], default="adopt",
                    help="when create fails but the pod exists (found by this request's "
                    "marker, never by name alone): keep using it or terminate it")
    waiting(sp)
