"""The trainer's command line: every option, its default and its validation (finite numbers in
range), so a bad value is refused before any data is loaded.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.model import LAST_CHECKPOINT


def _number(kind: type[int] | type[float], low: float, high: float | None = None,
            low_open: bool = False) -> Callable[[str], Any]:
    """An argparse type: a finite int or float in [low, high) (or (low, high) when low_open)."""
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            noun = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}") from None
        too_low = value <= low if low_open else value < low
        if not math.isfinite(value) or too_low or (high is not None and value >= high):
            bound = f"> {low:g}" if low_open else f">= {low:g}"
            if high is not None:
                bound = f"in [{low:g}, {high:g})"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    return parse


_positive_int = _number(int, 1)
_non_negative_int = _number(int, 0)
_positive_float = _number(float, 0, low_open=True)
_non_negative_float = _number(float, 0)
_dropout = _number(float, 0, high=1)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m appliance.training.train",
        description="Train the move predictor on game rows (whole games, one pass each) or legacy "
        "spliced rows. Under torchrun it trains data-parallel.",
    )
    p.add_argument("--train", action="append", required=True, type=Path, help="training JSONL "
                   "(repeat for several files)")
    p.add_argument("--val", action="append", required=True, type=Path, help="validation JSONL "
                   "(repeat for several files)")
    p.add_argument("--output-dir", type=Path, required=True, help="checkpoints and metrics go here")
    p.add_argument("--epochs", type=_positive_int, default=40)
    p.add_argument("--lr", type=_positive_float, default=2e-4)
    p.add_argument("--batch-size", type=_positive_int, help="games per batch and rank (default: "
                   "32 on CPU, from the GPU's memory on a GPU)")
    p.add_argument("--num-workers", type=_non_negative_int, help="DataLoader workers per rank "
                   "(default: 0 on CPU, the CPUs per rank less one on a GPU, at most 8)")
    p.add_argument("--arch", choices=("recurrent", "conv"), default="conv",
                   help="conv (default): residual tower over the board planes (--channels, "
                   "--blocks, --history-moves, --flip); recurrent: LSTM/GRU over the move "
                   "history (--embed-dim, --hidden-dim, --num-layers, --rnn, --*-feature)")
    p.add_argument("--channels", type=_positive_int, default=32, help="conv: tower width")
    p.add_argument("--blocks", type=_non_negative_int, default=4,
                   help="conv: residual blocks (depth)")
    p.add_argument("--history-moves", type=_positive_int, default=6,
                   help="conv: last moves fed as planes")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True,
                   help="conv: see the board from the side to move (default: on)")
    p.add_argument("--legal-mask", action=argparse.BooleanOptionalAction, default=True,
                   help="take the loss over each position's legal moves only (default: on)")
    p.add_argument("--encoded-cache", default="auto", metavar="auto|off|DIR",
                   help="where the encoded datasets (with their legal moves) are kept between "
                   "runs; auto: .encoded/ next to each data file")
    p.add_argument("--time-budget-min", type=_non_negative_float, default=0.0,
                   help="stop training after this many minutes of wall time (checked every "
                   "step; the epoch in progress is validated and saved); 0 = no limit")
    p.add_argument("--embed-dim", type=_positive_int, default=256)
    p.add_argument("--hidden-dim", type=_positive_int, default=512)
    p.add_argument("--num-layers", type=_positive_int, default=2)
    p.add_argument("--dropout", type=_dropout, default=0.15)
    p.add_argument("--rnn", choices=("lstm", "gru"), default="lstm")
    p.add_argument("--board-feature", action=argparse.BooleanOptionalAction, default=True,
                   help="feed the current board to the network (default: on)")
    p.add_argument("--phase-feature", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--side-to-move-feature", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--runtime-min-context", type=_non_negative_int, default=0,
                   help="a target position needs at least this many moves of history (default 0: "
                   "train on every position, as they are served; the predecessor used 8)")
    p.add_argument("--runtime-min-target", type=_positive_int, default=1,
                   help="at least this many moves must remain from a target position")
    p.add_argument("--runtime-max-samples-per-game", type=_non_negative_int, default=0,
                   help="target positions per game per epoch, drawn at random (0 = all)")
    p.add_argument("--endgame-phase-weight", type=_non_negative_float, default=1.0,
                   help="loss weight of endgame targets")
    p.add_argument("--early-stopping-patience", type=_non_negative_int, default=5,
                   help="stop after this many epochs without a better val loss (0 = never)")
    p.add_argument("--lr-patience", type=_non_negative_int, default=2,
                   help="ReduceLROnPlateau patience, in epochs")
    p.add_argument("--progress-jsonl-out", type=Path, help="append JSON-lines progress events")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, "
                   "cuda:N")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                   help=f"continue from CHECKPOINT (default: OUTPUT_DIR/{LAST_CHECKPOINT})")
    p.add_argument("--max-steps-per-epoch", type=_non_negative_int, default=0,
                   help="cap on optimizer steps per epoch (0 = whole epoch), for smoke runs")
    return p
