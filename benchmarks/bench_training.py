"""Benchmarks, one JSON line each, every figure next to a baseline measured in the same run.

1. train_throughput: whole-game training (one pass per game, a loss at every eligible position)
   against the best honest per-sample implementation (one pass per (context, target) sample,
   samples bucketed by length, the 1968-way head and the loss at the last position only), on the
   same targets, repeated BENCH_REPEATS times: median, min and max of each, and the ratio.
2. legal_mask: whole-game targets/s with and without the legal-move mask (same batches).
The sides of a pair run in turns (a, b, a, b, ...), so a change in the machine's load hits both.
3. data_pipeline: batches/s of the loader (with the legal-move mask) vs training steps/s.
4. eval_*: the sample-trained model (`make train` settings) evaluated on the sample's held-out
   test split and on the real games PGN (games the sample does not hold), with both baselines
   (BENCH_EVAL=0 skips it).
Env: BENCH_GAMES (default 16) games for the throughput pair, BENCH_REPEATS (default 3),
BENCH_STEPS (default 6), BENCH_EPOCHS (default 3).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.datasets.rows import EncodedGame, SpliceConfig, load_games  # noqa: E402
from appliance.model import BEST_MODEL  # noqa: E402
from appliance.model.checkpoint import load_model  # noqa: E402
from appliance.model.encoding import pad_inputs  # noqa: E402
from appliance.model.features import BOARD_CODES  # noqa: E402
from appliance.model.network import ModelConfig, MovePredictor  # noqa: E402
from appliance.training import evaluate, train  # noqa: E402
from appliance.training.batching import Batch, Collator, GameDataset, bucketed_batches  # noqa: E402

SAMPLE = ROOT / "data" / "sample"
REAL_PGN = ROOT / "tests" / "fixtures" / "pgn" / "real_games_chesscom.pgn"
GAMES = int(os.environ.get("BENCH_GAMES", "16"))
REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))
STEPS = int(os.environ.get("BENCH_STEPS", "6"))
EPOCHS = int(os.environ.get("BENCH_EPOCHS", "3"))
SPLICE = SpliceConfig()


def emit(name: str, **fields: object) -> None:
    print(json.dumps({"benchmark": name, **fields}), flush=True)


def spread(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 1), "min": round(min(values), 1),
            "max": round(max(values), 1)}


def batches_of(games: list[EncodedGame], size: int, legal: bool = False) -> list[Batch]:
    ds = GameDataset(games, SPLICE, seed=0, sample=True)
    collate = Collator(1.0, legal)
    order = bucketed_batches([len(g) for g in games], size, seed=0, epoch=0)
    return [collate([ds[i] for i in b]) for b in order]


def whole_game_pass(model: MovePredictor, opt: torch.optim.Optimizer,
                    batches: list[Batch]) -> Callable[[], int]:
    """One optimizer step per batch of whole games over all `batches`; returns the targets."""
    def run() -> int:
        n = 0
        for b in batches:
            loss, _ = train.masked_loss(train.mask_illegal(
                model(b.tokens, b.phase, b.side, b.boards), b), b)
            opt.zero_grad()
            loss.backward()
            opt.step()
            n += b.num_targets
        return n
    return run


def last_position_logits(model: MovePredictor, tokens: torch.Tensor, boards: torch.Tensor,
                         phase: torch.Tensor, side: torch.Tensor,
                         lengths: torch.Tensor) -> torch.Tensor:
    """MovePredictor's forward with the head at each sample's last position only: (B, 1968)."""
    x = model.embed(tokens)
    board_vec = None
    if model.board_embed is not None:
        b, t, _ = boards.shape
        idx = boards.reshape(b * t, BOARD_CODES).long() + model.board_offsets
        board_vec = model.board_embed(idx).reshape(b, t, -1)
        x = x + board_vec
    out, _ = model.rnn(x)
    rows = torch.arange(tokens.shape[0])
    last = lengths - 1
    parts = [out[rows, last]]
    if board_vec is not None:
        parts.append(board_vec[rows, last])
    if model.phase_embed is not None:
        parts.append(model.phase_embed(phase[rows, last]))
    if model.side_embed is not None:
        parts.append(model.side_embed(side[rows, last]))
    return model.head(model.drop(torch.cat(parts, dim=-1)))


def per_sample_pass(model: MovePredictor, opt: torch.optim.Optimizer,
                    games: list[EncodedGame], size: int) -> Callable[[], int]:
    """One optimizer step per batch of `size` (context, target) samples, sorted by length so
    padding is small; the head and the loss at each sample's last position only."""
    samples = [(g, t) for g in games for t in np.flatnonzero(g.eligible(SPLICE))]
    samples.sort(key=lambda s: s[1])
    prepared = []
    for i in range(0, len(samples), size):
        chunk = samples[i : i + size]
        tokens, phase, side, boards = pad_inputs([
            EncodedGame(g.tokens[: t + 1], g.phase[: t + 1], g.side[: t + 1], g.boards[: t + 1],
                        g.targets[: t + 1], g.trainable[: t + 1], True) for g, t in chunk])
        prepared.append((torch.from_numpy(tokens), torch.from_numpy(boards),
                         torch.from_numpy(phase), torch.from_numpy(side),
                         torch.tensor([t + 1 for _, t in chunk]),
                         torch.tensor([int(g.targets[t]) for g, t in chunk])))

    def run() -> int:
        n = 0
        for tokens, boards, phase, side, lengths, targets in prepared:
            logits = last_position_logits(model, tokens, boards, phase, side, lengths)
            loss = F.cross_entropy(logits.float(), targets)
            opt.zero_grad()
            loss.backward()
            opt.step()
            n += len(targets)
        return n
    return run


def in_turns(*runs: Callable[[], int]) -> list[list[float]]:
    """Targets/s of REPEATS passes of each run over its targets, after one warm-up pass each;
    the runs take turns, so a change in the machine's load hits them all."""
    for run in runs:
        run()
    rates: list[list[float]] = [[] for _ in runs]
    for _ in range(REPEATS):
        for run, out in zip(runs, rates, strict=True):
            t0 = time.perf_counter()
            n = run()
            out.append(n / (time.perf_counter() - t0))
    return rates


def bench_throughput(games: list[EncodedGame]) -> None:
    torch.manual_seed(0)
    model = MovePredictor(ModelConfig()).train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4)
    whole = whole_game_pass(model, opt, batches_of(games, 16))
    sample = per_sample_pass(model, opt, games, 256)
    targets = whole()
    assert targets == sample(), "both sides must train on the same targets"
    w, s = in_turns(whole, sample)
    ratios = [a / b for a in w for b in s]
    emit("train_throughput", features="history+board", model="seed dims (256/512/2)",
         games=len(games), targets=targets, repeats=REPEATS,
         whole_game_targets_per_s=spread(w), per_sample_targets_per_s=spread(s),
         ratio_of_medians=round(statistics.median(w) / statistics.median(s), 1),
         ratio_range=[round(min(ratios), 1), round(max(ratios), 1)],
         threads=torch.get_num_threads())


def bench_legal_mask(games: list[EncodedGame]) -> None:
    passes = []
    for legal in (False, True):
        torch.manual_seed(0)
        model = MovePredictor(ModelConfig()).train()
        opt = torch.optim.AdamW(model.parameters(), lr=2e-4)
        passes.append(whole_game_pass(model, opt, batches_of(games, 16, legal)))
    without, with_mask = in_turns(*passes)
    rates = {False: without, True: with_mask}
    emit("legal_mask", games=len(games), repeats=REPEATS,
         with_mask_targets_per_s=spread(rates[True]),
         without_mask_targets_per_s=spread(rates[False]),
         ratio_of_medians=round(statistics.median(rates[True])
                                / statistics.median(rates[False]), 2))


def bench_pipeline(games: list[EncodedGame]) -> None:
    ds = GameDataset(games, SPLICE, seed=0, sample=True)
    order = bucketed_batches([len(g) for g in games], 32, seed=0, epoch=0)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=order, collate_fn=Collator(1.0, True))
    t0 = time.perf_counter()
    n = sum(1 for _ in loader)
    loader_rate = n / (time.perf_counter() - t0)
    model = MovePredictor(ModelConfig()).train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4)
    batches = batches_of(games, 32, legal=True)[: STEPS + 1]
    run = whole_game_pass(model, opt, batches)
    t0 = time.perf_counter()
    run()
    step_rate = len(batches) / (time.perf_counter() - t0)
    emit("data_pipeline", loader_batches_per_s=round(loader_rate, 1),
         train_steps_per_s=round(step_rate, 3), ratio=round(loader_rate / step_rate, 1),
         batch_games=32, num_workers=0, legal_mask=True)


def bench_eval(workdir: Path) -> None:
    train_file, val_file = SAMPLE / "train.jsonl", SAMPLE / "val.jsonl"
    baseline = evaluate.PrefixBaseline()
    baseline.fit(r for _, r in evaluate.read_jsonl(train_file))
    datasets = {"sample_test": evaluate.read_rows(SAMPLE / "test.jsonl", 0)}
    if REAL_PGN.is_file():
        datasets["real_games_chesscom"] = evaluate.read_rows(REAL_PGN, 0)
    out = workdir / "model"
    t0 = time.perf_counter()
    train.main(["--train", str(train_file), "--val", str(val_file), "--output-dir", str(out),
                "--epochs", str(EPOCHS), "--lr", "2e-3", "--batch-size", "16", "--seed", "1",
                "--encoded-cache", "off"])
    train_s = time.perf_counter() - t0
    loaded = load_model(out / BEST_MODEL)
    for data_name, rows in datasets.items():
        r = evaluate.evaluate(loaded, rows, baseline, torch.device("cpu"), show_progress=False)
        emit(f"eval_{data_name}", epochs=EPOCHS, train_seconds=round(train_s),
             **{k: round(r[k], 4) for k in evaluate.METRIC_KEYS}, positions=r["positions"],
             per_ply={p: {k: round(v, 4) for k, v in m.items()} for p, m in r["per_ply"].items()},
             baselines={b: {k: round(v, 4) for k, v in m.items()}
                        for b, m in r["baselines"].items()})


def main() -> int:
    if not (SAMPLE / "train.jsonl").is_file():
        print(f"error: {SAMPLE}/train.jsonl is missing", file=sys.stderr)
        return 2
    games, _ = load_games([SAMPLE / "train.jsonl"], legal=True)
    bench_throughput(games[:GAMES])
    bench_legal_mask(games[:48])
    bench_pipeline(games[:512])
    if os.environ.get("BENCH_EVAL", "1") != "0":
        with tempfile.TemporaryDirectory() as tmp:
            bench_eval(Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
