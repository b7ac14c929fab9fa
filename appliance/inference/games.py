"""Per-game state: what the service keeps after the last position of a game a client named with
`game_id`, so the next request of that game replays only its new moves and, for a recurrent
network, runs only those.

An entry holds the game's start (FEN), its moves, the board after them, and either the recurrent
network's state after the last position and that position's logits, or, for a network that reads
a fixed context, the inputs of the game's last positions. The cache is an LRU bounded by entry
count and by bytes (`GameEntry.nbytes`, an estimate: arrays exactly, Python objects roughly), and
an entry unused for `ttl_s` is dropped. Keys are (scope, game_id): the scope is the caller's bearer
token (hashed), so two tokens never share a game. Thread-safe: the event loop (or a worker
thread, for a long history) and the forward thread read and write it.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import chess
import numpy as np
import torch

from appliance.model.encoding import PositionInputs

# Rough sizes of the Python objects an entry holds besides its tensors.
_BYTES_PER_MOVE = 64  # a short str object and its list slot
_BYTES_FIXED = 2048  # the entry, a board without its move stack, dict and LRU slots

GameKey = tuple[str, str]


def game_key(token: bytes, game_id: str) -> GameKey:
    """The cache key of `game_id` for a caller presenting `token` (b"" without auth)."""
    return hashlib.sha256(token).hexdigest()[:16], game_id


def state_nbytes(state: Any) -> int:
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, np.ndarray):
        return state.nbytes
    if isinstance(state, PositionInputs):
        return sum(a.nbytes for a in (state.tokens, state.phase, state.side, state.boards))
    if isinstance(state, tuple | list):
        return sum(state_nbytes(s) for s in state)
    return 0


@dataclass
class GameEntry:
    fen: str | None
    moves: list[str]
    board: chess.Board  # after `moves`, without its move stack
    state: Any = None  # recurrent: the network's state after the last position, one game
    logits: torch.Tensor | None = None  # recurrent: (NUM_MOVES,) at the last position
    context: PositionInputs | None = None  # fixed context: the inputs of the last positions
    nbytes: int = field(init=False)

    def __post_init__(self) -> None:
        self.nbytes = (state_nbytes(self.state) + state_nbytes(self.logits)
                       + state_nbytes(self.context)
                       + _BYTES_PER_MOVE * len(self.moves) + _BYTES_FIXED)


@dataclass
class CacheStats:
    hits: int = 0  # found (the request may still not extend it: see diverged)
    misses: int = 0
    diverged: int = 0  # found, but the request's history does not extend it: full pass
    evictions: int = 0
    expired: int = 0


class GameCache:
    def __init__(self, max_games: int, max_bytes: int, ttl_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_games = max_games
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self.clock = clock
        self.entries: OrderedDict[GameKey, tuple[GameEntry, float]] = OrderedDict()
        self.nbytes = 0
        self.stats = CacheStats()
        self.lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: GameKey) -> GameEntry | None:
        """The entry of `key` (now the most recently used), or None when absent or expired."""
        now = self.clock()
        with self.lock:
            self._expire(now)
            found = self.entries.get(key)
            if found is None:
                self.stats.misses += 1
                return None
            self.entries[key] = (found[0], now)
            self.entries.move_to_end(key)
            self.stats.hits += 1
            return found[0]

    def put(self, key: GameKey, entry: GameEntry) -> None:
        """Store `entry` under `key`, then evict the least recently used entries until both
        bounds hold; an entry larger than the byte bound alone is not kept."""
        now = self.clock()
        with self.lock:
            old = self.entries.pop(key, None)
            if old is not None:
                self.nbytes -= old[0].nbytes
            if entry.nbytes > self.max_bytes or self.max_games == 0:
                return
            self.entries[key] = (entry, now)
            self.nbytes += entry.nbytes
            self._expire(now)
            while len(self.entries) > self.max_games or self.nbytes > self.max_bytes:
                _, (gone, _) = self.entries.popitem(last=False)
                self.nbytes -= gone.nbytes
                self.stats.evictions += 1

    def _expire(self, now: float) -> None:
        """Drop entries unused for ttl_s; the LRU order is also the order of last use."""
        while self.entries:
            key, (entry, used) = next(iter(self.entries.items()))
            if now - used < self.ttl_s:
                return
            del self.entries[key]
            self.nbytes -= entry.nbytes
            self.stats.expired += 1
