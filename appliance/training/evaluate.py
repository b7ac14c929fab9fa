"""Evaluate a checkpoint on JSONL or PGN games against two baselines measured in the same run.

Metrics per position (overall, per phase and per ply bucket): top-1, top-5, share of top-1 moves
that are legal, best_legal top-1 (the best-ranked legal move), the share of best_legal moves that
are legal, and how often the network's raw (unmasked) top-1 is illegal. A checkpoint trained with
the legal-move mask (`meta["legal_mask"]`) is ranked as it is served: over legal moves only, so
its top-1 is its best_legal top-1. Positions with fewer moves of history than the checkpoint's
own `--runtime-min-context` are skipped unless `--min-context` says otherwise.
Baselines: a uniformly random legal move (exact expectation) and the most frequent next move
after the same history prefix in the training data (falling back to the most frequent training
move that is legal when the prefix never occurs there).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from appliance.atomic import atomic_write_json
from appliance.datasets.rows import (
    DatasetError,
    EncodedGame,
    encode_row,
    move_field,
    read_jsonl,
    row_format,
)
from appliance.model import features, vocab
from appliance.model.checkpoint import CheckpointError, LoadedModel, load_model
from appliance.training.batching import collate

METRIC_KEYS = ("top1", "top5", "legal_top1", "best_legal_top1", "best_legal_legal",
               "raw_top1_illegal")
# Ply buckets by moves already played (position t): (label, first t, last t + 1 or None).
PLY_BUCKETS = (("0-7", 0, 8), ("8-19", 8, 20), ("20-39", 20, 40), ("40-79", 40, 80),
               ("80+", 80, None))


def ply_bucket(t: int) -> str:
    return next(label for label, lo, hi in PLY_BUCKETS if t >= lo and (hi is None or t < hi))


def checkpoint_min_context(meta: dict[str, Any]) -> int:
    """The --runtime-min-context a checkpoint was trained with (0 when it does not say)."""
    value = meta.get("train_args", {}).get("runtime_min_context", 0)
    return int(value) if isinstance(value, int) else 0


@dataclass
class Row:
    """A row reduced to what evaluation needs: start FEN, moves, which positions count."""

    fen: str | None
    moves: list[str]
    targets: list[int]  # indexes into moves

    @classmethod
    def from_json(cls, row: dict[str, Any], min_context: int) -> Row:
        kind = row_format(row)
        if kind == "splice_rows_legacy":
            moves = list(row["context"]) + [row["target"]]
            return cls(row.get("fen"), moves, [len(moves) - 1])
        moves = list(row[move_field(row)])
        skip = set(row.get("random_plies", []))
        return cls(row.get("fen"), moves, [i for i in range(min_context, len(moves))
                                           if i not in skip])


def read_rows(path: Path, min_context: int) -> list[tuple[Row, EncodedGame]]:
    """Rows of a JSONL or PGN file, validated and encoded."""
    out = []
    name = path.name.lower()
    if name.endswith((".pgn", ".pgn.gz", ".pgn.zst")):
        from appliance.datasets import pgn_import

        counts = pgn_import.ImportCounts()
        source: Iterable[tuple[str, Any]] = (
            (r["source"], r) for r in pgn_import.iter_pgn_rows(path, counts)
        )
    else:
        source = ((f"{path}:{line}", r) for line, r in read_jsonl(path))
    for where, raw in source:
        try:
            game = encode_row(raw, legal=True)
            row = Row.from_json(raw, min_context)
        except DatasetError as exc:
            raise DatasetError(f"{where}: {exc}") from None
        if row.targets:
            out.append((row, game))
    if not out:
        raise DatasetError(f"{path}: no positions to evaluate")
    return out


class PrefixBaseline:
    """Most frequent next move after the same history prefix in the training data."""

    def __init__(self) -> None:
        self.table: dict[int, Counter[str]] = defaultdict(Counter)
        self.overall: Counter[str] = Counter()

    @staticmethod
    def keys(fen: str | None, moves: Sequence[str]) -> Iterator[int]:
        """Hash of each prefix moves[:t], t = 0..len(moves)."""
        h = hash(fen or "")
        yield h
        for m in moves:
            h = hash((h, m))
            yield h

    def fit(self, rows: Iterable[dict[str, Any]]) -> None:
        for raw in rows:
            row = Row.from_json(raw, 0)
            keys = list(self.keys(row.fen, row.moves))
            for t in row.targets:
                self.table[keys[t]][row.moves[t]] += 1
                self.overall[row.moves[t]] += 1

    def predict(self, key: int, legal: set[str], k: int = 5) -> tuple[list[str], bool]:
        """Up to k moves and whether the prefix was seen in training."""
        seen = self.table.get(key)
        ranked = [m for m, _ in seen.most_common()] if seen else []
        if len(ranked) < k:
            ranked += [m for m, _ in self.overall.most_common() if m in legal
                       and m not in ranked][: k - len(ranked)]
        return ranked[:k], bool(seen)


@dataclass
class Tally:
    sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(METRIC_KEYS, 0.0))
    positions: int = 0

    def add(self, **values: float) -> None:
        for k, v in values.items():
            self.sums[k] += v
        self.positions += 1

    def result(self) -> dict[str, Any]:
        n = max(self.positions, 1)
        return {**{k: v / n for k, v in self.sums.items()}, "positions": self.positions}


def evaluate(
    loaded: LoadedModel,
    data: list[tuple[Row, EncodedGame]],
    baseline: PrefixBaseline,
    device: torch.device,
    batch_size: int = 32,
    show_progress: bool = True,
) -> dict[str, Any]:
    model = loaded.model
    masked = bool(loaded.meta.get("legal_mask"))
    overall, per_phase = Tally(), {p: Tally() for p in features.PHASES}
    per_ply = {label: Tally() for label, _, _ in PLY_BUCKETS}
    rand, freq = Tally(), Tally()
    covered = 0
    bar = tqdm(total=len(data), desc="evaluate", unit="game", disable=not show_progress or None)
    for start in range(0, len(data), batch_size):
        chunk = data[start : start + batch_size]
        batch = collate([(g, np.ones(len(g), dtype=bool)) for _, g in chunk]).to(device)
        with torch.inference_mode():
            logits = model(batch.tokens, batch.phase, batch.side, batch.boards).float().cpu()
        for i, (row, game) in enumerate(chunk):
            keys = list(baseline.keys(row.fen, row.moves))
            assert game.legal is not None  # read_rows encodes the legal moves
            for t in row.targets:
                legal_cls = torch.from_numpy(game.legal.of(t).astype(np.int64))
                legal = [vocab.class_to_move(int(c)) for c in legal_cls]
                raw = logits[i, t]
                scores = raw
                if masked:
                    scores = torch.full_like(raw, -torch.inf)
                    scores[legal_cls] = raw[legal_cls]
                top5 = scores.topk(min(5, len(legal)) if masked else 5).indices.tolist()
                target = row.moves[t]
                pred = vocab.class_to_move(top5[0])
                best = vocab.class_to_move(int(legal_cls[raw[legal_cls].argmax()]))
                values = {
                    "top1": float(pred == target),
                    "top5": float(target in {vocab.class_to_move(c) for c in top5}),
                    "legal_top1": float(pred in legal),
                    "best_legal_top1": float(best == target),
                    "best_legal_legal": float(best in legal),
                    "raw_top1_illegal": float(int(raw.argmax()) not in set(legal_cls.tolist())),
                }
                overall.add(**values)
                per_phase[features.PHASES[int(game.phase[t])]].add(**values)
                per_ply[ply_bucket(t)].add(**values)
                n = len(legal)
                rand.add(top1=1 / n, top5=min(5, n) / n, legal_top1=1.0, best_legal_top1=1 / n,
                         best_legal_legal=1.0, raw_top1_illegal=0.0)
                ranked, seen = baseline.predict(keys[t], set(legal))
                covered += seen
                top = ranked[0] if ranked else None
                hit1, legal1 = float(top == target), float(top in legal)
                freq.add(top1=hit1, top5=float(target in ranked), legal_top1=legal1,
                         best_legal_top1=hit1, best_legal_legal=legal1,
                         raw_top1_illegal=1.0 - legal1)
        bar.update(len(chunk))
    bar.close()
    return {
        **overall.result(),
        "per_phase": {p: t.result() for p, t in per_phase.items()},
        "per_ply": {label: t.result() for label, t in per_ply.items()},
        "baselines": {
            "random_legal": rand.result(),
            "frequent_prefix": {**freq.result(),
                                "prefix_coverage": covered / max(freq.positions, 1)},
        },
        "model": {"path": str(loaded.path), "features": loaded.config.features(),
                  "architecture": loaded.meta.get("architecture", "recurrent"),
                  "legal_mask": masked},
    }


def format_table(result: dict[str, Any]) -> str:
    cols = METRIC_KEYS
    head = f"{'':26}{'positions':>10}" + "".join(f"{c:>17}" for c in cols)
    lines = [head, "-" * len(head)]

    def line(name: str, r: dict[str, Any]) -> str:
        return f"{name:26}{r['positions']:>10}" + "".join(f"{r[c] * 100:>16.1f}%" for c in cols)

    lines.append(line("model", result))
    for phase, r in result["per_phase"].items():
        lines.append(line(f"  {phase}", r))
    for label, r in result["per_ply"].items():
        lines.append(line(f"  plies {label}", r))
    lines.append(line("baseline: random legal", result["baselines"]["random_legal"]))
    lines.append(line("baseline: frequent prefix", result["baselines"]["frequent_prefix"]))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m appliance.training.evaluate",
                                description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, type=Path, help="checkpoint (.pt)")
    p.add_argument("--data", required=True, type=Path, help="games: JSONL or PGN (.pgn[.gz|.zst])")
    p.add_argument("--train-data", action="append", type=Path,
                   help="training JSONL for the frequent-prefix baseline (repeatable; default: "
                   "the files the checkpoint was trained on)")
    p.add_argument("--min-context", type=int, default=None,
                   help="skip positions with fewer moves of history than this (default: the "
                   "checkpoint's own --runtime-min-context)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--json-out", type=Path, metavar="FILE",
                   help="also write the result as JSON to FILE (the run report reads it)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if (args.min_context is not None and args.min_context < 0) or args.batch_size < 1:
            raise ValueError("--min-context must be >= 0 and --batch-size >= 1")
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {args.device}: CUDA is not available on this machine")
        loaded = load_model(args.model, device)
        train_files = args.train_data or [Path(p) for p in
                                          loaded.meta.get("train_args", {}).get("train", [])]
        baseline = PrefixBaseline()
        missing = [str(p) for p in train_files if not p.is_file()]
        if missing or not train_files:
            raise ValueError("frequent-prefix baseline needs the training data: pass "
                             f"--train-data (not found: {', '.join(missing) or 'none recorded'})")
        for path in train_files:
            baseline.fit(r for _, r in read_jsonl(path))
        min_context = args.min_context
        if min_context is None:
            min_context = checkpoint_min_context(loaded.meta)
        data = read_rows(args.data, min_context)
        result = evaluate(loaded, data, baseline, device, args.batch_size,
                          show_progress=not args.json)
    except (CheckpointError, DatasetError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result["data"] = str(args.data)
    result["min_context"] = min_context
    if args.json_out is not None:
        try:
            atomic_write_json(args.json_out, result)
        except OSError as exc:
            print(f"error: --json-out {args.json_out}: cannot write it ({exc.strerror or exc})",
                  file=sys.stderr)
            return 2
    print(json.dumps(result) if args.json else format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
