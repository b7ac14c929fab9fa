"""The encoded form of a dataset file on disk, so a file is replayed (and its legal moves listed)
once, not on every training run.

One `.npz` per (file content, encoding version, with or without legal moves), named by the
file's sha256: a changed file is encoded anew, never read from a stale entry. The games' arrays
are stored concatenated with their offsets, and come back as views into them.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np

from appliance.atomic import atomic_write, sha256_file
from appliance.datasets.rows import GAME_FORMAT, LEGACY_FORMAT, EncodedGame, load_games
from appliance.model.encoding import LegalMoves
from appliance.model.vocab import VOCAB_VERSION

CACHE_VERSION = f"encoded-v1-{VOCAB_VERSION}"
_PER_POSITION = ("tokens", "phase", "side", "boards", "targets", "trainable")


def entry_path(cache_dir: Path, data: Path, legal: bool) -> Path:
    """Where the encoding of `data` (as it is now) lives in `cache_dir`."""
    kind = "legal" if legal else "plain"
    return cache_dir / f"{data.name}.{sha256_file(data)[:20]}.{CACHE_VERSION}.{kind}.npz"


def save(path: Path, games: list[EncodedGame], counts: dict[str, int]) -> None:
    lengths = np.array([len(g) for g in games], dtype=np.int64)
    arrays = {k: np.concatenate([getattr(g, k) for g in games]) for k in _PER_POSITION}
    arrays["lengths"] = lengths
    arrays["spliced"] = np.array([g.spliced for g in games], dtype=bool)
    arrays["counts"] = np.array([counts[GAME_FORMAT], counts[LEGACY_FORMAT]], dtype=np.int64)
    legal = [g.legal for g in games]
    if all(x is not None for x in legal):
        arrays["legal_classes"] = np.concatenate([x.classes for x in legal if x is not None])
        arrays["legal_counts"] = np.concatenate([np.diff(x.offsets) for x in legal
                                                 if x is not None])
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda fh: np.savez(fh, **arrays))  # type: ignore[arg-type]


def load(path: Path) -> tuple[list[EncodedGame], dict[str, int]] | None:
    """The games stored at `path`, or None when there is no readable entry."""
    try:
        with np.load(path) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, KeyError):
        return None
    ends = np.cumsum(arrays["lengths"])
    starts = ends - arrays["lengths"]
    legal_offsets = None
    if "legal_counts" in arrays:
        legal_offsets = np.zeros(len(arrays["legal_counts"]) + 1, dtype=np.int64)
        np.cumsum(arrays["legal_counts"], out=legal_offsets[1:])
    games = []
    for i, (a, b) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
        legal = None
        if legal_offsets is not None:
            lo, hi = int(legal_offsets[a]), int(legal_offsets[b])
            legal = LegalMoves(arrays["legal_classes"][lo:hi], legal_offsets[a : b + 1] - lo)
        parts: dict[str, Any] = {k: arrays[k][a:b] for k in _PER_POSITION}
        games.append(EncodedGame(**parts, spliced=bool(arrays["spliced"][i]), legal=legal))
    game_rows, legacy_rows = arrays["counts"].tolist()
    return games, {GAME_FORMAT: game_rows, LEGACY_FORMAT: legacy_rows}


def cache_dir_for(data: Path, cache: str) -> Path | None:
    """The cache dir of `data` under the `cache` setting: "auto" (`.encoded/` next to the file),
    "off" (None), or a directory."""
    if cache == "off":
        return None
    return data.parent / ".encoded" if cache == "auto" else Path(cache)


def load_cached(
    paths: list[Path], cache: str, legal: bool, progress: bool = False
) -> tuple[list[EncodedGame], dict[str, int], int]:
    """`rows.load_games` through the cache (`cache_dir_for`); also returns how many files came
    from the cache. An entry that cannot be written (read-only dir) is skipped: training goes on
    with the encoding in memory."""
    games: list[EncodedGame] = []
    counts = {GAME_FORMAT: 0, LEGACY_FORMAT: 0}
    hits = 0
    for path in paths:
        cache_dir = cache_dir_for(path, cache)
        entry = entry_path(cache_dir, path, legal) if cache_dir and path.is_file() else None
        got = load(entry) if entry is not None and entry.is_file() else None
        if got is None:
            got = load_games([path], progress=progress, legal=legal)
            if entry is not None:
                with contextlib.suppress(OSError):
                    save(entry, *got)
        else:
            hits += 1
        games += got[0]
        for k, n in got[1].items():
            counts[k] += n
    return games, counts, hits
