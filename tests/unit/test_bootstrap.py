"""The bootstrap's entry: bad settings stop it by name, --render-only touches nothing else,
secrets are redacted from every log line."""

from __future__ import annotations

import io

import pytest

from appliance import settings
from appliance.runtime import bootstrap, config

ALL_VARS = [name for klass in settings.pod_settings_classes() for name in klass.model_fields]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [*ALL_VARS, "APPLIANCE_SECRETS_DIR"]:
        monkeypatch.delenv(name, raising=False)


def test_bad_settings_stop_the_bootstrap_naming_each_variable(monkeypatch, capsys):
    monkeypatch.setenv("START_SSHD", "maybe")
    monkeypatch.setenv("SSH_PORT", "99999")
    assert bootstrap.main(["--no-exec"]) == 2
    assert capsys.readouterr().err == (
        "appliance-bootstrap: error: bad environment: START_SSHD='maybe': expected 1 or 0 (also "
        "true/false, yes/no, on/off) (Run sshd, program sshd.); SSH_PORT='99999': expected a TCP "
        "port number 1..65535 (Port sshd listens on.)\n")


def test_render_only_writes_into_dir_and_nowhere_else(monkeypatch, tmp_path, capsys):
    root = tmp_path / "root"
    for var, sub in (("WORKSPACE_DIR", "workspace"), ("APPLIANCE_ETC_DIR", "etc"),
                     ("APPLIANCE_RUN_DIR", "run"), ("APPLIANCE_BIN_DIR", "bin"),
                     ("APPLIANCE_USER_HOME", "home"),
                     ("RUNPOD_PHASE_TIMING_LOG", "timings.jsonl")):
        monkeypatch.setenv(var, str(root / sub))
    monkeypatch.setenv("START_INFERENCE_API", "0")
    monkeypatch.setenv("JUPYTER_TOKEN", "render-only-secret")
    out = tmp_path / "out"
    assert bootstrap.main(["--render-only", str(out)]) == 0
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == ["appliance-env.sh", "conf.d/00-fatal-reviver.conf", "conf.d/10-sshd.conf",
                       "conf.d/30-jupyter.conf", "sshd_config", "supervisorctl",
                       "supervisord.conf"]
    assert capsys.readouterr().out.splitlines() == [
        str(out / "supervisord.conf"), str(out / "conf.d/00-fatal-reviver.conf"),
        str(out / "conf.d/10-sshd.conf"), str(out / "conf.d/30-jupyter.conf"),
        str(out / "sshd_config"), str(out / "supervisorctl"), str(out / "appliance-env.sh")]
    assert not root.exists()
    for path in out.rglob("*"):
        if path.is_file():
            assert "render-only-secret" not in path.read_text()


def test_render_only_reports_an_unwritable_value(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("START_INFERENCE_API", "0")
    monkeypatch.setenv("APPLIANCE_ETC_DIR", "/my etc")
    assert bootstrap.main(["--render-only", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err == ("appliance-bootstrap: error: /my etc/supervisor/conf.d/"
                                       "*.conf: supervisord's [include] cannot hold a path with "
                                       "spaces\n")


def test_log_lines_never_show_a_secret(tmp_path):
    stream = io.StringIO()
    log = bootstrap.BootLog(bootstrap.boot_redactor(["s3cret", "s3cret-longer"]), stream)
    log("git said: https://u:s3cret-longer@host failed; token s3cret")
    log.attach(tmp_path / "boot.log")
    log.redact.add("generated-token")
    log("jupyter token generated-token")
    text = stream.getvalue()
    assert "s3cret" not in text and "generated-token" not in text
    assert "git said: https://u:***@host failed; token ***" in text
    assert (tmp_path / "boot.log").read_text().count("appliance-bootstrap: ") == 2


def test_secret_fields_are_the_secretstr_variables():
    assert set(config.secret_fields()) >= {"JUPYTER_TOKEN", "JUPYTER_PASSWORD",
                                            "INFERENCE_API_TOKEN", "HF_TOKEN",
                                            "RUNPOD_API_KEY"}
    assert "PUBLIC_KEY" not in config.secret_fields()
