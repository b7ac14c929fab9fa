"""Head-to-head games between two players (checkpoints, Stockfish at a fixed depth or node
count, or random moves): `python -m appliance.training.arena --white M1 --black M2 --games N`.

Games come in pairs: game 2k and 2k+1 play opening k (of the openings file, cycling) with colours
swapped, so `--white` names the player who is White in the even games; every figure is from that
player's (A's) side. Players, rules and the fallback count are in `arena_play`; the Elo
interval in `arena_stats`. Games run in `--workers` processes (spawned, one torch thread each);
the result depends on the players, openings, seed and rules only, not on the number of workers.

Prints W/D/L, the score, the Elo difference with its 95 % interval, each model's fallback rate,
the terminations, and writes the games as PGN (`--pgn`).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import multiprocessing.util
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from appliance.atomic import atomic_write, atomic_write_json
from appliance.parallel import spawn_imap
from appliance.training.arena_play import (
    DEFAULT_OPENINGS,
    ArenaError,
    GameRecord,
    Opening,
    Player,
    check_spec,
    load_openings,
    make_player,
    play_game,
)
from appliance.training.arena_stats import Tally, estimate, format_elo

DEFAULT_MAX_PLIES = 400


@dataclass(frozen=True)
class ArenaConfig:
    a: str  # player specs (see arena_play.check_spec)
    b: str
    games: int
    openings: tuple[Opening, ...]
    max_plies: int = DEFAULT_MAX_PLIES
    temperature: float = 0.0
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.games < 1:
            raise ArenaError(f"--games must be >= 1, got {self.games}")
        if self.max_plies < 1:
            raise ArenaError(f"--max-plies must be >= 1, got {self.max_plies}")
        if self.temperature < 0:
            raise ArenaError(f"--temperature must be >= 0, got {self.temperature}")
        check_spec(self.a)
        check_spec(self.b)
        distinct = 2 * len(self.openings)
        if self.games > distinct and self.temperature == 0 and "random" not in (self.a, self.b):
            raise ArenaError(
                f"--games {self.games} would repeat games: deterministic players (temperature "
                f"0) play at most 2 x {len(self.openings)} openings = {distinct} different "
                "games; pass --temperature T > 0 or an --openings file with more lines")

    def players(self) -> tuple[Player, Player]:
        a = make_player(self.a, self.temperature, self.max_plies, self.device)
        try:
            b = make_player(self.b, self.temperature, self.max_plies, self.device)
        except BaseException:
            a.close()
            raise
        if a.name == b.name:
            a.name, b.name = f"{a.name} (A)", f"{b.name} (B)"
        return a, b

    def play(self, a: Player, b: Player, index: int) -> GameRecord:
        opening = self.openings[(index // 2) % len(self.openings)]
        return play_game(a, b, opening, index, a_white=index % 2 == 0,
                         max_plies=self.max_plies, seed=self.seed)


_worker: tuple[ArenaConfig, Player, Player] | None = None


def _init_worker(config: ArenaConfig) -> None:
    global _worker
    torch.set_num_threads(1)
    a, b = config.players()
    _worker = (config, a, b)
    # Pool workers skip atexit; a Finalize with a priority runs when the worker exits cleanly.
    multiprocessing.util.Finalize(None, a.close, exitpriority=10)
    multiprocessing.util.Finalize(None, b.close, exitpriority=10)


def _play_in_worker(index: int) -> GameRecord:
    assert _worker is not None
    config, a, b = _worker
    return config.play(a, b, index)


def iter_games(config: ArenaConfig, workers: int) -> Iterator[GameRecord]:
    """Games 0..games-1 in index order."""
    workers = max(1, min(workers, config.games))
    if workers == 1:
        # One thread, as in the workers: a batch-1 forward pass gets slower with more (8x here).
        torch.set_num_threads(1)
        a, b = config.players()
        try:
            for index in range(config.games):
                yield config.play(a, b, index)
        finally:
            a.close()
            b.close()
        return
    yield from spawn_imap(workers, _init_worker, (config,), _play_in_worker, config.games)


def summarize(config: ArenaConfig, names: dict[str, str],
              games: Sequence[GameRecord]) -> dict[str, Any]:
    """The result as one JSON-ready object, from A's (`--white`'s) side."""
    def tally(records: Sequence[GameRecord]) -> Tally:
        points = Counter(g.a_points for g in records)
        return Tally(wins=points[1.0], draws=points[0.5], losses=points[0.0])

    total = tally(games)
    fallback = {}
    for side in ("a", "b"):
        moves = sum(g.counts[side].moves for g in games)
        falls = sum(g.counts[side].fallbacks for g in games)
        is_model = config.a if side == "a" else config.b
        fallback[side] = (None if is_model == "random" or is_model.startswith("stockfish")
                          else {"moves": moves, "fallbacks": falls,
                                "rate": round(falls / moves, 6) if moves else 0.0})
    plies = [g.plies for g in games]
    return {
        "players": {"a": {"spec": config.a, "name": names["a"]},
                    "b": {"spec": config.b, "name": names["b"]}},
        "games": total.games,
        **asdict(total),
        "points": total.points,
        **estimate(total).to_dict(),
        "a_as_white": asdict(tally([g for g in games if g.a_white])),
        "a_as_black": asdict(tally([g for g in games if not g.a_white])),
        "fallback": fallback,
        "terminations": dict(Counter(g.termination for g in games).most_common()),
        "plies": {"mean": round(sum(plies) / len(plies), 1), "max": max(plies)},
        "rules": {"openings": len(config.openings), "max_plies": config.max_plies,
                  "temperature": config.temperature, "seed": config.seed},
    }


def format_summary(r: dict[str, Any]) -> str:
    a, b = r["players"]["a"]["name"], r["players"]["b"]["name"]

    est = estimate(Tally(r["wins"], r["draws"], r["losses"]))  # floats: JSON has no infinity
    lines = [
        f"A = {a}, B = {b}: {r['games']} games, {r['rules']['openings']} openings, colours "
        f"alternated, cap {r['rules']['max_plies']} plies, temperature {r['rules']['temperature']}",
        f"A: W {r['wins']} D {r['draws']} L {r['losses']} (as White "
        f"{r['a_as_white']['wins']}/{r['a_as_white']['draws']}/{r['a_as_white']['losses']}, "
        f"as Black {r['a_as_black']['wins']}/{r['a_as_black']['draws']}/"
        f"{r['a_as_black']['losses']}), score {r['score'] * 100:.1f} % "
        f"({r['points']:g}/{r['games']})",
        f"Elo difference A - B: {format_elo(est.elo)} (95 % interval {format_elo(est.low)} .. "
        f"{format_elo(est.high)}; {'excludes' if est.excludes_zero else 'includes'} 0)",
    ]
    for side, name in (("a", a), ("b", b)):
        f = r["fallback"][side]
        if f is not None:
            lines.append(f"fallback {side.upper()} ({name}): {f['rate'] * 100:.1f} % of "
                         f"{f['moves']} moves (top-ranked move illegal; played the best legal)")
    lines.append("terminations: " + ", ".join(f"{k} {v}" for k, v in r["terminations"].items())
                 + f"; plies mean {r['plies']['mean']}, max {r['plies']['max']}")
    if r.get("pgn"):
        lines.append(f"games: {r['pgn']}")
    return "\n".join(lines)


def run_arena(config: ArenaConfig, workers: int, pgn: Path | None = None,
              progress: bool = False) -> dict[str, Any]:
    started = time.monotonic()
    a, b = config.players()  # loads both once here: a bad checkpoint fails before any worker
    names = {"a": a.name, "b": b.name}
    a.close()
    b.close()
    games = []
    for record in iter_games(config, workers):
        games.append(record)
        if progress:
            print(f"\rgame {len(games)}/{config.games}", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    result = summarize(config, names, games)
    if pgn is not None:
        text = "\n\n".join(g.pgn for g in games) + "\n"
        atomic_write(pgn, lambda fh: fh.write(text.encode("utf-8")))
        result["pgn"] = str(pgn)
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m appliance.training.arena",
                                description=__doc__.split("\n\n")[0].replace("\n", " "))
    player = ("a checkpoint (.pt), stockfish (depth 1), stockfish:depth=N, stockfish:nodes=N "
              "or random")
    p.add_argument("--white", required=True, help=f"player A, White in even games: {player}")
    p.add_argument("--black", required=True, help=f"player B: {player}")
    p.add_argument("--games", type=int, required=True, help="number of games (pairs share an "
                   "opening with colours swapped: use an even number)")
    p.add_argument("--openings", type=Path, default=DEFAULT_OPENINGS,
                   help="'name | SAN moves' per line (default: the bundled 100 openings)")
    p.add_argument("--max-plies", type=int, default=DEFAULT_MAX_PLIES,
                   help="a game that reaches this many plies is a draw (default %(default)s)")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="0: models play their best legal move; T > 0: sample legal moves with "
                   "weight p**(1/T) (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling and random players")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="game processes (default: one per core)")
    p.add_argument("--device", default="cpu", help="torch device of the models (default cpu)")
    p.add_argument("--pgn", type=Path, metavar="FILE", help="write the games to FILE")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--json-out", type=Path, metavar="FILE", help="also write the JSON to FILE")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.workers < 1:
            raise ArenaError(f"--workers must be >= 1, got {args.workers}")
        config = ArenaConfig(a=args.white, b=args.black, games=args.games,
                             openings=tuple(load_openings(args.openings)),
                             max_plies=args.max_plies, temperature=args.temperature,
                             seed=args.seed, device=args.device)
        result = run_arena(config, args.workers, args.pgn,
                           progress=not args.json and sys.stderr.isatty())
        if args.json_out is not None:
            atomic_write_json(args.json_out, result)
    except ArenaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc.filename or ''}: cannot write it ({exc.strerror or exc})",
              file=sys.stderr)
        return 2
    print(json.dumps(result) if args.json else format_summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
