"""Tiny trainer runs for the tests: the flags of a seconds-long model and the in-process trainer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from appliance.training import distributed, options, train

TINY = ["--arch", "recurrent", "--embed-dim", "16", "--hidden-dim", "24", "--batch-size", "8",
        "--seed", "5", "--runtime-min-context", "2"]


def trainer_args(ds: Path, out: Path, *extra: str) -> list[str]:
    """Trainer flags for the dataset dir `ds`, writing to `out`, at the TINY dimensions."""
    return ["--train", str(ds / "train.jsonl"), "--val", str(ds / "val.jsonl"),
            "--output-dir", str(out), *TINY, *extra]


def run_trainer(argv: list[str], **kw: Any) -> dict:
    """Run the trainer in this process (single rank) and return its metrics."""
    args = options.build_parser().parse_args(argv)
    return train.Trainer(args, distributed.Group()).run(**kw)


@dataclass
class Toy:
    """A batch for training.distributed's step without the chess model: x (n, 3), y (n, 1)."""

    x: torch.Tensor
    y: torch.Tensor

    def to(self, device: torch.device) -> Toy:
        return Toy(self.x.to(device), self.y.to(device))


def toy_batch(n: int = 8) -> Toy:
    g = torch.Generator().manual_seed(0)
    return Toy(torch.randn(n, 3, generator=g), torch.randn(n, 1, generator=g))


def toy_loss(model: torch.nn.Module, fits: int | None) -> Any:
    """The (loss sum, weight) function of a linear model; parts of more than `fits` rows raise
    torch.OutOfMemoryError, as CUDA does."""
    def loss_fn(part: Toy) -> tuple[torch.Tensor, float]:
        if fits is not None and len(part.x) > fits:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {len(part.x)} "
                                         "games")
        return ((model(part.x) - part.y) ** 2).sum(), float(len(part.x))

    return loss_fn
