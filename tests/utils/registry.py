"""A loopback container registry for the container and lifecycle tiers: Debian's `docker-registry`
on 127.0.0.1 (optionally behind an htpasswd login), and a podman registries.conf that makes it a
mirror of docker.io, so a build "pulls" an official image name without reaching the Hub.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.utils import free_port, wait_until


@dataclass(frozen=True)
class Registry:
    host: str  # 127.0.0.1:PORT
    login: tuple[str, str] | None = None


def v2_status(host: str) -> int:
    try:
        with urllib.request.urlopen(f"http://{host}/v2/", timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def registry_binary() -> str:
    exe = shutil.which("docker-registry")
    if exe is None:
        if os.environ.get("CI") == "true":
            pytest.fail("docker-registry missing under CI=true (apt-get install docker-registry)")
        pytest.skip("docker-registry not installed")
    return exe


@contextmanager
def loopback_registry(root: Path, login: tuple[str, str] | None = None) -> Iterator[Registry]:
    """Serve a registry from `root`; with `login` every request needs that user and password."""
    exe = registry_binary()
    port = free_port()
    config = (f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
              f"http:\n  addr: 127.0.0.1:{port}\n")
    if login:
        import bcrypt  # the registry's htpasswd takes bcrypt hashes only

        hashed = bcrypt.hashpw(login[1].encode(), bcrypt.gensalt(rounds=5)).decode()
        (root / "htpasswd").write_text(f"{login[0]}:{hashed}\n", encoding="utf-8")
        config += (f"auth:\n  htpasswd:\n    realm: test\n    path: {root / 'htpasswd'}\n")
    (root / "registry.yml").write_text(config, encoding="utf-8")
    proc = subprocess.Popen([exe, "serve", str(root / "registry.yml")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    host = f"127.0.0.1:{port}"
    try:
        wait_until(lambda: v2_status(host) == (401 if login else 200), 30, 0.2,
                   what=f"registry on {host}")
        yield Registry(host, login)
    finally:
        proc.terminate()
        proc.wait(10)


def hub_mirror_conf(path: Path, mirror: str) -> Path:
    """A podman registries.conf (CONTAINERS_REGISTRIES_CONF) sending docker.io pulls to the
    plain-HTTP `mirror` first."""
    path.write_text('unqualified-search-registries = ["docker.io"]\n\n[[registry]]\n'
                    'prefix = "docker.io"\nlocation = "docker.io"\n\n[[registry.mirror]]\n'
                    f'location = "{mirror}"\ninsecure = true\n', encoding="utf-8")
    return path
