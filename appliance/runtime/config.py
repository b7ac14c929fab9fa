"""The pod runtime's model: the settings it reads (PodConfig) and where it puts things (Layout).

PodConfig.load reads every pod settings class once, naming all bad variables in one error, so
the bootstrap, render and status share one validated view; Layout derives every path the
runtime reads or writes from RuntimeSettings. `strip_credentials` hides a URL's user:password
wherever the runtime shows a URL, and `url_password` gives the bootstrap's redactor its secret.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

from pydantic import SecretStr
from pydantic_settings import BaseSettings

from appliance import settings

# The bootstrap's `source` in the phase-timing log (status reads the last boot by it).
BOOT_SOURCE = "runpod_entrypoint"
HOST_KEY_TYPES = ("ed25519", "ecdsa")
LOGIN_SHELL = "/bin/bash"
SYSTEM_PATH = ("/usr/local/bin", "/usr/bin", "/bin")

S = TypeVar("S", bound=BaseSettings)


def secret_fields() -> list[str]:
    """Every variable declared as a SecretStr: kept out of logs, configs and the services' env."""
    out = []
    for klass in settings.pod_settings_classes():
        for name, f in klass.model_fields.items():
            if SecretStr in (f.annotation, *typing.get_args(f.annotation)):
                out.append(name)
    return out


@dataclass(frozen=True)
class PodConfig:
    """The settings the pod runtime reads, loaded together."""

    runtime: settings.RuntimeSettings
    services: settings.ServiceSettings
    paths: settings.PathSettings
    repo: settings.RepoSettings
    ssh: settings.SshSettings
    jupyter: settings.JupyterSettings
    inference: settings.InferenceSettings
    # Every pod settings class as loaded (those above too), for the secrets they hold.
    groups: tuple[BaseSettings, ...] = field(repr=False, compare=False)

    @classmethod
    def load(cls) -> PodConfig:
        """Every pod settings class is read once; all bad variables are named in one error."""
        problems: list[str] = []
        loaded: dict[type[BaseSettings], BaseSettings] = {}
        for klass in settings.pod_settings_classes():
            try:
                loaded[klass] = settings.load(klass)
            except settings.SettingsError as exc:
                problems.append(str(exc).removeprefix("bad environment: "))
        if problems:
            raise settings.SettingsError("bad environment: " + "; ".join(problems))

        def group(klass: type[S]) -> S:
            inst = loaded[klass]
            assert isinstance(inst, klass)
            return inst

        return cls(group(settings.RuntimeSettings), group(settings.ServiceSettings),
                   group(settings.PathSettings), group(settings.RepoSettings),
                   group(settings.SshSettings), group(settings.JupyterSettings),
                   group(settings.InferenceSettings), tuple(loaded.values()))

    @property
    def max_hours(self) -> float | None:
        """AUTOSTOP_MAX_HOURS: the watchdog's hard cap, which runs the idle-watchdog program even
        with START_IDLE_WATCHDOG=0."""
        wd = next(g for g in self.groups if isinstance(g, settings.WatchdogSettings))
        return wd.AUTOSTOP_MAX_HOURS

    @property
    def uploads(self) -> bool:
        """False on a cluster node other than the primary: rank 0's artifacts are not there."""
        return next(g for g in self.groups if isinstance(g, settings.ClusterSettings)).uploads

    def secret_values(self) -> dict[str, str]:
        """The secrets that are set, by variable."""
        out: dict[str, str] = {}
        for inst in self.groups:
            for name in type(inst).model_fields:
                value = getattr(inst, name)
                if isinstance(value, SecretStr) and value.get_secret_value():
                    out[name] = value.get_secret_value()
        return out


@dataclass(frozen=True)
class Layout:
    """Every path the bootstrap reads or writes, from RuntimeSettings."""

    workspace: Path
    state_dir: Path
    etc_dir: Path
    run_dir: Path
    privsep_dir: Path
    bin_dir: Path
    secrets_dir: Path
    user: str
    user_home: Path
    python: Path
    stamp: Path
    hf_home: Path
    sshd: Path

    @classmethod
    def of(cls, rt: settings.RuntimeSettings) -> Layout:
        state = rt.APPLIANCE_STATE_DIR or rt.WORKSPACE_DIR / ".appliance"
        python = rt.APPLIANCE_PYTHON
        return cls(
            workspace=rt.WORKSPACE_DIR,
            state_dir=state,
            etc_dir=rt.APPLIANCE_ETC_DIR,
            run_dir=rt.APPLIANCE_RUN_DIR,
            privsep_dir=rt.APPLIANCE_SSHD_PRIVSEP_DIR,
            bin_dir=rt.APPLIANCE_BIN_DIR,
            secrets_dir=rt.APPLIANCE_SECRETS_DIR or rt.APPLIANCE_RUN_DIR / "appliance" / "secrets",
            user=rt.APPLIANCE_USER,
            user_home=rt.APPLIANCE_USER_HOME or Path("/home") / rt.APPLIANCE_USER,
            python=python,
            stamp=rt.APPLIANCE_REQUIREMENTS_STAMP
            or python.parent.parent / ".appliance-requirements.sha256",
            hf_home=rt.HF_HOME or rt.WORKSPACE_DIR / ".cache" / "huggingface",
            sshd=rt.APPLIANCE_SSHD,
        )

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def host_key_store(self) -> Path:
        return self.state_dir / "ssh"

    @property
    def ssh_dir(self) -> Path:
        return self.etc_dir / "ssh"

    @property
    def sshd_config(self) -> Path:
        return self.etc_dir / "ssh" / "sshd_config"

    @property
    def supervisor_dir(self) -> Path:
        return self.etc_dir / "supervisor"

    @property
    def supervisord_conf(self) -> Path:
        return self.etc_dir / "supervisor" / "supervisord.conf"

    @property
    def conf_d(self) -> Path:
        return self.etc_dir / "supervisor" / "conf.d"

    @property
    def env_file(self) -> Path:
        return self.etc_dir / "profile.d" / "appliance-env.sh"

    @property
    def socket_dir(self) -> Path:
        return self.run_dir / "supervisor"

    @property
    def socket(self) -> Path:
        return self.run_dir / "supervisor" / "supervisor.sock"

    @property
    def pidfile(self) -> Path:
        return self.run_dir / "supervisord.pid"

    @property
    def appliance_run(self) -> Path:
        return self.run_dir / "appliance"

    @property
    def fatal_dir(self) -> Path:
        return self.run_dir / "appliance" / "fatal"

    @property
    def heartbeat_dir(self) -> Path:
        """Written by inference (as the user), read by the idle watchdog."""
        return self.run_dir / "appliance" / "heartbeat"

    @property
    def boot_record(self) -> Path:
        return self.run_dir / "appliance" / "bootstrap.json"

    @property
    def supervisorctl(self) -> Path:
        return self.bin_dir / "supervisorctl"

    @property
    def authorized_keys(self) -> Path:
        return self.user_home / ".ssh" / "authorized_keys"

    @property
    def venv_bin(self) -> Path:
        return self.python.parent

    def host_key(self, key_type: str) -> Path:
        return self.ssh_dir / f"ssh_host_{key_type}_key"

    def secret_file(self, name: str) -> Path:
        return self.secrets_dir / name


def strip_credentials(url: str) -> str:
    """A URL without its user:password part (for logs and shells)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def url_password(url: str) -> str:
    """The password part of a URL ("" when it has none), so logs can hide it."""
    try:
        return urlsplit(url).password or ""
    except ValueError:
        return ""
