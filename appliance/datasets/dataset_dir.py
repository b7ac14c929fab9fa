"""Dataset directories: the deterministic train/val split by game and the atomic writer of
`train.jsonl`, `val.jsonl` and `stats.json`, shared by every tool that makes datasets.

A held-out split (`test_fraction` > 0) adds `test.jsonl`: games no trainer reads (training uses
train and val only), drawn from a hash domain of their own, so a game is held out in every
dataset built with the same seed and fraction whatever else the dataset holds.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal

import chess

from appliance.datasets.rows import GAME_FORMAT, DatasetError

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, Split] = ("train", "val")
TEST: Split = "test"
DEFAULT_VAL_FRACTION = 0.1
DEFAULT_TEST_FRACTION = 0.0
DEFAULT_SEED = 0


def game_key(moves: Sequence[str], fen: str | None = None) -> bytes:
    """Identity of a game: its start position and move list (a missing fen = the standard start)."""
    start = fen if fen is not None else chess.STARTING_FEN
    return hashlib.sha256(f"{start}\n{' '.join(moves)}".encode()).digest()


def _unit(domain: str, seed: int, key: bytes) -> float:
    digest = hashlib.sha256(f"{domain}:{seed}:".encode() + key).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of_key(
    key: bytes, *, seed: int, val_fraction: float, test_fraction: float = 0.0
) -> Split:
    """The side a game with `game_key` `key` lands on; the seed reshuffles which games go to val.
    With `test_fraction`, that share of all games is held out first; `val_fraction` is then the
    share of the rest (train/val of the rest are exactly as without a held-out split)."""
    if test_fraction > 0.0 and _unit("test-v1", seed, key) < test_fraction:
        return TEST
    return "val" if _unit("split-v1", seed, key) < val_fraction else "train"


def split_of(
    moves: Sequence[str],
    fen: str | None = None,
    *,
    seed: int = DEFAULT_SEED,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    test_fraction: float = DEFAULT_TEST_FRACTION,
) -> Split:
    """Train, val or test for one game, from its content alone (independent of input order)."""
    return split_of_key(
        game_key(moves, fen), seed=seed, val_fraction=val_fraction, test_fraction=test_fraction
    )


def check_val_fraction(value: float, what: str = "val") -> float:
    if not 0.0 <= value < 1.0:
        raise DatasetError(f"{what} fraction must be in [0, 1), got {value}")
    return value


def check_output_dir(out_dir: Path, force: bool) -> None:
    """Fail early, before any work, when `out_dir` cannot or must not be written."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DatasetError(f"{out_dir}: output path exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise DatasetError(f"{out_dir}: output directory is not empty; pass --force to overwrite")


def utc_now_iso() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def dumps_row(row: dict[str, Any]) -> str:
    return json.dumps(row, separators=(",", ":"), ensure_ascii=False)


class DatasetWriter:
    """Streams game rows into a dataset directory; nothing appears under the final names
    until `commit`, and an exception inside the `with` block leaves no temp files behind.

    Rows are split with `split_of_key` and, with `dedup`, a game seen before is dropped.
    `test_fraction` > 0 adds the held-out `test.jsonl` (and its counts in stats.json). A game
    whose key is in `exclude` (another dataset's held-out games) is dropped and counted.
    """

    def __init__(
        self,
        out_dir: Path,
        *,
        seed: int = DEFAULT_SEED,
        val_fraction: float = DEFAULT_VAL_FRACTION,
        force: bool = False,
        dedup: bool = True,
        test_fraction: float = DEFAULT_TEST_FRACTION,
        exclude: frozenset[bytes] = frozenset(),
    ) -> None:
        check_val_fraction(val_fraction)
        check_val_fraction(test_fraction, "test")
        check_output_dir(out_dir, force)
        self.out_dir = out_dir
        self.seed = seed
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.dedup = dedup
        self.splits: tuple[Split, ...] = (*SPLITS, TEST) if test_fraction > 0.0 else SPLITS
        self.rows = dict.fromkeys(self.splits, 0)
        self.positions = dict.fromkeys(self.splits, 0)
        self.duplicates_removed = 0
        self.exclude = exclude
        self.excluded = 0
        self._seen: set[bytes] = set()
        self._tmp: dict[str, Path] = {}
        self._files: dict[str, IO[str]] = {}
        self._created_dir = not out_dir.exists()
        out_dir.mkdir(parents=True, exist_ok=True)
        for split in self.splits:
            self._files[split] = self._open_tmp(f"{split}.jsonl")

    def _open_tmp(self, name: str) -> IO[str]:
        tmp = self.out_dir / f".{name}.tmp-{os.getpid()}"
        self._tmp[name] = tmp
        return tmp.open("w", encoding="utf-8")

    def add(self, row: dict[str, Any]) -> Split | None:
        """Write one game row; returns its split, or None when it duplicates an earlier game
        or is excluded."""
        moves = row["moves_uci"]
        key = game_key(moves, row.get("fen"))
        if key in self.exclude:
            self.excluded += 1
            return None
        if self.dedup:
            if key in self._seen:
                self.duplicates_removed += 1
                return None
            self._seen.add(key)
        split = split_of_key(
            key, seed=self.seed, val_fraction=self.val_fraction, test_fraction=self.test_fraction
        )
        self._files[split].write(dumps_row(row) + "\n")
        self.rows[split] += 1
        self.positions[split] += len(moves)
        return split

    def counts(self) -> dict[str, Any]:
        counts: dict[str, Any] = {"dataset_format": GAME_FORMAT}
        counts.update({f"{s}_rows": self.rows[s] for s in self.splits})
        counts.update({f"{s}_positions": self.positions[s] for s in self.splits})
        counts["duplicates_removed"] = self.duplicates_removed
        if self.exclude:
            counts["excluded"] = self.excluded
        return counts

    def commit(self, stats: dict[str, Any]) -> dict[str, Any]:
        """Write stats.json (the writer's counts first, then `stats`) and move all files in place;
        stats.json goes last so that its presence means the directory is complete."""
        full = {**self.counts(), **stats}
        with self._open_tmp("stats.json") as fh:
            fh.write(json.dumps(full, indent=2, ensure_ascii=False) + "\n")
        for fh in self._files.values():
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
        for name in (*(f"{s}.jsonl" for s in self.splits), "stats.json"):
            os.replace(self._tmp.pop(name), self.out_dir / name)
        return full

    def abort(self) -> None:
        for fh in self._files.values():
            fh.close()
        for tmp in self._tmp.values():
            tmp.unlink(missing_ok=True)
        self._tmp.clear()
        if self._created_dir and not any(self.out_dir.iterdir()):
            self.out_dir.rmdir()

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._tmp:
            self.abort()


def write_dataset_dir(
    out_dir: Path,
    rows: Iterable[dict[str, Any]],
    stats: dict[str, Any],
    *,
    seed: int = DEFAULT_SEED,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    force: bool = False,
    dedup: bool = True,
    test_fraction: float = DEFAULT_TEST_FRACTION,
) -> dict[str, Any]:
    """Split, dedup and write `rows` to `out_dir`; returns the stats.json content."""
    with DatasetWriter(
        out_dir, seed=seed, val_fraction=val_fraction, force=force, dedup=dedup,
        test_fraction=test_fraction,
    ) as writer:
        for row in rows:
            writer.add(row)
        return writer.commit(stats)
