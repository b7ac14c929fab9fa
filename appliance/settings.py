"""The env contract: every environment variable the pod reads, typed, with default and doc.

Env is read here and nowhere else. `load(cls)` turns a bad value into a SettingsError that names
the variable and the expected form.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_REPO_DIR = Path(__file__).resolve().parents[1]


class SettingsError(ValueError):
    """A bad environment variable, named, with the form it should have."""


class _Env(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore", env_ignore_empty=True)


class PathSettings(_Env):
    REPO_DIR: Path = Field(DEFAULT_REPO_DIR, description="Checkout of this project in the pod.")
    RUNPOD_PHASE_TIMING_LOG: Path | None = Field(
        None,
        description="Phase-timing JSONL log; default $REPO_DIR/artifacts/timings/"
        "runpod_phase_times.jsonl.",
    )
    RUN_ID: str = Field("", description="Identifier written into every phase-timing record.")

    @property
    def timing_log(self) -> Path:
        return self.RUNPOD_PHASE_TIMING_LOG or (
            self.REPO_DIR / "artifacts" / "timings" / "runpod_phase_times.jsonl"
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


class InferenceSettings(_Env):
    INFERENCE_PORT: int = Field(8000, ge=1, le=65535, description="Inference API port.")
    INFERENCE_MODEL_PATH: Path | None = Field(
        None, description="Checkpoint to serve; default: newest *.pt under $REPO_DIR/artifacts/."
    )
    INFERENCE_DEVICE: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto (CUDA when available), cpu or cuda."
    )
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
    INFERENCE_BATCH_WINDOW_MS: float = Field(
        2.0, ge=0, description="How long a forward pass waits for concurrent requests to join."
    )
    INFERENCE_BATCH_MAX: int = Field(
        64, ge=1, description="Most positions in one forward pass."
    )


_REPO_ID = r"^([A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}$"
_REPO_ID_DOC = " (owner/name)"


class HfSettings(_Env):
    """Hugging Face Hub: artifact sync (hf-sync) and versioned datasets (publish/fetch)."""

    HF_TOKEN: SecretStr | None = Field(
        None, description="Hub token; write access for sync and publish (never printed)."
    )
    HF_ENDPOINT: str = Field(
        "https://huggingface.co", pattern=r"^https?://[^\s/]+(/[^\s]*)?$",
        description="Hub URL; point it at host_tools.hubemu for tests and rehearsal.",
    )
    HF_REPO_ID: str | None = Field(
        None, pattern=_REPO_ID, description="Model repo that artifact sync uploads to" + _REPO_ID_DOC
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
    HF_DATASET_REPO_ID: str | None = Field(
        None, pattern=_REPO_ID, description="Dataset repo for publish/fetch" + _REPO_ID_DOC
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
        False, description="Preset: reuse HF_DATASET_FETCH_MANIFEST instead of fetching."
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


class DistributedEnv(_Env):
    """What torchrun tells each worker process."""

    RANK: int = Field(0, ge=0)
    LOCAL_RANK: int = Field(0, ge=0)
    WORLD_SIZE: int = Field(1, ge=1)


S = TypeVar("S", bound=BaseSettings)


def load(cls: type[S]) -> S:
    """Read `cls` from the environment; SettingsError names each bad variable."""
    try:
        return cls()
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"])
            field = cls.model_fields.get(name)
            doc = f" ({field.description})" if field and field.description else ""
            secret = any(w in name for w in ("TOKEN", "KEY", "PASSWORD", "SECRET"))
            shown = "<redacted>" if secret else repr(err.get("input"))
            problems.append(f"{name}={shown}: {err['msg']}{doc}")
        raise SettingsError("bad environment: " + "; ".join(problems)) from None
