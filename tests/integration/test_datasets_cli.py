"""The datasets CLI as a user runs it: `python -m host_tools.datasets` from the checkout and from
another directory, build, and one-line errors on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TRAPS = REPO / "tests" / "fixtures" / "pgn" / "traps.pgn"
MODULE = [sys.executable, "-m", "host_tools.datasets"]
# Elsewhere than the checkout, the package is found as an installed one would be.
PYTHONPATH = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)


def _run(entry: list[str], *args: str | Path, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*entry, *map(str, args)], capture_output=True, text=True, timeout=60, cwd=cwd,
        env={**os.environ, "PYTHONPATH": PYTHONPATH},
    )


def test_help_lists_the_subcommands():
    done = _run(MODULE, "--help")
    assert done.returncode == 0
    assert "build     PGN files -> dataset directory" in done.stdout
    assert "generate  Stockfish self-play -> dataset directory" in done.stdout


def test_module_runs_from_another_directory(tmp_path: Path):
    done = _run(MODULE, "build", TRAPS, "--out", tmp_path / "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[:2] == [
        "read 11 games from 1 file(s): kept 5, skipped 5, duplicates removed 1",
        "skipped by reason: bad_fen 1, illegal_move 1, no_moves 1, not_a_game 1, "
        "unsupported_variant 1",
    ]
    assert f"  {TRAPS}:30: game has no moves" in done.stdout.splitlines()
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["created_by"]["command"] == (
        f"python -m host_tools.datasets build {TRAPS} --out {tmp_path / 'out'}"
    )


def test_build_json_output(tmp_path: Path):
    done = _run(MODULE, "build", TRAPS, "--out", tmp_path / "out", "--json", "--seed", "4")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["stats"]["games_kept"] == 5 and result["stats"]["created_by"]["seed"] == 4


def test_build_with_a_held_out_test_split(tmp_path: Path):
    real = REPO / "tests" / "fixtures" / "pgn" / "real_games_chesscom.pgn"
    done = _run(MODULE, "build", real, "--out", tmp_path / "out", "--test-fraction", "0.3")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == (
        f"wrote {tmp_path / 'out'}: train.jsonl 194 games (17569 positions), val.jsonl 28 games "
        "(2553 positions), test.jsonl 90 games (8445 positions), stats.json")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "stats.json", "test.jsonl", "train.jsonl", "val.jsonl"]
    # A training-only set built from the same games leaves out the held-out ones.
    held = [tmp_path / "out" / "test.jsonl", tmp_path / "out" / "val.jsonl"]
    done = _run(MODULE, "build", real, "--out", tmp_path / "train_only", "--val-fraction", "0",
                "--exclude", held[0], "--exclude", held[1])
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == (
        "read 334 games from 1 file(s): kept 194, skipped 22, duplicates removed 0, excluded 118")
    missing = tmp_path / "nowhere.jsonl"
    done = _run(MODULE, "build", real, "--out", tmp_path / "x", "--exclude", missing)
    assert (done.returncode, done.stderr) == (2, f"datasets build: error: {missing}: file not "
                                                 "found\n")


@pytest.mark.parametrize(
    ("make", "args", "message"),
    [
        (None, [], "datasets build: error: {bad}: file not found"),
        (b"hello", [], "datasets build: error: {bad}: cannot read: not a gzip file"),
        (
            None,
            ["--val-fraction", "1"],
            "datasets build: error: argument --val-fraction: must be in [0, 1), got 1 (see --help)",
        ),
        (
            None,
            ["--test-fraction", "1"],
            "datasets build: error: argument --test-fraction: must be in [0, 1), got 1 "
            "(see --help)",
        ),
        (
            None,
            ["--seed", "x"],
            "datasets build: error: argument --seed: invalid int value: 'x' (see --help)",
        ),
    ],
)
def test_build_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, make: bytes | None, args: list[str], message: str
):
    bad = tmp_path / "games.pgn.gz"
    if make is not None:
        bad.write_bytes(make)
    done = _run(MODULE, "build", TRAPS, bad, "--out", tmp_path / "out", *args)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == message.format(bad=bad) + "\n"
    assert not (tmp_path / "out").exists()


def test_missing_subcommand_is_a_usage_error():
    done = _run(MODULE)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        "datasets: error: the following arguments are required: COMMAND (see --help)\n"
    )


def test_duplicates_are_warned_about(tmp_path: Path):
    game = '[Event "a"]\n[Result "*"]\n\n1. e4 e5 2. Nf3 *\n\n'
    pgn = tmp_path / "repeated.pgn"
    pgn.write_text(game * 1201)
    done = _run(MODULE, "build", pgn, "--out", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ("datasets build: warning: 1,200 duplicate games skipped (same start "
                           "position and moves as an earlier game)\n")
    assert done.stdout.splitlines()[0] == (
        "read 1201 games from 1 file(s): kept 1, skipped 0, duplicates removed 1200")


def test_out_of_range_fen_and_bad_tokens_are_skipped_with_reasons(tmp_path: Path):
    huge = "rnbqkbnr/pppppppp/8/8/8/8/PPPPPPPP/RNBQKBNR w KQkq - 0 99999999999999999999"
    pgn = tmp_path / "odd.pgn"
    pgn.write_text(f'[Event "huge"]\n[SetUp "1"]\n[FEN "{huge}"]\n\n1. e4 *\n\n'
                   '[Event "tokens"]\n\n1. e4 zz9 2. ??? *\n\n'
                   '[Event "ok"]\n\n1. d4 d5 *\n')
    done = _run(MODULE, "build", pgn, "--out", tmp_path / "out")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.splitlines()[:4] == [
        "read 3 games from 1 file(s): kept 1, skipped 2, duplicates removed 0",
        "skipped by reason: bad_fen 1, bad_token 1",
        f"  {pgn}:1: bad FEN '{huge}': full-move number 99999999999999999999 is out of range "
        "(1 to 10,000)",
        f"  {pgn}:9: bad token 'zz9' in the move text",
    ]
    rows = (tmp_path / "out" / "train.jsonl").read_text() + (
        tmp_path / "out" / "val.jsonl").read_text()
    assert [json.loads(x)["moves_uci"] for x in rows.splitlines()] == [["d2d4", "d7d5"]]


def test_binary_and_corrupt_inputs_are_one_clear_error(tmp_path: Path):
    junk = tmp_path / "junk.pgn"
    junk.write_bytes(bytes(range(256)) * 40)
    done = _run(MODULE, "build", junk, "--out", tmp_path / "out")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith(f"datasets build: error: {junk}: not a PGN file: binary data (")
    assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1
    gz = tmp_path / "games.pgn"
    gz.write_bytes(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" + bytes(range(256)) * 40)
    done = _run(MODULE, "build", gz, "--out", tmp_path / "out")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith(f"datasets build: error: {gz}: cannot read: corrupt gzip data: "
                                  "Error -3 while decompressing data: ")
    assert len(done.stderr.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_no_usable_game_shows_the_reasons(tmp_path: Path):
    pgn = tmp_path / "bad.pgn"
    pgn.write_text('[Event "x"]\n\n1. e4 zz9 2. ??? *\n')
    done = _run(MODULE, "build", pgn, "--out", tmp_path / "out")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        "datasets build: error: no usable games in 1 input file(s): read 1, skipped 1, "
        "duplicates 0\nskipped by reason: bad_token 1\n"
        f"  {pgn}:3: bad token 'zz9' in the move text\n")
