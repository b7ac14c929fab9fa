"""The pod runtime's env contract: defaults, exact messages for bad values, secret files."""

from __future__ import annotations

import pytest

from appliance import settings
from appliance.runtime.config import PodConfig

RUNTIME_VARS = [name for klass in settings.pod_settings_classes() for name in klass.model_fields]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [*RUNTIME_VARS, "APPLIANCE_SECRETS_DIR"]:
        monkeypatch.delenv(name, raising=False)


def test_defaults_match_the_design():
    svc = settings.load(settings.ServiceSettings)
    assert (svc.START_SSHD, svc.START_JUPYTER, svc.START_INFERENCE_API, svc.START_HF_SYNC,
            svc.START_IDLE_WATCHDOG) == (True, True, True, False, False)
    repo = settings.load(settings.RepoSettings)
    assert (repo.REPO_URL, repo.CLONE_REPO_ON_START, repo.GIT_AUTO_PULL,
            repo.SYNC_REQUIREMENTS_ON_START, repo.FORCE_REQUIREMENTS_SYNC) == (
        "", True, True, True, False)
    assert settings.load(settings.SshSettings).SSH_PORT == 22
    assert settings.load(settings.JupyterSettings).JUPYTER_PORT == 8888
    rt = settings.load(settings.RuntimeSettings)
    paths = [str(p) for p in (rt.WORKSPACE_DIR, rt.APPLIANCE_ETC_DIR, rt.APPLIANCE_RUN_DIR)]
    assert paths == ["/workspace", "/etc", "/run"]
    assert settings.load(settings.WatchdogSettings).AUTOSTOP_ACTION == "runpod_api"


@pytest.mark.parametrize("value,expected", [("1", True), ("0", False), ("true", True),
                                            ("No", False), (" on ", True)])
def test_flags_accept_the_usual_spellings(monkeypatch, value, expected):
    monkeypatch.setenv("START_JUPYTER", value)
    assert settings.load(settings.ServiceSettings).START_JUPYTER is expected


@pytest.mark.parametrize("var,value,message", [
    ("START_SSHD", "maybe", "bad environment: START_SSHD='maybe': expected 1 or 0 (also "
     "true/false, yes/no, on/off) (Run sshd, program sshd.)"),
    ("SSH_PORT", "99999", "bad environment: SSH_PORT='99999': expected a TCP port number "
     "1..65535 (Port sshd listens on.)"),
    ("JUPYTER_PORT", "http", "bad environment: JUPYTER_PORT='http': expected a TCP port number "
     "1..65535 (Port Jupyter Lab listens on.)"),
    ("AUTOSTOP_ACTION", "halt", "bad environment: AUTOSTOP_ACTION='halt': Input should be "
     "'runpod_api', 'exit' or 'none' (runpod_api (stop this pod), exit (end the container) or "
     "none (log only).)"),
    ("APPLIANCE_USER", "Runner!", "bad environment: APPLIANCE_USER='Runner!': String should "
     "match pattern '^[a-z_][a-z0-9_-]{0,31}$' (The login account.)"),
])
def test_a_bad_value_names_the_variable_and_the_expected_form(monkeypatch, var, value,
                                                               message):
    monkeypatch.setenv(var, value)
    with pytest.raises(settings.SettingsError) as err:
        PodConfig.load()
    assert str(err.value) == message


def test_every_bad_variable_is_named_at_once(monkeypatch):
    monkeypatch.setenv("START_SSHD", "maybe")
    monkeypatch.setenv("SSH_PORT", "0")
    with pytest.raises(settings.SettingsError) as err:
        PodConfig.load()
    assert str(err.value).startswith("bad environment: START_SSHD='maybe': ")
    assert "; SSH_PORT='0': expected a TCP port number 1..65535" in str(err.value)


def test_the_pod_config_reads_each_settings_class_once(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf-once")
    monkeypatch.setenv("JUPYTER_TOKEN", "jt-once")
    loads: list[type] = []
    real_load = settings.load

    def counting_load(klass):
        loads.append(klass)
        return real_load(klass)

    monkeypatch.setattr(settings, "load", counting_load)
    cfg = PodConfig.load()
    assert cfg.secret_values() == {"HF_TOKEN": "hf-once", "JUPYTER_TOKEN": "jt-once"}
    assert sorted(k.__name__ for k in loads) == sorted(
        k.__name__ for k in settings.pod_settings_classes())


def test_an_unset_secret_is_read_from_the_secrets_dir(monkeypatch, tmp_path):
    (tmp_path / "JUPYTER_TOKEN").write_text("from-file\n")
    monkeypatch.setenv("APPLIANCE_SECRETS_DIR", str(tmp_path))
    assert settings.load(settings.JupyterSettings).token == "from-file"
    monkeypatch.setenv("JUPYTER_TOKEN", "from-env")
    assert settings.load(settings.JupyterSettings).token == "from-env"


def test_jupyter_password_is_the_token_when_no_token_is_set(monkeypatch):
    monkeypatch.setenv("JUPYTER_PASSWORD", "runpod-pw")
    assert settings.load(settings.JupyterSettings).token == "runpod-pw"


def test_secret_names():
    assert settings.is_secret_name("RUNPOD_API_KEY") and settings.is_secret_name("HF_TOKEN")
    assert not settings.is_secret_name("RUNPOD_POD_ID")
