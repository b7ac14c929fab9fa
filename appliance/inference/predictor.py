"""The predictor behind the API: validate a position, encode it as training does
(`appliance.model.encoding`), run the network.

`prepare` turns (moves, fen, topk) into network inputs or raises InputError with the exact
message the API returns; `predict` runs any number of prepared positions in one forward pass.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from appliance.model import features, vocab
from appliance.model.checkpoint import LoadedModel, load_model
from appliance.model.encoding import EncodingError, PositionInputs, encode_moves, pad_inputs
from appliance.model.network import count_parameters

TOPK_MAX = 50


class InputError(ValueError):
    """A position the API cannot predict for; the message is returned to the client as is."""


@dataclass
class Prepared:
    inputs: PositionInputs  # n+1 positions: the start one, then the one after each move
    legal: list[str]  # legal moves in the final position, UCI
    topk: int


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


class Predictor:
    def __init__(self, loaded: LoadedModel, device: torch.device, sha256: str,
                 max_history: int) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.device = device
        self.sha256 = sha256
        self.max_history = max_history
        self.parameters = count_parameters(self.model)

    @classmethod
    def load(cls, path: Path, device: torch.device, max_history: int,
             progress: bool = False) -> Predictor:
        data, sha = read_with_progress(path, progress)
        return cls(load_model(path, device, data), device, sha, max_history)

    def facts(self) -> dict[str, Any]:
        return {
            "model_path": str(self.loaded.path),
            "model_sha256": self.sha256,
            "parameters": self.parameters,
            "device": str(self.device),
            "torch": torch.__version__,
            "features": self.loaded.config.features(),
            "vocab_version": self.loaded.meta.get("vocab_version"),
        }

    def prepare(self, moves: list[str], fen: str | None, topk: int) -> Prepared:
        if len(moves) > self.max_history:
            raise InputError(
                f"moves: {len(moves)} moves exceed the limit of {self.max_history}"
            )
        try:
            enc = encode_moves(moves, fen, field="moves", final=True)
        except EncodingError as exc:
            raise InputError(str(exc)) from None
        board = enc.board
        legal = [m.uci() for m in board.legal_moves]
        if not legal:
            outcome = board.outcome()
            why = outcome.termination.name.lower() if outcome else "no legal move"
            raise InputError(f"the game is over ({why}): no legal move in the final position")
        # The prediction is read at the final position, exactly as training reads position t.
        return Prepared(inputs=enc.inputs, legal=legal, topk=topk)

    def predict(self, batch: list[Prepared]) -> list[Prediction]:
        """One forward pass for every prepared position."""
        n = len(batch)
        arrays = pad_inputs([p.inputs for p in batch])
        last = torch.tensor([len(p.inputs) - 1 for p in batch])
        with torch.inference_mode():
            logits = self.model(*(torch.from_numpy(a).to(self.device) for a in arrays))
            final = logits[torch.arange(n), last.to(self.device)].float()
            probs = torch.softmax(final, dim=-1).cpu()
        out = []
        for i, p in enumerate(batch):
            legal = set(p.legal)
            values, idx = probs[i].topk(p.topk)
            ranked = [vocab.class_to_move(c) for c in idx.tolist()]
            top = [{"uci": m, "prob": round(float(v), 6), "legal": m in legal}
                   for m, v in zip(ranked, values.tolist(), strict=True)]
            legal_cls = torch.tensor([vocab.move_class(m) for m in p.legal])
            best = vocab.class_to_move(int(legal_cls[probs[i][legal_cls].argmax()]))
            out.append(Prediction(
                topk=top,
                predicted_uci=ranked[0],
                best_legal=best,
                phase=features.PHASES[int(p.inputs.phase[-1])],
                side_to_move=features.SIDES[int(p.inputs.side[-1])],
            ))
        return out

