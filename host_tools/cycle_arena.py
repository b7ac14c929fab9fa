"""cycle's arena: `--arena-against CKPT` plays the run's new model (artifacts/model_best.pt)
against a previous best model in a short arena on this machine, after the pod is stopped (it
bills nothing), and the run report shows the result (`arena.json`, games in `arena.pgn`).

An arena that cannot run is a warning: the training run itself succeeded.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, TextIO

from appliance.atomic import atomic_write_json
from appliance.model import BEST_MODEL
from appliance.timing import TimingLog
from host_tools.cli import CliError

ARENA_JSON = "arena.json"
ARENA_PGN = "arena.pgn"
DEFAULT_GAMES = 20
SUMMARY_KEYS = ("players", "games", "wins", "draws", "losses", "score", "elo", "elo_low",
                "elo_high", "excludes_zero", "fallback")


def add_options(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--arena-against", type=Path, metavar="CKPT",
                    help="after the run, play its model_best.pt against this checkpoint (the "
                    "previous best) on this machine; the report shows W/D/L and the Elo")
    sp.add_argument("--arena-games", type=int, default=DEFAULT_GAMES, metavar="N",
                    help="games of that arena, colours alternated (default %(default)s)")


def check_options(args: argparse.Namespace) -> None:
    """Bad arena options fail before anything bills."""
    if args.arena_against is None:
        return
    if not args.arena_against.is_file():
        raise CliError(f"--arena-against {args.arena_against}: no such checkpoint", 2)
    if args.arena_games < 2:
        raise CliError(f"--arena-games must be >= 2, got {args.arena_games}", 2)


def run(args: argparse.Namespace, out: Path, phases: TimingLog, err: TextIO) -> None:
    """The arena of the run in `out`, timed as phase `arena`, when `--arena-against` is set."""
    if args.arena_against is None:
        return
    # Imported here: torch loads only for a cycle that plays an arena.
    from appliance.training.arena import ArenaConfig, run_arena
    from appliance.training.arena_play import DEFAULT_OPENINGS, ArenaError, load_openings

    model = out / "artifacts" / BEST_MODEL
    with phases.phase("arena") as res:
        print(f"arena: {model} vs {args.arena_against}, {args.arena_games} games", file=err,
              flush=True)
        try:
            config = ArenaConfig(a=str(model), b=str(args.arena_against),
                                 games=args.arena_games,
                                 openings=tuple(load_openings(DEFAULT_OPENINGS)))
            result = run_arena(config, workers=os.cpu_count() or 1, pgn=out / ARENA_PGN)
            atomic_write_json(out / ARENA_JSON, result)
        except (ArenaError, OSError) as exc:
            res["exit_code"] = 1
            print(f"warning: no arena: {exc}", file=err, flush=True)


def read_result(run_dir: Path, missing: list[str]) -> dict[str, Any]:
    """The report's view of `arena.json`; {} when the run played no arena."""
    path = run_dir / ARENA_JSON
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {k: data[k] for k in SUMMARY_KEYS}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        missing.append(f"no arena: {path} is not an arena result ({exc!r})")
        return {}


def markdown(a: dict[str, Any]) -> list[str]:
    """The report's arena section; no lines without an arena."""
    if not a:
        return []

    def elo(v: float | str) -> str:
        return v if isinstance(v, str) else f"{v:+.1f}"

    lines = ["", "## Arena", "",
             f"- A = {a['players']['a']['name']}, B = {a['players']['b']['name']}: "
             f"{a['games']} games, A W {a['wins']} D {a['draws']} L {a['losses']}, score "
             f"{a['score'] * 100:.1f} %",
             f"- Elo difference A - B: {elo(a['elo'])} (95 % interval {elo(a['elo_low'])} .. "
             f"{elo(a['elo_high'])}; {'excludes' if a['excludes_zero'] else 'includes'} 0)"]
    for side in ("a", "b"):
        f = a["fallback"].get(side)
        if f:
            lines.append(f"- fallback {side.upper()}: {f['rate'] * 100:.1f} % of {f['moves']} "
                         "moves (top-ranked move illegal)")
    lines.append(f"- games: {ARENA_PGN}")
    return lines
