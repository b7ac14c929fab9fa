"""PGN files (plain, .gz, .zst) -> a game dataset directory: mainline moves as UCI rows, broken
games skipped and reported by file, line and reason, duplicates removed, split by game.

python-chess skips move text it does not understand without a word (`1. e4 zz9 *` reads as
one move), so every token of a game's move text is checked first and a game with a bad one is
skipped, naming the token and its line. A file that is binary, or whose compression is corrupt,
is an error naming the file.
"""

from __future__ import annotations

import gzip
import io
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import chess
import chess.pgn
import zstandard
from tqdm import tqdm

from appliance.datasets.dataset_dir import (
    DEFAULT_SEED,
    DEFAULT_TEST_FRACTION,
    DEFAULT_VAL_FRACTION,
    DatasetWriter,
    game_key,
    utc_now_iso,
)
from appliance.datasets.rows import DatasetError, open_data_file, read_jsonl
from appliance.model.encoding import EncodingError, short_repr, start_board

MAX_SKIP_REPORTS = 100
SKIPS_IN_ERROR = 5  # examples in the error when no game at all is usable
PROBE_CHARS = 1 << 16  # text checked for binary content before any work
BINARY_SHARE = 0.05  # more undecodable or control characters than this: not a text file
RESULTS = frozenset({"1-0", "0-1", "1/2-1/2", "*"})
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# Same shape as python-chess's TAG_REGEX, so what we call a tag line is what it parses as one.
_TAG_LINE = re.compile(r'^\[[A-Za-z0-9][A-Za-z0-9_+#=:-]*\s+"')

# Skip reasons (keys of stats.json's skipped_by_reason).
NOT_A_GAME = "not_a_game"
NO_MOVES = "no_moves"
BAD_FEN = "bad_fen"
UNSUPPORTED_VARIANT = "unsupported_variant"
ILLEGAL_MOVE = "illegal_move"
PARSE_ERROR = "parse_error"
BAD_TOKEN = "bad_token"
READ_ERRORS = (OSError, EOFError, zlib.error, zstandard.ZstdError)

# One token of move text, as python-chess's MOVETEXT_REGEX reads it (plus the move number and the
# check signs it skips silently): anything else would be dropped without a word.
_MOVE = (r"(?:[NBKRQ]?[a-h]?[1-8]?[-x]?[a-h][1-8](?:=?[nbrqkNBRQK])?|[PNBRQK]?@[a-h][1-8]"
         r"|--|Z0|0000|@@@@|O-O(?:-O)?|0-0(?:-0)?)[+#]?")
_HAS_MOVE = re.compile(r"[a-h][1-8]|[O0]-[O0]|--|Z0|@@@@")
# Evaluation glyphs some exports write as text (+=, -+, ±, ∞, N for a novelty): no moves, and
# python-chess drops them harmlessly.
_GLYPHS = r"[-+=/±∓∞]+|N"
_TOKEN = re.compile(rf"(?:\d+\.*)?(?:{_MOVE})?(?:e\.p\.)?(?:[?!]{{1,2}})?|\$\d+|\*|1-0|0-1"
                    rf"|1/2-1/2|{_GLYPHS}")


@dataclass(frozen=True)
class SkipReport:
    file: str
    line: int
    kind: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "kind": self.kind, "reason": self.reason}

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


@dataclass
class ImportCounts:
    games_read: int = 0
    games_kept: int = 0
    skipped: list[SkipReport] = field(default_factory=list)  # the first MAX_SKIP_REPORTS
    skipped_by_reason: Counter[str] = field(default_factory=Counter)

    @property
    def games_skipped(self) -> int:
        return sum(self.skipped_by_reason.values())

    def skip(self, report: SkipReport) -> None:
        self.skipped_by_reason[report.kind] += 1
        if len(self.skipped) < MAX_SKIP_REPORTS:
            self.skipped.append(report)


@dataclass(frozen=True)
class PgnChunk:
    """The text of one game as found in the file, blank lines removed."""

    line: int  # 1-based line where the game starts (its first tag, or its first movetext line)
    text: str
    has_tags: bool
    line_numbers: tuple[int, ...] = ()  # of each line of `text`, in the file


class _QuietGameBuilder(chess.pgn.GameBuilder):
    """Collects errors in game.errors like the default builder, without logging each one."""

    def handle_error(self, error: Exception) -> None:
        self.game.errors.append(error)


class _ZstdFrames(io.RawIOBase):
    """Decompressed bytes of every frame in a .zst stream; zstandard's own stream_reader
    ends quietly at a truncated frame, which would drop games without a word."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self._dctx = zstandard.ZstdDecompressor()
        self._obj = self._dctx.decompressobj()
        self._in_frame = False
        self._out = b""
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while self._pos >= len(self._out):
            data = self._raw.read(1 << 16)
            if not data:
                if self._in_frame:
                    raise EOFError("zstd stream ends inside a frame (truncated file?)")
                return 0
            self._out, self._pos = self._decompress(data), 0
        n = min(len(buffer), len(self._out) - self._pos)
        buffer[:n] = self._out[self._pos : self._pos + n]
        self._pos += n
        return n

    def _decompress(self, data: bytes) -> bytes:
        out = []
        while data:
            self._in_frame = True
            out.append(self._obj.decompress(data))
            data = b""
            if self._obj.eof:
                data = self._obj.unused_data
                self._obj = self._dctx.decompressobj()
                self._in_frame = False
        return b"".join(out)


@contextmanager
def open_pgn(path: Path) -> Iterator[IO[str]]:
    """Text lines of a PGN file; compression is detected from the content, not the name."""
    with open_data_file(path, "PGN") as raw:
        magic = raw.read(4)
        raw.seek(0)
        name = path.name.lower()
        if magic.startswith(GZIP_MAGIC):
            binary = cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb"))
        elif magic == ZSTD_MAGIC:
            binary = cast(IO[bytes], io.BufferedReader(_ZstdFrames(raw)))
        elif name.endswith(".gz"):
            raise DatasetError(f"{path}: cannot read: not a gzip file")
        elif name.endswith(".zst"):
            raise DatasetError(f"{path}: cannot read: not a zstd file")
        else:
            binary = raw
        # PGN is meant to be ASCII/UTF-8; a stray Latin-1 name must not stop an import.
        yield io.TextIOWrapper(binary, encoding="utf-8", errors="replace", newline=None)


def _comment_state(line: str, in_comment: bool) -> bool:
    """Whether a `{ ... }` comment is still open at the end of `line`."""
    for ch in line:
        if in_comment:
            in_comment = ch != "}"
        elif ch == "{":
            in_comment = True
        elif ch == ";":
            break
    return in_comment


def iter_chunks(lines: Iterable[str]) -> Iterator[PgnChunk]:
    """Split PGN text into games.

    A game starts at a tag line that follows movetext (real exports often omit the blank line
    between one game's result and the next game's tags) or follows a blank line after tags,
    and at movetext that follows a blank line after movetext (games without tags).
    """
    buf: list[str] = []
    numbers: list[int] = []
    start = 0
    has_tags = has_movetext = blank_since = in_comment = False
    for line_no, raw in enumerate(lines, 1):
        line = raw.rstrip("\r\n")
        if line_no == 1:
            line = line.lstrip("\ufeff")
        if in_comment:
            if line.strip():
                buf.append(line)
                numbers.append(line_no)
            in_comment = _comment_state(line, True)
            continue
        stripped = line.strip()
        if not stripped:
            blank_since = True
            continue
        if stripped.startswith(("%", ";")):
            continue
        is_tag = _TAG_LINE.match(stripped) is not None
        if is_tag:
            starts_game = has_movetext or (blank_since and has_tags)
        else:
            starts_game = has_movetext and blank_since
        if starts_game and buf:
            yield PgnChunk(start, "\n".join(buf) + "\n", has_tags, tuple(numbers))
            buf, numbers = [], []
            has_tags = has_movetext = False
        if not buf:
            start = line_no
        blank_since = False
        numbers.append(line_no)
        if is_tag:
            buf.append(stripped)
            has_tags = True
        else:
            buf.append(line)
            has_movetext = True
            in_comment = _comment_state(line, False)
    if buf:
        yield PgnChunk(start, "\n".join(buf) + "\n", has_tags, tuple(numbers))


def scan_tokens(chunk: PgnChunk) -> tuple[tuple[int, str] | None, bool]:
    """(line, token) of the first move-text token python-chess would skip silently (or None),
    and whether any move was seen; comments (`{...}`, `; ...`) and the tag lines before the move
    text are not checked."""
    first_bad: tuple[int, str] | None = None
    saw_move = False
    in_comment = False
    in_tags = chunk.has_tags
    lines = chunk.text.splitlines()
    numbers = chunk.line_numbers or tuple(range(chunk.line, chunk.line + len(lines)))
    for line_no, line in zip(numbers, lines, strict=False):
        if in_tags and not in_comment and _TAG_LINE.match(line):
            continue
        in_tags = False
        kept: list[str] = []
        for ch in line:
            if in_comment:
                in_comment = ch != "}"
            elif ch == "{":
                in_comment = True
            elif ch == ";":
                break
            else:
                kept.append(ch)
        for token in re.split(r"[\s()]+", "".join(kept)):
            if not token:
                continue
            if not _TOKEN.fullmatch(token):
                first_bad = first_bad or (line_no, token)
            elif _HAS_MOVE.search(token):
                saw_move = True
    return first_bad, saw_move


def _elo(value: str | None) -> int | None:
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


def chunk_to_row(chunk: PgnChunk, source: str) -> tuple[dict[str, Any] | None, SkipReport | None]:
    """One game's text -> (row, None) when usable, else (None, why it was skipped)."""

    def skip(kind: str, reason: str, line: int | None = None) -> tuple[None, SkipReport]:
        return None, SkipReport(source, chunk.line if line is None else line, kind, reason)

    bad, saw_move = scan_tokens(chunk)
    if not chunk.has_tags and not saw_move:
        return skip(NOT_A_GAME, "no PGN tags or moves found")
    if bad is not None:
        return skip(BAD_TOKEN, f"bad token {short_repr(bad[1], 40)} in the move text", bad[0])
    try:
        game = chess.pgn.read_game(io.StringIO(chunk.text), Visitor=_QuietGameBuilder)
    except Exception as exc:  # noqa: BLE001 - python-chess on hostile text: skip, never crash
        return skip(PARSE_ERROR, f"cannot parse the game: {type(exc).__name__}: {exc}")
    if game is None:
        return skip(NOT_A_GAME, "no PGN tags or moves found")
    headers = game.headers
    variant = headers.get("Variant", "Standard")
    try:
        standard = headers.variant() is chess.Board and not headers.is_chess960()
    except ValueError:
        standard = False
    if not standard:
        return skip(UNSUPPORTED_VARIANT, f"variant {variant!r} is not supported (standard only)")
    fen_header = headers.get("FEN")
    if fen_header is not None:
        try:
            board = start_board(fen_header)
        except EncodingError as exc:
            return skip(BAD_FEN, str(exc))
        if board.has_chess960_castling_rights():
            return skip(UNSUPPORTED_VARIANT, f"FEN {fen_header!r} has Chess960 castling rights")
    moves = [move.uci() for move in game.mainline_moves()]
    if game.errors:
        error = game.errors[0]
        if isinstance(error, chess.IllegalMoveError | chess.AmbiguousMoveError):
            return skip(ILLEGAL_MOVE, f"illegal move after {len(moves)} plies: {error}")
        return skip(PARSE_ERROR, f"cannot parse the game: {error}")
    if not moves:
        if not chunk.has_tags:
            return skip(NOT_A_GAME, "no PGN tags or moves found")
        return skip(NO_MOVES, "game has no moves")

    row: dict[str, Any] = {"moves_uci": moves}
    fen = game.board().fen()
    if fen != chess.STARTING_FEN:
        row["fen"] = fen
    result = headers.get("Result")
    if result in RESULTS:
        row["result"] = result
    for tag, key in (("WhiteElo", "white_elo"), ("BlackElo", "black_elo")):
        elo = _elo(headers.get(tag))
        if elo is not None:
            row[key] = elo
    eco = headers.get("ECO", "").strip()
    if eco and eco != "?":
        row["eco"] = eco
    row["source"] = f"{source}:{chunk.line}"
    return row, None


def iter_pgn_rows(
    path: Path, counts: ImportCounts, progress: bool = False
) -> Iterator[dict[str, Any]]:
    """Usable rows of one PGN file; skips are recorded in `counts`."""
    source = str(path)
    with open_pgn(path) as text:
        chunks = iter_chunks(text)
        bar = tqdm(chunks, desc=path.name, unit=" games", disable=not progress, leave=False)
        try:
            for chunk in bar:
                counts.games_read += 1
                row, report = chunk_to_row(chunk, source)
                if report is not None:
                    counts.skip(report)
                elif row is not None:
                    yield row
        except READ_ERRORS as exc:
            raise DatasetError(read_error(path, exc)) from None
        finally:
            bar.close()


def read_error(path: Path, exc: BaseException) -> str:
    what = "corrupt gzip data: " if isinstance(exc, zlib.error | gzip.BadGzipFile) else ""
    return f"{path}: cannot read: {what}{exc}"


def probe_pgn(path: Path) -> None:
    """Fail before any work when `path` is missing, binary, or its compression is broken at the
    start."""
    with open_pgn(path) as text:
        try:
            head = text.read(PROBE_CHARS)
        except READ_ERRORS as exc:
            raise DatasetError(read_error(path, exc)) from None
    odd = sum(1 for ch in head if ch == "\ufffd" or (ch < " " and ch not in "\t\n\r\f"))
    if "\0" in head or odd > BINARY_SHARE * len(head):
        raise DatasetError(f"{path}: not a PGN file: binary data ({odd} of the first "
                           f"{len(head)} characters are not text)")


def no_games_message(files: int, counts: ImportCounts, duplicates: int) -> str:
    """Why no game is usable: the counts per reason and the first few skipped games."""
    lines = [f"no usable games in {files} input file(s): read {counts.games_read}, "
             f"skipped {counts.games_skipped}, duplicates {duplicates}"]
    if counts.skipped_by_reason:
        lines.append("skipped by reason: " + ", ".join(
            f"{k} {v}" for k, v in sorted(counts.skipped_by_reason.items())))
        lines += [f"  {r}" for r in counts.skipped[:SKIPS_IN_ERROR]]
    return "\n".join(lines)


def import_pgn(
    inputs: Sequence[Path],
    out_dir: Path,
    *,
    seed: int = DEFAULT_SEED,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    force: bool = False,
    command: str = "",
    progress: bool = False,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    exclude: Sequence[Path] = (),
) -> dict[str, Any]:
    """Build a dataset directory from PGN files; returns the stats.json content. With
    `test_fraction` > 0 that share of the games goes to the held-out `test.jsonl`. Games found
    in the `exclude` JSONL files (say, another dataset's test and val splits) are left out.

    Raises DatasetError (and writes nothing) when an input is missing or unreadable, when
    `out_dir` is not empty without `force`, or when no game at all is usable.
    """
    for path in inputs:
        probe_pgn(path)
    excluded = frozenset(game_key(row["moves_uci"], row.get("fen"))
                         for path in exclude for _, row in read_jsonl(path))
    counts = ImportCounts()
    with DatasetWriter(
        out_dir, seed=seed, val_fraction=val_fraction, force=force, test_fraction=test_fraction,
        exclude=excluded,
    ) as writer:
        for path in inputs:
            for row in iter_pgn_rows(path, counts, progress):
                if writer.add(row) is not None:
                    counts.games_kept += 1
        if counts.games_kept == 0:
            raise DatasetError(no_games_message(len(inputs), counts, writer.duplicates_removed))
        return writer.commit(
            {
                "games_read": counts.games_read,
                "games_kept": counts.games_kept,
                "games_skipped": counts.games_skipped,
                "skipped_by_reason": dict(sorted(counts.skipped_by_reason.items())),
                "created_by": {
                    "tool": "pgn_import",
                    "command": command,
                    "sources": [str(p) for p in inputs],
                    "seed": seed,
                    "val_fraction": val_fraction,
                    **({"test_fraction": test_fraction} if test_fraction > 0.0 else {}),
                    **({"exclude": [str(p) for p in exclude]} if exclude else {}),
                    "created_at": utc_now_iso(),
                },
                "skipped": [r.as_dict() for r in counts.skipped],
            }
        )
