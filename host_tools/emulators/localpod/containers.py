"""localpod's container backend: each pod is a podman (or Docker) container of our image on a named
/workspace volume, ports published on 127.0.0.1; stop keeps the volume, terminate removes it.
A pod on a network volume mounts the named volume `localpod-netvol-<id>` instead, shared by
every pod that names it: terminate keeps it, deleting the network volume removes it.

With `host_network=True` a pod shares the host's network (`--network host`, nothing published):
its sshd, Jupyter and inference API listen on the host loopback ports localpod chose (SSH_PORT,
JUPYTER_PORT, INFERENCE_PORT, APPLIANCE_BIND_HOST=127.0.0.1), so the pod reaches servers that
listen on the host's 127.0.0.1 only (localpod itself, the Hub emulator).

A cluster's node (pod.cluster) runs on its cluster's own bridge network
(`localpod-cluster-<id>`, created with the cluster's subnet and removed with the cluster) at its
static NODE_ADDR, whatever `host_network` says, with its ports published on 127.0.0.1 as for any
pod: the nodes reach each other on that network, this machine reaches their SSH on loopback.

With `stop_delay_s > 0` a stop answers at once and removes the container that many seconds later,
as RunPod answers a stop before the container goes: a pod that stops itself through the API (the
idle watchdog) can then record the answer before it is killed. A later start or terminate of the
pod waits for, or replaces, a pending delayed stop.

A pod with a container registry auth pulls its image first with that login, from an auth file in
a private temporary directory (DOCKER_CONFIG / REGISTRY_AUTH_FILE): never on a command line.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import tempfile
import threading
from collections.abc import Callable, Sequence

from appliance import settings
from host_tools.emulators.localpod.pods import PodRecord
from host_tools.engine import push_flags, remove_commands, run_flags

# The appliance's port variables, by the private port RunPod would publish.
PORT_VARIABLES = {settings.default(cls, name): name for cls, name in (
    (settings.SshSettings, "SSH_PORT"), (settings.JupyterSettings, "JUPYTER_PORT"),
    (settings.InferenceSettings, "INFERENCE_PORT"))}

Runner = Callable[[Sequence[str], "dict[str, str] | None"], subprocess.CompletedProcess[str]]


def _run(argv: Sequence[str], env: dict[str, str] | None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=120, check=False,
                          env=env)


class ContainerBackend:
    """Pods as containers. `engine` is "podman" or "docker"; `run` is the seam tests replace;
    `host_network` runs pods in the host's network namespace on loopback ports (module doc)."""

    def __init__(self, engine: str = "podman", *, run: Runner = _run,
                 extra_args: Sequence[str] = (), host_network: bool = False,
                 stop_delay_s: float = 0.0) -> None:
        self.engine, self._run, self.extra_args = engine, run, list(extra_args)
        self.host_network, self.stop_delay_s = host_network, stop_delay_s
        self._pending_stops: dict[str, threading.Timer] = {}

    def network_env(self, pod: PodRecord) -> dict[str, str]:
        """Host network only: where the pod's services listen (the ports in pod.mappings, which
        runtime.ports reports, on 127.0.0.1). Private ports without a variable are not moved."""
        if not self.host_network or pod.cluster is not None:
            return {}
        env = {"APPLIANCE_BIND_HOST": "127.0.0.1"}
        for private, public in pod.mappings.items():
            if private in PORT_VARIABLES:
                env[PORT_VARIABLES[private]] = str(public)
        return env

    @staticmethod
    def names(pod: PodRecord) -> tuple[str, str]:
        """The pod's container and the volume at its /workspace (its network volume's, if any)."""
        if pod.network_volume:
            return f"localpod-{pod.id}", network_volume_name(pod.network_volume)
        return f"localpod-{pod.id}", f"localpod-{pod.id}-workspace"

    def _check(self, argv: Sequence[str], env: dict[str, str] | None = None) -> str:
        result = self._run(argv, env)
        if result.returncode != 0:
            # argv never holds secrets (env goes through --env-file), so it may be shown.
            raise RuntimeError(f"{' '.join(argv[:3])} ... failed ({result.returncode}): "
                               f"{result.stderr.strip()[-500:]}")
        return result.stdout

    def run_argv(self, pod: PodRecord, env_names: Sequence[str]) -> list[str]:
        container, volume = self.names(pod)
        argv = [self.engine, "run", "-d", "--name", container, "--hostname", container,
                "-v", f"{volume}:{pod.volume_path}"]
        host_network = self.host_network and pod.cluster is None
        if pod.cluster is not None:
            argv += ["--network", pod.cluster.network, "--ip", pod.cluster.ip]
        elif host_network:
            argv += ["--network", "host"]
        for name in env_names:
            argv += ["-e", name]
        argv += run_flags(self.engine)
        if not host_network:
            for private, public in sorted(pod.mappings.items()):
                argv += ["-p", f"127.0.0.1:{public}:{private}"]
        return argv + self.extra_args + [pod.image]

    def pull(self, image: str, login: tuple[str, str]) -> None:
        """Pull `image` with a registry login (a plain-HTTP loopback registry for podman)."""
        first = image.split("/", 1)[0]
        named = "/" in image and (any(c in first for c in ".:") or first == "localhost")
        host = first if named else "docker.io"
        loopback = host.split(":")[0] in ("localhost", "127.0.0.1", "[::1]")
        auth = base64.b64encode(f"{login[0]}:{login[1]}".encode()).decode()
        with tempfile.TemporaryDirectory(prefix="localpod-auth-") as config:
            path = os.path.join(config, "config.json")
            with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
                json.dump({"auths": {host: {"auth": auth}}}, f)
            # push_flags: what a plain-HTTP registry needs, for a pull as for a push
            self._check([self.engine, "pull", *push_flags(self.engine, not loopback), image],
                        {**os.environ, "DOCKER_CONFIG": config, "REGISTRY_AUTH_FILE": path})

    def start(self, pod: PodRecord, env: dict[str, str],
              login: tuple[str, str] | None = None) -> None:
        container, volume = self.names(pod)
        self._settle(pod)
        if login is not None:
            self.pull(pod.image, login)
        self._run([self.engine, "rm", "-f", container], None)  # a leftover of a crashed run
        if self._run([self.engine, "volume", "inspect", volume], None).returncode != 0:
            self._check([self.engine, "volume", "create", volume])
        # `-e NAME` takes the value from the engine's own environment: the pod-scoped key never
        # appears on a command line (ps shows those), and multi-line PUBLIC_KEY survives.
        env = {**env, **self.network_env(pod)}
        self._check(self.run_argv(pod, sorted(env)), {**os.environ, **env})

    def ready(self, pod: PodRecord) -> bool:
        container, _ = self.names(pod)
        result = self._run([self.engine, "inspect", "-f", "{{.State.Running}}", container], None)
        return result.returncode == 0 and result.stdout.strip() == "true"

    def _remove_container(self, name: str, check: bool, grace_s: int = 10) -> None:
        for argv in remove_commands(self.engine, name, grace_s):
            if check and argv[1] == "rm":
                self._check(argv)
            else:
                self._run(argv, None)

    def stop(self, pod: PodRecord) -> None:
        container = self.names(pod)[0]
        if self.stop_delay_s <= 0:
            self._remove_container(container, check=True)
            return
        self._settle(pod)
        timer = threading.Timer(self.stop_delay_s, self._remove_container,
                                args=(container, False))
        timer.daemon = True
        self._pending_stops[pod.id] = timer
        timer.start()

    def _settle(self, pod: PodRecord) -> None:
        """Cancel a delayed stop that has not begun (the caller removes the container itself),
        or wait for one under way."""
        timer = self._pending_stops.pop(pod.id, None)
        if timer is not None:
            timer.cancel()
            timer.join()

    def logs(self, pod: PodRecord, tail: int) -> list[str]:
        result = self._run([self.engine, "logs", "--tail", str(tail), self.names(pod)[0]], None)
        return (result.stdout + result.stderr).splitlines() if result.returncode == 0 else []

    def remove(self, pod: PodRecord) -> None:
        container, volume = self.names(pod)
        self._settle(pod)
        # Terminate deletes the pod's data: no grace for a sync flush (a stop keeps its 10 s),
        # and the API answers within the client's timeout on a loaded machine.
        self._remove_container(container, check=False, grace_s=1)
        if not pod.network_volume:  # a network volume outlives its pods
            self._run([self.engine, "volume", "rm", "-f", volume], None)

    def create_network(self, name: str, cidr: str) -> None:
        self._run([self.engine, "network", "rm", name], None)  # a crashed run's leftover
        self._check([self.engine, "network", "create", "--subnet", cidr, name])

    def remove_network(self, name: str) -> None:
        self._run([self.engine, "network", "rm", name], None)

    def remove_network_volume(self, volume_id: str) -> None:
        self._run([self.engine, "volume", "rm", "-f", network_volume_name(volume_id)], None)


def network_volume_name(volume_id: str) -> str:
    return f"localpod-netvol-{volume_id}"
