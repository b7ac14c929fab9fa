"""The workstation's env contract: every environment variable host_tools reads, typed, with its
default and doc (the pod's own contract is appliance/settings.py; pod code never imports this).

Env is read here and nowhere else in host_tools. `load(cls)` reads a class at call time and turns
a bad value into a SettingsError that names the variable and the expected form; the commands print
it as one line. The API key and URLs of RunPod and the Hub are the pod contract's (RunpodSettings,
HfSettings), which the workstation shares.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, PositiveInt, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from appliance.settings import SettingsError, load

ROOT = Path(__file__).resolve().parents[1]

__all__ = ["EngineSettings", "HostSshSettings", "ImageSettings", "LocalPodSettings",
           "SettingsError", "SmokeSettings", "WatchSettings", "host_settings_classes", "load"]


class _HostEnv(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore", env_ignore_empty=True)


class EngineSettings(_HostEnv):
    CONTAINER_ENGINE: Literal["docker", "podman"] | None = Field(
        None, description="Container engine for image builds, the local pod and the container "
        "tests; default Docker when its daemon answers, else podman."
    )


class ImageSettings(_HostEnv):
    IMAGE_REPO: str = Field(
        "chessbot-appliance", description="Image name that builds are tagged with and pushed "
        "to (lower-cased), e.g. ghcr.io/owner/chess-bot."
    )
    IMAGE_TAG: str | None = Field(
        None, description="First tag of a build (the second is latest); default the git commit, "
        "with -dirty when tracked files changed."
    )
    BASE_IMAGE: str = Field(
        "docker.io/library/debian:bookworm-slim", description="Base of the image build, pulled "
        "first; when it cannot be pulled the build takes the offline path."
    )
    OFFLINE: bool = Field(
        False, description="1: the offline build path (OFFLINE_BASE_IMAGE and a wheelhouse "
        "downloaded on the host) without trying the registry; also taken when BASE_IMAGE cannot "
        "be pulled."
    )
    OFFLINE_BASE_IMAGE: str = Field(
        "localhost/chessbot-base:bookworm", description="Base of the offline path; the default "
        "is debootstrapped locally (as root) when missing."
    )
    TORCH_INDEX_URL: str | None = Field(
        None, description="Extra package index for torch on the default path; default "
        "https://download.pytorch.org/whl/cpu for the cpu variant, none for cuda (PyPI's torch "
        "is the CUDA build). Not used when pip's find-links here hold the torch wheel."
    )
    DEBIAN_MIRROR: str | None = Field(
        None, description="Mirror debootstrap uses for the base image; default the one apt uses "
        "on this machine."
    )
    TORCH_VARIANT: Literal["cpu", "cuda"] = Field(
        "cpu", description="Which torch build the image gets: cpu or cuda."
    )
    TORCH_SPEC: str | None = Field(
        None, description="pip requirement for torch in the image; default the pinned build of "
        "TORCH_VARIANT."
    )


class LocalPodSettings(_HostEnv):
    LOCAL_POD_IMAGE: str | None = Field(
        None, description="Image `make up` and `make smoke` run; default IMAGE_REPO:latest, "
        "built when missing."
    )
    LOCAL_POD_NAME: str = Field(
        "chessbot-local", pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$",
        description="Container name of the local pod (its volume is NAME-workspace).",
    )


class SmokeSettings(_HostEnv):
    SMOKE_TRAIN_ROWS: PositiveInt = Field(64, description="Train games `make smoke` uses.")
    SMOKE_VAL_ROWS: PositiveInt = Field(16, description="Validation games `make smoke` uses.")
    SMOKE_EPOCHS: PositiveInt = Field(1, description="Epochs of the `make smoke` training.")
    SMOKE_BATCH_SIZE: PositiveInt = Field(16, description="Batch size of `make smoke`.")
    SMOKE_PROGRESS_JSONL_OUT: Path | None = Field(
        None, description="Where `make smoke` copies the training's progress JSONL; default "
        "nowhere."
    )
    RUN_ID: str | None = Field(
        None, description="Run id of `make smoke` (its directory under artifacts/smoke); "
        "default smoke-<UTC time>."
    )


class HostSshSettings(_HostEnv):
    """How the workstation's ssh checks pod host keys."""

    RUNPOD_SSH_HOST_KEY_CHECKING: Literal["accept-new", "yes", "ask"] = Field(
        "accept-new", json_schema_extra={"doc_default": "accept-new"},  # "KEY": not a secret
        description="OpenSSH StrictHostKeyChecking for pods (never 'no').",
    )
    RUNPOD_SSH_KNOWN_HOSTS_FILE: Path = Field(
        Path("config/runpod_known_hosts"),
        description="Persistent known-hosts file for pods; relative paths are under the checkout.",
    )

    @field_validator("RUNPOD_SSH_KNOWN_HOSTS_FILE")
    @classmethod
    def _not_dev_null(cls, value: Path) -> Path:
        # A /dev/null known-hosts file silently disables host-key pinning (peers.md, lesson 6).
        if str(value) in ("/dev/null", "") or value == Path("/dev/null"):
            raise ValueError("a real file is needed; /dev/null would disable host-key pinning")
        return value

    RUNPOD_SSH_IDENTITY_FILE: Path | None = Field(
        None, description="Private key for pods (ssh -i); default: ssh's own choice."
    )

    def known_hosts_path(self, repo_dir: Path = ROOT) -> Path:
        path = self.RUNPOD_SSH_KNOWN_HOSTS_FILE.expanduser()
        return path if path.is_absolute() else repo_dir / path


class WatchSettings(_HostEnv):
    """What `provision.py watch` (and `cycle --watch`) reports to besides the terminal."""

    RUNPOD_HEALTHCHECKS_URL: SecretStr | None = Field(
        None, description="Healthchecks-style ping URL for `provision.py watch`: URL/start, URL "
        "(success), URL/fail and URL/log get the run's last progress lines; a secret, never "
        "printed."
    )


def host_settings_classes() -> list[type[BaseSettings]]:
    """Every settings class of the workstation's env contract, in definition order."""
    return list(_HostEnv.__subclasses__())
