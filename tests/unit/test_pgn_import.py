"""PGN import: traps in hand-written and real PGN, compression, split, output directory rules."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pytest
import zstandard

from appliance.datasets.dataset_dir import check_output_dir, split_of, write_dataset_dir
from appliance.datasets.pgn_import import import_pgn, iter_chunks
from appliance.datasets.rows import GAME_FORMAT, DatasetError, load_games

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "pgn"
TRAPS = FIXTURES / "traps.pgn"
REAL_GAMES = FIXTURES / "real_games_chesscom.pgn"  # 334 real online blitz/rapid games

TRAPS_ROWS = [
    {
        "moves_uci": ["e2e4", "e7e5", "d1h5", "b8c6", "f1c4", "g8f6", "h5f7"],
        "result": "1-0",
        "white_elo": 1500,
        "eco": "C20",
        "source": "traps.pgn:2",
    },
    {"moves_uci": ["d2d4", "d7d5", "c2c4", "e7e6"], "result": "1/2-1/2", "source": "traps.pgn:11"},
    {
        "moves_uci": ["e2e4", "e8d7", "e1d2"],
        "fen": "4k3/8/8/8/8/8/4P3/4K3 w - - 0 1",
        "result": "*",
        "source": "traps.pgn:16",
    },
    {"moves_uci": ["g1f3", "g8f6", "g2g3"], "result": "*", "source": "traps.pgn:53"},
    {"moves_uci": ["c2c4", "c7c5"], "result": "*", "source": "traps.pgn:59"},
]
TRAPS_SKIPPED = [
    (
        23,
        "illegal_move",
        "illegal move after 2 plies: illegal san: 'Ke3' in "
        "rnbqkbnr/pppp1ppp/8/4p3/4P3/8/PPPP1PPP/RNBQKBNR w KQkq - 0 2",
    ),
    (28, "not_a_game", "no PGN tags or moves found"),
    (30, "no_moves", "game has no moves"),
    (40, "bad_fen", "bad FEN 'not a fen': expected 'w' or 'b' for turn part of fen: 'not a fen'"),
    (46, "unsupported_variant", "variant 'Chess960' is not supported (standard only)"),
]


def _rows(out: Path) -> list[dict]:
    rows = []
    for name in ("train.jsonl", "val.jsonl"):
        rows += [json.loads(line) for line in (out / name).read_text().splitlines()]
    return rows


def _import(inputs: list[Path], out: Path, **kwargs) -> dict:
    return import_pgn(inputs, out, command="test", **kwargs)


def _copy_traps(tmp_path: Path) -> dict[str, Path]:
    data = TRAPS.read_bytes()
    plain = tmp_path / "traps.pgn"
    plain.write_bytes(data)
    gz = tmp_path / "traps.pgn.gz"
    gz.write_bytes(gzip.compress(data))
    zst = tmp_path / "traps.pgn.zst"
    zst.write_bytes(zstandard.ZstdCompressor().compress(data))
    return {"plain": plain, "gz": gz, "zst": zst}


def test_traps_counts_rows_and_skip_reports(tmp_path: Path):
    stats = _import([TRAPS], tmp_path / "out")
    assert {k: stats[k] for k in ("games_read", "games_kept", "games_skipped")} == {
        "games_read": 11,
        "games_kept": 5,
        "games_skipped": 5,
    }
    assert stats["duplicates_removed"] == 1
    assert stats["skipped_by_reason"] == {
        "bad_fen": 1,
        "illegal_move": 1,
        "no_moves": 1,
        "not_a_game": 1,
        "unsupported_variant": 1,
    }
    assert stats["skipped"] == [
        {"file": str(TRAPS), "line": line, "kind": kind, "reason": reason}
        for line, kind, reason in TRAPS_SKIPPED
    ]
    assert stats["dataset_format"] == GAME_FORMAT
    assert stats["train_rows"] + stats["val_rows"] == 5
    assert stats["train_positions"] + stats["val_positions"] == 19
    made = stats["created_by"]
    assert made["tool"] == "pgn_import" and made["command"] == "test"
    assert made["sources"] == [str(TRAPS)] and made["seed"] == 0 and made["val_fraction"] == 0.1
    assert made["created_at"].endswith("Z")

    rows = sorted(_rows(tmp_path / "out"), key=lambda r: int(r["source"].rsplit(":", 1)[1]))
    for row in rows:
        row["source"] = row["source"].replace(str(FIXTURES) + "/", "")
    assert rows == TRAPS_ROWS
    assert json.loads((tmp_path / "out" / "stats.json").read_text()) == stats


def test_compressed_copies_give_the_same_rows(tmp_path: Path):
    copies = _copy_traps(tmp_path)
    results = {}
    for kind, path in copies.items():
        stats = _import([path], tmp_path / kind)
        rows = _rows(tmp_path / kind)
        for row in rows:
            assert row["source"].startswith(f"{path}:")
            del row["source"]
        results[kind] = (stats["games_read"], stats["games_kept"], stats["skipped_by_reason"], rows)
    assert results["gz"] == results["plain"]
    assert results["zst"] == results["plain"]


def test_duplicates_across_files_are_removed(tmp_path: Path):
    copies = _copy_traps(tmp_path)
    stats = _import([copies["plain"], copies["gz"]], tmp_path / "out")
    assert (stats["games_read"], stats["games_kept"], stats["duplicates_removed"]) == (22, 5, 7)
    assert stats["games_skipped"] == 10
    assert stats["created_by"]["sources"] == [str(copies["plain"]), str(copies["gz"])]


def test_header_line_of_a_game_that_follows_movetext_directly():
    text = '[Event "a"]\n\n1. e4 e5 1-0\n[Event "b"]\n[Result "*"]\n\n1. d4 {x\n[%clk 1]} d5 *\n'
    chunks = list(iter_chunks(text.splitlines(keepends=True)))
    assert [(c.line, c.has_tags) for c in chunks] == [(1, True), (4, True)]
    assert chunks[1].text == '[Event "b"]\n[Result "*"]\n1. d4 {x\n[%clk 1]} d5 *\n'


def test_real_chesscom_games(tmp_path: Path):
    stats = _import([REAL_GAMES], tmp_path / "out")
    counts = ("games_read", "games_kept", "games_skipped", "duplicates_removed")
    assert [stats[k] for k in counts] == [334, 312, 22, 0]
    assert stats["skipped_by_reason"] == {"no_moves": 1, "unsupported_variant": 21}
    assert (stats["train_rows"], stats["val_rows"]) == (276, 36)
    assert stats["skipped"][0] == {
        "file": str(REAL_GAMES),
        "line": 221,
        "kind": "unsupported_variant",
        "reason": "variant 'Chess960' is not supported (standard only)",
    }
    no_moves = [r for r in stats["skipped"] if r["kind"] == "no_moves"]
    assert [r["line"] for r in no_moves] == [4074]
    games, _ = load_games([tmp_path / "out" / "val.jsonl"])  # rows the trainer accepts
    assert len(games) == 36


def test_split_depends_on_the_game_and_seed_only():
    rng = random.Random(1)
    games = [["e2e4", str(i)] for i in range(50)]  # the split hashes, it does not check moves
    first = [split_of(g, seed=5, val_fraction=0.3) for g in games]
    shuffled = list(enumerate(games))
    rng.shuffle(shuffled)
    assert all(split_of(g, seed=5, val_fraction=0.3) == first[i] for i, g in shuffled)
    assert split_of(["e2e4"], None) == split_of(["e2e4"], None, seed=0, val_fraction=0.1)
    assert split_of(["e2e4"], "8/8/8/8/8/8/4P3/4K2k w - - 0 1") in ("train", "val")
    assert all(split_of(g, seed=5, val_fraction=0.0) == "train" for g in games)
    many = [[str(i)] for i in range(4000)]
    share = sum(split_of(g, seed=0, val_fraction=0.1) == "val" for g in many) / len(many)
    assert 0.08 < share < 0.12
    other_seed = [split_of(g, seed=6, val_fraction=0.1) for g in many]
    assert other_seed != [split_of(g, seed=0, val_fraction=0.1) for g in many]


def test_same_games_in_any_order_land_on_the_same_side(tmp_path: Path):
    text = TRAPS.read_text()
    blocks = text.split("\n\n[")
    reordered = tmp_path / "reordered.pgn"
    reordered.write_text("\n\n[".join([blocks[0], *reversed(blocks[1:])]))
    _import([TRAPS], tmp_path / "a", val_fraction=0.5, seed=3)
    _import([reordered], tmp_path / "b", val_fraction=0.5, seed=3)
    for name in ("train.jsonl", "val.jsonl"):
        a = {tuple(json.loads(line)["moves_uci"]) for line in (tmp_path / "a" / name).open()}
        b = {tuple(json.loads(line)["moves_uci"]) for line in (tmp_path / "b" / name).open()}
        assert a == b


def test_refuses_a_non_empty_output_dir_unless_forced(tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(DatasetError) as err:
        _import([TRAPS], out)
    assert str(err.value) == f"{out}: output directory is not empty; pass --force to overwrite"
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    _import([TRAPS], out, force=True)
    names = ["keep.txt", "stats.json", "train.jsonl", "val.jsonl"]
    assert sorted(p.name for p in out.iterdir()) == names
    (tmp_path / "file").write_text("x")
    with pytest.raises(DatasetError, match="output path exists and is not a directory"):
        check_output_dir(tmp_path / "file", force=True)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.pgn", None, "{path}: file not found"),
        ("fake.pgn.gz", b"[Event]\n", "{path}: cannot read: not a gzip file"),
        ("fake.pgn.zst", b"[Event]\n", "{path}: cannot read: not a zstd file"),
        (
            "cut.pgn.gz",
            gzip.compress(TRAPS.read_bytes())[:200],
            "{path}: cannot read: Compressed file ended before the end-of-stream marker "
            "was reached",
        ),
        (
            "cut.pgn.zst",
            zstandard.ZstdCompressor().compress(TRAPS.read_bytes())[:200],
            "{path}: cannot read: zstd stream ends inside a frame (truncated file?)",
        ),
    ],
)
def test_bad_inputs_write_nothing(tmp_path: Path, name: str, content: bytes | None, message: str):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    out = tmp_path / "out"
    with pytest.raises(DatasetError) as err:
        _import([TRAPS, path], out)
    assert str(err.value) == message.format(path=path)
    assert not out.exists()


def test_no_usable_game_is_an_error(tmp_path: Path):
    (tmp_path / "empty.pgn").write_bytes(b"")
    (tmp_path / "junk.pgn").write_text('junk\n\n[Event "x"]\n\n*\n')
    with pytest.raises(DatasetError) as err:
        _import([tmp_path / "empty.pgn", tmp_path / "junk.pgn"], tmp_path / "out")
    junk = tmp_path / "junk.pgn"
    assert str(err.value) == (
        "no usable games in 2 input file(s): read 2, skipped 2, duplicates 0\n"
        "skipped by reason: no_moves 1, not_a_game 1\n"
        f"  {junk}:1: no PGN tags or moves found\n"
        f"  {junk}:3: game has no moves")
    assert not (tmp_path / "out").exists()


def test_no_usable_game_shows_counts_and_the_first_five(tmp_path: Path):
    bad = tmp_path / "bad.pgn"
    games = ['[Event "bad"]\n\n1. e4 zz9 2. ??? *\n'] * 6 + ['[Event "x"]\n\n1. e4 e5 2. Ke3 *\n']
    bad.write_text("\n".join(games))
    with pytest.raises(DatasetError) as err:
        _import([bad], tmp_path / "out")
    assert str(err.value) == (
        "no usable games in 1 input file(s): read 7, skipped 7, duplicates 0\n"
        "skipped by reason: bad_token 6, illegal_move 1\n"
        + "".join(f"  {bad}:{3 + 4 * i}: bad token 'zz9' in the move text\n" for i in range(5))
    ).rstrip("\n")


@pytest.mark.parametrize(("movetext", "line", "token"), [
    ("1. e4 zz9 2. ??? *", 3, "zz9"),
    ("1. e4 e5\n2. ??? Nc6 *", 4, "???"),
    ("1. e4 {a comment with zz9 and ???} e5 ; zz9 again\n2. Nf3 E4 *", 4, "E4"),
    ("1. e4 e5 2. Nf3 Nc6 3. Bb5 a6 4. Ba4 Nf6 5. O-O Be7 6. Re1 b5 7. Bb3 d6 junk/x *", 3,
     "junk/x"),
])
def test_bad_move_text_is_reported_with_line_and_token(tmp_path: Path, movetext: str,
                                                       line: int, token: str):
    pgn = tmp_path / "g.pgn"
    ok = ('[Event "ok"]\n\n1. d4 (1. e4?! e5) 1... d5 $1 2. c4+ e6!? += 3. cxd5 N ± exd5 '
          "4. Nc3 ∞ 1/2-1/2\n\n")
    pgn.write_text(f'[Event "t"]\n\n{movetext}\n\n' + ok)
    stats = _import([pgn], tmp_path / "out")
    assert (stats["games_kept"], stats["skipped_by_reason"]) == (1, {"bad_token": 1})
    assert stats["skipped"] == [{"file": str(pgn), "line": line, "kind": "bad_token",
                                 "reason": f"bad token {token!r} in the move text"}]


def test_binary_junk_and_corrupt_gzip_name_the_file(tmp_path: Path):
    rng = random.Random(3)
    junk = tmp_path / "junk.pgn"
    junk.write_bytes(bytes(rng.randrange(256) for _ in range(4000)))
    with pytest.raises(DatasetError) as err:
        _import([junk], tmp_path / "out")
    text = junk.read_bytes().decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")
    odd = sum(1 for ch in text if ch == "\ufffd" or (ch < " " and ch not in "\t\n\r\f"))
    assert str(err.value) == (f"{junk}: not a PGN file: binary data ({odd} of the first "
                              f"{len(text)} characters are not text)")
    gz = tmp_path / "random.pgn.gz"
    gz.write_bytes(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" + bytes(rng.randrange(256)
                                                                    for _ in range(4000)))
    with pytest.raises(DatasetError) as err:
        _import([gz], tmp_path / "out")
    assert str(err.value).startswith(f"{gz}: cannot read: corrupt gzip data: Error -3 while "
                                     "decompressing data: ")
    assert not (tmp_path / "out").exists()


def test_python_chess_crash_on_a_game_is_a_skip(tmp_path: Path):
    from appliance.datasets.pgn_import import PgnChunk, SkipReport, chunk_to_row

    # An illegal move, a stray ')' and a NAG crash python-chess's game builder (IndexError).
    row, report = chunk_to_row(PgnChunk(7, "a2)!\n", False, (7,)), "x.pgn")
    assert row is None
    assert report == SkipReport("x.pgn", 7, "parse_error",
                                "cannot parse the game: IndexError: list index out of range")


def test_failure_after_start_leaves_no_temp_files(tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    rows: list[dict] = [{"moves_uci": ["e2e4"]}, {"moves_uci": None}]
    with pytest.raises(TypeError):
        write_dataset_dir(out, rows, {})
    assert list(out.iterdir()) == []


def test_held_out_test_split(tmp_path: Path):
    plain = _import([REAL_GAMES], tmp_path / "plain")
    held = _import([REAL_GAMES], tmp_path / "held", test_fraction=0.3)
    assert (held["train_rows"], held["val_rows"], held["test_rows"]) == (194, 28, 90)
    assert held["created_by"]["test_fraction"] == 0.3
    assert "test_rows" not in plain and "test_fraction" not in plain["created_by"]
    assert not (tmp_path / "plain" / "test.jsonl").exists()

    def games(out: Path, name: str) -> set[tuple[str, ...]]:
        return {tuple(json.loads(line)["moves_uci"]) for line in (out / name).open()}

    test = games(tmp_path / "held", "test.jsonl")
    assert len(test) == 90
    assert all(split_of(list(g), seed=0, test_fraction=0.3) == "test" for g in test)
    # The rest is split exactly as without a held-out share: train/val lose the test games only.
    for name in ("train.jsonl", "val.jsonl"):
        assert games(tmp_path / "held", name) == games(tmp_path / "plain", name) - test
    # A game is held out whatever else the dataset holds (here: one file vs. two).
    both = _import([REAL_GAMES, TRAPS], tmp_path / "both", test_fraction=0.3)
    assert test <= games(tmp_path / "both", "test.jsonl")
    assert both["test_rows"] >= 90
    with pytest.raises(DatasetError, match=r"^test fraction must be in \[0, 1\), got 1.0$"):
        _import([REAL_GAMES], tmp_path / "bad", test_fraction=1.0)


def test_exclude_leaves_out_another_datasets_held_out_games(tmp_path: Path):
    held = _import([REAL_GAMES], tmp_path / "held", test_fraction=0.3)
    out = tmp_path / "train_only"
    stats = _import([REAL_GAMES, TRAPS], out, val_fraction=0.0,
                    exclude=[tmp_path / "held" / "test.jsonl", tmp_path / "held" / "val.jsonl"])
    excluded = held["test_rows"] + held["val_rows"]
    assert stats["excluded"] == excluded == 118
    assert stats["created_by"]["exclude"] == [str(tmp_path / "held" / n)
                                              for n in ("test.jsonl", "val.jsonl")]
    kept = {tuple(json.loads(line)["moves_uci"]) for line in (out / "train.jsonl").open()}
    for name in ("test.jsonl", "val.jsonl"):
        for line in (tmp_path / "held" / name).open():
            assert tuple(json.loads(line)["moves_uci"]) not in kept
    assert stats["train_rows"] == stats["games_kept"] == stats["games_read"] - \
        stats["games_skipped"] - stats["duplicates_removed"] - excluded
    with pytest.raises(DatasetError, match="nowhere.jsonl"):
        _import([REAL_GAMES], tmp_path / "bad2", exclude=[tmp_path / "nowhere.jsonl"])
