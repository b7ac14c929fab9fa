"""Dataset CLI for the workstation: build a dataset directory from PGN files, generate one with
Stockfish, publish/fetch versions on the HF Hub (datasets_hub.py). Run as
`python -m host_tools.datasets COMMAND ...` or `appliance-datasets COMMAND ...`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from appliance.datasets.dataset_dir import (
    DEFAULT_SEED,
    DEFAULT_TEST_FRACTION,
    DEFAULT_VAL_FRACTION,
)
from appliance.datasets.generate import GenerateConfig, GenerateError, generate_dataset
from appliance.datasets.pgn_import import import_pgn
from appliance.datasets.rows import DatasetError
from appliance.hf import HubError
from appliance.settings import SettingsError
from host_tools.cli import CliError, progress_wanted, recorded_command
from host_tools.datasets_hub import SUBCOMMANDS as HUB_SUBCOMMANDS

MODULE = "host_tools.datasets"
EXIT_OK = 0
EXIT_FAILED = 2
EXIT_INTERRUPTED = 130
SKIPS_SHOWN = 10

Handler = Callable[[argparse.Namespace, Sequence[str]], int]


class _Parser(argparse.ArgumentParser):
    """Reports a usage error as one line (and a pointer to --help), not a usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_FAILED, f"{self.prog}: error: {message} (see --help)\n")


# -- argument types: each rejects a bad value with a message that names the expected range --


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


def _float_in(low: float, high: float, high_open: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (low <= value < high if high_open else low <= value <= high):
            bracket = ")" if high_open else "]"
            raise argparse.ArgumentTypeError(f"must be in [{low:g}, {high:g}{bracket}, got {text}")
        return value

    return parse


def _ply_range(text: str) -> tuple[int, int]:
    lo_text, sep, hi_text = text.partition("-")
    try:
        lo = int(lo_text)
        hi = int(hi_text) if sep else lo
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or MIN-MAX, got {text!r}") from None
    if not 0 <= lo <= hi:
        raise argparse.ArgumentTypeError(f"expected 0 <= MIN <= MAX, got {text!r}")
    return lo, hi


def _add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="dataset directory to write (train.jsonl, val.jsonl, stats.json)",
    )
    p.add_argument(
        "--val-fraction",
        type=_float_in(0.0, 1.0, True),
        default=DEFAULT_VAL_FRACTION,
        metavar="F",
        help="share of games that go to val.jsonl (default %(default)s)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        help="seed of the train/val split (and of generation) (default %(default)s)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="write into DIR even when it is not empty (replaces the three files)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print the result as one JSON object instead of a summary",
    )


def _print_written(out: Path, stats: dict[str, Any]) -> None:
    test = (f"test.jsonl {stats['test_rows']} games ({stats['test_positions']} positions), "
            if "test_rows" in stats else "")
    print(
        f"wrote {out}: train.jsonl {stats['train_rows']} games ({stats['train_positions']} "
        f"positions), val.jsonl {stats['val_rows']} games ({stats['val_positions']} positions), "
        f"{test}stats.json"
    )


def _print_json(out: Path, elapsed_s: float, stats: dict[str, Any]) -> None:
    print(json.dumps({"out": str(out), "elapsed_s": round(elapsed_s, 3), "stats": stats}))


# -- build --


def _add_build(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "build",
        help="PGN files -> dataset directory",
        description=(
            "Read PGN files (.pgn, .pgn.gz, .pgn.zst; compression is detected from the content), "
            "keep each game's mainline as UCI moves, skip broken or non-standard games (reported "
            "with file, line and reason), drop duplicates (same start position and moves) and "
            "split by game: the same game always lands on the same side for a given --seed."
        ),
    )
    p.add_argument("inputs", nargs="+", type=Path, metavar="PGN", help="PGN files to read")
    _add_output_args(p)
    p.add_argument(
        "--test-fraction",
        type=_float_in(0.0, 1.0, True),
        default=DEFAULT_TEST_FRACTION,
        metavar="F",
        help="share of games held out in test.jsonl, which no training reads; drawn before "
        "--val-fraction, which applies to the rest (default %(default)s: no test.jsonl)",
    )
    p.add_argument(
        "--exclude",
        type=Path,
        action="append",
        default=[],
        metavar="JSONL",
        help="leave out the games of this dataset file, e.g. another dataset's test.jsonl "
        "and val.jsonl, so that no held-out game is trained on (repeatable)",
    )
    p.set_defaults(handler=_run_build)


def _run_build(args: argparse.Namespace, argv: Sequence[str]) -> int:
    started = time.monotonic()
    stats = import_pgn(
        args.inputs,
        args.out,
        seed=args.seed,
        val_fraction=args.val_fraction,
        force=args.force,
        command=recorded_command(MODULE, argv),
        progress=progress_wanted(args.json),
        test_fraction=args.test_fraction,
        exclude=args.exclude,
    )
    if stats["duplicates_removed"]:
        print(f"datasets build: warning: {stats['duplicates_removed']:,} duplicate games skipped "
              "(same start position and moves as an earlier game)", file=sys.stderr)
    if args.json:
        _print_json(args.out, time.monotonic() - started, stats)
        return EXIT_OK
    print(
        f"read {stats['games_read']} games from {len(args.inputs)} file(s): kept "
        f"{stats['games_kept']}, skipped {stats['games_skipped']}, duplicates removed "
        f"{stats['duplicates_removed']}"
        + (f", excluded {stats['excluded']}" if args.exclude else "")
    )
    if stats["games_skipped"]:
        reasons = ", ".join(f"{k} {v}" for k, v in stats["skipped_by_reason"].items())
        print(f"skipped by reason: {reasons}")
        for report in stats["skipped"][:SKIPS_SHOWN]:
            print(f"  {report['file']}:{report['line']}: {report['reason']}")
        if stats["games_skipped"] > SKIPS_SHOWN:
            listed = len(stats["skipped"])
            which = "all" if listed == stats["games_skipped"] else "the first"
            print(f"  ... {which} {listed} are listed in stats.json")
    _print_written(args.out, stats)
    return EXIT_OK


# -- generate --


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="Stockfish self-play -> dataset directory",
        description=(
            "Play games with Stockfish (Threads=1, Hash=16, one engine per worker). The first "
            "plies are uniform random legal moves, later moves are random with probability "
            "--random-move-rate; every random move's index is listed in the row's random_plies "
            "so training never uses it as a target. The output depends only on the options and "
            "--seed, not on --workers."
        ),
    )
    _add_output_args(p)
    p.add_argument(
        "--games",
        type=_int_at_least(1),
        default=1000,
        metavar="N",
        help="number of games to play (default %(default)s)",
    )
    p.add_argument(
        "--workers",
        type=_int_at_least(1),
        default=None,
        metavar="N",
        help="engine processes in parallel (default: number of CPUs)",
    )
    limit = p.add_mutually_exclusive_group()
    limit.add_argument(
        "--depth",
        type=_int_at_least(1),
        default=None,
        help="engine search depth per move (default 1)",
    )
    limit.add_argument(
        "--nodes",
        type=_int_at_least(1),
        default=None,
        help="engine nodes per move, instead of --depth",
    )
    p.add_argument(
        "--max-plies",
        type=_int_at_least(1),
        default=300,
        metavar="N",
        help="stop a game after N plies, result '*' (default %(default)s)",
    )
    p.add_argument(
        "--random-opening-plies",
        type=_ply_range,
        default=(2, 8),
        metavar="MIN-MAX",
        help="uniform random plies at the start of each game, N or MIN-MAX, the "
        "count drawn per game (default 2-8)",
    )
    p.add_argument(
        "--random-move-rate",
        type=_float_in(0.0, 1.0, False),
        default=0.05,
        metavar="P",
        help="probability of a random move after the opening (default %(default)s)",
    )
    p.add_argument(
        "--engine",
        default=None,
        metavar="PATH",
        help="UCI engine executable (default: stockfish on PATH, else /usr/games/stockfish)",
    )
    p.set_defaults(handler=_run_generate)


def _run_generate(args: argparse.Namespace, argv: Sequence[str]) -> int:
    config = GenerateConfig(
        games=args.games,
        seed=args.seed,
        depth=None if args.nodes is not None else (args.depth or 1),
        nodes=args.nodes,
        max_plies=args.max_plies,
        random_move_rate=args.random_move_rate,
        opening_plies=args.random_opening_plies,
        engine=args.engine,
    )
    workers = args.workers or os.cpu_count() or 1
    started = time.monotonic()
    stats = generate_dataset(
        config,
        args.out,
        workers=workers,
        val_fraction=args.val_fraction,
        force=args.force,
        command=recorded_command(MODULE, argv),
        progress=progress_wanted(args.json),
    )
    elapsed = time.monotonic() - started
    if args.json:
        _print_json(args.out, elapsed, stats)
        return EXIT_OK
    made = stats["created_by"]
    limits = ", ".join(f"{k} {v}" for k, v in made["limits"].items())
    print(
        f"generated {stats['games_generated']} games with {made['engine']['name']} ({limits}) "
        f"in {elapsed:.1f} s on {min(workers, args.games)} worker(s): "
        f"{stats['games_generated'] / elapsed:.1f} games/s"
    )
    print(
        "results: "
        + ", ".join(f"{k} {v}" for k, v in stats["results"].items())
        + "; plies mean {mean} (min {min}, max {max})".format(**stats["plies"])
    )
    if stats["duplicates_removed"]:
        print(f"duplicates removed: {stats['duplicates_removed']}")
    _print_written(args.out, stats)
    return EXIT_OK


# Each entry adds one subcommand; new ones (publish, fetch) go here with their own _add_* function.
SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_build, _add_generate, *HUB_SUBCOMMANDS)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="datasets",
        description="Make and manage game datasets (directories with train.jsonl, val.jsonl and "
        'stats.json; rows {"moves_uci": [...]}, format game_jsonl_runtime_splice_v1).',
        epilog="Exit status: 0 done, 2 bad input or failure (one line on stderr), 130 interrupted.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args, argv)
    except KeyboardInterrupt:
        print(f"datasets {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (CliError, DatasetError, GenerateError, OSError, HubError, SettingsError) as exc:
        print(f"datasets {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
