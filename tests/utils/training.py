"""Tiny trainer runs for the tests: the flags of a seconds-long model and the in-process trainer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from appliance import settings
from appliance.training import options, train

TINY = ["--arch", "recurrent", "--embed-dim", "16", "--hidden-dim", "24", "--batch-size", "8",
        "--seed", "5", "--runtime-min-context", "2"]


def trainer_args(ds: Path, out: Path, *extra: str) -> list[str]:
    """Trainer flags for the dataset dir `ds`, writing to `out`, at the TINY dimensions."""
    return ["--train", str(ds / "train.jsonl"), "--val", str(ds / "val.jsonl"),
            "--output-dir", str(out), *TINY, *extra]


def run_trainer(argv: list[str], **kw: Any) -> dict:
    """Run the trainer in this process (single rank) and return its metrics."""
    args = options.build_parser().parse_args(argv)
    return train.Trainer(args, settings.DistributedEnv()).run(**kw)
