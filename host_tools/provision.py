"""Workstation CLI for RunPod pods: gpu-search, template-list, provision (--wait), pods, status,
stop, start, terminate, ssh, doctor, and (host_tools/podjobs.py) cycle and smoke; a thin layer
over appliance.runpod.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx

from appliance.runpod import (
    AccessDeniedError,
    Cloud,
    GpuType,
    NoApiKeyError,
    NoCapacityError,
    Pod,
    PodSpec,
    RunpodClient,
    RunpodError,
    ServerError,
    Template,
    TransportError,
)
from appliance.settings import HostSshSettings, SettingsError, load

DEFAULT_PORTS = "22/tcp,8888/http,8000/http"
DEFAULT_IMAGE_HINT = "localhost/chessbot-appliance:latest"
SSH_USER = "runner"


class CliError(Exception):
    """A message for the person at the terminal; exit status 1 (2 for bad usage)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Env:
    """What the commands touch outside themselves; tests replace any of it."""

    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    client_factory: Callable[[], RunpodClient] = RunpodClient
    run: Callable[[Sequence[str]], int] = lambda argv: subprocess.call(list(argv))
    is_tty: Callable[[], bool] = lambda: sys.stdin.isatty()
    ask: Callable[[str], str] = input
    sleep: Callable[[float], None] = time.sleep
    monotonic: Callable[[], float] = time.monotonic
    which: Callable[[str], str | None] = shutil.which
    remote: Callable[[list[str], Path | None, Path | None], int] = \
        lambda argv, stdin, stdout: run_remote(argv, stdin, stdout)
    http_get: Callable[[str], httpx.Response] = lambda url: httpx.get(url, timeout=15)


def run_remote(argv: list[str], stdin: Path | None, stdout: Path | None) -> int:
    """A tool's ssh command: stdin from a file, stdout into a file or onto stderr (progress)."""
    with ExitStack() as stack:
        src = stack.enter_context(stdin.open("rb")) if stdin else subprocess.DEVNULL
        dst = stack.enter_context(stdout.open("wb")) if stdout else sys.stderr
        return subprocess.call(argv, stdin=src, stdout=dst)


# -- helpers --------------------------------------------------------------------------------------


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in [headers, *rows]]
    return "\n".join(lines)


def _emit(env: Env, args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, sort_keys=True) if args.json else text, file=env.out)


def _price(value: float | None) -> str:
    return "-" if value is None else f"${value:.2f}/h"


def filter_gpus(gpus: list[GpuType], cloud: Cloud, min_memory: int, max_price: float | None,
                include_unavailable: bool) -> list[tuple[GpuType, float]]:
    """GPUs that pass the filters with their price in `cloud`, cheapest first."""
    ranked = []
    for gpu in gpus:
        price = gpu.price(cloud)
        if price is None or gpu.memory_gb < min_memory:
            continue
        if max_price is not None and price > max_price:
            continue
        if not include_unavailable and gpu.availability == "NONE":
            continue
        ranked.append((gpu, price))
    return sorted(ranked, key=lambda gp: (gp[1], -gp[0].memory_gb, gp[0].id))


def parse_env_pairs(pairs: Sequence[str], env_file: Path | None, flag: str = "--env"
                    ) -> dict[str, str]:
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


def host_key_alias(pod_id: str) -> str:
    """Host keys are pinned per pod, not per IP:port, which change at every start."""
    return f"runpod-{pod_id}"


def ssh_argv(pod: Pod, settings: HostSshSettings, user: str, command: Sequence[str],
             batch: bool = False) -> list[str]:
    """`batch`: for commands run by a tool (no prompts, bounded connect, keep-alives)."""
    endpoint = pod.ssh_endpoint()
    if endpoint is None:
        raise CliError(f"pod {pod.id} has no SSH endpoint (status {pod.status}); it needs "
                       "22/tcp in its ports and must be RUNNING: `provision.py status "
                       f"{pod.id}`")
    known_hosts = settings.known_hosts_path()
    host, port = endpoint
    argv = ["ssh", "-p", str(port), "-o",
            f"StrictHostKeyChecking={settings.RUNPOD_SSH_HOST_KEY_CHECKING}",
            "-o", f"UserKnownHostsFile={known_hosts}",
            "-o", f"HostKeyAlias={host_key_alias(pod.id)}"]
    if settings.RUNPOD_SSH_IDENTITY_FILE is not None:
        argv += ["-i", str(settings.RUNPOD_SSH_IDENTITY_FILE.expanduser()),
                 "-o", "IdentitiesOnly=yes"]
    if batch:
        argv += ["-o", "BatchMode=yes", "-o", "ConnectTimeout=15",
                 "-o", "ServerAliveInterval=30", "-o", "LogLevel=ERROR"]
    return [*argv, f"{user}@{host}", *command]


def ssh_answers(host: str, port: int, timeout: float = 3.0) -> bool:
    """True when an SSH server greets on host:port (its banner starts with "SSH-")."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(4).startswith(b"SSH-")
    except OSError:
        return False


def _pod_text(pod: Pod) -> str:
    lines = [f"pod {pod.id} ({pod.name}): {pod.status}",
             f"  gpu: {pod.gpu_count} x {pod.gpu_id or '?'}   cost: {_price(pod.cost_per_hr)}"]
    endpoint = pod.ssh_endpoint()
    if endpoint:
        lines.append(f"  ssh: ssh -p {endpoint[1]} {SSH_USER}@{endpoint[0]}"
                     f"   (or: provision.py ssh {pod.id})")
    for port, url in sorted(pod.proxy_urls().items()):
        lines.append(f"  http {port}: {url}")
    return "\n".join(lines)


def _pod_json(pod: Pod) -> dict[str, Any]:
    data = pod.to_dict()
    data["proxyUrls"] = {str(k): v for k, v in pod.proxy_urls().items()}
    endpoint = pod.ssh_endpoint()
    data["ssh"] = {"host": endpoint[0], "port": endpoint[1], "user": SSH_USER} if endpoint \
        else None
    return data


def _confirm(env: Env, args: argparse.Namespace, question: str) -> None:
    if args.yes or not env.is_tty():
        return
    if env.ask(f"{question} [y/N] ").strip().lower() not in ("y", "yes"):
        raise CliError("cancelled, nothing changed")


# -- commands -------------------------------------------------------------------------------------


def cmd_gpu_search(env: Env, args: argparse.Namespace) -> int:
    with env.client_factory() as client:
        gpus = client.list_gpus(cloud=args.cloud.upper(), gpu_count=args.gpu_count)
    ranked = filter_gpus(gpus, args.cloud.upper(), args.min_memory, args.max_price,
                         args.include_unavailable)
    data = [{**g.to_dict(), "rank": i, "price": p} for i, (g, p) in enumerate(ranked, 1)]
    rows = [[str(i), g.id, f"{g.memory_gb} GB", _price(p),
             "+".join(c for c, ok in (("secure", g.secure), ("community", g.community)) if ok),
             g.availability] for i, (g, p) in enumerate(ranked, 1)]
    text = _table(rows, ["#", "GPU TYPE ID", "MEMORY", "PRICE", "CLOUD", "AVAILABILITY"]) \
        if rows else "no GPU type matches these filters"
    _emit(env, args, data, text)
    return 0


def _match_templates(templates: list[Template], name: str | None) -> list[Template]:
    return [t for t in templates if not name or name.lower() in t.name.lower()]


def cmd_template_list(env: Env, args: argparse.Namespace) -> int:
    with env.client_factory() as client:
        templates = _match_templates(client.list_templates(), args.name)
    rows = [[t.id, t.name, t.image, ",".join(t.ports)] for t in templates]
    _emit(env, args, [t.to_dict() for t in templates],
          _table(rows, ["ID", "NAME", "IMAGE", "PORTS"]) if rows else "no templates")
    return 0


def _candidates(env: Env, client: RunpodClient, args: argparse.Namespace) -> list[str]:
    cloud: Cloud = args.cloud.upper()
    if args.gpu_type_id:
        try:
            known = {g.id for g in client.list_gpus(cloud=cloud, gpu_count=args.gpu_count)}
        except AccessDeniedError as exc:
            print(f"warning: {exc.call} was denied; using --gpu-type-id "
                  f"{args.gpu_type_id!r} unchecked", file=env.err)
            return list(args.gpu_type_id)
        unknown = [g for g in args.gpu_type_id if g not in known]
        if unknown:
            raise CliError(f"--gpu-type-id {unknown[0]!r} is not in the GPU catalog; "
                           "`provision.py gpu-search` lists the ids", 2)
        return list(args.gpu_type_id)
    try:
        gpus = client.list_gpus(cloud=cloud, gpu_count=args.gpu_count)
    except AccessDeniedError as exc:
        raise CliError(f"{exc}; or pass --gpu-type-id") from None
    ranked = filter_gpus(gpus, cloud, args.min_memory, args.max_price, False)
    if not ranked:
        raise CliError("no available GPU type matches --min-memory/--max-price/--cloud; "
                       "`provision.py gpu-search --include-unavailable` shows all")
    return [g.id for g, _ in ranked[: args.candidates]]


def _template(client: RunpodClient, args: argparse.Namespace) -> str:
    if args.template_id:
        return str(args.template_id)
    if not args.template_name:
        return ""
    matches = _match_templates(client.list_templates(), args.template_name)
    if not matches:
        raise CliError(f"no template name contains {args.template_name!r}; "
                       "`provision.py template-list` shows them")
    exact = [t for t in matches if t.name == args.template_name]
    if len(matches) > 1 and len(exact) != 1:
        names = ", ".join(f"{t.name} ({t.id})" for t in matches)
        raise CliError(f"--template-name {args.template_name!r} matches {len(matches)} "
                       f"templates: {names}; use a longer name or --template-id")
    return (exact or matches)[0].id


def _create(env: Env, client: RunpodClient, spec: PodSpec, args: argparse.Namespace) -> Pod:
    try:
        return client.create_pod(spec)
    except (ServerError, TransportError) as exc:
        # RunPod can fail after creating the pod; find it so nothing bills unseen.
        print(f"warning: {exc}; looking for a half-created pod named {spec.name!r}",
              file=env.err)
        found = client.find_pods_by_name(spec.name)
        if not found:
            raise CliError(f"{exc}; no pod named {spec.name!r} exists, so nothing bills") \
                from None
        pod = found[0]
        if args.half_created == "remove":
            client.terminate_pod(pod.id)
            raise CliError(f"{exc}; the half-created pod {pod.id} was terminated") from None
        print(f"pod {pod.id} was created despite the error; continuing with it", file=env.err)
        return pod


def wait_ready(env: Env, client: RunpodClient, pod: Pod, timeout: float, interval: float,
               probe: Callable[[str, int], bool] = ssh_answers, left_running: bool = True) -> Pod:
    """Poll until the pod is RUNNING and SSH answers; progress lines go to stderr.
    `left_running=False`: the caller cleans up after a timeout, so the error does not say what
    to do about a billing pod."""
    start = env.monotonic()
    last = ""
    while True:
        pod = client.get_pod(pod.id)
        endpoint = pod.ssh_endpoint() if pod.status == "RUNNING" else None
        phase = pod.status if endpoint is None else "RUNNING, waiting for sshd"
        if endpoint is not None and probe(*endpoint):
            print(f"[{env.monotonic() - start:5.1f} s] {pod.id}: SSH answers", file=env.err)
            return pod
        if phase != last:
            print(f"[{env.monotonic() - start:5.1f} s] {pod.id}: {phase}", file=env.err)
            last = phase
        if pod.status in ("EXITED", "ERROR", "TERMINATED"):
            raise CliError(f"pod {pod.id} became {pod.status} while waiting for it")
        if env.monotonic() - start > timeout:
            raise CliError(f"pod {pod.id} was not ready after {timeout:.0f} s ({phase})" + (
                f"; it is still billing: `provision.py stop {pod.id}` or terminate it"
                if left_running else ""))
        env.sleep(interval)


def provision_pod(env: Env, client: RunpodClient, args: argparse.Namespace) -> Pod:
    """Create a pod from the provision options (next candidate on no capacity); no waiting."""
    extra_env = parse_env_pairs(args.env or [], args.env_file)
    ports = parse_ports(args.ports)
    if not args.image and not args.template_id and not args.template_name:
        raise CliError("give --template-id, --template-name or --image", 2)
    name = args.name or f"chessbot-{time.strftime('%Y%m%d-%H%M%S')}"
    template_id = _template(client, args)
    tried: list[str] = []
    for gpu in _candidates(env, client, args):
        spec = PodSpec(name=name, gpu_type_id=gpu, image=args.image or "",
                       template_id=template_id, gpu_count=args.gpu_count,
                       cloud="COMMUNITY" if args.cloud == "community" else "SECURE",
                       ports=ports, env=extra_env, disk_gb=args.disk_gb,
                       volume_gb=args.volume_gb)
        try:
            pod = _create(env, client, spec, args)
        except NoCapacityError as exc:
            tried.append(gpu)
            print(f"no capacity for {gpu} ({exc.message}); trying the next candidate",
                  file=env.err)
            continue
        print(f"created pod {pod.id} ({name}) on {pod.gpu_id or gpu}", file=env.err)
        return pod
    raise CliError(f"no capacity for any candidate ({', '.join(tried)}); try other GPU types, "
                   "the other cloud, or later")


def cmd_provision(env: Env, args: argparse.Namespace) -> int:
    with env.client_factory() as client:
        pod = provision_pod(env, client, args)
        if args.wait:
            pod = wait_ready(env, client, pod, args.wait_timeout, args.poll_interval)
        else:
            pod = client.get_pod(pod.id)
    _emit(env, args, _pod_json(pod), _pod_text(pod))
    return 0


def cmd_pods(env: Env, args: argparse.Namespace) -> int:
    with env.client_factory() as client:
        pods = client.list_pods()
    rows = []
    for p in pods:
        endpoint = p.ssh_endpoint()
        rows.append([p.id, p.name, p.status, f"{p.gpu_count}x {p.gpu_id}",
                     _price(p.cost_per_hr), f"{endpoint[0]}:{endpoint[1]}" if endpoint else "-"])
    _emit(env, args, [_pod_json(p) for p in pods],
          _table(rows, ["ID", "NAME", "STATUS", "GPU", "COST", "SSH"]) if rows else "no pods")
    return 0


def cmd_status(env: Env, args: argparse.Namespace) -> int:
    with env.client_factory() as client:
        pod = client.get_pod(args.pod)
    _emit(env, args, _pod_json(pod), _pod_text(pod))
    return 0


def cmd_stop(env: Env, args: argparse.Namespace) -> int:
    _confirm(env, args, f"Stop pod {args.pod}? Its GPU is released; /workspace is kept and "
             "billed as storage.")
    with env.client_factory() as client:
        client.stop_pod(args.pod)
        pod = client.get_pod(args.pod)
    _emit(env, args, _pod_json(pod), f"stopped pod {args.pod}: {pod.status} (/workspace kept; "
          f"`provision.py start {args.pod}` resumes it)")
    return 0


def cmd_start(env: Env, args: argparse.Namespace) -> int:
    with env.client_factory() as client:
        client.start_pod(args.pod, gpu_count=args.gpu_count)
        pod = client.get_pod(args.pod)
        if args.wait:
            pod = wait_ready(env, client, pod, args.wait_timeout, args.poll_interval)
    _emit(env, args, _pod_json(pod), _pod_text(pod))
    return 0


def cmd_terminate(env: Env, args: argparse.Namespace) -> int:
    _confirm(env, args, f"TERMINATE pod {args.pod}? The pod and its /workspace volume are "
             "deleted for good.")
    with env.client_factory() as client:
        client.terminate_pod(args.pod)
    _emit(env, args, {"id": args.pod, "status": "TERMINATED"},
          f"terminated pod {args.pod}: it and its volume are gone")
    return 0


def _ssh_settings() -> HostSshSettings:
    try:
        return load(HostSshSettings)
    except SettingsError as exc:
        raise CliError(str(exc), 2) from None


def cmd_ssh(env: Env, args: argparse.Namespace) -> int:
    settings = _ssh_settings()
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
    engine = env.which("podman") or env.which("docker")
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
        ssh_settings = _ssh_settings()
        known = ssh_settings.known_hosts_path()
        parent = next((p for p in [known.parent, *known.parent.parents] if p.exists()), None)
        writable = parent is not None and parent.is_dir() and _writable(parent)
        checks.append(("known hosts", writable, str(known),
                       f"make {known.parent} writable or set RUNPOD_SSH_KNOWN_HOSTS_FILE"))
        identity = ssh_settings.RUNPOD_SSH_IDENTITY_FILE
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

    add("pods", "list pods", cmd_pods)
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
    from host_tools import podjobs  # it builds on this module

    podjobs.add_commands(add, provision_options)
    return p


def waiting(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--wait-timeout", type=float, default=900.0, metavar="S",
                    help="how long to wait for SSH (default %(default)s)")
    sp.add_argument("--poll-interval", type=float, default=3.0, metavar="S")


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
    sp.add_argument("--ports", default=DEFAULT_PORTS, help="default %(default)s")
    sp.add_argument("--env", action="append", metavar="K=V",
                    help="extra environment for the pod (repeatable); none is sent otherwise")
    sp.add_argument("--env-file", type=Path, metavar="FILE", help="K=V lines (# comments)")
    sp.add_argument("--disk-gb", type=int, default=30, help="container disk (default 30)")
    sp.add_argument("--volume-gb", type=int, default=20,
                    help="/workspace volume, kept on stop (default 20)")
    sp.add_argument("--half-created", choices=["adopt", "remove"], default="adopt",
                    help="when create fails but the pod exists: keep using it or terminate it")
    waiting(sp)


def filters(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--cloud", choices=["secure", "community", "all"], default="all",
                    help="which cloud's prices count (default %(default)s)")
    sp.add_argument("--min-memory", type=int, default=0, metavar="GB",
                    help="minimum GPU memory")
    sp.add_argument("--max-price", type=float, metavar="USD",
                    help="maximum price per GPU-hour")
    sp.add_argument("--gpu-count", type=int, default=1, metavar="N", help="GPUs per pod")


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
    # The imported module, not this __main__ copy: podjobs's errors are its classes.
    from host_tools import provision

    sys.exit(provision.main())
