"""The predecessor's environment variables, declared once, and what becomes of each here.

RunPod templates written for the predecessor keep working: each old name is read as a variable of
this appliance (its unit converted), honoured through a variable added for its behaviour, or
reported as having no effect, with the reason. `translate` says what became of each old name that
is set (pure: a mapping in, outcomes out). `PredecessorSource` feeds the values to every settings
class of `appliance.settings`, below the new names (a new name that is set wins; that module
imports this one where it reads the environment, as this one reads its classes); the bootstrap
logs one line per outcome; `appliance.runtime.envdoc` renders OLD_VARIABLES as the migration table.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Literal

from pydantic.fields import FieldInfo
from pydantic_settings import PydanticBaseSettingsSource

from appliance.settings import PathSettings, SettingsError, is_secret_name

Convert = Callable[[str, str], str | None]  # (old value, REPO_DIR) -> new value, None = unset


@dataclass(frozen=True)
class OldVariable:
    name: str
    new: str | None  # the variable it is read as (itself when kept); None: no effect
    meaning: str  # what it did in the predecessor, with its unit and default
    effect: str  # how it is read here, or why it has no effect
    convert: Convert | None = None  # None: the value is taken as it is


def _same(value: str, repo_dir: str) -> str:
    return value


def _number(value: str, unit: str) -> float:
    try:
        return float(value.strip())
    except ValueError:
        raise ValueError(f"expected a number of {unit}") from None


def _text(x: float) -> str:
    return f"{x:.12g}"


def _seconds_to_minutes(value: str, repo_dir: str) -> str:
    return _text(_number(value, "seconds") / 60)


def _verbose_to_level(value: str, repo_dir: str) -> str:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return "INFO"
    if v in ("0", "false", "no", "off"):
        return "WARNING"
    raise ValueError("expected 1 or 0")


def _model_path(value: str, repo_dir: str) -> str | None:
    v = value.strip()
    if v in ("", "latest"):
        return None  # INFERENCE_MODEL_PATH's default: the newest *.pt
    path = PurePosixPath(v)
    return str(path if path.is_absolute() else PurePosixPath(repo_dir) / path)


def _parent_dir(value: str, repo_dir: str) -> str:
    return str(PurePosixPath(value.strip()).parent)


OLD_VARIABLES: tuple[OldVariable, ...] = (
    # -- renamed, the unit converted where it differs --
    OldVariable("START_HF_WATCH", "START_HF_SYNC", "run the HF artifact sync watcher (0)",
                "same meaning"),
    OldVariable("FORCE_PIP_SYNC", "FORCE_REQUIREMENTS_SYNC",
                "pip install requirements.txt even when its hash is unchanged (0)",
                "same meaning"),
    OldVariable("RUNPOD_PHASE_TIMING_RUN_ID", "RUN_ID", "run id of the phase-timing records",
                "same meaning"),
    OldVariable("RUNNER_USER", "APPLIANCE_USER", "the login account (runner)", "same meaning"),
    OldVariable("INFERENCE_API_HOST", "INFERENCE_HOST",
                "address the inference API listens on (0.0.0.0)",
                "same meaning; sshd and Jupyter keep APPLIANCE_BIND_HOST"),
    OldVariable("INFERENCE_API_PORT", "INFERENCE_PORT", "inference API port (8000)",
                "same meaning"),
    OldVariable("INFERENCE_API_MODEL_PATH", "INFERENCE_MODEL_PATH",
                "checkpoint to serve; latest = the newest `*.pt` under $REPO_DIR/artifacts "
                "(latest)", "latest: left unset, which means the newest `*.pt`; a relative path is "
                "taken under REPO_DIR as before", _model_path),
    OldVariable("INFERENCE_API_DEVICE", "INFERENCE_DEVICE", "auto, cpu or cuda (auto)",
                "same meaning"),
    OldVariable("ACTIVITY_HEARTBEAT_FILE", "INFERENCE_HEARTBEAT_FILE",
                "file the inference API touches and the idle watchdog reads",
                "same meaning"),
    OldVariable("IDLE_TIMEOUT_SECONDS", "AUTOSTOP_IDLE_MINUTES",
                "idle seconds before the stop (3600)", "seconds / 60", _seconds_to_minutes),
    OldVariable("IDLE_CHECK_INTERVAL_SECONDS", "AUTOSTOP_POLL_SECONDS",
                "seconds between idleness checks (60)", "same unit"),
    OldVariable("IDLE_GPU_UTIL_THRESHOLD", "AUTOSTOP_GPU_UTIL_PERCENT",
                "GPU utilisation % at or above which the GPU is busy (10)",
                "same unit; busy above it here"),
    OldVariable("IDLE_ACTIVE_PROCESS_PATTERNS", "AUTOSTOP_PROCESS_PATTERNS",
                "comma-separated command-line substrings of busy processes",
                "same form; this appliance's trainer is appliance.training"),
    OldVariable("RUNPOD_GRAPHQL_ENDPOINT", "RUNPOD_GRAPHQL_URL", "RunPod GraphQL URL",
                "same meaning; stops go through REST v2 first"),
    OldVariable("HF_SYNC_INTERVAL_SECONDS", "HF_SYNC_POLL_SECONDS",
                "seconds between artifact scans (120)",
                "same unit: the polling interval (inotify, where it works, needs none)"),
    OldVariable("TRAIN_PHASE_WEIGHT_ENDGAME", "TRAIN_ENDGAME_PHASE_WEIGHT",
                "loss weight of endgame targets (2.0)", "same meaning"),
    OldVariable("OUTPUT_PATH", "TRAIN_OUTPUT_DIR", "the trained model's .pt file",
                "its directory; the model is model_best.pt in it", _parent_dir),
    OldVariable("METRICS_OUT", "TRAIN_OUTPUT_DIR", "the training metrics .json file",
                "its directory (OUTPUT_PATH's wins); the metrics are metrics.json in it",
                _parent_dir),
    # -- honoured through a variable added for it --
    OldVariable("IDLE_GPU_MEM_MB_THRESHOLD", "AUTOSTOP_GPU_MEM_MB",
                "GPU memory in use (MiB) that counts as activity (1024)",
                "same unit; unset here: memory does not count"),
    OldVariable("INFERENCE_API_TOPK_DEFAULT", "INFERENCE_TOPK_DEFAULT",
                "top-k of /infer when the request gives none (10)", "same meaning (1..50)"),
    OldVariable("INFERENCE_API_VERBOSE", "INFERENCE_LOG_LEVEL", "verbose inference logs (1)",
                "1: INFO, 0: WARNING", _verbose_to_level),
    OldVariable("HF_SYNC_VERBOSE", "HF_SYNC_LOG_LEVEL", "verbose artifact sync logs (1)",
                "1: INFO, 0: WARNING", _verbose_to_level),
    OldVariable("IDLE_WATCHDOG_VERBOSE", "AUTOSTOP_LOG_LEVEL", "verbose idle watchdog logs (1)",
                "1: INFO, 0: WARNING", _verbose_to_level),
    OldVariable("HF_REPO_TYPE", "HF_REPO_TYPE", "repo type artifact sync uploads to (model)",
                "kept: artifact sync uploads to a repo of this type (model or dataset)"),
    # -- no effect --
    OldVariable("VENV_DIR", None, "the Python environment of the services and of pip",
                "the services and pip use APPLIANCE_PYTHON (the image sets it to its venv's "
                "python)"),
    OldVariable("HF_HUB_ENABLE_HF_TRANSFER", None, "hf_transfer downloads (1)",
                "huggingface_hub 1.0 and later no longer use hf_transfer (large files go "
                "through hf_xet)"),
    OldVariable("RUNPOD_PHASE_TIMING_ENABLED", None, "write the phase-timing log (1)",
                "the phase log is always written (status and the watchdog's stop records "
                "read it); RUNPOD_PHASE_TIMING_LOG moves it"),
)
BY_NAME = {v.name: v for v in OLD_VARIABLES}

Status = Literal["read", "kept", "ignored", "no_effect", "bad"]


def shown(name: str, value: str) -> str:
    """A value as these lines show it: a secret variable's never."""
    return "***" if is_secret_name(name) else value


@dataclass(frozen=True)
class Outcome:
    """What became of one old variable that is set."""

    old: OldVariable
    raw: str
    status: Status
    value: str | None = None  # read: the new variable's value (None: left unset, its default)
    winner: str = ""  # ignored: the variable that wins
    winner_value: str = ""
    problem: str = ""  # bad: what is wrong with the old value

    def line(self) -> str:
        """The bootstrap's log line for it."""
        old = f"{self.old.name}={shown(self.old.name, self.raw)}"
        new = self.old.new or ""
        if self.status == "read":
            if self.value is None:
                return f"{old} read as {new} unset (its default)"
            return f"{old} read as {new}={shown(new, self.value)}"
        if self.status == "kept":
            return f"{old} {self.old.effect}"
        if self.status == "ignored":
            return (f"{old} ignored: {self.winner}={shown(self.winner, self.winner_value)} is "
                    "set and wins")
        if self.status == "no_effect":
            return f"{old} has no effect: {self.old.effect}"
        return self.error()

    def error(self) -> str:
        """A bad value, named by the old variable (as SettingsError words it)."""
        raw = shown(self.old.name, self.raw)
        return f"{self.old.name}={raw!r}: {self.problem} (read as {self.old.new})"

    def named(self, value: object) -> str:
        """The old variable, for an error in the value it was read as."""
        new = self.old.new or ""
        raw = shown(self.old.name, self.raw)
        return f"{self.old.name}={raw!r} (read as {new}={shown(new, str(value))})"


def _agree(a: str, b: str) -> bool:
    a, b = a.strip(), b.strip()
    if a == b:
        return True
    try:
        return float(a) == float(b)
    except ValueError:
        return False


def translate(environ: Mapping[str, str], repo_dir: str) -> list[Outcome]:
    """What becomes of each old variable set (non-empty) in `environ`, in declaration order.

    A new variable that is set wins over its old name; of two old names for one new variable
    the first declared wins. `repo_dir` is REPO_DIR (relative model paths were under it)."""
    out: list[Outcome] = []
    taken: dict[str, tuple[str, str | None]] = {}  # new name -> (old name, value) read
    for var in OLD_VARIABLES:
        raw = environ.get(var.name, "")
        if not raw:
            continue
        if var.new is None:
            out.append(Outcome(var, raw, "no_effect"))
            continue
        if var.new == var.name:
            out.append(Outcome(var, raw, "kept"))
            continue
        try:
            value = (var.convert or _same)(raw, repo_dir)
        except ValueError as exc:
            out.append(Outcome(var, raw, "bad", problem=str(exc)))
            continue
        current = environ.get(var.new, "")
        if current and not (value is not None and _agree(value, current)):
            out.append(Outcome(var, raw, "ignored", winner=var.new, winner_value=current))
        elif var.new in taken and taken[var.new][1] != value:
            first, first_value = taken[var.new]
            out.append(Outcome(var, raw, "ignored", winner=first,
                               winner_value=environ.get(first, "")))
        else:
            taken.setdefault(var.new, (var.name, value))
            out.append(Outcome(var, raw, "read", value))
    return out


def outcomes(environ: Mapping[str, str] | None = None) -> list[Outcome]:
    """`translate` of `environ` (default: the process's) with its REPO_DIR or the default one."""
    env = os.environ if environ is None else environ
    default = PathSettings.model_fields["REPO_DIR"].get_default(call_default_factory=True)
    return translate(env, env.get("REPO_DIR") or str(default))


class PredecessorSource(PydanticBaseSettingsSource):
    """The old names of a settings class's fields, converted: the last source before the
    defaults. A bad old value is named as such."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ gives every value at once

    def __call__(self) -> dict[str, Any]:
        out, problems = {}, []
        for o in outcomes():
            if o.old.new in self.settings_cls.model_fields:
                if o.status == "bad":
                    problems.append(o.error())
                elif o.status == "read" and o.value is not None:
                    out[o.old.new] = o.value
        if problems:
            raise SettingsError("bad environment: " + "; ".join(problems))
        return out
