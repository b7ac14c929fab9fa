"""Benchmarks, one JSON line each, every figure next to a baseline measured in the same run.

1. train_throughput: targets/s of whole-game training vs one network pass per spliced sample.
2. data_pipeline: batches/s of the loader alone vs training steps/s.
3. eval_*: the sample-trained model (history-only and history+board; `make train` settings)
   evaluated on the sample's val split and on the real games PGN, with both baselines.
Env: BENCH_EPOCHS (default 3) for the evaluation models, BENCH_STEPS (default 6).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.datasets.rows import EncodedGame, SpliceConfig, load_games  # noqa: E402
from appliance.model.checkpoint import load_model  # noqa: E402
from appliance.model.network import ModelConfig, MovePredictor  # noqa: E402
from appliance.training import evaluate, train  # noqa: E402
from appliance.training.batching import Batch, Collator, GameDataset, bucketed_batches  # noqa: E402

SAMPLE = ROOT / "data" / "sample"
REAL_PGN = ROOT / "tests" / "fixtures" / "pgn" / "real_games_chesscom.pgn"
STEPS = int(os.environ.get("BENCH_STEPS", "6"))
EPOCHS = int(os.environ.get("BENCH_EPOCHS", "3"))
SPLICE = SpliceConfig()


def emit(name: str, **fields: object) -> None:
    print(json.dumps({"benchmark": name, **fields}), flush=True)


def spliced_samples(games: list[EncodedGame]) -> list[EncodedGame]:
    """Every eligible position of every game as its own (context, target) sequence."""
    out = []
    for g in games:
        for t in np.flatnonzero(g.eligible(SPLICE)):
            n = t + 1
            mask = np.zeros(n, dtype=bool)
            mask[-1] = True
            out.append(EncodedGame(tokens=g.tokens[:n], phase=g.phase[:n], side=g.side[:n],
                                   boards=g.boards[:n], targets=g.targets[:n], trainable=mask,
                                   spliced=True))
    return out


def timed_steps(model: MovePredictor, opt: torch.optim.Optimizer, batches: list[Batch]) -> float:
    """Targets/s over STEPS optimizer steps, after one warm-up step."""
    def step(b: Batch) -> int:
        loss, _ = train.masked_loss(model(b.tokens, b.phase, b.side, b.boards), b)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return b.num_targets

    step(batches[0])
    t0 = time.perf_counter()
    targets = sum(step(batches[1 + i % (len(batches) - 1)]) for i in range(STEPS))
    return targets / (time.perf_counter() - t0)


def batches_of(games: list[EncodedGame], size: int) -> list[Batch]:
    ds = GameDataset(games, SPLICE, seed=0, sample=True)
    collate = Collator(1.0)
    order = bucketed_batches([len(g) for g in games], size, seed=0, epoch=0)
    return [collate([ds[i] for i in b]) for b in order]


def bench_throughput(games: list[EncodedGame]) -> None:
    torch.manual_seed(0)
    for board in (True, False):
        model = MovePredictor(ModelConfig(board_feature=board)).train()
        opt = torch.optim.AdamW(model.parameters(), lr=2e-4)
        whole = timed_steps(model, opt, batches_of(games, 16))
        spliced = timed_steps(model, opt, batches_of(spliced_samples(games), 256))
        emit("train_throughput", features="history+board" if board else "history",
             whole_game_targets_per_s=round(whole, 1), spliced_targets_per_s=round(spliced, 1),
             ratio=round(whole / spliced, 2), threads=torch.get_num_threads(),
             steps=STEPS, model="seed dims (256/512/2)")


def bench_pipeline(games: list[EncodedGame]) -> None:
    ds = GameDataset(games, SPLICE, seed=0, sample=True)
    order = bucketed_batches([len(g) for g in games], 32, seed=0, epoch=0)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=order, collate_fn=Collator(1.0))
    t0 = time.perf_counter()
    n = sum(1 for _ in loader)
    loader_rate = n / (time.perf_counter() - t0)
    model = MovePredictor(ModelConfig()).train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4)
    batches = batches_of(games, 32)
    targets_per_s = timed_steps(model, opt, batches)
    step_rate = targets_per_s / np.mean([b.num_targets for b in batches])
    emit("data_pipeline", loader_batches_per_s=round(loader_rate, 1),
         train_steps_per_s=round(step_rate, 3), ratio=round(loader_rate / step_rate, 1),
         batch_games=32, num_workers=0)


def bench_eval(workdir: Path) -> None:
    train_file, val_file = SAMPLE / "train.jsonl", SAMPLE / "val.jsonl"
    baseline = evaluate.PrefixBaseline()
    baseline.fit(r for _, r in evaluate.read_jsonl(train_file))
    datasets = {"sample_val": evaluate.read_rows(val_file, 0)}
    if REAL_PGN.is_file():
        datasets["real_games_chesscom"] = evaluate.read_rows(REAL_PGN, 0)
    for name, flag in (("history", "--no-board-feature"), ("history+board", "--board-feature")):
        out = workdir / name.replace("+", "_")
        t0 = time.perf_counter()
        train.main(["--train", str(train_file), "--val", str(val_file), "--output-dir", str(out),
                    "--epochs", str(EPOCHS), "--lr", "2e-3", "--batch-size", "16", flag,
                    "--seed", "1"])
        train_s = time.perf_counter() - t0
        loaded = load_model(out / train.BEST)
        for data_name, rows in datasets.items():
            r = evaluate.evaluate(loaded, rows, baseline, torch.device("cpu"), show_progress=False)
            emit(f"eval_{data_name}", features=name, epochs=EPOCHS, train_seconds=round(train_s),
                 **{k: round(r[k], 4) for k in evaluate.METRIC_KEYS}, positions=r["positions"],
                 per_phase={p: {k: round(v, 4) for k, v in m.items()}
                            for p, m in r["per_phase"].items()},
                 baselines={b: {k: round(v, 4) for k, v in m.items()}
                            for b, m in r["baselines"].items()})


def main() -> int:
    if not (SAMPLE / "train.jsonl").is_file():
        print(f"error: {SAMPLE}/train.jsonl is missing", file=sys.stderr)
        return 2
    games, _ = load_games([SAMPLE / "train.jsonl"])
    bench_throughput(games[:48])
    bench_pipeline(games[:512])
    with tempfile.TemporaryDirectory() as tmp:
        bench_eval(Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
