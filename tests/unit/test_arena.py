"""Arena: Elo and interval math from known W/D/L, the openings file, the game rules, models and
Stockfish playing legal PGN, determinism across workers, and CLI errors."""

from __future__ import annotations

import io
import json
import math
import shutil
from pathlib import Path

import chess
import chess.pgn
import pytest
import torch

from appliance.model.checkpoint import save_checkpoint
from appliance.model.network import ModelConfig, MovePredictor
from appliance.training import arena
from appliance.training.arena_play import (
    DEFAULT_OPENINGS,
    MOVE_CAP,
    ArenaError,
    Opening,
    RandomPlayer,
    load_openings,
    play_game,
)
from appliance.training.arena_stats import Tally, elo_from_score, estimate

STOCKFISH = shutil.which("stockfish") or shutil.which("/usr/games/stockfish")
needs_stockfish = pytest.mark.skipif(STOCKFISH is None, reason="stockfish is not installed")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("models") / "tiny.pt"
    save_checkpoint(path, MovePredictor(ModelConfig(embed_dim=8, hidden_dim=8, num_layers=1,
                                                    feature_dim=4)))
    return path


def _games(pgn_text: str) -> list[chess.pgn.Game]:
    stream, games = io.StringIO(pgn_text), []
    while (game := chess.pgn.read_game(stream)) is not None:
        games.append(game)
    return games


# -- Elo and interval --


def test_elo_and_interval_from_known_results():
    e = estimate(Tally(wins=60, draws=20, losses=20))
    assert (e.score, e.stderr) == (pytest.approx(0.7), pytest.approx(0.04))  # sd 0.4 / sqrt(100)
    assert e.elo == pytest.approx(-400 * math.log10(1 / 0.7 - 1))
    low_score, high_score = 0.7 - 1.959963984540054 * 0.04, 0.7 + 1.959963984540054 * 0.04
    assert e.low == pytest.approx(-400 * math.log10(1 / low_score - 1))
    assert e.high == pytest.approx(-400 * math.log10(1 / high_score - 1))
    assert e.to_dict() == {"score": 0.7, "score_stderr": 0.04, "elo": 147.19, "elo_low": 86.23,
                           "elo_high": 218.25, "interval": 0.95, "excludes_zero": True}
    even = estimate(Tally(wins=30, draws=40, losses=30)).to_dict()
    assert (even["elo"], even["elo_low"], even["elo_high"]) == (0.0, -53.16, 53.16)
    assert even["excludes_zero"] is False
    close = estimate(Tally(wins=55, draws=10, losses=35)).to_dict()
    assert (close["elo"], close["elo_low"], close["elo_high"]) == (70.44, 6.34, 139.71)
    assert close["excludes_zero"] is True


def test_elo_edges():
    assert elo_from_score(0.5) == 0.0 and math.copysign(1, elo_from_score(0.5)) == 1.0
    assert elo_from_score(1.0) == math.inf and elo_from_score(0.0) == -math.inf
    assert estimate(Tally(10, 0, 0)).to_dict() == {
        "score": 1.0, "score_stderr": 0.0, "elo": "+inf", "elo_low": "+inf", "elo_high": "+inf",
        "interval": 0.95, "excludes_zero": True}
    assert estimate(Tally(0, 0, 3)).to_dict()["elo_high"] == "-inf"
    with pytest.raises(ValueError, match=r"^score must be in \[0, 1\], got 1.5$"):
        elo_from_score(1.5)
    with pytest.raises(ValueError, match="^no games: the score is undefined$"):
        estimate(Tally(0, 0, 0))
    with pytest.raises(ValueError, match="^negative count in W/D/L 1/-1/0$"):
        Tally(1, -1, 0)


# -- openings --


def test_bundled_openings_are_legal_and_varied():
    openings = load_openings(DEFAULT_OPENINGS)
    assert len(openings) == 100
    assert len({o.moves for o in openings}) == 100
    assert len({o.moves[:2] for o in openings}) == 21
    assert all(5 <= len(o.moves) <= 16 for o in openings)
    assert openings[0] == Opening("Ruy Lopez, Morphy Defence",
                                  ("e2e4", "e7e5", "g1f3", "b8c6", "f1b5", "a7a6"))


@pytest.mark.parametrize(("text", "message"), [
    ("# only a comment\n\n", "{p}: no openings in the file"),
    ("Ruy Lopez 1. e4 e5\n", "{p}:1: expected 'name | moves', got 'Ruy Lopez 1. e4 e5'"),
    ("ok | e4\nbad | 1. e4 e5 2. Ke3\n",
     "{p}:2: 'Ke3' is not a legal move in "
     "rnbqkbnr/pppp1ppp/8/4p3/4P3/8/PPPP1PPP/RNBQKBNR w KQkq - 0 2"),
    ("mate | f3 e5 g4 Qh4#\n", "{p}:1: the opening ends the game"),
])
def test_bad_openings_files(tmp_path: Path, text: str, message: str):
    path = tmp_path / "openings.txt"
    path.write_text(text)
    with pytest.raises(ArenaError) as err:
        load_openings(path)
    assert str(err.value) == message.format(p=path)
    with pytest.raises(ArenaError, match=r"^.*missing.txt: cannot read the openings "):
        load_openings(tmp_path / "missing.txt")


# -- rules --


def test_move_cap_is_a_draw_and_the_pgn_replays():
    opening = Opening("Scotch", ("e2e4", "e7e5", "g1f3", "b8c6", "d2d4", "e5d4"))
    record = play_game(RandomPlayer(), RandomPlayer(), opening, 0, a_white=True, max_plies=10,
                       seed=3)
    assert (record.result, record.termination, record.plies) == ("1/2-1/2", MOVE_CAP, 10)
    assert (record.counts["a"].moves, record.counts["b"].moves) == (2, 2)  # opening excluded
    (game,) = _games(record.pgn)
    assert [m.uci() for m in game.mainline_moves()][:6] == list(opening.moves)
    assert dict(game.headers) == {
        "Event": "arena", "Site": "?", "Date": "????.??.??", "Round": "1", "White": "random",
        "Black": "random", "Result": "1/2-1/2", "Opening": "Scotch", "Termination": "move_cap",
        "PlyCount": "10"}
    again = play_game(RandomPlayer(), RandomPlayer(), opening, 0, a_white=True, max_plies=10,
                      seed=3)
    assert again.pgn == record.pgn
    other_seed = play_game(RandomPlayer(), RandomPlayer(), opening, 0, a_white=True,
                           max_plies=10, seed=4)
    assert other_seed.pgn != record.pgn


def test_game_ends_by_the_rules_of_chess():
    # Random players, no practical cap: the game ends by a rule of chess, which the PGN shows.
    record = play_game(RandomPlayer(), RandomPlayer(), Opening("x", ("e2e4",)), 5,
                       a_white=False, max_plies=600, seed=0)
    (game,) = _games(record.pgn)
    board = game.end().board()
    outcome = board.outcome(claim_draw=True)
    assert outcome is not None and outcome.result() == record.result
    assert outcome.termination.name.lower() == record.termination
    assert record.a_points == {"1-0": 0.0, "0-1": 1.0, "1/2-1/2": 0.5}[record.result]


# -- models, engines, workers, CLI --


@needs_stockfish
def test_tiny_model_against_stockfish_plays_legal_games(tiny: Path, tmp_path: Path, capsys):
    pgn = tmp_path / "games.pgn"
    argv = ["--white", str(tiny), "--black", "stockfish:depth=1", "--games", "2",
            "--workers", "1", "--pgn", str(pgn), "--json"]
    assert arena.main(argv) == 0
    r = json.loads(capsys.readouterr().out)
    games = _games(pgn.read_text())
    assert len(games) == r["games"] == 2
    assert [(g.headers["White"], g.headers["Black"]) for g in games] == [
        (str(tiny), "stockfish:depth=1"), ("stockfish:depth=1", str(tiny))]
    model_moves = 0
    for index, game in enumerate(games):
        board = game.board()
        for move in game.mainline_moves():
            assert move in board.legal_moves
            board.push(move)
        assert board.is_game_over(claim_draw=True)
        assert game.headers["Result"] == board.outcome(claim_draw=True).result()
        assert game.headers["Opening"] == "Ruy Lopez, Morphy Defence"
        model_moves += (board.ply() - 6 + (index == 0)) // 2  # White moves first after 6 plies
    assert (r["wins"], r["draws"], r["losses"]) == (0, 0, 2)  # random weights lose to depth 1
    assert (r["elo"], r["elo_low"], r["elo_high"]) == ("-inf", "-inf", "-inf")
    assert r["fallback"]["b"] is None
    assert r["fallback"]["a"]["moves"] == model_moves
    assert 0 < r["fallback"]["a"]["fallbacks"] <= model_moves
    assert r["terminations"] == {"checkmate": 2}
    assert r["rules"] == {"openings": 100, "max_plies": 400, "temperature": 0.0, "seed": 0}


def test_models_with_temperature_and_workers_give_the_same_games(tiny: Path, tmp_path: Path):
    openings = tuple(load_openings(DEFAULT_OPENINGS))
    config = arena.ArenaConfig(a=str(tiny), b="random", games=4, openings=openings,
                               max_plies=40, temperature=1.0, seed=7)
    one = arena.run_arena(config, workers=1, pgn=tmp_path / "one.pgn")
    two = arena.run_arena(config, workers=2, pgn=tmp_path / "two.pgn")
    assert (tmp_path / "one.pgn").read_text() == (tmp_path / "two.pgn").read_text()
    one.pop("elapsed_s"), two.pop("elapsed_s"), one.pop("pgn"), two.pop("pgn")
    assert one == two
    games = _games((tmp_path / "one.pgn").read_text())
    assert [g.headers["Opening"] for g in games] == [openings[0].name, openings[0].name,
                                                     openings[1].name, openings[1].name]
    assert one["a_as_white"] == {k: sum(1 for g in games[0::2] if g.headers["Result"] == res)
                                 for k, res in (("wins", "1-0"), ("draws", "1/2-1/2"),
                                                ("losses", "0-1"))}


def test_the_same_model_twice_is_named_apart(tiny: Path, tmp_path: Path):
    config = arena.ArenaConfig(a=str(tiny), b=str(tiny), games=2,
                               openings=tuple(load_openings(DEFAULT_OPENINGS)), max_plies=20)
    r = arena.run_arena(config, workers=1)
    assert r["players"]["a"]["name"] == f"{tiny} (A)"
    assert r["players"]["b"]["name"] == f"{tiny} (B)"
    assert (r["wins"], r["draws"], r["losses"]) == (0, 2, 0)  # greedy twins: move cap or draw
    assert r["elo"] == 0.0 and r["excludes_zero"] is False


@pytest.mark.parametrize(("argv", "message"), [
    (["--white", "random", "--black", "stockfish:depth=0", "--games", "2"],
     "error: 'stockfish:depth=0': expected stockfish, stockfish:depth=N or stockfish:nodes=N "
     "with N >= 1\n"),
    (["--white", "random", "--black", "stockfish:elo=3", "--games", "2"],
     "error: 'stockfish:elo=3': expected stockfish, stockfish:depth=N or stockfish:nodes=N "
     "with N >= 1\n"),
    (["--white", "nope.pt", "--black", "random", "--games", "2"],
     "error: nope.pt: no such checkpoint (a player is a checkpoint path, "
     "stockfish[:depth=N|:nodes=N] or random)\n"),
    (["--white", "random", "--black", "random", "--games", "0"],
     "error: --games must be >= 1, got 0\n"),
    (["--white", "random", "--black", "random", "--games", "2", "--temperature", "-1"],
     "error: --temperature must be >= 0, got -1.0\n"),
    (["--white", "random", "--black", "random", "--games", "2", "--workers", "0"],
     "error: --workers must be >= 1, got 0\n"),
    (["--white", "stockfish", "--black", "stockfish:nodes=10", "--games", "201"],
     "error: --games 201 would repeat games: deterministic players (temperature 0) play at "
     "most 2 x 100 openings = 200 different games; pass --temperature T > 0 or an --openings "
     "file with more lines\n"),
])
def test_cli_errors(argv: list[str], message: str, capsys):
    assert arena.main(argv) == 2
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", message)


def test_a_corrupt_checkpoint_is_a_clear_error(tmp_path: Path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert arena.main(["--white", str(bad), "--black", "random", "--games", "2"]) == 2
    assert capsys.readouterr().err.startswith(f"error: {bad}: cannot load the checkpoint: ")


def test_summary_text(tmp_path: Path, capsys):
    pgn = tmp_path / "g.pgn"
    assert arena.main(["--white", "random", "--black", "random", "--games", "2", "--workers",
                       "1", "--max-plies", "8", "--pgn", str(pgn)]) == 0
    assert capsys.readouterr().out == (
        "A = random (A), B = random (B): 2 games, 100 openings, colours alternated, cap 8 plies, "
        "temperature 0.0\n"
        "A: W 0 D 2 L 0 (as White 0/1/0, as Black 0/1/0), score 50.0 % (1/2)\n"
        "Elo difference A - B: +0.0 (95 % interval +0.0 .. +0.0; includes 0)\n"
        "terminations: move_cap 2; plies mean 8.0, max 8\n"
        f"games: {pgn}\n")
