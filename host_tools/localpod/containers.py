"""localpod's container backend: each pod is a podman (or Docker) container of our image on a named
/workspace volume, ports published on 127.0.0.1; stop keeps the volume, terminate removes it.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Sequence

from host_tools.localpod.state import PodRecord

Runner = Callable[[Sequence[str], "dict[str, str] | None"], subprocess.CompletedProcess[str]]


def _run(argv: Sequence[str], env: dict[str, str] | None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=120, check=False,
                          env=env)


class ContainerBackend:
    """Pods as containers. `engine` is "podman" or "docker"; `run` is the seam tests replace."""

    def __init__(self, engine: str = "podman", *, run: Runner = _run,
                 extra_args: Sequence[str] = ()) -> None:
        self.engine, self._run, self.extra_args = engine, run, list(extra_args)

    @staticmethod
    def names(pod: PodRecord) -> tuple[str, str]:
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
        for name in env_names:
            argv += ["-e", name]
        if self.engine == "podman":
            # DESIGN.md section 4: crun is not usable here and limits cannot be raised.
            argv += ["--runtime", "runc", "--ulimit", "nofile=1024:1024",
                     "--ulimit", "nproc=1024:1024"]
        for private, public in sorted(pod.mappings.items()):
            argv += ["-p", f"127.0.0.1:{public}:{private}"]
        return argv + self.extra_args + [pod.image]

    def start(self, pod: PodRecord, env: dict[str, str]) -> None:
        container, volume = self.names(pod)
        self._run([self.engine, "rm", "-f", container], None)  # a leftover of a crashed run
        if self._run([self.engine, "volume", "inspect", volume], None).returncode != 0:
            self._check([self.engine, "volume", "create", volume])
        # `-e NAME` takes the value from the engine's own environment: the pod-scoped key never
        # appears on a command line (ps shows those), and multi-line PUBLIC_KEY survives.
        self._check(self.run_argv(pod, sorted(env)), {**os.environ, **env})

    def ready(self, pod: PodRecord) -> bool:
        container, _ = self.names(pod)
        result = self._run([self.engine, "inspect", "-f", "{{.State.Running}}", container], None)
        return result.returncode == 0 and result.stdout.strip() == "true"

    def stop(self, pod: PodRecord) -> None:
        self._check([self.engine, "rm", "-f", "-t", "10", self.names(pod)[0]])

    def remove(self, pod: PodRecord) -> None:
        container, volume = self.names(pod)
        self._run([self.engine, "rm", "-f", "-t", "10", container], None)
        self._run([self.engine, "volume", "rm", "-f", volume], None)
