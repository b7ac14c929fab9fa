"""Every console script in pyproject.toml names a main() that exists, and the workstation
commands run as `python -m MODULE` (provision.py also as a script, as users' runbooks call it)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
    "scripts"]


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_console_script_targets_a_main(name: str) -> None:
    module, _, func = SCRIPTS[name].partition(":")
    assert callable(getattr(importlib.import_module(module), func))


def test_the_main_commands_have_console_scripts() -> None:
    targets = set(SCRIPTS.values())
    for module in ("provision", "datasets", "image", "localup", "envdoc"):
        assert f"host_tools.{module}:main" in targets


@pytest.mark.parametrize("argv", [["-m", "host_tools.provision"],
                                  [str(ROOT / "host_tools" / "provision.py")]],
                         ids=["module", "script"])
def test_provision_runs_as_module_and_as_script(argv: list[str], tmp_path: Path) -> None:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    done = subprocess.run([sys.executable, *argv, "--help"], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path, env={**os.environ, "PYTHONPATH": path})
    assert done.returncode == 0, done.stderr
    assert "cycle" in done.stdout and "gpu-search" in done.stdout
