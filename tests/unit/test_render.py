"""Golden tests of the rendered configs for a matrix of env inputs, and the escaping rules.

`UPDATE_GOLDEN=1 pytest tests/unit/test_render.py` rewrites tests/fixtures/golden/ after an
intended change; review the diff like code.
"""

from __future__ import annotations

import configparser
import os
import tomllib
from importlib.resources import files
from pathlib import Path

import pytest

from appliance import settings
from appliance.runtime.config import Layout, PodConfig
from appliance.runtime.render import PROGRAM_FILES, RenderError, plan, render_all

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "fixtures" / "golden"
ALL_VARS = [name for klass in settings.pod_settings_classes() for name in klass.model_fields]
BASE = {
    "APPLIANCE_PYTHON": "/opt/venv/bin/python",
    "REPO_DIR": "/opt/app",
    "RUNPOD_POD_ID": "abc123xyz",
    "RUNPOD_PUBLIC_IP": "203.0.113.7",
    "RUNPOD_TCP_PORT_22": "40022",
    "RUNPOD_API_KEY": "rk-secret-value",
    "PUBLIC_KEY": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK235h+TnBPJknIFHVk86hmPlqwVd25z0XzAhhFY"
                  "nH1I me@laptop",
    "CUDA_VISIBLE_DEVICES": "0",
    "HOSTNAME": "not-allow-listed",
    "REPO_URL": "https://user:ghp-secret@github.com/owner/chess.git",
}
CASES = {
    "all_on": ({**BASE, "START_HF_SYNC": "1", "START_IDLE_WATCHDOG": "1",
                "HF_TOKEN": "hf-secret-value", "HF_REPO_ID": "owner/models",
                "INFERENCE_MODEL_PATH": "/workspace/models/best.pt"}, True),
    "ssh_only": ({**BASE, "START_JUPYTER": "0", "START_INFERENCE_API": "0"}, True),
    "no_torch": (BASE, False),
}


def _render(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], torch_ok: bool):
    for name in [*ALL_VARS, "APPLIANCE_SECRETS_DIR"]:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    cfg = PodConfig.load()
    secret_names = frozenset({"JUPYTER_TOKEN"} | {n for n in env if n == "HF_TOKEN"})
    return render_all(cfg, Layout.of(cfg.runtime), torch_ok=torch_ok, environ=env,
                      secret_names=secret_names)


@pytest.mark.parametrize("case", sorted(CASES))
def test_rendered_files_match_the_golden_copies(monkeypatch, case):
    env, torch_ok = CASES[case]
    files = _render(monkeypatch, env, torch_ok)
    folder = GOLDEN / case
    if os.environ.get("UPDATE_GOLDEN"):
        for old in folder.rglob("*"):
            if old.is_file():
                old.unlink()
        for name, rendered in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(rendered.text)
    golden = {str(p.relative_to(folder)): p.read_text() for p in folder.rglob("*") if p.is_file()}
    assert sorted(files) == sorted(golden)
    for name, rendered in files.items():
        assert rendered.text == golden[name], f"{case}/{name} differs from the golden copy"


@pytest.mark.parametrize("case,programs", [
    ("all_on", ["fatal-reviver", "sshd", "inference", "jupyter", "hf-sync", "idle-watchdog"]),
    ("ssh_only", ["fatal-reviver", "sshd"]),
    ("no_torch", ["fatal-reviver", "sshd", "jupyter"]),
])
def test_the_matrix_renders_the_programs_it_should(monkeypatch, case, programs):
    env, torch_ok = CASES[case]
    files = _render(monkeypatch, env, torch_ok)
    names = []
    for name, rendered in files.items():
        if name.startswith("conf.d/"):
            parser = configparser.RawConfigParser(inline_comment_prefixes=(";",))
            parser.read_string(rendered.text)
            (section,) = parser.sections()
            names.append(section.split(":", 1)[1])
            assert rendered.mode == 0o600
    assert names == programs
    assert plan(PodConfig.load().services, torch_ok).programs == tuple(programs)


def test_no_secret_is_rendered_anywhere(monkeypatch):
    env, _ = CASES["all_on"]
    files = _render(monkeypatch, {**env, "JUPYTER_TOKEN": "jt-secret-value"}, True)
    for rendered in files.values():
        for secret in ("rk-secret-value", "hf-secret-value", "jt-secret-value", "ghp-secret"):
            assert secret not in rendered.text


def test_the_login_env_is_allow_listed(monkeypatch):
    env, _ = CASES["all_on"]
    text = _render(monkeypatch, env, True)["appliance-env.sh"].text
    exported = [line.split("=", 1)[0].removeprefix("export ") for line in text.splitlines()
                if line.startswith("export ")]
    assert exported == [
        "APPLIANCE_PYTHON", "CUDA_VISIBLE_DEVICES", "HF_REPO_ID", "INFERENCE_MODEL_PATH",
        "REPO_DIR", "REPO_URL", "RUNPOD_POD_ID", "RUNPOD_PUBLIC_IP", "RUNPOD_TCP_PORT_22",
        "START_HF_SYNC", "START_IDLE_WATCHDOG", "HF_HOME", "APPLIANCE_SECRETS_DIR",
        "HF_TOKEN_PATH", "VIRTUAL_ENV"]
    assert "export REPO_URL=https://github.com/owner/chess.git" in text


def test_percent_is_escaped_for_supervisord(monkeypatch):
    files = _render(monkeypatch, {**BASE, "WORKSPACE_DIR": "/work%space"}, True)
    jupyter = files["conf.d/30-jupyter.conf"].text
    assert "directory=/work%%space\n" in jupyter
    assert "--ServerApp.root_dir=/work%%space" in jupyter


@pytest.mark.parametrize("env,message", [
    ({"APPLIANCE_STATE_DIR": "/state ;x"},
     "log dir: '/state ;x/logs' holds ';' after a space, which supervisord reads as a comment"),
    ({"APPLIANCE_USER_HOME": '/home/"q"', "START_JUPYTER": "0"},
     "inference: HOME='/home/\"q\"' holds a quote or backslash, which supervisord's "
     "environment= cannot carry"),
    ({"APPLIANCE_ETC_DIR": "/my etc"},
     "/my etc/supervisor/conf.d/*.conf: supervisord's [include] cannot hold a path with spaces"),
])
def test_values_that_cannot_be_written_safely_are_refused(monkeypatch, env, message):
    with pytest.raises(RenderError) as err:
        _render(monkeypatch, {**BASE, **env}, True)
    assert str(err.value) == message


def test_the_templates_are_package_data_found_through_importlib_resources():
    """supervisord.conf.d/ is the source; the package reaches it as appliance/runtime/templates
    (a symlink here, real files in a wheel), and pyproject.toml ships that folder."""
    source = {p.name: p.read_text() for p in (ROOT / "supervisord.conf.d").iterdir()
              if not p.name.startswith(".")}
    templates = files("appliance.runtime") / "templates"
    found = {t.name: t.read_text(encoding="utf-8") for t in templates.iterdir()
             if not t.name.startswith(".")}
    assert found == source
    assert {"supervisord.conf", "sshd_config", "supervisorctl"} <= set(found)
    assert {f"{name}.conf" for name in PROGRAM_FILES} <= set(found)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    shipped = pyproject["tool"]["setuptools"]["package-data"]["appliance.runtime"]
    package_dir = ROOT / "appliance" / "runtime"
    assert {p.name for pattern in shipped for p in package_dir.glob(pattern)} >= set(found)


def test_max_hours_runs_the_watchdog_without_start_idle_watchdog(monkeypatch):
    env, torch_ok = CASES["ssh_only"]
    files = _render(monkeypatch, {**env, "AUTOSTOP_MAX_HOURS": "2"}, torch_ok)
    assert sorted(n for n in files if n.startswith("conf.d/")) == [
        "conf.d/00-fatal-reviver.conf", "conf.d/10-sshd.conf", "conf.d/50-idle-watchdog.conf"]
    services = PodConfig.load().services
    assert plan(services, True, 2.0).programs == ("fatal-reviver", "sshd", "idle-watchdog")
    assert plan(services, True, None).programs == ("fatal-reviver", "sshd")
