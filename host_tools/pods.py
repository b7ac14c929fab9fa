"""Pod lifecycle steps the workstation commands share, over appliance.runpod: create a pod from a
typed CreateRequest (each GPU candidate on the cloud whose price is checked; the next candidate
when one has no capacity; a half-created pod adopted or removed), wait until it runs and SSH
answers (WaitRequest), the ssh command line with host keys pinned per pod, and a pod as text or
JSON. Command-line parsing lives in pod_args.py.

Pod names are not unique on RunPod, so a pod is never found by its name alone: every create
request sends a fresh marker (MARKER_ENV, a random uuid4: no secret, and it says nothing about
this machine), and only a pod that carries it, created in the request's time window, is adopted
or removed after a failed create.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from appliance import settings
from appliance.runpod import (
    AccessDeniedError,
    Cloud,
    GpuType,
    NoCapacityError,
    Pod,
    PodSpec,
    Registry,
    RunpodClient,
    RunpodError,
    ServerError,
    Template,
    TransportError,
    epoch_seconds,
)
from host_tools.cli import CliError, Env, find_by_ref, load_settings, price, usd
from host_tools.settings import HostSshSettings
from host_tools.volumes import find_volume, volume_text

SSH_USER = settings.default(settings.RuntimeSettings, "APPLIANCE_USER")
DEFAULT_PORTS = settings.pod_ports()
MARKER_ENV = "APPLIANCE_CREATE_MARKER"
# A marked pod counts as this request's when RunPod's createdAt is within the request's time on
# this machine, widened by this much for clock skew.
WINDOW_SLACK_S = 300.0
PodCloud = Literal["SECURE", "COMMUNITY"]


@dataclass(frozen=True)
class CreateRequest:
    """What a new pod is: GPU filters and candidates, template or image, ports, env, disks.

    cloud: "secure", "community" or "all" (each GPU type goes on the cloud where it is cheaper);
    max_price applies to the price of the cloud the pod is created in.
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
    registry_auth: str = ""  # a container registry auth's name or id, for a private image
    network_volume: str = ""  # a network volume's name or id, mounted instead of volume_gb


@dataclass(frozen=True)
class WaitRequest:
    """How long to wait for a pod's SSH. `left_running=False`: the caller cleans up after a
    timeout, so the error does not say what to do about a billing pod."""

    timeout: float = 900.0
    interval: float = 3.0
    left_running: bool = True


@dataclass(frozen=True)
class Offer:
    """A GPU type on the cloud a pod of it would be created in, at that cloud's price (None:
    unchecked, the catalog could not be read)."""

    gpu_id: str
    cloud: PodCloud
    price: float | None

    def text(self) -> str:
        cost = "price unchecked" if self.price is None else f"{price(self.price)} per GPU"
        return f"{self.cloud.lower()} cloud, {cost}"


def cheapest_cloud(gpu: GpuType, cloud: Cloud) -> tuple[PodCloud, float] | None:
    """The cloud a pod of `gpu` goes on when `cloud` is asked for, with its price there: for
    "ALL" the cheaper of the two (secure on a tie); None when it has no price there."""
    clouds: tuple[PodCloud, ...] = ("SECURE", "COMMUNITY") if cloud == "ALL" else (
        cast(PodCloud, cloud),)
    priced = [(p, c) for c in clouds if (p := gpu.price(c)) is not None]
    if not priced:
        return None
    best, where = min(priced, key=lambda pc: (pc[0], pc[1] != "SECURE"))
    return where, best


def filter_gpus(gpus: list[GpuType], cloud: Cloud, min_memory: int, max_price: float | None,
                include_unavailable: bool) -> list[tuple[GpuType, Offer]]:
    """GPUs that pass the filters with the cloud a pod would go on and its price there,
    cheapest first."""
    ranked = []
    for gpu in gpus:
        offer = cheapest_cloud(gpu, cloud)
        if offer is None or gpu.memory_gb < min_memory:
            continue
        if max_price is not None and offer[1] > max_price:
            continue
        if not include_unavailable and gpu.availability == "NONE":
            continue
        ranked.append((gpu, Offer(gpu.id, *offer)))
    return sorted(ranked, key=lambda go: (go[1].price, -go[0].memory_gb, go[0].id))


def match_templates(templates: list[Template], name: str | None) -> list[Template]:
    return [t for t in templates if not name or name.lower() in t.name.lower()]


# -- ssh ------------------------------------------------------------------------------------------


def ssh_settings() -> HostSshSettings:
    return load_settings(HostSshSettings)


def host_key_alias(pod_id: str) -> str:
    """Host keys are pinned per pod, not per IP:port, which change at every start."""
    return f"runpod-{pod_id}"


def ssh_options(pod: Pod, settings: HostSshSettings, batch: bool = False) -> list[str]:
    """The `-o`/`-i` options that pin the pod's host key (ssh, scp and rsync's ssh share them).
    `batch`: for commands run by a tool (no prompts, bounded connect, keep-alives)."""
    known_hosts = settings.known_hosts_path()
    opts = ["-o", f"StrictHostKeyChecking={settings.RUNPOD_SSH_HOST_KEY_CHECKING}",
            "-o", f"UserKnownHostsFile={known_hosts}",
            "-o", f"HostKeyAlias={host_key_alias(pod.id)}"]
    if settings.RUNPOD_SSH_IDENTITY_FILE is not None:
        opts += ["-i", str(settings.RUNPOD_SSH_IDENTITY_FILE.expanduser()),
                 "-o", "IdentitiesOnly=yes"]
    if batch:
        opts += ["-o", "BatchMode=yes", "-o", "ConnectTimeout=15",
                 "-o", "ServerAliveInterval=30", "-o", "LogLevel=ERROR"]
    return opts


def ssh_endpoint(pod: Pod) -> tuple[str, int]:
    """The pod's SSH host and port, or a CliError saying why there is none."""
    endpoint = pod.ssh_endpoint()
    if endpoint is None:
        raise CliError(f"pod {pod.id} has no SSH endpoint (status {pod.status}); it needs "
                       "22/tcp in its ports and must be RUNNING: `provision.py status "
                       f"{pod.id}`")
    return endpoint


def ssh_argv(pod: Pod, settings: HostSshSettings, user: str, command: Sequence[str],
             batch: bool = False) -> list[str]:
    """`batch`: for commands run by a tool (no prompts, bounded connect, keep-alives)."""
    host, port = ssh_endpoint(pod)
    return ["ssh", "-p", str(port), *ssh_options(pod, settings, batch), f"{user}@{host}",
            *command]


def ssh_answers(host: str, port: int, timeout: float = 3.0) -> bool:
    """True when an SSH server greets on host:port (its banner starts with "SSH-")."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(4).startswith(b"SSH-")
    except OSError:
        return False


# -- a pod as text or JSON ------------------------------------------------------------------------


def cost_text(pod: Pod, now: float) -> str:
    """"$0.74/h, $1.23 so far (1.7 h)": the price, and for a running pod what it cost since it
    last started."""
    so_far = pod.cost_so_far(now)
    running = pod.running_s(now)
    if so_far is None or running is None:
        return price(pod.cost_per_hr)
    return f"{price(pod.cost_per_hr)}, {usd(so_far)} so far ({running / 3600:.1f} h)"


def pod_text(pod: Pod, now: float | None = None) -> str:
    """`now` (epoch seconds): also the cost so far."""
    cost = price(pod.cost_per_hr) if now is None else cost_text(pod, now)
    lines = [f"pod {pod.id} ({pod.name}): {pod.status}",
             f"  gpu: {pod.gpu_count} x {pod.gpu_id or '?'}   cost: {cost}"]
    endpoint = pod.ssh_endpoint()
    if endpoint:
        lines.append(f"  ssh: ssh -p {endpoint[1]} {SSH_USER}@{endpoint[0]}"
                     f"   (or: provision.py ssh {pod.id})")
    for port, url in sorted(pod.proxy_urls().items()):
        lines.append(f"  http {port}: {url}")
    return "\n".join(lines)


def pod_json(pod: Pod, now: float | None = None) -> dict[str, Any]:
    """`now` (epoch seconds): also runningSeconds and costSoFar (USD; null when unknown)."""
    data = pod.to_dict()
    data["proxyUrls"] = {str(k): v for k, v in pod.proxy_urls().items()}
    endpoint = pod.ssh_endpoint()
    data["ssh"] = {"host": endpoint[0], "port": endpoint[1], "user": SSH_USER} if endpoint \
        else None
    if now is not None:
        data["runningSeconds"] = pod.running_s(now)
        so_far = pod.cost_so_far(now)
        data["costSoFar"] = None if so_far is None else round(so_far, 4)
    return data


# -- create ---------------------------------------------------------------------------------------


def _candidates(env: Env, client: RunpodClient, req: CreateRequest) -> list[Offer]:
    cloud = cast(Cloud, req.cloud.upper())
    if req.gpu_type_ids:
        return _given_candidates(env, client, req, cloud)
    try:
        gpus = client.list_gpus(cloud=cloud, gpu_count=req.gpu_count)
    except AccessDeniedError as exc:
        raise CliError(f"{exc}; or pass --gpu-type-id") from None
    ranked = filter_gpus(gpus, cloud, req.min_memory, req.max_price, False)
    if not ranked:
        raise CliError("no available GPU type matches --min-memory/--max-price/--cloud; "
                       "`provision.py gpu-search --include-unavailable` shows all")
    return [offer for _, offer in ranked[: req.candidates]]


def _given_candidates(env: Env, client: RunpodClient, req: CreateRequest, cloud: Cloud
                      ) -> list[Offer]:
    """--gpu-type-id in the order given, each on its cheaper cloud; those over --max-price are
    left out."""
    try:
        known = {g.id: g for g in client.list_gpus(cloud=cloud, gpu_count=req.gpu_count)}
    except AccessDeniedError as exc:
        if req.max_price is not None:
            raise CliError(f"{exc.call} was denied, so --max-price cannot be checked; drop "
                           "--max-price to use --gpu-type-id unchecked", 2) from None
        where: PodCloud = "COMMUNITY" if cloud == "COMMUNITY" else "SECURE"
        print(f"warning: {exc.call} was denied; using --gpu-type-id "
              f"{list(req.gpu_type_ids)!r} unchecked on the {where.lower()} cloud",
              file=env.err)
        return [Offer(gpu_id, where, None) for gpu_id in req.gpu_type_ids]
    unknown = [g for g in req.gpu_type_ids if g not in known]
    if unknown:
        raise CliError(f"--gpu-type-id {unknown[0]!r} is not in the GPU catalog; "
                       "`provision.py gpu-search` lists the ids", 2)
    offers = []
    for gpu_id in req.gpu_type_ids:
        offer = cheapest_cloud(known[gpu_id], cloud)
        if offer is None:
            raise CliError(f"--gpu-type-id {gpu_id!r} has no price on the {req.cloud} cloud; "
                           "`provision.py gpu-search --include-unavailable` shows prices", 2)
        if req.max_price is not None and offer[1] > req.max_price:
            print(f"--gpu-type-id {gpu_id!r} costs {price(offer[1])} on the "
                  f"{offer[0].lower()} cloud, over --max-price {price(req.max_price)}: skipped",
                  file=env.err)
            continue
        offers.append(Offer(gpu_id, *offer))
    if not offers:
        raise CliError(f"no --gpu-type-id is offered at or under --max-price "
                       f"{price(req.max_price)}; `provision.py gpu-search` shows prices")
    return offers


def _template(env: Env, client: RunpodClient, req: CreateRequest) -> tuple[str, dict[str, str]]:
    """The template id and, where this account can read the template, its env: the pod is
    sent that env with its own entries on top, so it gets the same env whether RunPod merges
    a create request's env into the template's or replaces it."""
    if req.template_id:
        try:
            own = [t for t in client.list_templates() if t.id == req.template_id]
        except RunpodError as exc:
            own, why = [], f"listing templates failed: {exc}"
        else:
            why = "it is not among this account's templates"
        if not own:
            print(f"warning: the env of template {req.template_id} is unknown ({why}); the "
                  "pod is sent only --env and the create marker", file=env.err)
            return req.template_id, {}
        return req.template_id, dict(own[0].env)
    if not req.template_name:
        return "", {}
    matches = match_templates(client.list_templates(), req.template_name)
    if not matches:
        raise CliError(f"no template name contains {req.template_name!r}; "
                       "`provision.py template-list` shows them")
    exact = [t for t in matches if t.name == req.template_name]
    if len(matches) > 1 and len(exact) != 1:
        names = ", ".join(f"{t.name} ({t.id})" for t in matches)
        raise CliError(f"--template-name {req.template_name!r} matches {len(matches)} "
                       f"templates: {names}; use a longer name or --template-id")
    chosen = (exact or matches)[0]
    return chosen.id, dict(chosen.env)


def find_registry(client: RunpodClient, ref: str) -> Registry:
    """The container registry auth whose id, else name, is `ref` (never an ambiguous name)."""
    return find_by_ref(client.list_registries(), ref, "registry auth",
                       "provision.py registry-auth list")


def new_marker() -> str:
    """A create request's marker: random (uuid4), so it says nothing about this machine."""
    return str(uuid.uuid4())


def find_marked_pods(env: Env, client: RunpodClient, name: str, marker: str, since: float,
                     until: float) -> list[Pod]:
    """The pods named `name` that carry `marker` in MARKER_ENV and were created between `since`
    and `until` (epoch seconds, widened by WINDOW_SLACK_S; a pod whose createdAt is unknown
    counts by its marker alone). Every other pod of that name is left alone, and said so."""
    found = []
    for pod in client.list_pods():
        if pod.name != name or pod.status == "TERMINATED":
            continue
        if MARKER_ENV not in pod.env:  # a list may leave env out: read the pod itself
            pod = client.get_pod(pod.id)
        created = epoch_seconds(pod.created_at)
        if pod.env.get(MARKER_ENV) != marker:
            why = "it does not carry this request's marker"
        elif created is not None and not (since - WINDOW_SLACK_S <= created
                                          <= until + WINDOW_SLACK_S):
            why = (f"it was created at {pod.created_at}, outside this request's time, though "
                   "it carries its marker")
        else:
            found.append(pod)
            continue
        print(f"pod {pod.id} is also named {name!r}, but {why}: left alone", file=env.err)
    return found


def _create(env: Env, client: RunpodClient, spec: PodSpec, req: CreateRequest,
            marker: str) -> Pod:
    since = time.time()
    try:
        return client.create_pod(spec)
    except (ServerError, TransportError) as exc:
        # RunPod can fail after creating the pod; find it so nothing bills unseen, and act only
        # on the pod this request created (names are not unique).
        print(f"warning: {exc}; looking for a half-created pod named {spec.name!r} carrying "
              f"this request's marker {MARKER_ENV}={marker}", file=env.err)
        try:
            found = find_marked_pods(env, client, spec.name, marker, since, time.time())
        except RunpodError as lookup:
            raise CliError(f"{exc}; looking for the half-created pod failed too ({lookup}); "
                           f"`provision.py pods --json` shows whether a pod named {spec.name!r} "
                           "exists: check its env for the marker above before removing it") \
                from None
        if not found:
            raise CliError(f"{exc}; no pod carries this request's marker, so nothing it "
                           "created bills; no other pod was touched") from None
        if len(found) > 1:  # a create is never retried: a marker copied by someone else
            raise CliError(f"{exc}; pods {', '.join(p.id for p in found)} all carry this "
                           "request's marker, so none was touched: check them with "
                           "`provision.py status`") from None
        pod = found[0]
        if req.half_created == "remove":
            client.terminate_pod(pod.id)
            raise CliError(f"{exc}; the half-created pod {pod.id} (it carries this request's "
                           "marker) was terminated") from None
        print(f"pod {pod.id} was created despite the error (it carries this request's "
              "marker); continuing with it", file=env.err)
        return pod


def create_pod(env: Env, client: RunpodClient, req: CreateRequest,
               marker: Callable[[], str] = new_marker) -> Pod:
    """Create the pod (the next candidate on no capacity), each create request with a fresh
    `marker()` in MARKER_ENV; no waiting."""
    if not req.image and not req.template_id and not req.template_name:
        raise CliError("give --template-id, --template-name or --image", 2)
    if MARKER_ENV in req.env:
        raise CliError(f"--env {MARKER_ENV}: provision sets it, to a fresh value for each "
                       "create request", 2)
    template_id, template_env = _template(env, client, req)
    registry = find_registry(client, req.registry_auth).id if req.registry_auth else ""
    volume = find_volume(client, req.network_volume) if req.network_volume else None
    tried: list[str] = []
    for offer in _candidates(env, client, req):
        this = marker()
        spec = PodSpec(name=req.name, gpu_type_id=offer.gpu_id, image=req.image,
                       template_id=template_id, gpu_count=req.gpu_count, cloud=offer.cloud,
                       ports=list(req.ports), env={**template_env, **req.env, MARKER_ENV: this},
                       disk_gb=req.disk_gb, volume_gb=req.volume_gb, registry=registry,
                       network_volume_id=volume.id if volume else "",
                       data_center_id=volume.data_center if volume else "")
        try:
            pod = _create(env, client, spec, req, this)
        except NoCapacityError as exc:
            tried.append(offer.gpu_id)
            print(f"no capacity for {offer.gpu_id} on the {offer.cloud.lower()} cloud "
                  f"({exc.message}); trying the next candidate", file=env.err)
            continue
        print(f"created pod {pod.id} ({req.name}) on {pod.gpu_id or offer.gpu_id} "
              f"({offer.text()})", file=env.err)
        if volume is not None:
            print(f"/workspace is {volume_text(volume)}: terminate keeps its data", file=env.err)
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
