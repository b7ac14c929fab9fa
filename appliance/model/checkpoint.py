"""Checkpoint files (.pt): architecture, features, vocabulary version, metrics and weights.

A checkpoint loads for inference with no training arguments: `load_model(path)`, whichever the
architecture (`ARCHITECTURES`: "recurrent", the LSTM/GRU over the move history, which is what a
checkpoint without the field holds; "conv", the board-centric tower). Training state (optimizer,
scheduler, RNG) is stored alongside in resumable per-epoch checkpoints only.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from appliance.atomic import atomic_write
from appliance.model.convnet import ConvConfig, ConvPredictor
from appliance.model.network import ModelConfig, MovePredictor
from appliance.model.vocab import VOCAB_VERSION

CHECKPOINT_FORMAT = "chessbot-move-predictor-v1"
AnyConfig = ModelConfig | ConvConfig
AnyModel = MovePredictor | ConvPredictor
ARCHITECTURES: dict[str, tuple[type[Any], type[Any]]] = {
    "recurrent": (ModelConfig, MovePredictor),
    "conv": (ConvConfig, ConvPredictor),
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, and why."""


@dataclass
class LoadedModel:
    model: AnyModel
    config: AnyConfig
    meta: dict[str, Any]
    path: Path


def architecture_of(model: nn.Module) -> str:
    """The `ARCHITECTURES` name of a model."""
    for name, (_, cls) in ARCHITECTURES.items():
        if isinstance(model, cls):
            return name
    raise TypeError(f"not a known architecture: {type(model).__name__}")


def build_model(architecture: str, config: dict[str, Any]) -> AnyModel:
    """A fresh model of `architecture` from its config dict; ValueError names what is wrong."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r} (known: "
                         f"{', '.join(ARCHITECTURES)})")
    config_cls, model_cls = ARCHITECTURES[architecture]
    model: AnyModel = model_cls(config_cls.from_dict(config))
    return model


def save_checkpoint(path: Path, model: AnyModel, **extra: Any) -> None:
    """Write a checkpoint atomically (temp file + rename), so a crash never leaves half a file."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "vocab_version": VOCAB_VERSION,
        "architecture": architecture_of(model),
        "model_config": model.config.to_dict(),
        "features": model.config.features(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **extra,
    }
    atomic_write(path, lambda fh: torch.save(payload, fh))


def read_checkpoint(path: Path | str, data: bytes | None = None) -> dict[str, Any]:
    """The raw checkpoint dict, after checking format and vocabulary version.

    `data`, when given, is the file's content already read (`path` then only names it).
    """
    path = Path(path)
    if data is None and not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        source: Any = io.BytesIO(data) if data is not None else path
        payload = torch.load(source, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for a corrupt file
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint")
    version = payload.get("vocab_version")
    if version != VOCAB_VERSION:
        raise CheckpointError(
            f"{path}: vocabulary version {version!r} does not match this code's {VOCAB_VERSION!r}; "
            "retrain the model or use the code version it was trained with"
        )
    return payload


def load_model(
    path: Path | str, device: str | torch.device = "cpu", data: bytes | None = None
) -> LoadedModel:
    """Load a checkpoint into an eval-mode model on `device`."""
    payload = read_checkpoint(path, data)
    try:
        model = build_model(payload.get("architecture", "recurrent"), payload["model_config"])
        model.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: model does not match its config: {exc}") from None
    model.to(device).eval()
    meta = {k: v for k, v in payload.items() if k not in ("state_dict", "train_state")}
    return LoadedModel(model, model.config, meta, Path(path))
