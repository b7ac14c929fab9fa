"""The env contract: every environment variable the pod reads, typed, with default and doc.

Env is read here and nowhere else. `load(cls)` turns a bad value into a SettingsError that names
the variable and the expected form. The predecessor's names (appliance.legacy_env) are read too,
below the new ones, by every settings class.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BeforeValidator, Field, SecretStr, ValidationError
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

DEFAULT_REPO_DIR = Path(__file__).resolve().parents[1]


def holds_checkout(path: Path) -> bool:
    """A project checkout: a git work tree, or a mounted copy with its requirements.txt."""
    return (path / ".git").exists() or (path / "requirements.txt").is_file()


class SettingsError(ValueError):
    """A bad environment variable, named, with the form it should have."""


class _Env(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore", env_ignore_empty=True)

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The predecessor's names come last, so a new name that is set wins."""
        from appliance.legacy_env import PredecessorSource  # it reads this module's classes

        return (init_settings, env_settings, dotenv_settings, file_secret_settings,
                PredecessorSource(settings_cls))


LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


class PathSettings(_Env):
    REPO_DIR: Path = Field(
        DEFAULT_REPO_DIR, description="The pod's state root (artifacts, timing log, sync state, "
        "dataset cache) and where REPO_URL is cloned; the image sets /workspace/chess-bot."
    )
    APPLIANCE_CODE_DIR: Path = Field(
        DEFAULT_REPO_DIR, description="The code baked in the image (sample data, scripts), used "
        "where REPO_DIR holds no checkout; the image sets /opt/chessbot."
    )
    RUNPOD_PHASE_TIMING_LOG: Path | None = Field(
        None,
        description="Phase-timing JSONL log; default $REPO_DIR/artifacts/timings/"
        "runpod_phase_times.jsonl.",
    )
    RUN_ID: str = Field("", description="Identifier written into every phase-timing record.")

    @property
    def state_root(self) -> Path:
        """Where the pod's state goes, whichever code runs: REPO_DIR (on the volume)."""
        return self.REPO_DIR

    @property
    def code_dir(self) -> Path:
        """Where the code is: the checkout in REPO_DIR, else the code baked in the image."""
        return self.REPO_DIR if holds_checkout(self.REPO_DIR) else self.APPLIANCE_CODE_DIR

    @property
    def timing_log(self) -> Path:
        return self.RUNPOD_PHASE_TIMING_LOG or (
            self.state_root / "artifacts" / "timings" / "runpod_phase_times.jsonl"
        )


class TrainingSettings(_Env):
    TRAIN_DATASET_DIR: Path | None = Field(
        None, description="Dataset dir with train.jsonl and val.jsonl; default: newest under "
        "$REPO_DIR/data/dataset/."
    )
    TRAIN_PATH: Path | None = Field(None, description="Training JSONL file (overrides the dir).")
    VAL_PATH: Path | None = Field(None, description="Validation JSONL file (overrides the dir).")
    TRAIN_OUTPUT_DIR: Path | None = Field(
        None, description="Where checkpoints and metrics go; default $REPO_DIR/artifacts/"
        "train/<run id>."
    )
    TRAIN_BATCH_SIZE: int | None = Field(None, gt=0, description="Games per batch.")
    TRAIN_NUM_WORKERS: int | None = Field(None, ge=0, description="DataLoader workers.")
    TRAIN_EPOCHS: int | None = Field(None, gt=0, description="Maximum epochs.")
    TRAIN_LR: float | None = Field(None, gt=0, description="Learning rate.")
    TRAIN_ENDGAME_PHASE_WEIGHT: float | None = Field(
        None, ge=0, description="Loss weight of endgame targets."
    )
    TRAIN_PROGRESS_JSONL_OUT: Path | None = Field(
        None, description="JSON-lines progress events file."
    )
    TRAIN_EXTRA_ARGS: str = Field("", description="Extra trainer flags, shell-quoted.")
    TRAIN_RUNTIME_MIN_CONTEXT: int | None = Field(
        None, ge=0, description="Moves of history a target position needs."
    )
    TRAIN_RUNTIME_MIN_TARGET: int | None = Field(
        None, ge=1, description="Moves that must remain from a target position."
    )
    TRAIN_RUNTIME_MAX_SAMPLES_PER_GAME: int | None = Field(
        None, ge=0, description="Target positions per game and epoch (0 = all)."
    )
    TRAIN_RENDEZVOUS_TIMEOUT_SECONDS: int = Field(
        300, gt=0, description="Cluster training: how long every node waits for all the others "
        "at the start (torchrun's rendezvous on the primary); past it each node ends with an "
        "error naming the rendezvous."
    )


class ClusterSettings(_Env):
    """A node of a RunPod Instant Cluster: RunPod sets these on every node; a lone pod sets
    none. With NUM_NODES > 1 the training preset runs torchrun across the nodes."""

    NUM_NODES: int = Field(1, ge=1, description="Nodes in the cluster (set by RunPod).")
    NODE_RANK: int = Field(
        0, ge=0, description="This node's rank (set by RunPod); node 0 is the primary: it holds "
        "global rank 0, which alone writes checkpoints, progress and metrics, and only it runs "
        "hf-sync."
    )
    NUM_TRAINERS: int | None = Field(
        None, ge=0, description="Trainer processes per node (RunPod: GPUs per node); on a GPU "
        "node the visible GPUs decide, on a CPU node this (default 1)."
    )
    PRIMARY_ADDR: str | None = Field(
        None, description="The primary node's address on the cluster network (set by RunPod)."
    )
    MASTER_ADDR: str | None = Field(None, description="RunPod's other name for PRIMARY_ADDR.")
    PRIMARY_PORT: int | None = Field(
        None, ge=1, le=65535, description="The port of the rendezvous on the primary (set by "
        "RunPod)."
    )
    MASTER_PORT: int | None = Field(
        None, ge=1, le=65535, description="RunPod's other name for PRIMARY_PORT."
    )
    NODE_ADDR: str | None = Field(
        None, description="This node's address on the cluster network (set by RunPod); gloo and "
        "NCCL use the interface that holds it unless GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME "
        "are set."
    )

    @property
    def is_cluster(self) -> bool:
        return self.NUM_NODES > 1

    @property
    def uploads(self) -> bool:
        """Only the primary node's artifacts are rank 0's, so only it runs hf-sync."""
        return not self.is_cluster or self.NODE_RANK == 0


class InferenceSettings(_Env):
    INFERENCE_PORT: int = Field(8000, ge=1, le=65535, description="Inference API port.")
    INFERENCE_MODEL_PATH: Path | None = Field(
        None, description="Checkpoint to serve; default: newest *.pt under $REPO_DIR/artifacts/."
    )
    INFERENCE_DEVICE: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto (CUDA when available), cpu or cuda."
    )
    INFERENCE_HOST: str = Field(
        "", pattern=r"^[0-9A-Za-z.:-]*$",
        description="Address the inference API listens on; default APPLIANCE_BIND_HOST.",
    )
    INFERENCE_TOPK_DEFAULT: int = Field(
        5, ge=1, le=50, description="Ranked moves /infer returns when the request gives no topk."
    )
    INFERENCE_LOG_LEVEL: LogLevel = Field("INFO", description="The inference API's log level.")
    INFERENCE_API_TOKEN: SecretStr | None = Field(
        None, description="When set, /infer* and /metrics need 'Authorization: Bearer <token>'."
    )
    INFERENCE_HEARTBEAT_FILE: Path | None = Field(
        None, description="Touched on API traffic (at most once a second) for the idle watchdog."
    )
    INFERENCE_MAX_HISTORY: int = Field(1024, ge=1, description="Most moves one position may have.")
    INFERENCE_MAX_BATCH_POSITIONS: int = Field(
        256, ge=1, description="Most positions one /infer/batch call may hold."
    )
    INFERENCE_MAX_BODY_BYTES: int = Field(
        1_048_576, ge=1024, description="Largest request body accepted."
    )
    INFERENCE_BODY_TIMEOUT_SECONDS: float = Field(
        10.0, gt=0, description="Most seconds a request body may take to arrive after its "
        "headers; 408 beyond."
    )
    INFERENCE_OPEN_DOCS: bool | None = Field(
        None, description="Serve /docs, /redoc and /openapi.json; default: only while "
        "INFERENCE_API_TOKEN is unset."
    )
    INFERENCE_BATCH_WINDOW_MS: float = Field(
        2.0, ge=0, description="Longest a forward pass waits for concurrent requests to join; "
        "only under load (a request that comes alone runs at once)."
    )
    INFERENCE_BATCH_MAX: int = Field(
        64, ge=1, description="Most positions in one forward pass."
    )
    INFERENCE_TORCH_THREADS: int = Field(
        0, ge=0, description="CPU threads of the forward pass (torch intra-op); 0: torch's "
        "default less one (at least 1), so a core stays with the event loop."
    )
    INFERENCE_GAME_CACHE_GAMES: int = Field(
        4096, ge=0, description="Most games whose network state /infer keeps for game_id "
        "(least recently used dropped first); 0: none."
    )
    INFERENCE_GAME_CACHE_MB: float = Field(
        256.0, gt=0, description="Most memory (MiB) the kept game states may take."
    )
    INFERENCE_GAME_TTL_SECONDS: float = Field(
        1800.0, gt=0, description="A game's kept state is dropped after this long unused."
    )
    INFERENCE_MODEL_RESCAN_SECONDS: float = Field(
        10.0, gt=0, description="While no model can be loaded, look again this often."
    )

    def listen_host(self, bind_host: str) -> str:
        return self.INFERENCE_HOST or bind_host


REPO_ID_PATTERN = r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$"
_REPO_ID_DOC = " (owner/name)"


class HfSettings(_Env):
    """Hugging Face Hub: artifact sync (hf-sync) and versioned datasets (publish/fetch)."""

    HF_TOKEN: SecretStr | None = Field(
        None, description="Hub token; write access for sync and publish (never printed)."
    )
    HF_TOKEN_PATH: Path | None = Field(
        None, description="File holding the Hub token, read when HF_TOKEN is empty."
    )
    HF_ENDPOINT: str = Field(
        "https://huggingface.co", pattern=r"^https?://[^\s/]+(/[^\s]*)?$",
        description="Hub URL; point it at host_tools.emulators.hubemu for tests and rehearsal.",
    )
    HF_REPO_ID: str | None = Field(
        None, pattern=REPO_ID_PATTERN,
        description="Repo (of HF_REPO_TYPE) that artifact sync uploads to" + _REPO_ID_DOC,
    )
    HF_REPO_TYPE: Literal["model", "dataset"] = Field(
        "model", description="Type of HF_REPO_ID: model or dataset."
    )
    HF_SYNC_SOURCE_DIR: Path | None = Field(
        None, description="Directory artifact sync watches; default $REPO_DIR/artifacts."
    )
    HF_SYNC_PATTERNS: str = Field(
        "*.pt,*.json", pattern=r"[^,\s]", description="Comma-separated file-name globs to sync."
    )
    HF_SYNC_STATE_DIR: Path | None = Field(
        None, description="Upload index and status.json (pending count); default "
        "$REPO_DIR/.appliance/hf-sync."
    )
    HF_SYNC_MODE: Literal["auto", "inotify", "poll"] = Field(
        "auto", description="Watcher: inotify with polling fallback (auto), or one of them only."
    )
    HF_SYNC_DEBOUNCE_SECONDS: float = Field(
        2.0, ge=0, le=3600, description="Quiet time after a file's last write before its upload."
    )
    HF_SYNC_POLL_SECONDS: float = Field(
        10.0, gt=0, le=3600, description="Scan interval of the polling fallback."
    )
    HF_SYNC_LOG_LEVEL: LogLevel = Field("INFO", description="The artifact sync's log level.")
    HF_DATASET_REPO_ID: str | None = Field(
        None, pattern=REPO_ID_PATTERN,
        description="Dataset repo for publish/fetch" + _REPO_ID_DOC,
    )
    HF_DATASET_PATH_PREFIX: str = Field(
        "validated_datasets", pattern=r"^[A-Za-z0-9_-][\w.-]*(/[A-Za-z0-9_-][\w.-]*)*$",
        description="Folder of the dataset repo that holds <name>/<version>/.",
    )
    HF_DATASET_CACHE_DIR: Path | None = Field(
        None, description="Where fetched datasets go; default $REPO_DIR/data/hf_datasets."
    )
    HF_FETCH_LATEST_ALL_DATASETS: bool = Field(
        False, description="Preset: fetch the newest version of every dataset and train on them."
    )
    HF_DATASET_SCHEMA_FILTER: Literal[
        "auto", "game_jsonl_runtime_splice_v1", "splice_rows_legacy"
    ] = Field("auto", description="Preset: row format to train on; auto prefers game rows.")
    HF_DATASET_FETCH_MANIFEST: Path | None = Field(
        None, description="Aggregate fetch manifest; default <cache dir>/fetch_manifest.json."
    )
    HF_USE_EXISTING_FETCH_MANIFEST: bool = Field(
        False, description="Preset: reuse HF_DATASET_FETCH_MANIFEST instead of fetching; "
        "fetches when that file does not exist."
    )

    @property
    def token(self) -> str | None:
        return self.HF_TOKEN.get_secret_value() if self.HF_TOKEN else None

    @property
    def sync_patterns(self) -> list[str]:
        return [p.strip() for p in self.HF_SYNC_PATTERNS.split(",") if p.strip()]

    def sync_source_dir(self, repo_dir: Path) -> Path:
        return self.HF_SYNC_SOURCE_DIR or repo_dir / "artifacts"

    def sync_state_dir(self, repo_dir: Path) -> Path:
        return self.HF_SYNC_STATE_DIR or repo_dir / ".appliance" / "hf-sync"

    def dataset_cache_dir(self, repo_dir: Path) -> Path:
        return self.HF_DATASET_CACHE_DIR or repo_dir / "data" / "hf_datasets"

    def fetch_manifest(self, repo_dir: Path) -> Path:
        return self.HF_DATASET_FETCH_MANIFEST or (
            self.dataset_cache_dir(repo_dir) / "fetch_manifest.json"
        )


# -- the pod runtime: services, repo, ssh, jupyter, watchdog, runpod, system paths ---------------

_FLAG_TRUE = ("1", "true", "yes", "on")
_FLAG_FALSE = ("0", "false", "no", "off")


def _flag(value: object) -> object:
    if isinstance(value, str):
        v = value.strip().lower()
        if v in _FLAG_TRUE:
            return True
        if v in _FLAG_FALSE:
            return False
        raise PydanticCustomError("flag", "expected 1 or 0 (also true/false, yes/no, on/off)")
    return value


def _port(value: object) -> object:
    try:
        port = int(str(value).strip())
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise PydanticCustomError("port", "expected a TCP port number 1..65535")
    return port


Flag = Annotated[bool, BeforeValidator(_flag)]
Port = Annotated[int, BeforeValidator(_port)]

SECRET_WORDS = ("TOKEN", "KEY", "PASSWORD", "SECRET", "CREDENTIAL")


def is_secret_name(name: str) -> bool:
    """Variables whose values are never written to logs, configs or login shells."""
    return any(w in name.upper() for w in SECRET_WORDS)


class ServiceSettings(_Env):
    """Which supervisord programs the pod runs."""

    START_SSHD: Flag = Field(True, description="Run sshd, program sshd.")
    START_JUPYTER: Flag = Field(True, description="Run Jupyter Lab as runner, program jupyter.")
    START_INFERENCE_API: Flag = Field(
        True, description="Run the inference API, program inference; left out without torch."
    )
    START_HF_SYNC: Flag = Field(False, description="Run the HF artifact sync, program hf-sync.")
    START_IDLE_WATCHDOG: Flag = Field(
        False, description="Run the idle watchdog, program idle-watchdog."
    )


class RepoSettings(_Env):
    """The project checkout the pod works in."""

    REPO_URL: str = Field(
        "", pattern=r"^\S*$",
        description="Git URL cloned into REPO_DIR at start; empty = the code baked in the image.",
    )
    REPO_REF: str = Field(
        "", pattern=r"^[^\s~^:?*\[\\]*$",
        description="Branch, tag or commit to check out; empty = the remote's default branch.",
    )
    CLONE_REPO_ON_START: Flag = Field(True, description="Clone REPO_URL when REPO_DIR has none.")
    GIT_AUTO_PULL: Flag = Field(True, description="Fast-forward an existing checkout at start.")
    SYNC_REQUIREMENTS_ON_START: Flag = Field(
        True, description="pip install -r REPO_DIR/requirements.txt when its hash changed."
    )
    FORCE_REQUIREMENTS_SYNC: Flag = Field(
        False, description="Run pip install -r even when the hash is unchanged."
    )


class SshSettings(_Env):
    PUBLIC_KEY: str = Field(
        "", description="Public keys for runner, one per line; RunPod sets it from the account."
    )
    AUTHORIZED_KEYS: str = Field("", description="More public keys for runner, one per line.")
    SSH_PORT: Port = Field(22, description="Port sshd listens on.")


class JupyterSettings(_Env):
    JUPYTER_PORT: Port = Field(8888, description="Port Jupyter Lab listens on.")
    JUPYTER_TOKEN: SecretStr | None = Field(
        None, description="Jupyter token (never printed); unset: JUPYTER_PASSWORD, else one is "
        "generated into the secrets dir."
    )
    JUPYTER_PASSWORD: SecretStr | None = Field(
        None, description="RunPod's name for the Jupyter token; used when JUPYTER_TOKEN is unset."
    )

    @property
    def token(self) -> str | None:
        secret = self.JUPYTER_TOKEN or self.JUPYTER_PASSWORD
        return secret.get_secret_value() if secret else None


class WatchdogSettings(_Env):
    """The idle watchdog, program idle-watchdog."""

    AUTOSTOP_IDLE_MINUTES: float = Field(
        30.0, gt=0, description="Stop the pod after this many idle minutes (fractions allowed: "
        "0.1 = 6 s)."
    )
    AUTOSTOP_ACTION: Literal["runpod_api", "exit", "none"] = Field(
        "runpod_api", description="runpod_api (stop this pod), exit (end the container) or "
        "none (log only)."
    )
    AUTOSTOP_POLL_SECONDS: float = Field(60.0, gt=0, description="How often idleness is checked.")
    AUTOSTOP_GPU_UTIL_PERCENT: float = Field(
        5.0, ge=0, le=100, description="GPU utilisation above this counts as activity."
    )
    AUTOSTOP_GPU_MEM_MB: float | None = Field(
        None, ge=0, description="GPU memory in use (MiB) at or above this counts as activity; "
        "unset: it does not (an idle inference server keeps its weights resident)."
    )
    AUTOSTOP_PROCESS_PATTERNS: str = Field(
        "appliance.training", description="Comma-separated command-line substrings of processes "
        "that count as activity."
    )
    AUTOSTOP_WARN_MINUTES: float = Field(
        5.0, ge=0, description="Wall-message logged-in users this many minutes before the stop; "
        "activity then cancels it."
    )
    AUTOSTOP_SYNC_FLUSH_SECONDS: float = Field(
        600.0, gt=0, description="Longest wait for pending artifact uploads before a stop; "
        "unfinished: no stop."
    )
    AUTOSTOP_KEEPALIVE_FILE: Path | None = Field(
        None, description="Keep-alive file (touch it, or `python -m appliance.watchdog keepalive "
        "2h`); default $WORKSPACE_DIR/.autostop-keepalive."
    )
    AUTOSTOP_MAX_HOURS: float | None = Field(
        None, gt=0, description="Hard cap: stop the pod this many hours after its container "
        "started, active or not (pending uploads are flushed first). Set, it runs the watchdog "
        "even with START_IDLE_WATCHDOG=0 (then for the cap alone)."
    )
    AUTOSTOP_LOG_LEVEL: LogLevel = Field("INFO", description="The idle watchdog's log level.")


class RunpodSettings(_Env):
    RUNPOD_API_KEY: SecretStr | None = Field(
        None, description="Pod-scoped API key RunPod injects (never printed)."
    )
    RUNPOD_POD_ID: str = Field("", description="This pod's id (RunPod injects it).")
    RUNPOD_REST_URL: str = Field(
        "https://api.runpod.io/v2", pattern=r"^https?://\S+$",
        description="RunPod REST v2 base URL (v1 was retired 2026-11-15; point it at localpod "
        "for tests).",
    )
    RUNPOD_GRAPHQL_URL: str = Field(
        "https://api.runpod.io/graphql", pattern=r"^https?://\S+$",
        description="RunPod GraphQL URL (point it at localpod for tests).",
    )


class RuntimeSettings(_Env):
    """Where the bootstrap puts things; tests point every path into a temporary root."""

    WORKSPACE_DIR: Path = Field(
        Path("/workspace"), description="Persistent volume: Jupyter's root, appliance state."
    )
    HF_HOME: Path | None = Field(
        None, description="Hugging Face cache for services and shells; default "
        "$WORKSPACE_DIR/.cache/huggingface."
    )
    APPLIANCE_STATE_DIR: Path | None = Field(
        None, description="Logs, SSH host keys, records; default $WORKSPACE_DIR/.appliance."
    )
    APPLIANCE_ETC_DIR: Path = Field(
        Path("/etc"), description="Holds ssh/, supervisor/ and profile.d/ written at start."
    )
    APPLIANCE_RUN_DIR: Path = Field(
        Path("/run"), description="Runtime dir: supervisor socket, pid file, secret files."
    )
    APPLIANCE_SSHD_PRIVSEP_DIR: Path = Field(
        Path("/run/sshd"), description="sshd's privilege-separation dir (compiled into sshd)."
    )
    APPLIANCE_BIN_DIR: Path = Field(
        Path("/usr/local/bin"), description="Where the supervisorctl command for runner goes."
    )
    APPLIANCE_SSHD: Path = Field(Path("/usr/sbin/sshd"), description="The sshd binary.")
    APPLIANCE_USER: str = Field(
        "runner", pattern=r"^[a-z_][a-z0-9_-]{0,31}$", description="The login account."
    )
    APPLIANCE_USER_HOME: Path | None = Field(
        None, description="The account's home (authorized_keys, Jupyter's HOME); default "
        "/home/$APPLIANCE_USER."
    )
    APPLIANCE_PYTHON: Path = Field(
        Path(sys.executable), json_schema_extra={"doc_default": ""},
        description="Python of the services and of pip; default the one running the bootstrap.",
    )
    APPLIANCE_REQUIREMENTS_STAMP: Path | None = Field(
        None, description="Hash of the last installed requirements.txt; default in the venv of "
        "APPLIANCE_PYTHON."
    )
    APPLIANCE_BIND_HOST: str = Field(
        "0.0.0.0", pattern=r"^[0-9A-Za-z.:-]+$",
        description="Address sshd, Jupyter and the inference API listen on.",
    )
    APPLIANCE_EXTRA_CONF_DIR: Path | None = Field(
        None, description="Extra supervisord program files (*.conf) to include."
    )
    APPLIANCE_SECRETS_DIR: Path | None = Field(
        None, description="Secret files named after their variable, read when it is unset; "
        "default $APPLIANCE_RUN_DIR/appliance/secrets."
    )
    APPLIANCE_FATAL_COOLDOWN_SECONDS: float = Field(
        60.0, gt=0, description="Wait before a FATAL program is started again."
    )
    APPLIANCE_FATAL_MAX_REVIVES: int = Field(
        5, ge=0, description="Revivals in a row before a FATAL program is left alone; sshd has "
        "no limit."
    )


class DistributedEnv(_Env):
    """What torchrun tells each worker process. A process is one of a group when RANK is set:
    RunPod sets WORLD_SIZE on every cluster node (its GPU count), not RANK."""

    RANK: int | None = Field(None, ge=0)
    LOCAL_RANK: int = Field(0, ge=0)
    WORLD_SIZE: int = Field(1, ge=1)


def pod_settings_classes() -> list[type[BaseSettings]]:
    """Every settings class of the pod's env contract, in definition order (not torchrun's)."""
    return [c for c in _Env.__subclasses__() if c is not DistributedEnv]


S = TypeVar("S", bound=BaseSettings)


def default(cls: type[BaseSettings], name: str) -> Any:
    """A field's declared default: the one place constants such as the login account or the
    ports come from, for code that needs them without reading the environment."""
    return cls.model_fields[name].default


def pod_ports() -> tuple[str, ...]:
    """The ports the image serves, as RunPod port specs: SSH over TCP, Jupyter and the API
    over RunPod's HTTP proxy."""
    return (f"{default(SshSettings, 'SSH_PORT')}/tcp",
            f"{default(JupyterSettings, 'JUPYTER_PORT')}/http",
            f"{default(InferenceSettings, 'INFERENCE_PORT')}/http")


def load(cls: type[S]) -> S:
    """Read `cls` from the environment; SettingsError names each bad variable.

    An unset variable is also looked for as a file named after it in APPLIANCE_SECRETS_DIR: the
    bootstrap moves secrets there so that they stay out of the services' environment.
    """
    secrets_dir = os.environ.get("APPLIANCE_SECRETS_DIR")
    try:
        if secrets_dir and Path(secrets_dir).is_dir():
            return cls(_secrets_dir=secrets_dir)
        return cls()
    except ValidationError as exc:
        from appliance.legacy_env import outcomes

        problems = []
        read_as = {o.old.new: o for o in outcomes()
                   if o.status == "read" and o.old.new and not os.environ.get(o.old.new)}
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"])
            field = cls.model_fields.get(name)
            doc = f" ({field.description})" if field and field.description else ""
            secret = any(w in name for w in ("TOKEN", "KEY", "PASSWORD", "SECRET"))
            shown = "<redacted>" if secret else repr(err.get("input"))
            if name in read_as:  # the value came from the predecessor's name: name that one
                problems.append(f"{read_as[name].named(err.get('input'))}: {err['msg']}{doc}")
                continue
            problems.append(f"{name}={shown}: {err['msg']}{doc}")
        raise SettingsError("bad environment: " + "; ".join(problems)) from None
