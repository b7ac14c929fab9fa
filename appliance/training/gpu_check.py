"""GPU check: train at the seed dimensions for a fixed number of steps, then serve predictions.

Prints one JSON object: training targets/s, GPU utilisation sampled during training (nvidia-smi),
and inference latency at batch 1 and batch 64. `make gpu-check` runs it; it needs a CUDA GPU
unless `--device cpu` is given (a quick run of the same code path, for tests).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from appliance.datasets.rows import DatasetError, EncodedGame, load_games
from appliance.model.network import ModelConfig, MovePredictor, count_parameters
from appliance.training.batching import collate
from appliance.training.train import masked_loss

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "data" / "sample" / "train.jsonl"


class UtilSampler:
    """Samples GPU utilisation with nvidia-smi in a background thread."""

    def __init__(self, index: int, interval: float = 0.5) -> None:
        self.index = index
        self.interval = interval
        self.samples: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.smi = shutil.which("nvidia-smi")

    def _run(self) -> None:
        while not self.stop.is_set() and self.smi:
            try:
                out = subprocess.run(
                    [self.smi, f"--id={self.index}", "--query-gpu=utilization.gpu",
                     "--format=csv,noheader,nounits"],
                    capture_output=True, text=True, timeout=5, check=True,
                ).stdout.strip()
                self.samples.append(float(out.splitlines()[0]))
            except (subprocess.SubprocessError, ValueError, IndexError):
                return
            self.stop.wait(self.interval)

    def __enter__(self) -> UtilSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)

    def summary(self) -> dict[str, Any]:
        if not self.samples:
            return {"available": False}
        return {"available": True, "mean_percent": statistics.fmean(self.samples),
                "max_percent": max(self.samples), "samples": len(self.samples)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(device: torch.device, data: Path, steps: int, batch_size: int, warmup: int,
        config: ModelConfig) -> dict[str, Any]:
    games: list[EncodedGame]
    games, _ = load_games([data])
    ones = [(g, np.ones(len(g), dtype=bool)) for g in games]
    batches = [collate(ones[i : i + batch_size]) for i in range(0, len(ones), batch_size)]
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True
    model = MovePredictor(config).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4)
    amp = device.type == "cuda"

    def step(i: int) -> int:
        batch = batches[i % len(batches)].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(batch.tokens, batch.phase, batch.side, batch.boards)
        loss, _ = masked_loss(logits, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return batch.num_targets

    model.train()
    for i in range(warmup):
        step(i)
    _sync(device)
    targets = 0
    with UtilSampler(device.index or 0) as util:
        t0 = time.perf_counter()
        for i in range(steps):
            targets += step(warmup + i)
        _sync(device)
        train_s = time.perf_counter() - t0

    model.eval()
    latency: dict[str, Any] = {}
    for bs in (1, 64):
        batch = batches[0]
        sub = collate(ones[:bs]).to(device) if bs <= len(ones) else batch.to(device)
        times = []
        with torch.inference_mode():
            for _ in range(30):
                _sync(device)
                t = time.perf_counter()
                logits = model(sub.tokens, sub.phase, sub.side, sub.boards)
                logits[:, -1].float().topk(5)
                _sync(device)
                times.append((time.perf_counter() - t) * 1000)
        times = times[5:]
        latency[f"batch{bs}"] = {"p50_ms": statistics.median(times),
                                 "p95_ms": float(np.percentile(times, 95)),
                                 "positions_per_forward": int(sub.tokens.numel())}
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "parameters": count_parameters(model),
        "features": config.features(),
        "steps": steps,
        "batch_games": batch_size,
        "train_targets_per_s": targets / train_s,
        "train_seconds": train_s,
        "gpu_utilisation": util.summary(),
        "inference_latency": latency,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m appliance.training.gpu_check",
                                description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=256, help="games per batch")
    p.add_argument("--tiny", action="store_true", help="small dimensions (for tests)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA GPU is visible (torch.cuda.is_available() is False); run this on a "
              "GPU machine, or pass --device cpu for a quick check of the code path",
              file=sys.stderr)
        return 2
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0)
    config = ModelConfig(embed_dim=16, hidden_dim=16) if args.tiny else ModelConfig()
    try:
        result = run(device, args.data, args.steps, args.batch_size, args.warmup, config)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
