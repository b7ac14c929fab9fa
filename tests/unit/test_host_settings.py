"""host_tools.settings: every host-side variable is declared once with a doc, read at load time,
and a bad value is a SettingsError that names the variable (the commands print it as one line).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from host_tools import image, localup, provision
from host_tools.settings import (
    ROOT,
    EngineSettings,
    HostSshSettings,
    ImageSettings,
    LocalPodSettings,
    SettingsError,
    SmokeSettings,
    host_settings_classes,
    load,
)
from tests.unit.process_fakes import ENV_VARS

HOST_VARIABLES = {*ENV_VARS, "RUNPOD_SSH_HOST_KEY_CHECKING", "RUNPOD_SSH_KNOWN_HOSTS_FILE",
                  "RUNPOD_SSH_IDENTITY_FILE", "RUNPOD_HEALTHCHECKS_URL"}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in HOST_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_every_host_variable_is_declared_once_with_a_description() -> None:
    seen: list[str] = []
    for klass in host_settings_classes():
        for name, field in klass.model_fields.items():
            assert field.description, f"{name} has no description in host_tools/settings.py"
            seen.append(name)
    assert sorted(seen) == sorted(HOST_VARIABLES)


def test_defaults() -> None:
    assert load(ImageSettings).model_dump() == {
        "IMAGE_REPO": "chessbot-appliance", "IMAGE_TAG": None,
        "BASE_IMAGE": "docker.io/library/debian:bookworm-slim", "OFFLINE": False,
        "OFFLINE_BASE_IMAGE": "localhost/chessbot-base:bookworm", "TORCH_INDEX_URL": None,
        "DEBIAN_MIRROR": None, "TORCH_VARIANT": "cpu", "TORCH_SPEC": None}
    assert load(EngineSettings).CONTAINER_ENGINE is None
    assert load(LocalPodSettings).LOCAL_POD_NAME == "chessbot-local"
    smoke = load(SmokeSettings)
    assert (smoke.SMOKE_TRAIN_ROWS, smoke.SMOKE_VAL_ROWS, smoke.SMOKE_EPOCHS,
            smoke.SMOKE_BATCH_SIZE, smoke.SMOKE_PROGRESS_JSONL_OUT, smoke.RUN_ID) == (
        64, 16, 1, 16, None, None)
    ssh = load(HostSshSettings)
    assert ssh.known_hosts_path() == ROOT / "config" / "runpod_known_hosts"


@pytest.mark.parametrize(("raw", "expected"), [("", 64), ("5", 5), (" 7 ", 7), ("1", 1)])
def test_smoke_counts(raw: str, expected: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMOKE_TRAIN_ROWS", raw)
    assert expected == load(SmokeSettings).SMOKE_TRAIN_ROWS


@pytest.mark.parametrize(("name", "raw"), [
    ("SMOKE_EPOCHS", "abc"), ("SMOKE_EPOCHS", "0"), ("SMOKE_VAL_ROWS", "-1"),
    ("SMOKE_BATCH_SIZE", "1.5"), ("SMOKE_TRAIN_ROWS", "0x10"),
    ("CONTAINER_ENGINE", "lxc"), ("TORCH_VARIANT", "gpu"), ("OFFLINE", "maybe"),
    ("LOCAL_POD_NAME", "a b"),
    ("RUNPOD_SSH_HOST_KEY_CHECKING", "no"), ("RUNPOD_SSH_KNOWN_HOSTS_FILE", "/dev/null"),
])
def test_a_bad_value_names_the_variable(name: str, raw: str,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(name, raw)
    klass = next(k for k in host_settings_classes() if name in k.model_fields)
    with pytest.raises(SettingsError) as exc:
        load(klass)
    doc = klass.model_fields[name].description
    shown = "<redacted>" if "KEY" in name else repr(raw)  # names that look secret hide values
    assert str(exc.value).startswith(f"bad environment: {name}={shown}: ")
    assert str(exc.value).endswith(f" ({doc})")


def test_commands_print_a_bad_variable_as_one_line(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("no process expected"))
    monkeypatch.setenv("TORCH_VARIANT", "gpu")
    assert image.main(["wheelhouse"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("image: error: bad environment: TORCH_VARIANT='gpu': ")
    assert err.count("\n") == 1
    monkeypatch.setenv("LOCAL_POD_NAME", "a b")
    assert localup.main(["down"]) == 1
    assert capsys.readouterr().err.startswith("down: error: bad environment: LOCAL_POD_NAME=")
    monkeypatch.setenv("RUNPOD_SSH_KNOWN_HOSTS_FILE", "/dev/null")
    assert provision.main(["ssh", "pod1", "--print"]) == 2
    assert capsys.readouterr().err.startswith(
        "error: bad environment: RUNPOD_SSH_KNOWN_HOSTS_FILE='/dev/null': ")


def test_a_relative_known_hosts_file_is_under_the_checkout(monkeypatch: pytest.MonkeyPatch,
                                                           tmp_path: Path) -> None:
    monkeypatch.setenv("RUNPOD_SSH_KNOWN_HOSTS_FILE", "kh/pods")
    assert load(HostSshSettings).known_hosts_path() == ROOT / "kh" / "pods"
    assert load(HostSshSettings).known_hosts_path(tmp_path) == tmp_path / "kh" / "pods"
    monkeypatch.setenv("RUNPOD_SSH_KNOWN_HOSTS_FILE", str(tmp_path / "abs"))
    assert load(HostSshSettings).known_hosts_path() == tmp_path / "abs"
