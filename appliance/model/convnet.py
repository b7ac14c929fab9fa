"""The board-centric network: a residual convolutional tower over the board planes of a position,
with its last K moves as extra planes, in the spirit of the published human-move models.

Each position is predicted from itself alone: its board codes (see `features`) become 18 planes
on the 8x8 board (12 piece planes, 4 castling-right planes, the side to move, the en-passant
file) and each of the last `history` moves adds two (its from and to squares; the move tokens of
positions t - history + 1 .. t). So the logits at t depend on the inputs at those `history`
positions only (`context_positions`), with no absolute position index: a caller may pass just
the last `context_positions` positions of a game. With `flip` (the trainer's default) it always
sees the board from the side to move: for black, squares are mirrored top to bottom and colours
swapped (history moves and castling rights too), and its move logits are mirrored back, so
white's and black's positions teach the same weights. Padding positions (PAD token) are not
computed; their logits are zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from appliance.model.network import NetConfig
from appliance.model.vocab import NUM_MOVES, PAD_ID, mirror_classes, token_squares

BOARD_PLANES = 18


@dataclass(frozen=True)
class ConvConfig(NetConfig):
    channels: int = 64  # width of the tower
    blocks: int = 6  # residual blocks (two 3x3 convolutions each): the depth
    history: int = 6  # moves of history fed as planes (>= 1: the move that led here)
    head_channels: int = 32  # 1x1 convolution before the move head
    flip: bool = False  # see the board from the side to move (absent from the first checkpoints)

    def __post_init__(self) -> None:
        self.require_at_least(1, "channels", "head_channels", "history")
        self.require_at_least(0, "blocks")

    def features(self) -> dict[str, bool]:
        return {"history": True, "phase": False, "side_to_move": True, "board": True}


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(y)))


class ConvPredictor(nn.Module):
    recurrent = False
    squares: torch.Tensor
    mirror_square: torch.Tensor
    swap_colour: torch.Tensor
    mirror_class: torch.Tensor

    def __init__(self, config: ConvConfig) -> None:
        super().__init__()
        self.config = c = config
        self.context_positions = c.history
        self.register_buffer("squares", torch.from_numpy(token_squares()), persistent=False)
        mirror = torch.cat([torch.arange(64) ^ 56, torch.tensor([64])])
        self.register_buffer("mirror_square", mirror, persistent=False)
        swap = torch.tensor([0, 7, 8, 9, 10, 11, 12, 1, 2, 3, 4, 5, 6])
        self.register_buffer("swap_colour", swap, persistent=False)
        self.register_buffer("mirror_class", torch.from_numpy(mirror_classes()), persistent=False)
        self.stem = nn.Sequential(
            nn.Conv2d(BOARD_PLANES + 2 * c.history, c.channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(c.channels), nn.ReLU())
        self.tower = nn.Sequential(*(ResidualBlock(c.channels) for _ in range(c.blocks)))
        self.head_conv = nn.Sequential(nn.Conv2d(c.channels, c.head_channels, 1, bias=False),
                                       nn.BatchNorm2d(c.head_channels), nn.ReLU())
        self.head = nn.Linear(c.head_channels * 64, NUM_MOVES)

    def planes(self, tokens: torch.Tensor, board: torch.Tensor, side: torch.Tensor
               ) -> torch.Tensor:
        """tokens (N, history), newest last; board codes (N, 66); side (N,) -> the input planes
        (N, 18 + 2 * history, 8, 8), squares a1..h8 in row-major order (rank, file)."""
        n = board.shape[0]
        codes = board.long()
        squares = self.squares[tokens.flip(1)]  # (N, history, 2): from, to; 64 for none
        castling = (codes[:, 64:65] >> torch.arange(4, device=board.device)) & 1  # (N, 4)
        if self.config.flip:
            black = side.bool()
            mirrored = self.swap_colour[codes[:, :64][:, self.mirror_square[:64]]]
            codes = torch.cat([torch.where(black[:, None], mirrored, codes[:, :64]),
                               codes[:, 64:]], 1)
            squares = torch.where(black[:, None, None], self.mirror_square[squares], squares)
            castling = torch.where(black[:, None], castling[:, [2, 3, 0, 1]], castling)
        pieces = F.one_hot(codes[:, :64], 13)[:, :, 1:].transpose(1, 2)  # (N, 12, 64)
        moves = F.one_hot(squares, 65)[..., :64]  # (N, history, 2, 64)
        grid = torch.cat([pieces, moves.reshape(n, -1, 64)], 1).reshape(n, -1, 8, 8)
        flags = torch.cat([castling, side.long()[:, None]], 1)[:, :, None, None]
        ep = F.one_hot(codes[:, 65], 9)[:, None, None, 1:]  # (N, 1, 1, 8): the en-passant file
        return torch.cat([grid.float(), flags.float().expand(n, 5, 8, 8),
                          ep.float().expand(n, 1, 8, 8)], 1)

    def forward(
        self,
        tokens: torch.Tensor,
        phase: torch.Tensor,
        side: torch.Tensor,
        board: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """tokens, phase, side: (B, T) long; board: (B, T, 66) codes. Returns (B, T, 1968)."""
        if board is None:
            raise ValueError("this model reads the board: pass board codes")
        b, t = tokens.shape
        k = self.config.history
        history = F.pad(tokens, (k - 1, 0), value=PAD_ID).unfold(1, k, 1)  # (B, T, k)
        rows = (tokens != PAD_ID).reshape(-1).nonzero().squeeze(1)
        logits = self.position_logits(history.reshape(b * t, k)[rows],
                                      board.reshape(b * t, -1)[rows], side.reshape(-1)[rows])
        out = logits.new_zeros(b * t, NUM_MOVES)
        out[rows] = logits
        return out.reshape(b, t, NUM_MOVES)

    def position_logits(self, history: torch.Tensor, board: torch.Tensor, side: torch.Tensor
                        ) -> torch.Tensor:
        """(N, 1968) logits of N positions, each from its last `history` move tokens (N, history;
        newest last, PAD before a game's first move), board codes (N, 66) and side to move (N,):
        what `forward` computes at each position, for a caller that needs only some positions
        (inference: the last one of each game)."""
        logits = self.head(self.head_input(history, board, side))
        if self.config.flip:
            logits = torch.where(side.bool()[:, None], logits[:, self.mirror_class], logits)
        return logits

    def head_input(self, history: torch.Tensor, board: torch.Tensor, side: torch.Tensor
                   ) -> torch.Tensor:
        """(N, head_channels * 64): what the policy head reads at each of N positions."""
        x = self.tower(self.stem(self.planes(history, board, side)))
        return self.head_conv(x).flatten(1)

    def move_logits(self, history: torch.Tensor, board: torch.Tensor, side: torch.Tensor,
                    rows: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """The logits of chosen moves only, class `classes[i]` at position `rows[i]`: the values
        `position_logits(history, board, side)[rows, classes]` holds (up to float rounding),
        from the head rows of the classes asked for alone: inference ranks a position's legal
        moves, about 35 of the 1968 classes, and the full head is half the cost of a pass."""
        x = self.head_input(history, board, side)
        if self.config.flip:  # a black position's class c is the head's mirrored class
            classes = torch.where(side.bool()[rows], self.mirror_class[classes], classes)
        used, column = torch.unique(classes, return_inverse=True)
        logits = torch.addmm(self.head.bias[used], x, self.head.weight[used].t())
        return logits[rows, column]
