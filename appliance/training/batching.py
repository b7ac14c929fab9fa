"""Batches of whole games: padding, target selection per epoch, length-bucketed batch order, and
the legal-move mask of every position (scattered in one step from the games' cached lists)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from appliance.datasets.rows import EncodedGame, SpliceConfig
from appliance.model import features
from appliance.model.encoding import pad_inputs
from appliance.model.vocab import NUM_MOVES

IGNORE = -100


@dataclass
class Batch:
    tokens: torch.Tensor  # (B, T) long
    phase: torch.Tensor  # (B, T) long
    side: torch.Tensor  # (B, T) long
    boards: torch.Tensor  # (B, T, 66) uint8
    targets: torch.Tensor  # (B, T) long, IGNORE where the position is not a target
    weights: torch.Tensor  # (B, T) float, 0 where not a target
    legal: torch.Tensor | None = None  # (B, T, NUM_MOVES) bool: the legal moves; None: no mask

    def to(self, device: torch.device) -> Batch:
        moved: dict[str, Any] = {k: None if t is None else t.to(device, non_blocking=True)
                                 for k, t in vars(self).items()}
        return Batch(**moved)

    @property
    def num_targets(self) -> int:
        return int((self.targets != IGNORE).sum())


class GameDataset(Dataset[tuple[EncodedGame, np.ndarray]]):
    """Games with the positions that count as targets in the current epoch."""

    def __init__(
        self, games: Sequence[EncodedGame], splice: SpliceConfig, seed: int, sample: bool
    ) -> None:
        self.games = games
        self.splice = splice
        self.seed = seed
        self.sample = sample  # False for validation: every eligible position, every epoch
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.games)

    def __getitem__(self, idx: int) -> tuple[EncodedGame, np.ndarray]:
        if idx < 0:  # a ghost (see bucketed_batches): the game ~idx with no target
            game = self.games[~idx]
            return game, np.zeros(len(game), dtype=bool)
        game = self.games[idx]
        mask = game.eligible(self.splice)
        cap = self.splice.max_samples_per_game
        if self.sample and cap and not game.spliced and mask.sum() > cap:
            rng = np.random.default_rng((self.seed, self.epoch, idx))
            keep = rng.choice(np.flatnonzero(mask), size=cap, replace=False)
            mask = np.zeros_like(mask)
            mask[keep] = True
        return game, mask

    def count_targets(self) -> int:
        return sum(int(self[i][1].sum()) for i in range(len(self)))


def legal_mask(games: Sequence[EncodedGame], length: int) -> np.ndarray:
    """(games, length, NUM_MOVES) bool: True at the legal moves of each position; padding has
    none. Needs games encoded with their legal moves."""
    mask = np.zeros((len(games), length, NUM_MOVES), dtype=bool)
    rows, cols = [], []
    for i, game in enumerate(games):
        if game.legal is None:
            raise ValueError("the legal-move mask needs games encoded with their legal moves")
        counts = np.diff(game.legal.offsets)
        rows.append(np.repeat(np.arange(i * length, i * length + len(counts)), counts))
        cols.append(game.legal.classes)
    mask.reshape(-1, NUM_MOVES)[np.concatenate(rows), np.concatenate(cols)] = True
    return mask


def collate(items: list[tuple[EncodedGame, np.ndarray]], endgame_weight: float = 1.0,
            legal: bool = False) -> Batch:
    tokens, phase, side, boards = pad_inputs([game for game, _ in items])
    targets = np.full(tokens.shape, IGNORE, dtype=np.int64)
    for i, (game, mask) in enumerate(items):
        targets[i, : len(game)] = np.where(mask, game.targets, IGNORE)
    weights = (targets != IGNORE).astype(np.float32)
    if endgame_weight != 1.0:
        weights[phase == features.ENDGAME] *= endgame_weight
    return Batch(
        torch.from_numpy(tokens),
        torch.from_numpy(phase),
        torch.from_numpy(side),
        torch.from_numpy(boards),
        torch.from_numpy(targets),
        torch.from_numpy(weights),
        torch.from_numpy(legal_mask([g for g, _ in items], tokens.shape[1])) if legal else None,
    )


class Collator:
    """A picklable collate function (DataLoader workers need one)."""

    def __init__(self, endgame_weight: float, legal: bool = False) -> None:
        self.endgame_weight = endgame_weight
        self.legal = legal

    def __call__(self, items: list[tuple[EncodedGame, np.ndarray]]) -> Batch:
        return collate(items, self.endgame_weight, self.legal)


def bucketed_batches(
    lengths: Sequence[int],
    batch_size: int,
    seed: int,
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
    shuffle: bool = True,
) -> list[list[int]]:
    """Batches of game indexes with similar lengths (little padding), this rank's share.

    Training (shuffle): the epoch is cut into global batches of batch_size * world_size games,
    the same global batches whatever the world size for the same product, and rank r takes every
    world_size-th game of each. Every game is seen once per epoch across the ranks, and every
    rank steps the same number of times: a rank left without a game in the last global batch
    gets a ghost (~index: that batch's first game with no target, which adds nothing to the
    gradient). Validation: batches of batch_size, the ranks taking turns.
    """
    idx = np.arange(len(lengths))
    lens = np.asarray(lengths)
    if not shuffle:
        idx = idx[np.argsort(lens, kind="stable")]
        batches = [idx[i : i + batch_size].tolist() for i in range(0, len(idx), batch_size)]
        return batches[rank::world_size]
    size = batch_size * world_size
    rng = np.random.default_rng((seed, epoch))
    idx = rng.permutation(idx)
    chunk = size * 64
    parts = [idx[i : i + chunk] for i in range(0, len(idx), chunk)]
    idx = np.concatenate([p[np.argsort(lens[p], kind="stable")] for p in parts])
    batches = [idx[i : i + size].tolist() for i in range(0, len(idx), size)]
    order = rng.permutation(len(batches))
    return [batches[i][rank::world_size] or [~batches[i][0]] for i in order]
