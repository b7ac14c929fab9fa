"""Benchmark: data-parallel training on CPU over loopback, 2 nodes x 1 process vs 1 process.

Both runs train the seed-dims model on the sample's games with the same games per rank and step
(weak scaling: two nodes take twice the games a step), one thread per process. The 2-node run
is two torchrun launches as RunPod cluster nodes would start them (`training.distributed`'s
static rendezvous on 127.0.0.1, gloo). One JSON line: targets/s of each, the speedup, the
scaling efficiency (speedup / 2) and where rank 0's time went (data: waiting for batches;
compute: forward, backward, optimizer; allreduce: the gradient exchange, which also absorbs
waiting for the slower rank).
Env: BENCH_STEPS (default 24) optimizer steps per run, BENCH_BATCH (default 16) games per rank.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.training.distributed import Launch, launcher  # noqa: E402

SAMPLE = ROOT / "data" / "sample"
STEPS = int(os.environ.get("BENCH_STEPS", "24"))
BATCH = int(os.environ.get("BENCH_BATCH", "16"))
PARTS = ("data_s", "compute_s", "allreduce_s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def trainer(prefix: list[str], val: Path, out: Path) -> list[str]:
    return [*prefix, "appliance.training.train", "--train", str(SAMPLE / "train.jsonl"),
            "--val", str(val), "--output-dir", str(out), "--epochs", "1", "--batch-size",
            str(BATCH), "--max-steps-per-epoch", str(STEPS), "--device", "cpu",
            "--num-workers", "0", "--seed", "1"]


def run(cmds: list[list[str]], out: Path) -> dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(c, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for c in cmds]
    for p in procs:
        _, err = p.communicate(timeout=3600)
        if p.returncode:
            raise SystemExit(f"error: {' '.join(cmds[0][:6])} ... exited {p.returncode}: "
                             f"{err.strip().splitlines()[-1:]}")
    rec: dict[str, float] = json.loads((out / "metrics.json").read_text())["history"][0]
    return rec


def main() -> int:
    if not (SAMPLE / "train.jsonl").is_file():
        print(f"error: {SAMPLE}/train.jsonl is missing", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        val = work / "val.jsonl"  # a small val split: validation is not what is measured
        lines = (SAMPLE / "val.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
        val.write_text("".join(lines[:32]), encoding="utf-8")
        one = run([trainer([sys.executable, "-m"], val, work / "one")], work / "one")
        endpoint = f"127.0.0.1:{free_port()}"
        two = run([trainer(launcher(Launch(1, 2, rank, endpoint), 120), val, work / f"n{rank}")
                   for rank in (0, 1)], work / "n0")
    speedup = two["targets_per_s"] / one["targets_per_s"]
    print(json.dumps({
        "benchmark": "distributed_cpu_loopback", "steps": STEPS, "games_per_rank_step": BATCH,
        "model": "seed dims (256/512/2)", "threads_per_process": 1,
        "one_process_targets_per_s": round(one["targets_per_s"], 1),
        "two_nodes_targets_per_s": round(two["targets_per_s"], 1),
        "speedup": round(speedup, 3), "scaling_efficiency": round(speedup / 2, 3),
        "one_process_seconds": {k: round(one[k], 2) for k in ("train_seconds", *PARTS)},
        "two_nodes_rank0_seconds": {k: round(two[k], 2) for k in ("train_seconds", *PARTS)},
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
