"""Arena players and one game: a checkpoint through the inference `Predictor`, Stockfish at a
fixed depth or node count, or uniformly random legal moves; the openings file; the rules that
end a game.

A game starts from an opening's moves (played for both sides), then the players alternate until
chess ends it (checkmate, stalemate, insufficient material, seventy-five moves, fivefold
repetition) or a draw could be claimed (threefold repetition, fifty moves: claimed at once), or
the game reaches `max_plies` plies, counted from the start position: a draw by move cap.

A model plays the move its predictor ranks best among the legal moves (`best_legal`), or, with a
temperature T > 0, samples a legal move with weight p**(1/T). When the predictor's first-ranked
move (`topk[0]`, what `/infer` ranks first) is illegal, that move is a fallback: the arena counts
it and plays the legal move instead.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import chess
import chess.engine
import chess.pgn
import torch

from appliance.datasets.generate import GenerateError, open_engine, resolve_engine
from appliance.inference.predictor import Predictor
from appliance.model.checkpoint import CheckpointError
from appliance.model.vocab import NUM_MOVES

DEFAULT_OPENINGS = Path(__file__).with_name("arena_openings.txt")
MOVE_CAP = "move_cap"
_MOVE_NUMBER = re.compile(r"^\d+\.+$|^\d+\.+(?=\S)")
_ENGINE_SPEC = re.compile(r"^stockfish(?::(depth|nodes)=(\d+))?$")


class ArenaError(RuntimeError):
    """The arena cannot run; the message says what is wrong."""


@dataclass(frozen=True)
class Opening:
    name: str
    moves: tuple[str, ...]  # UCI, from the standard start


def load_openings(path: Path) -> list[Opening]:
    """Lines `name | SAN moves` ('#' starts a comment); a bad line is an error naming it."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ArenaError(f"{path}: cannot read the openings ({exc.strerror or exc})") from None
    openings = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, san_text = line.partition("|")
        if not sep or not name.strip():
            raise ArenaError(f"{path}:{number}: expected 'name | moves', got {line!r}")
        board = chess.Board()
        for token in san_text.split():
            san = _MOVE_NUMBER.sub("", token)
            if not san:
                continue
            try:
                board.push_san(san)
            except ValueError:
                raise ArenaError(f"{path}:{number}: {san!r} is not a legal move in "
                                 f"{board.fen()}") from None
        if board.is_game_over(claim_draw=True):
            raise ArenaError(f"{path}:{number}: the opening ends the game")
        openings.append(Opening(name.strip(), tuple(m.uci() for m in board.move_stack)))
    if not openings:
        raise ArenaError(f"{path}: no openings in the file")
    return openings


@dataclass
class Choice:
    uci: str
    fallback: bool | None  # None: the player has no ranking of its own to fall back from


class Player(Protocol):
    name: str

    def new_game(self) -> None: ...

    def choose(self, board: chess.Board, moves: list[str], rng: random.Random) -> Choice: ...

    def close(self) -> None: ...


class ModelPlayer:
    def __init__(self, path: Path, temperature: float, max_history: int, device: str) -> None:
        try:
            self.predictor = Predictor.load(path, torch.device(device), max_history)
        except FileNotFoundError:
            raise ArenaError(f"{path}: no such checkpoint") from None
        except (CheckpointError, OSError, RuntimeError) as exc:
            raise ArenaError(f"{path}: cannot load the checkpoint: {exc}") from None
        self.name = str(path)
        self.temperature = temperature

    def new_game(self) -> None:
        pass

    def choose(self, board: chess.Board, moves: list[str], rng: random.Random) -> Choice:
        topk = NUM_MOVES if self.temperature > 0 else 1
        pred = self.predictor.predict([self.predictor.prepare(moves, None, topk)])[0]
        fallback = not pred.topk[0]["legal"]
        if self.temperature <= 0:
            return Choice(pred.best_legal, fallback)
        legal = [(t["uci"], t["prob"] ** (1.0 / self.temperature)) for t in pred.topk
                 if t["legal"]]
        if not legal or sum(w for _, w in legal) <= 0.0:
            return Choice(pred.best_legal, fallback)
        ucis, weights = zip(*legal, strict=True)
        return Choice(rng.choices(ucis, weights=weights)[0], fallback)

    def close(self) -> None:
        pass


class EnginePlayer:
    def __init__(self, spec: str, limit: chess.engine.Limit) -> None:
        try:
            self.engine = open_engine(resolve_engine(None))
        except GenerateError as exc:
            raise ArenaError(str(exc)) from None
        self.name = spec
        self.limit = limit
        self._game = object()

    def new_game(self) -> None:
        self._game = object()  # a new game id: python-chess sends ucinewgame (clears the hash)

    def choose(self, board: chess.Board, moves: list[str], rng: random.Random) -> Choice:
        move = self.engine.play(board, self.limit, game=self._game).move
        if move is None:
            raise ArenaError(f"{self.name} returned no move in {board.fen()}")
        return Choice(move.uci(), None)

    def close(self) -> None:
        self.engine.quit()


class RandomPlayer:
    name = "random"

    def new_game(self) -> None:
        pass

    def choose(self, board: chess.Board, moves: list[str], rng: random.Random) -> Choice:
        return Choice(rng.choice(sorted(m.uci() for m in board.legal_moves)), None)

    def close(self) -> None:
        pass


def check_spec(spec: str) -> str:
    """A player spec as given on the command line, refused with a clear message when malformed:
    a checkpoint path, `stockfish`, `stockfish:depth=N`, `stockfish:nodes=N` or `random`."""
    if spec.startswith("stockfish"):
        m = _ENGINE_SPEC.match(spec)
        if m is None or (m.group(2) is not None and int(m.group(2)) < 1):
            raise ArenaError(f"{spec!r}: expected stockfish, stockfish:depth=N or "
                             "stockfish:nodes=N with N >= 1")
    elif spec != "random" and not Path(spec).is_file():
        raise ArenaError(f"{spec}: no such checkpoint (a player is a checkpoint path, "
                         "stockfish[:depth=N|:nodes=N] or random)")
    return spec


def make_player(spec: str, temperature: float, max_history: int, device: str) -> Player:
    if spec == "random":
        return RandomPlayer()
    m = _ENGINE_SPEC.match(spec)
    if m is not None:
        kind, value = m.group(1) or "depth", int(m.group(2) or 1)
        return EnginePlayer(f"stockfish:{kind}={value}", chess.engine.Limit(**{kind: value}))
    return ModelPlayer(Path(spec), temperature, max_history, device)


@dataclass
class SideCount:
    moves: int = 0  # moves the player chose (opening moves excluded)
    fallbacks: int = 0


@dataclass
class GameRecord:
    index: int
    a_white: bool
    opening: str
    result: str  # "1-0", "0-1" or "1/2-1/2", White's view
    termination: str
    plies: int
    pgn: str
    counts: dict[str, SideCount] = field(default_factory=dict)  # "a", "b"

    @property
    def a_points(self) -> float:
        white_points = {"1-0": 1.0, "0-1": 0.0}.get(self.result, 0.5)
        return white_points if self.a_white else 1.0 - white_points


def game_rng(seed: int, index: int) -> random.Random:
    return random.Random(f"arena-v1:{seed}:{index}")


def play_game(a: Player, b: Player, opening: Opening, index: int, *, a_white: bool,
              max_plies: int, seed: int) -> GameRecord:
    """Game `index`: `a` plays White when `a_white`; depends only on the players, the opening,
    the index and the seed."""
    board = chess.Board()
    for uci in opening.moves:
        board.push_uci(uci)
    moves = list(opening.moves)
    white, black = (a, b) if a_white else (b, a)
    counts = {"a": SideCount(), "b": SideCount()}
    for p in (a, b):
        p.new_game()
    rng = game_rng(seed, index)
    while True:
        outcome = board.outcome(claim_draw=True)
        if outcome is not None:
            result, termination = outcome.result(), outcome.termination.name.lower()
            break
        if board.ply() >= max_plies:
            result, termination = "1/2-1/2", MOVE_CAP
            break
        player = white if board.turn == chess.WHITE else black
        choice = player.choose(board, moves, rng)
        move = chess.Move.from_uci(choice.uci)
        if move not in board.legal_moves:
            raise ArenaError(f"{player.name} played the illegal move {choice.uci} in "
                             f"{board.fen()}")
        side = counts["a" if player is a else "b"]
        side.moves += 1
        side.fallbacks += bool(choice.fallback)
        board.push(move)
        moves.append(choice.uci)
    game = chess.pgn.Game.from_board(board)
    game.headers.update({
        "Event": "arena", "Site": "?", "Date": "????.??.??", "Round": str(index + 1),
        "White": white.name, "Black": black.name, "Result": result,
        "Opening": opening.name, "Termination": termination, "PlyCount": str(board.ply()),
    })
    return GameRecord(index=index, a_white=a_white, opening=opening.name, result=result,
                      termination=termination, plies=board.ply(), pgn=str(game), counts=counts)
