"""docs/ENVIRONMENT.md (the pod's and the workstation's variables) and image/env.example are
generated from appliance/settings.py and host_tools/settings.py and kept equal."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance import legacy_env, settings
from appliance.runtime import envdoc
from host_tools import envdoc as host_envdoc
from host_tools.settings import host_settings_classes


def test_environment_doc_and_env_example_are_up_to_date():
    doc = host_envdoc.ENVIRONMENT.read_text(encoding="utf-8")
    assert doc == host_envdoc.with_tables(doc), (
        "docs/ENVIRONMENT.md is stale: run `python -m host_tools.envdoc`")
    assert envdoc.ENV_EXAMPLE.read_text(encoding="utf-8") == envdoc.env_example(), (
        "image/env.example is stale: run `python -m host_tools.envdoc`")


def test_readme_and_environment_doc_hold_the_migration_table():
    readme = host_envdoc.README.read_text(encoding="utf-8")
    assert readme == host_envdoc.with_migration(readme), (
        "README.md's migration table is stale: run `python -m host_tools.envdoc`")
    assert host_envdoc.migration_block() in readme
    doc = host_envdoc.ENVIRONMENT.read_text(encoding="utf-8")
    _, migration = doc.split("## From the predecessor")
    for var in legacy_env.OLD_VARIABLES:
        assert f"| `{var.name}` |" in migration
    table = envdoc.migration_table().splitlines()
    assert table[0] == "| predecessor's variable | read here as | meaning there | here |"
    assert ("| `IDLE_TIMEOUT_SECONDS` | `AUTOSTOP_IDLE_MINUTES` | idle seconds before the stop "
            "(3600) | seconds / 60 |") in table
    assert ("| `VENV_DIR` | no effect | the Python environment of the services and of pip | "
            "the services and pip use APPLIANCE_PYTHON (the image sets it to its venv's "
            "python) |") in table
    assert len(table) == 2 + len(legacy_env.OLD_VARIABLES)


def test_environment_doc_has_both_tables():
    doc = host_envdoc.ENVIRONMENT.read_text(encoding="utf-8")
    pod, host = doc.split("## On the workstation")
    assert "## In the pod" in pod
    for klass in settings.pod_settings_classes():
        for name in klass.model_fields:
            assert f"| `{name}` |" in pod
    for klass in host_settings_classes():
        for name in klass.model_fields:
            assert f"| `{name}` |" in host
    assert "| `IMAGE_REPO` | `chessbot-appliance` | **Image**: " in host
    assert "| `RUNPOD_SSH_HOST_KEY_CHECKING` | `accept-new` | **SSH to pods**: " in host
    assert "| `START_SSHD` | `1` |" in pod


def test_every_pod_variable_is_documented_with_a_doc_line():
    example = envdoc.ENV_EXAMPLE.read_text(encoding="utf-8")
    for klass in settings.pod_settings_classes():
        for name, field in klass.model_fields.items():
            assert f"\n{name}=" in example
            assert field.description, f"{name} has no description in settings.py"
    assert "\nRANK=" not in example and "\nWORLD_SIZE=" not in example  # torchrun's
    assert "IMAGE_REPO=" not in example  # the workstation's variables are not the pod's


def test_defaults_are_env_values_and_secrets_are_empty():
    example = envdoc.ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
    for line in ("START_SSHD=1", "START_HF_SYNC=0", "SSH_PORT=22", "JUPYTER_PORT=8888",
                 "WORKSPACE_DIR=/workspace", "AUTOSTOP_IDLE_MINUTES=30", "JUPYTER_TOKEN=",
                 "RUNPOD_API_KEY=", "HF_TOKEN=", "APPLIANCE_PYTHON=", "REPO_DIR="):
        assert line in example


def test_check_mode_reports_a_stale_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(envdoc, "ENV_EXAMPLE", tmp_path / "env.example")
    monkeypatch.setattr(envdoc, "ROOT", tmp_path.parent)
    (tmp_path / "env.example").write_text("old\n")
    assert envdoc.main(["--check"]) == 1
    assert capsys.readouterr().err == (f"stale: {tmp_path.name}/env.example; run "
                                       "`python -m appliance.runtime.envdoc`\n")
    assert (tmp_path / "env.example").read_text() == "old\n"


def test_host_envdoc_writes_both_files_and_keeps_the_text_around_the_block(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    doc, example = tmp_path / "docs" / "ENVIRONMENT.md", tmp_path / "env.example"
    monkeypatch.setattr(host_envdoc, "ENVIRONMENT", doc)
    monkeypatch.setattr(host_envdoc, "README", tmp_path / "README.md")  # none: not written
    monkeypatch.setattr(envdoc, "ENV_EXAMPLE", example)
    monkeypatch.setattr(envdoc, "ROOT", tmp_path)
    assert host_envdoc.main(["--check"]) == 1
    assert capsys.readouterr().err == ("stale: docs/ENVIRONMENT.md, env.example; run "
                                       "`python -m host_tools.envdoc`\n")
    assert not doc.exists() and not example.exists()
    assert host_envdoc.main([]) == 0
    assert doc.read_text().startswith(host_envdoc.INTRO)
    assert example.read_text() == envdoc.env_example()
    doc.write_text("# Mine\n\n" + host_envdoc.BEGIN + "\nold\n" + host_envdoc.END + "\nafter\n")
    assert host_envdoc.main([]) == 0
    assert doc.read_text() == f"# Mine\n\n{host_envdoc.tables()}\nafter\n"
    assert host_envdoc.main(["--check"]) == 0
    readme = tmp_path / "README.md"
    readme.write_text(f"# R\n{host_envdoc.MIGRATION_BEGIN}\nold\n{host_envdoc.MIGRATION_END}\n")
    assert host_envdoc.main(["--check"]) == 1
    assert capsys.readouterr().err == ("stale: README.md; run `python -m host_tools.envdoc`\n")
    assert host_envdoc.main([]) == 0
    assert readme.read_text() == f"# R\n{host_envdoc.migration_block()}\n"
    doc.write_text("no markers\n")
    with pytest.raises(ValueError, match="no .* section to fill in"):
        host_envdoc.main([])
