"""The predictor behind the API: validate a position, encode it as training does
(`appliance.model.encoding`), run the network.

`prepare` turns (moves, fen, topk[, game]) into network inputs or raises InputError with the
exact message the API returns; `predict` runs any number of prepared positions in as few forward
passes as their kinds allow. Either architecture loads: a recurrent one (`recurrent = True`,
`step`) can continue a game from the state kept in a `GameCache`; a non-recurrent one
(`context_positions`) is fed only the positions its last prediction depends on, and a game kept
for it holds those positions' inputs, so its next request replays only the new moves. A checkpoint
trained with the legal-move mask (`meta["legal_mask"]`) ranks legal moves only (a fixed-context
one computes only their logits: `move_logits`).
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import chess
import numpy as np
import torch
from tqdm import tqdm

from appliance.inference.games import GameCache, GameEntry, GameKey
from appliance.model import features, vocab
from appliance.model.checkpoint import LoadedModel, load_model
from appliance.model.encoding import (
    EncodingError,
    PositionInputs,
    encode_moves,
    legal_keys,
    pad_inputs,
    replay,
)
from appliance.model.network import MovePredictor, count_parameters

TOPK_MAX = 50
# A forward pass costs about as much as this many extra rows at every step (weights are read
# once a step whatever the batch): the split of a batch into passes by length weighs the two.
PASS_COST_ROWS = 8


class InputError(ValueError):
    """A position the API cannot predict for; the message is returned to the client as is."""


@dataclass
class GameSave:
    """What to keep once the forward pass has run: the game's start, moves and final board."""

    key: GameKey
    fen: str | None
    moves: list[str]
    board: chess.Board


@dataclass
class Prepared:
    inputs: PositionInputs  # the positions to run: the game's, or only those after `start`
    legal_classes: list[int]  # output classes of the legal moves in the final position
    topk: int
    phase: int  # of the final position
    side: int
    start: GameEntry | None = None  # the cached game these inputs continue
    save: GameSave | None = None  # keep the state after the final position


@dataclass
class Prediction:
    topk: list[dict[str, Any]]
    predicted_uci: str
    best_legal: str
    phase: str
    side_to_move: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "topk": self.topk,
            "predicted_uci": self.predicted_uci,
            "best_legal": self.best_legal,
            "phase": self.phase,
            "side_to_move": self.side_to_move,
        }


def read_with_progress(path: Path, show: bool) -> tuple[bytes, str]:
    """The file's bytes and sha256, with a progress bar on a terminal."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    buf = io.BytesIO()
    with path.open("rb") as fh, tqdm(total=size, unit="B", unit_scale=True,
                                     desc=f"loading {path.name}",
                                     disable=None if show else True) as bar:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
            buf.write(chunk)
            bar.update(len(chunk))
    return buf.getvalue(), digest.hexdigest()


def tail(inputs: PositionInputs, n: int) -> PositionInputs:
    """The last `n` positions of `inputs`."""
    if len(inputs) <= n:
        return inputs
    return PositionInputs(inputs.tokens[-n:], inputs.phase[-n:], inputs.side[-n:],
                          inputs.boards[-n:])


def joined(first: PositionInputs, then: PositionInputs) -> PositionInputs:
    """The positions of `first` followed by those of `then`."""
    return PositionInputs(*(np.concatenate(pair) for pair in (
        (first.tokens, then.tokens), (first.phase, then.phase), (first.side, then.side),
        (first.boards, then.boards))))


def traced(model: torch.nn.Module, method: str, example: list[torch.Tensor]
           ) -> Callable[..., torch.Tensor]:
    """A fixed-context model's `method`, traced once into TorchScript on `example` (any batch
    size then). A traced pass runs without the GIL from start to end, where eager PyTorch takes
    the GIL back after every operation: on a busy event loop each of those waits could last the
    interpreter's switch interval, and the forward thread starved."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript: still the one executor
        # that runs a whole pass without the GIL, and torch is pinned
        module = torch.jit.trace_module(model, {method: tuple(example)}, check_trace=False)
    return cast(Callable[..., torch.Tensor], getattr(module, method))


def legal_pairs(items: Sequence[Prepared], device: torch.device
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(item index, class) of every legal move of `items`, as two index tensors."""
    rows = np.repeat(np.arange(len(items)), [len(p.legal_classes) for p in items])
    cols = np.concatenate([p.legal_classes for p in items])
    return torch.from_numpy(rows).to(device), torch.from_numpy(cols).to(device)


def legal_logits_only(values: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, n: int
                      ) -> torch.Tensor:
    """(n, 1968) logits: `values` at the (row, class) pairs of the legal moves, -inf elsewhere,
    so the softmax and the ranking see legal moves only."""
    out = torch.full((n, vocab.NUM_MOVES), float("-inf"), dtype=values.dtype,
                     device=values.device)
    out[rows, cols] = values
    return out


def plan_passes(lengths: Sequence[int], overhead: int = PASS_COST_ROWS) -> list[list[int]]:
    """Indices of `lengths` grouped into padded passes, shortest first: a pass of b sequences
    padded to length L costs L * (overhead + b); contiguous groups of the sorted lengths that
    minimise the sum (a long game does not pad many short ones, nor do short ones each get a
    pass)."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    n = len(order)
    best = [0] + [0] * n  # best[j]: cheapest plan of the first j sorted items
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        longest = lengths[order[j - 1]]
        best[j], cut[j] = min((best[i] + longest * (overhead + j - i), i) for i in range(j))
    groups = []
    j = n
    while j:
        groups.append(order[cut[j]:j])
        j = cut[j]
    return groups[::-1]


def state_rows(state: Any, rows: list[int]) -> Any:
    """Rows (batch dimension 1) of a recurrent state, copied so the batch's state can go."""
    if isinstance(state, tuple | list):
        return type(state)(state_rows(s, rows) for s in state)
    return state[:, rows].clone()


def join_states(states: list[Any]) -> Any:
    """One batch's state from single games' states (batch dimension 1)."""
    first = states[0]
    if isinstance(first, tuple | list):
        return type(first)(join_states([s[i] for s in states]) for i in range(len(first)))
    return torch.cat(states, dim=1)


class Predictor:
    def __init__(self, loaded: LoadedModel, device: torch.device, sha256: str,
                 max_history: int, games: GameCache | None = None) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.device = device
        self.sha256 = sha256
        self.max_history = max_history
        self.parameters = count_parameters(self.model)
        self.recurrent = bool(getattr(self.model, "recurrent", False))
        self.legal_only = bool(loaded.meta.get("legal_mask", False))
        self.context: int | None = None
        # A fixed-context model's traced pass over final positions: all 1968 logits, or, for a
        # model that ranks legal moves only, the legal moves' alone (`move_logits`).
        self.final_logits: Callable[..., torch.Tensor] | None = None
        self.legal_logits: Callable[..., torch.Tensor] | None = None
        if not self.recurrent:
            self.context = getattr(self.model, "context_positions", None)
            example = self._last_positions([encode_moves([], final=True).inputs] * 2)
            if self.legal_only and hasattr(self.model, "move_logits"):
                pairs = [torch.tensor(v, device=device) for v in ([0, 0, 1], [0, 5, 7])]
                self.legal_logits = traced(self.model, "move_logits", example + pairs)
            else:
                self.final_logits = traced(self.model, "position_logits", example)
        self.games = games

    @classmethod
    def load(cls, path: Path, device: torch.device, max_history: int,
             progress: bool = False, games: GameCache | None = None) -> Predictor:
        data, sha = read_with_progress(path, progress)
        return cls(load_model(path, device, data), device, sha, max_history, games)

    def facts(self) -> dict[str, Any]:
        return {
            "model_path": str(self.loaded.path),
            "model_sha256": self.sha256,
            "parameters": self.parameters,
            "device": str(self.device),
            "torch": torch.__version__,
            "features": self.loaded.config.features(),
            "vocab_version": self.loaded.meta.get("vocab_version"),
            "recurrent": self.recurrent,
            "legal_only": self.legal_only,
        }

    # -- inputs --------------------------------------------------------------------------------

    def prepare(self, moves: list[str], fen: str | None, topk: int,
                game: GameKey | None = None) -> Prepared:
        """The inputs of the position after `moves`; with `game`, when `moves` (from the same
        `fen`) extend the moves kept for that game, only the new moves are replayed: a
        recurrent network then runs only their positions from the kept state, a fixed-context
        one gets the kept inputs followed by theirs (and the game is kept again at once)."""
        if len(moves) > self.max_history:
            raise InputError(
                f"moves: {len(moves)} moves exceed the limit of {self.max_history}"
            )
        entry = self.games.get(game) if self.games is not None and game is not None else None
        start = None
        if (entry is not None and entry.fen == fen and len(entry.moves) <= len(moves)
                and moves[:len(entry.moves)] == entry.moves):
            found = self._continue(entry, moves)
            if found is not None:
                start, (inputs, board) = entry, found
        if entry is not None and start is None and self.games is not None:
            self.games.stats.diverged += 1
        if start is None:
            try:
                enc = encode_moves(moves, fen, field="moves", final=True, last=self.context)
            except EncodingError as exc:
                raise InputError(str(exc)) from None
            inputs, board = enc.inputs, enc.board
        legal = vocab.key_to_class()[legal_keys(board)].tolist()
        if not legal:
            outcome = board.outcome()
            why = outcome.termination.name.lower() if outcome else "no legal move"
            raise InputError(f"the game is over ({why}): no legal move in the final position")
        save = None
        if self.context is not None:
            if start is not None:
                assert start.context is not None  # kept by this branch below
                inputs = joined(start.context, inputs)
                start = None  # nothing kept feeds the forward pass but these inputs
            inputs = tail(inputs, self.context)
            if game is not None and self.games is not None:
                self.games.put(game, GameEntry(fen, list(moves), board.copy(stack=False),
                                               context=inputs))
        elif game is not None and self.games is not None and len(inputs):
            save = GameSave(game, fen, list(moves), board.copy(stack=False))
        if len(inputs):
            phase, side = int(inputs.phase[-1]), int(inputs.side[-1])
        else:  # the very position the cache ends at: its logits are kept
            phase, side = features.game_phase(board), features.side_to_move(board)
        # The prediction is read at the final position, exactly as training reads position t.
        return Prepared(inputs, legal, topk, phase, side, start, save)

    @staticmethod
    def _continue(entry: GameEntry, moves: list[str]
                  ) -> tuple[PositionInputs, chess.Board] | None:
        """Inputs of the positions after each move beyond the cached ones, and the final board;
        None when one of them is bad (the full replay then names it as usual)."""
        new = moves[len(entry.moves):]
        board = entry.board.copy(stack=False)
        n = len(new)
        snaps = np.empty((n, 10), dtype=np.uint64)
        try:
            # replay yields move i before pushing it: the board is then after move i - 1.
            for i, _ in enumerate(replay(new, board, "moves")):
                if i:
                    snaps[i - 1] = features.snapshot(board)
        except EncodingError:
            return None
        if n:
            snaps[n - 1] = features.snapshot(board)
        tokens = np.array([vocab.move_id(m) for m in new], dtype=np.int16)
        phase, side, boards = features.encode_snapshots(snaps)
        return PositionInputs(tokens, phase, side, boards), board

    # -- forward passes ------------------------------------------------------------------------

    def predict(self, batch: list[Prepared]) -> list[Prediction]:
        """Every prepared position, in as few forward passes as possible: positions without
        game state in padded passes grouped by length; games to continue or to keep, stepped
        together when they have as many new positions (padding would run into the state)."""
        finals: list[torch.Tensor | None] = [None] * len(batch)
        plain: list[int] = []
        stateful: dict[tuple[int, bool], list[int]] = defaultdict(list)
        for i, p in enumerate(batch):
            if not len(p.inputs):
                assert p.start is not None  # only a cached game has no new position
                finals[i] = p.start.logits
            elif p.start is None and p.save is None:
                plain.append(i)
            else:
                stateful[(len(p.inputs), p.start is not None)].append(i)
        with torch.inference_mode():
            if self.context is not None and plain:  # one pass, final positions only
                logits = self._final_pass([batch[i] for i in plain])
                for j, i in enumerate(plain):
                    finals[i] = logits[j]
                plain = []
            for group in plan_passes([len(batch[i].inputs) for i in plain]):
                rows = [plain[g] for g in group]
                tokens, phase, side, board = self._tensors([batch[i].inputs for i in rows])
                last = torch.tensor([len(batch[i].inputs) - 1 for i in rows], device=self.device)
                assert isinstance(self.model, MovePredictor)  # fixed-context ones took the pass
                logits, _ = self.model.step(tokens, phase, side, board, at=last)
                for j, i in enumerate(rows):
                    finals[i] = logits[j]
            for (_, continued), rows in stateful.items():
                self._step([batch[i] for i in rows], continued, rows, finals)
            final = torch.stack([f for f in finals if f is not None]).float()
            if self.legal_only and self.legal_logits is None:  # else the pass did it
                at, cols = legal_pairs(batch, final.device)
                final = legal_logits_only(final[at, cols], at, cols, len(batch))
            probs = torch.softmax(final, dim=-1).cpu()
        return [self._rank(p, probs[i]) for i, p in enumerate(batch)]

    def _final_pass(self, items: list[Prepared]) -> torch.Tensor:
        """(len(items), 1968) logits at each item's final position in one traced pass; for a
        model that ranks legal moves only, the legal moves' logits and -inf elsewhere."""
        inputs = self._last_positions([p.inputs for p in items])
        if self.legal_logits is None:
            assert self.final_logits is not None
            return self.final_logits(*inputs)
        rows, cols = legal_pairs(items, self.device)
        return legal_logits_only(self.legal_logits(*inputs, rows, cols), rows, cols, len(items))

    def _last_positions(self, inputs: list[PositionInputs]) -> list[torch.Tensor]:
        """A fixed-context model's inputs of each game's final position: its last `context`
        move tokens (PAD before the first), board codes and side to move."""
        assert self.context is not None
        k = self.context
        tokens = np.full((len(inputs), k), vocab.PAD_ID, dtype=np.int64)
        for j, g in enumerate(inputs):
            tokens[j, k - min(k, len(g)):] = g.tokens[-k:]
        boards = np.stack([g.boards[-1] for g in inputs])
        side = np.array([g.side[-1] for g in inputs], dtype=np.int64)
        return [torch.from_numpy(a).to(self.device) for a in (tokens, boards, side)]

    def _tensors(self, inputs: list[PositionInputs]) -> list[torch.Tensor]:
        return [torch.from_numpy(a).to(self.device) for a in pad_inputs(inputs)]

    def _step(self, items: list[Prepared], continued: bool, rows: list[int],
              finals: list[torch.Tensor | None]) -> None:
        """Step games with equally many new positions from their states (or the start) and
        keep each game's new state."""
        state = join_states([p.start.state for p in items if p.start]) if continued else None
        tokens, phase, side, board = self._tensors([p.inputs for p in items])
        assert isinstance(self.model, MovePredictor)  # only recurrent models keep game states
        last = torch.full((len(items),), tokens.shape[1] - 1, device=self.device)
        logits, new_state = self.model.step(tokens, phase, side, board, state=state, at=last)
        for j, (i, p) in enumerate(zip(rows, items, strict=True)):
            finals[i] = logits[j]
            if p.save is not None and self.games is not None:
                s = p.save
                self.games.put(s.key, GameEntry(s.fen, s.moves, s.board,
                                                state_rows(new_state, [j]), logits[j].clone()))

    def _rank(self, p: Prepared, probs: torch.Tensor) -> Prediction:
        legal = set(p.legal_classes)
        values, idx = probs.topk(min(p.topk, len(legal)) if self.legal_only else p.topk)
        classes = idx.tolist()
        ranked = [vocab.class_to_move(c) for c in classes]
        top = [{"uci": m, "prob": round(v, 6), "legal": c in legal}
               for m, c, v in zip(ranked, classes, values.tolist(), strict=True)]
        if self.legal_only:
            best = ranked[0]
        else:
            moves = p.legal_classes
            best = vocab.class_to_move(moves[int(probs[moves].argmax())])
        return Prediction(topk=top, predicted_uci=ranked[0], best_legal=best,
                          phase=features.PHASES[p.phase], side_to_move=features.SIDES[p.side])
