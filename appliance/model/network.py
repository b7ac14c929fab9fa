"""The move-prediction network: move tokens (+ board) -> recurrent layers -> move logits.

Input at step t is the token of the move just played (BOS at the start) plus, with the board
feature, an embedding of the current position's board codes. The recurrent output is joined with
phase and side-to-move embeddings (and the board embedding) and mapped to one logit per
vocabulary move. The network is
causal, so one pass over a whole game yields a prediction for every position in it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Self, cast

import torch
from torch import nn

from appliance.model.features import BOARD_CODES
from appliance.model.vocab import NUM_MOVES, PAD_ID, VOCAB_SIZE

_BOARD_SLOT_OFFSETS = [sq * 13 for sq in range(64)] + [64 * 13, 64 * 13 + 16]
_BOARD_INDEX_SPACE = 64 * 13 + 16 + 9


class NetConfig:
    """What every architecture's (frozen dataclass) config shares: the dict a checkpoint keeps,
    read back with a ValueError naming keys it does not know, and range checks."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(cast(Any, self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        unknown = sorted(set(data) - {f.name for f in fields(cast(Any, cls))})
        if unknown:
            raise ValueError(f"unknown model config keys: {', '.join(unknown)}")
        return cls(**data)

    def require_at_least(self, low: int, *names: str) -> None:
        for name in names:
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be at least {low}, got {getattr(self, name)}")


@dataclass(frozen=True)
class ModelConfig(NetConfig):
    embed_dim: int = 256
    hidden_dim: int = 512
    num_layers: int = 2
    dropout: float = 0.15
    rnn: str = "lstm"
    phase_feature: bool = True
    side_feature: bool = True
    board_feature: bool = True
    feature_dim: int = 16

    def __post_init__(self) -> None:
        self.require_at_least(1, "embed_dim", "hidden_dim", "num_layers", "feature_dim")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.rnn not in ("lstm", "gru"):
            raise ValueError(f"rnn must be 'lstm' or 'gru', got {self.rnn!r}")

    def features(self) -> dict[str, bool]:
        return {
            "history": True,
            "phase": self.phase_feature,
            "side_to_move": self.side_feature,
            "board": self.board_feature,
        }


class MovePredictor(nn.Module):
    board_offsets: torch.Tensor

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.embed = nn.Embedding(VOCAB_SIZE, c.embed_dim, padding_idx=PAD_ID)
        self.board_embed = None
        if c.board_feature:
            self.board_embed = nn.EmbeddingBag(_BOARD_INDEX_SPACE, c.embed_dim, mode="sum")
        self.register_buffer(
            "board_offsets", torch.tensor(_BOARD_SLOT_OFFSETS, dtype=torch.long), persistent=False
        )
        rnn_cls = nn.LSTM if c.rnn == "lstm" else nn.GRU
        self.rnn = rnn_cls(
            c.embed_dim,
            c.hidden_dim,
            num_layers=c.num_layers,
            dropout=c.dropout if c.num_layers > 1 else 0.0,
            batch_first=True,
        )
        self.phase_embed = nn.Embedding(3, c.feature_dim) if c.phase_feature else None
        self.side_embed = nn.Embedding(2, c.feature_dim) if c.side_feature else None
        head_in = c.hidden_dim + c.feature_dim * (int(c.phase_feature) + int(c.side_feature))
        head_in += c.embed_dim if c.board_feature else 0
        self.drop = nn.Dropout(c.dropout)
        self.head = nn.Linear(head_in, NUM_MOVES)

    recurrent = True  # `step` continues a game from the state after its previous position

    def forward(
        self,
        tokens: torch.Tensor,
        phase: torch.Tensor,
        side: torch.Tensor,
        board: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """tokens, phase, side: (B, T) long; board: (B, T, 66) codes. Returns (B, T, 1968)."""
        return self.step(tokens, phase, side, board)[0]

    def step(
        self,
        tokens: torch.Tensor,
        phase: torch.Tensor,
        side: torch.Tensor,
        board: torch.Tensor | None = None,
        state: Any = None,
        at: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Any]:
        """`forward` continued from `state` (None: the start of the game), and the state after
        the last position. The state is the recurrent layers' own: (h, c) for an LSTM, h for a
        GRU, batch on dimension 1; every position of the batch counts, so callers step games
        of equal length together. With `at` (B,), the logits at position `at[b]` of each row
        only, (B, 1968): what inference reads, without the head at every other position."""
        x = self.embed(tokens)
        board_vec = None
        if self.board_embed is not None:
            if board is None:
                raise ValueError("this model uses the board feature: pass board codes")
            b, t, _ = board.shape
            idx = board.reshape(b * t, BOARD_CODES).long() + self.board_offsets
            board_vec = self.board_embed(idx).reshape(b, t, -1)
            x = x + board_vec
        out, state = self.rnn(x, state)
        # The board also goes straight to the head: a short path from the position to its moves
        # (val loss 4.68 vs 6.06 after 3 epochs on data/sample, against the LSTM input only).
        parts = [out] if board_vec is None else [out, board_vec]
        if self.phase_embed is not None:
            parts.append(self.phase_embed(phase))
        if self.side_embed is not None:
            parts.append(self.side_embed(side))
        if at is not None:
            rows = torch.arange(len(at), device=at.device)
            parts = [part[rows, at] for part in parts]
        return self.head(self.drop(torch.cat(parts, dim=-1))), state


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
