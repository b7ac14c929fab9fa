"""The README env table and image/env.example are generated from settings.py and kept equal."""

from __future__ import annotations

from appliance import settings
from appliance.runtime import envdoc


def test_readme_table_and_env_example_are_up_to_date():
    readme = envdoc.README.read_text(encoding="utf-8")
    assert readme == envdoc.readme_with_table(readme), (
        "README env table is stale: run `python -m appliance.runtime.envdoc`")
    assert envdoc.ENV_EXAMPLE.read_text(encoding="utf-8") == envdoc.env_example(), (
        "image/env.example is stale: run `python -m appliance.runtime.envdoc`")


def test_every_pod_variable_is_documented_with_a_doc_line():
    example = envdoc.ENV_EXAMPLE.read_text(encoding="utf-8")
    for klass in settings.pod_settings_classes():
        for name, field in klass.model_fields.items():
            assert f"\n{name}=" in example
            assert field.description, f"{name} has no description in settings.py"
    assert "RANK=" not in example


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
