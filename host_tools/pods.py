"""Pod lifecycle steps the workstation commands share, over appliance.runpod: create a pod from a
typed CreateRequest (the next GPU candidate when one has no capacity; a half-created pod adopted
or removed), wait until it runs and SSH answers (WaitRequest), the ssh command line with host keys
pinned per pod, and a pod as text or JSON. Command-line parsing lives in pod_args.py.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from appliance.runpod import (
    AccessDeniedError,
    Cloud,
    GpuType,
    NoCapacityError,
    Pod,
    PodSpec,
    RunpodClient,
    ServerError,
    Template,
    TransportError,
)
from host_tools.cli import CliError, Env, load_settings, price
from host_tools.settings import HostSshSettings

SSH_USER = "runner"
DEFAULT_PORTS = ("22/tcp", "8888/http", "8000/http")


@dataclass(frozen=True)
class CreateRequest:
    """What a new pod is: GPU filters and candidates, template or image, ports, env, disks.

    cloud: "secure", "community" or "all" (prices of either count; the pod goes on secure).
    """

    name: str
    image: str = ""
    template_id: str = ""
    template_name: str = ""
    gpu_type_ids: tuple[str, ...] = ()
    candidates: int = 3
    cloud: str = "secure"
    min_memory: int = 0
    max_price: float | None = None
    gpu_count: int = 1
    ports: tuple[str, ...] = DEFAULT_PORTS
    env: dict[str, str] = field(default_factory=dict)
    disk_gb: int = 30
    volume_gb: int = 20
    half_created: Literal["adopt", "remove"] = "adopt"


@dataclass(frozen=True)
class WaitRequest:
    """How long to wait for a pod's SSH. `left_running=False`: the caller cleans up after a
    timeout, so the error does not say what to do about a billing pod."""

    timeout: float = 900.0
    interval: float = 3.0
    left_running: bool = True


def filter_gpus(gpus: list[GpuType], cloud: Cloud, min_memory: int, max_price: float | None,
                include_unavailable: bool) -> list[tuple[GpuType, float]]:
    """GPUs that pass the filters with their price in `cloud`, cheapest first."""
    ranked = []
    for gpu in gpus:
        gpu_price = gpu.price(cloud)
        if gpu_price is None or gpu.memory_gb < min_memory:
            continue
        if max_price is not None and gpu_price > max_price:
            continue
        if not include_unavailable and gpu.availability == "NONE":
            continue
        ranked.append((gpu, gpu_price))
    return sorted(ranked, key=lambda gp: (gp[1], -gp[0].memory_gb, gp[0].id))


def match_templates(templates: list[Template], name: str | None) -> list[Template]:
    return [t for t in templates if not name or name.lower() in t.name.lower()]


# -- ssh ------------------------------------------------------------------------------------------


def ssh_settings() -> HostSshSettings:
    return load_settings(HostSshSettings)


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


# -- a pod as text or JSON ------------------------------------------------------------------------


def pod_text(pod: Pod) -> str:
    lines = [f"pod {pod.id} ({pod.name}): {pod.status}",
             f"  gpu: {pod.gpu_count} x {pod.gpu_id or '?'}   cost: {price(pod.cost_per_hr)}"]
    endpoint = pod.ssh_endpoint()
    if endpoint:
        lines.append(f"  ssh: ssh -p {endpoint[1]} {SSH_USER}@{endpoint[0]}"
                     f"   (or: provision.py ssh {pod.id})")
    for port, url in sorted(pod.proxy_urls().items()):
        lines.append(f"  http {port}: {url}")
    return "\n".join(lines)


def pod_json(pod: Pod) -> dict[str, Any]:
    data = pod.to_dict()
    data["proxyUrls"] = {str(k): v for k, v in pod.proxy_urls().items()}
    endpoint = pod.ssh_endpoint()
    data["ssh"] = {"host": endpoint[0], "port": endpoint[1], "user": SSH_USER} if endpoint \
        else None
    return data


# -- create ---------------------------------------------------------------------------------------


def _candidates(env: Env, client: RunpodClient, req: CreateRequest) -> list[str]:
    cloud = cast(Cloud, req.cloud.upper())
    if req.gpu_type_ids:
        try:
            known = {g.id for g in client.list_gpus(cloud=cloud, gpu_count=req.gpu_count)}
        except AccessDeniedError as exc:
            print(f"warning: {exc.call} was denied; using --gpu-type-id "
                  f"{list(req.gpu_type_ids)!r} unchecked", file=env.err)
            return list(req.gpu_type_ids)
        unknown = [g for g in req.gpu_type_ids if g not in known]
        if unknown:
            raise CliError(f"--gpu-type-id {unknown[0]!r} is not in the GPU catalog; "
                           "`provision.py gpu-search` lists the ids", 2)
        return list(req.gpu_type_ids)
    try:
        gpus = client.list_gpus(cloud=cloud, gpu_count=req.gpu_count)
    except AccessDeniedError as exc:
        raise CliError(f"{exc}; or pass --gpu-type-id") from None
    ranked = filter_gpus(gpus, cloud, req.min_memory, req.max_price, False)
    if not ranked:
        raise CliError("no available GPU type matches --min-memory/--max-price/--cloud; "
                       "`provision.py gpu-search --include-unavailable` shows all")
    return [g.id for g, _ in ranked[: req.candidates]]


def _template(client: RunpodClient, req: CreateRequest) -> str:
    if req.template_id:
        return req.template_id
    if not req.template_name:
        return ""
    matches = match_templates(client.list_templates(), req.template_name)
    if not matches:
        raise CliError(f"no template name contains {req.template_name!r}; "
                       "`provision.py template-list` shows them")
    exact = [t for t in matches if t.name == req.template_name]
    if len(matches) > 1 and len(exact) != 1:
        names = ", ".join(f"{t.name} ({t.id})" for t in matches)
        raise CliError(f"--template-name {req.template_name!r} matches {len(matches)} "
                       f"templates: {names}; use a longer name or --template-id")
    return (exact or matches)[0].id


def _create(env: Env, client: RunpodClient, spec: PodSpec, req: CreateRequest) -> Pod:
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
        if req.half_created == "remove":
            client.terminate_pod(pod.id)
            raise CliError(f"{exc}; the half-created pod {pod.id} was terminated") from None
        print(f"pod {pod.id} was created despite the error; continuing with it", file=env.err)
        return pod


def create_pod(env: Env, client: RunpodClient, req: CreateRequest) -> Pod:
    """Create the pod (the next candidate on no capacity); no waiting."""
    if not req.image and not req.template_id and not req.template_name:
        raise CliError("give --template-id, --template-name or --image", 2)
    template_id = _template(client, req)
    tried: list[str] = []
    for gpu in _candidates(env, client, req):
        spec = PodSpec(name=req.name, gpu_type_id=gpu, image=req.image,
                       template_id=template_id, gpu_count=req.gpu_count,
                       cloud="COMMUNITY" if req.cloud == "community" else "SECURE",
                       ports=list(req.ports), env=dict(req.env), disk_gb=req.disk_gb,
                       volume_gb=req.volume_gb)
        try:
            pod = _create(env, client, spec, req)
        except NoCapacityError as exc:
            tried.append(gpu)
            print(f"no capacity for {gpu} ({exc.message}); trying the next candidate",
                  file=env.err)
            continue
        print(f"created pod {pod.id} ({req.name}) on {pod.gpu_id or gpu}", file=env.err)
        return pod
    raise CliError(f"no capacity for any candidate ({', '.join(tried)}); try other GPU types, "
                   "the other cloud, or later")


# -- wait -----------------------------------------------------------------------------------------


def wait_ready(env: Env, client: RunpodClient, pod: Pod, req: WaitRequest,
               probe: Callable[[str, int], bool] = ssh_answers) -> Pod:
    """Poll until the pod is RUNNING and SSH answers; progress lines go to stderr."""
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
        if env.monotonic() - start > req.timeout:
            raise CliError(f"pod {pod.id} was not ready after {req.timeout:.0f} s ({phase})" + (
                f"; it is still billing: `provision.py stop {pod.id}` or terminate it"
                if req.left_running else ""))
        env.sleep(req.interval)
