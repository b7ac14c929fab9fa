"""`make image`'s two paths for real. Default: the official base name pulled (from a loopback
registry that podman takes as docker.io's mirror, so no Hub is needed) and pip installing in the
build (torch from the local wheel pip's find-links hold here, the rest from the package index).
Offline: a base that cannot be pulled sends the build to the debootstrap base and wheelhouse.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from host_tools.engine import Engine, push_flags
from host_tools.image import DEFAULT_BASE_IMAGE, DEFAULT_OFFLINE_BASE, ROOT, build_base
from tests.utils.containers import TEST_REPO, TEST_TAG
from tests.utils.registry import hub_mirror_conf, loopback_registry

pytestmark = pytest.mark.timeout(1800)


def make_image(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "host_tools.image", "build", "--quiet"],
                          cwd=ROOT, env={**os.environ, "IMAGE_REPO": TEST_REPO, **env},
                          capture_output=True, text=True, check=False, timeout=1700)


def in_image(engine: Engine, ref: str, script: str) -> str:
    proc = subprocess.run(engine.cmd("run", "--rm", *engine.run_flags, "--entrypoint",
                                     "/opt/venvs/chessbot/bin/python", ref, "-c", script),
                          capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip()


def test_default_path_pulls_the_official_base_and_installs_from_the_index(
        engine: Engine, tmp_path: Path) -> None:
    if engine.name != "podman":
        pytest.skip("Docker's registry mirrors are daemon settings; with Docker the default "
                    "path pulls from the Hub itself")
    build_base(engine)  # the debootstrap base, served under the official name
    tag = f"{TEST_TAG}-default"
    ref = f"{TEST_REPO}:{tag}"
    with loopback_registry(tmp_path) as registry:
        mirrored = f"{registry.host}/library/debian:bookworm-slim"
        subprocess.run(engine.cmd("tag", DEFAULT_OFFLINE_BASE, mirrored), check=True)
        subprocess.run(engine.cmd("push", *push_flags(engine.name, tls_verify=False), mirrored),
                       check=True, capture_output=True)
        subprocess.run(engine.cmd("rmi", mirrored), check=True, capture_output=True)
        # Pulled only when missing: untag a copy left here, so this build pulls it.
        subprocess.run(engine.cmd("rmi", DEFAULT_BASE_IMAGE), capture_output=True, check=False)
        conf = hub_mirror_conf(tmp_path / "registries.conf", registry.host)
        try:
            proc = make_image({"CONTAINERS_REGISTRIES_CONF": str(conf), "IMAGE_TAG": tag})
            assert proc.returncode == 0, proc.stderr[-3000:]
            log = proc.stderr.splitlines()
            assert (f"image: default path: pulled {DEFAULT_BASE_IMAGE}; pip installs the "
                    "dependencies in the build (cache mount)") in log, proc.stderr[-3000:]
            assert any(line.startswith("image: dependencies: torch==2.13.0+cpu from a local "
                                       "wheel") for line in log), proc.stderr[-3000:]
            assert not any("offline path" in line for line in log)
            assert proc.stdout.splitlines() == [ref, f"{TEST_REPO}:latest"]
            out = in_image(engine, ref, "import torch, appliance, os; print(torch.__version__, "
                           "os.path.exists('/opt/chessbot/build'), "
                           "open('/opt/venvs/chessbot/TORCH_VARIANT').read().strip())")
            assert out == "2.13.0+cpu False torch variant: cpu"
        finally:  # the official name goes too: the session's own builds take what is here
            for gone in (ref, DEFAULT_BASE_IMAGE):
                subprocess.run(engine.cmd("rmi", gone), capture_output=True, check=False)


def test_a_base_that_cannot_be_pulled_takes_the_offline_path(engine: Engine, image: str,
                                                              refused_port: int) -> None:
    base = f"127.0.0.1:{refused_port}/library/debian:bookworm-slim"
    tag = f"{TEST_TAG}-offline"
    proc = make_image({"BASE_IMAGE": base, "IMAGE_TAG": tag})
    try:
        assert proc.returncode == 0, proc.stderr[-3000:]
        lines = [line for line in proc.stderr.splitlines() if "path:" in line]
        assert len(lines) == 1 and lines[0].startswith(
            f"image: offline path: {base} cannot be pulled ("), lines
        assert lines[0].endswith(f"); base {DEFAULT_OFFLINE_BASE}, wheelhouse downloaded on "
                                 "this host")
        # The same content as the session's image (built offline here): layers from the cache.
        ids = [subprocess.run(engine.cmd("image", "inspect", "-f", "{{.Id}}", ref),
                              capture_output=True, text=True, check=True).stdout.strip()
               for ref in (image, f"{TEST_REPO}:{tag}")]
        assert ids[0] == ids[1]
    finally:
        subprocess.run(engine.cmd("rmi", f"{TEST_REPO}:{tag}"), capture_output=True,
                       check=False)
