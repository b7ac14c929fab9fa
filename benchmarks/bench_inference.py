"""Inference benchmarks, one JSON line each, each against a baseline measured in the same run.

1. http_overhead: /infer p50/p99 over HTTP vs the predictor called in-process, same inputs in
   turns (3 rounds of 300); the route's own time (`latency_ms`) splits the difference into what
   the HTTP stack and client add outside the route and what the route adds around the predictor
   (queue, thread hop); the same turns to `bare_server.py` give the floor, the service's work
   behind the least HTTP server (`bare_ratio_p50`).
2. batching_gain: requests/s with 16 concurrent clients vs 1 client, positions per pass (mean
   and the largest histogram bucket reached), GPU utilisation (BENCH_DEVICE=cuda), the
   CPU per request of the server's event loop and forward thread and of the clients, and the
   ceiling that CPU sets: cores / CPU per request (`cpu_bound_rps`), as a ratio to one client.
3. game_state: real games played one request per ply with `game_id`: p50 at plies 198-202 vs
   plies 8-12, against the same requests without it; the answers must be the same.
4. load_test: BENCH_LOAD_SECONDS (default 30) of 16 concurrent clients; errors must be 0.
The model has the dimensions of BENCH_ARCH's default (conv: the trainer's default board-centric
net, 32 channels x 4 blocks, which reads a fixed context; recurrent: the LSTM) and, as the
trainer's default, ranks legal moves only; its weights do not change the cost. The server is a
real uvicorn on a loopback port, as supervisord runs it. The clients are minimal keep-alive
HTTP/1.1 connections (`Connection`), so that what the figures show is the server's cost, not a
client library's: on these 2 cores an httpx request costs about a millisecond of CPU, as much
as the whole forward pass.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.datasets.pgn_import import ImportCounts, iter_pgn_rows  # noqa: E402
from appliance.inference.predictor import Predictor  # noqa: E402
from appliance.model.checkpoint import build_model, save_checkpoint  # noqa: E402
from appliance.model.network import ModelConfig, MovePredictor  # noqa: E402
from appliance.watchdog.signals import NvmlUnavailable, nvml_samples  # noqa: E402
from tests.utils import free_port, wait_until  # noqa: E402

LOAD_SECONDS = float(os.environ.get("BENCH_LOAD_SECONDS", "30"))
DEVICE = os.environ.get("BENCH_DEVICE", "cpu")  # cuda: the server and baseline on the GPU
ARCH = os.environ.get("BENCH_ARCH", "conv")
CONV_DEFAULT = {"channels": 32, "blocks": 4, "history": 6, "flip": True}  # the trainer's flags
CLIENTS = 16
REAL_GAMES = ROOT / "tests" / "fixtures" / "pgn" / "real_games_chesscom.pgn"
EARLY, LATE = range(8, 13), range(198, 203)


def emit(name: str, **fields: object) -> None:
    print(json.dumps({"benchmark": name, "arch": ARCH, **fields}), flush=True)


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 2)


def positions(n: int) -> list[list[str]]:
    """Histories cut at random plies from the sample's val games."""
    rng = random.Random(0)
    games = [json.loads(line)["moves_uci"] for line in
             (ROOT / "data" / "sample" / "val.jsonl").read_text().splitlines()]
    out = []
    for _ in range(n):
        g = rng.choice(games)
        out.append(g[: rng.randrange(len(g))])
    return out


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds so far of each thread of process `pid` (the main thread's id is `pid`)."""
    return {t.id: t.user_time + t.system_time for t in psutil.Process(pid).threads()}


def batch_counts(url: str) -> dict[str, float]:
    """The server's inference_batch_size histogram so far: "count" (passes), "sum" (positions)
    and each bucket's cumulative count by its upper bound ("1", "2", ... "+Inf")."""
    found = {}
    for line in httpx.get(url + "/metrics").text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("inference_batch_size_count", "inference_batch_size_sum"):
            found[name.rsplit("_", 1)[1]] = float(value)
        elif name.startswith('inference_batch_size_bucket{le="'):
            found[name.split('"')[1]] = float(value)
    return found


def largest_pass(before: dict[str, float], after: dict[str, float]) -> str:
    """The smallest histogram bound that every pass between the two readings fits in."""
    passes = after["count"] - before["count"]
    bounds = sorted((float(k), k) for k in after if k not in ("count", "sum"))
    return next(k for _, k in bounds if after[k] - before.get(k, 0.0) == passes).removesuffix(".0")


class GpuUse:
    """GPU utilisation sampled every 0.1 s while in use (`with`), through the watchdog's NVML
    reader; `unavailable` says why there is none (no NVML, no GPU)."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.unavailable = ""
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self.stop.wait(0.1):
            try:
                gpus = nvml_samples()
            except NvmlUnavailable as exc:
                self.unavailable = str(exc)
                return
            if not gpus:
                self.unavailable = "NVML sees no GPU"
                return
            self.samples.append(max(g.util_percent for g in gpus))

    def __enter__(self) -> GpuUse:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def summary(self) -> dict[str, object]:
        if not self.samples:
            return {"unavailable": self.unavailable or "no sample"}
        return {"mean_percent": round(statistics.mean(self.samples), 1),
                "max_percent": max(self.samples), "samples": len(self.samples)}


class Connection:
    """One keep-alive HTTP/1.1 connection that POSTs JSON and reads the answer: only what the
    benchmark needs (Content-Length bodies; the server is ours)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: object) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        data = json.dumps(body).encode()
        self.writer.write(b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                          b"application/json\r\nContent-Length: %d\r\n\r\n%s"
                          % (path.encode(), len(data), data))
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = next(int(line.split(b":", 1)[1]) for line in lines[1:]
                      if line.lower().startswith(b"content-length:"))
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def play_games(port: int, games: list[list[str]], game_ids: bool
                     ) -> tuple[dict[int, list[float]], dict[tuple[int, int], dict]]:
    """Each game one request per ply up to LATE's end: latencies by ply and the answers."""
    by_ply: dict[int, list[float]] = {}
    answers = {}
    conn = Connection(port)
    for g, game in enumerate(games):
        for t in range(LATE.stop):
            body: dict[str, object] = {"moves": game[:t]}
            if game_ids:
                body["game_id"] = f"bench-{g}"
            start = time.perf_counter()
            status, raw = await conn.post("/infer", body)
            by_ply.setdefault(t, []).append((time.perf_counter() - start) * 1000)
            if status != 200:
                raise RuntimeError(f"/infer answered {status}: {raw[:200]!r}")
            answers[g, t] = {k: v for k, v in json.loads(raw).items() if k != "latency_ms"}
    conn.close()
    return by_ply, answers


def game_state(port: int) -> None:
    games = [r["moves_uci"] for r in iter_pgn_rows(REAL_GAMES, ImportCounts())
             if len(r["moves_uci"]) >= LATE.stop]
    plain, plain_answers = asyncio.run(play_games(port, games, game_ids=False))
    kept, kept_answers = asyncio.run(play_games(port, games, game_ids=True))

    def p50(by_ply: dict[int, list[float]], plies: range) -> float:
        return statistics.median([ms for t in plies for ms in by_ply[t]])

    same_moves = all(
        [(m["uci"], m["legal"]) for m in a["topk"]] == [(m["uci"], m["legal"])
                                                         for m in kept_answers[k]["topk"]]
        and {**a, "topk": None} == {**kept_answers[k], "topk": None}
        for k, a in plain_answers.items())
    prob_diff = max(abs(x["prob"] - y["prob"]) for k, a in plain_answers.items()
                    for x, y in zip(a["topk"], kept_answers[k]["topk"], strict=True))
    emit("game_state", games=len(games), requests_per_game=LATE.stop,
         game_id_p50_ply10_ms=round(p50(kept, EARLY), 2),
         game_id_p50_ply200_ms=round(p50(kept, LATE), 2),
         ratio=round(p50(kept, LATE) / p50(kept, EARLY), 2),
         baseline_p50_ply10_ms=round(p50(plain, EARLY), 2),
         baseline_p50_ply200_ms=round(p50(plain, LATE), 2),
         baseline_ratio=round(p50(plain, LATE) / p50(plain, EARLY), 2),
         same_moves_and_fields=same_moves, max_prob_difference=prob_diff)


async def overhead(ports: list[int], model: Path, inputs: list[list[str]], rounds: int = 3,
                   chunk: int = 25) -> tuple[list[float], list[list[float]], list[float]]:
    """(in-process ms, HTTP ms from each server on `ports`, the first server's route ms) for
    each input, `rounds` times: chunks of `chunk` inputs run in process and then over HTTP to
    each server in turn, so a drift of the machine's speed weighs on all alike."""
    predictor = Predictor.load(model, torch.device(DEVICE), 1024)
    # As many torch threads as the server's forward thread (appliance.inference.app).
    torch.set_num_threads(int(os.environ.get("INFERENCE_TORCH_THREADS", "0"))
                          or max(1, torch.get_num_threads() - 1))
    conns = [Connection(port) for port in ports]
    direct: list[float] = []
    http: list[list[float]] = [[] for _ in ports]
    route: list[float] = []
    for moves in inputs[:20]:  # warm-up
        predictor.predict([predictor.prepare(moves, None, 5)])
        for conn in conns:
            await conn.post("/infer", {"moves": moves})
    for _ in range(rounds):
        for k in range(0, len(inputs), chunk):
            part = inputs[k:k + chunk]
            for moves in part:
                t = time.perf_counter()
                predictor.predict([predictor.prepare(moves, None, 5)])
                direct.append((time.perf_counter() - t) * 1000)
            for conn, times in zip(conns, http, strict=True):
                for moves in part:
                    t = time.perf_counter()
                    status, raw = await conn.post("/infer", {"moves": moves})
                    times.append((time.perf_counter() - t) * 1000)
                    if status != 200:
                        raise RuntimeError(f"/infer answered {status}: {raw[:200]!r}")
                    if conn is conns[0]:
                        route.append(json.loads(raw)["latency_ms"])
    for conn in conns:
        conn.close()
    return direct, http, route


def start_server(args: list[str], url: str) -> subprocess.Popen[bytes]:
    """A server process (`args` after the interpreter) once its /healthz answers 200."""
    server = subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items()
             if not k.startswith("INFERENCE_") or k == "INFERENCE_TORCH_THREADS"})

    def ready() -> bool:
        if server.poll() is not None:
            raise RuntimeError(f"{args[0]} exited with status {server.returncode}")
        try:
            return httpx.get(url + "/healthz").status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(ready, 60, 0.2, f"{args[0]} answering /healthz")
    except (RuntimeError, AssertionError) as exc:
        stop(server)
        raise RuntimeError(f"the server did not become ready: {exc}") from None
    return server


def stop(server: subprocess.Popen[bytes]) -> None:
    server.terminate()
    server.wait(timeout=15)


async def run_clients(port: int, inputs: list[list[str]], clients: int,
                      seconds: float | None = None, count: int | None = None
                      ) -> tuple[int, int, list[float], float]:
    """(ok, errors, latencies ms, elapsed s) for `clients` concurrent request loops, one
    connection each."""
    latencies: list[float] = []
    errors = 0
    sent = 0
    start = time.perf_counter()

    async def loop(k: int) -> None:
        nonlocal errors, sent
        conn = Connection(port)
        i = k
        while True:
            if count is not None and sent >= count:
                break
            if seconds is not None and time.perf_counter() - start >= seconds:
                break
            sent += 1
            t = time.perf_counter()
            try:
                status, raw = await conn.post("/infer", {"moves": inputs[i % len(inputs)]})
                ok = status == 200
            except (OSError, asyncio.IncompleteReadError, ValueError, StopIteration):
                ok = False
                conn.close()
                conn = Connection(port)
            latencies.append((time.perf_counter() - t) * 1000)
            errors += not ok
            i += clients
        conn.close()

    await asyncio.gather(*(loop(k) for k in range(clients)))
    return len(latencies) - errors, errors, latencies, time.perf_counter() - start


def main() -> int:
    inputs = positions(300)
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "seed.pt"
        torch.manual_seed(0)
        save_checkpoint(model, MovePredictor(ModelConfig()) if ARCH == "recurrent"
                        else build_model(ARCH, CONV_DEFAULT), legal_mask=True)
        port, bare_port = free_port(), free_port()
        url = f"http://127.0.0.1:{port}"
        servers: list[subprocess.Popen[bytes]] = []
        try:
            servers.append(start_server(
                ["-m", "appliance.inference", "--model", str(model), "--host", "127.0.0.1",
                 "--port", str(port), "--device", DEVICE], url))
            servers.append(start_server(
                [str(ROOT / "benchmarks" / "bare_server.py"), "--model", str(model), "--port",
                 str(bare_port), "--device", DEVICE], f"http://127.0.0.1:{bare_port}"))
            server = servers[0]
            direct, (http, bare), route = asyncio.run(overhead([port, bare_port], model,
                                                               inputs))
            stop(servers.pop())  # the bare server: only for the floor
            emit("http_overhead", http_p50_ms=pct(http, 50), http_p99_ms=pct(http, 99),
                 direct_p50_ms=pct(direct, 50), direct_p99_ms=pct(direct, 99),
                 ratio_p50=round(statistics.median(http) / statistics.median(direct), 2),
                 route_p50_ms=pct(route, 50),
                 route_ratio_p50=round(statistics.median(route) / statistics.median(direct), 2),
                 bare_http_p50_ms=pct(bare, 50),
                 bare_ratio_p50=round(statistics.median(bare) / statistics.median(direct), 2),
                 requests=len(http))

            ok1, err1, lat1, s1 = asyncio.run(run_clients(port, inputs, 1, count=300))
            before = batch_counts(url)
            threads, client = thread_cpu(server.pid), psutil.Process().cpu_times()
            with GpuUse() as gpu:
                ok16, err16, lat16, s16 = asyncio.run(run_clients(port, inputs, CLIENTS,
                                                                  count=1200))
            spent = thread_cpu(server.pid)
            client_s = sum(psutil.Process().cpu_times()[:2]) - sum(client[:2])
            after = batch_counts(url)
            loop_s = spent.pop(server.pid) - threads.get(server.pid, 0.0)
            busiest = max(spent, key=lambda t: spent[t] - threads.get(t, 0.0))  # the forward thread
            # Every thread's CPU per request, the clients' too: what the cores allow at most.
            others = sum(spent[t] - threads.get(t, 0.0) for t in spent)
            cpu_s = (loop_s + others + client_s) / len(lat16)
            cores = len(os.sched_getaffinity(0))
            emit("batching_gain", one_client_rps=round(ok1 / s1, 1),
                 clients=CLIENTS, concurrent_rps=round(ok16 / s16, 1),
                 ratio=round((ok16 / s16) / (ok1 / s1), 2), errors=err1 + err16,
                 one_client_p99_ms=pct(lat1, 99), concurrent_p50_ms=pct(lat16, 50),
                 concurrent_p99_ms=pct(lat16, 99),
                 positions_per_pass=round((after["sum"] - before["sum"])
                                          / (after["count"] - before["count"]), 2),
                 largest_pass_at_most=largest_pass(before, after), gpu_utilisation=gpu.summary(),
                 cpu_ms_per_request={
                     "event_loop": round(loop_s / len(lat16) * 1000, 3),
                     "forward": round((spent[busiest] - threads.get(busiest, 0.0))
                                      / len(lat16) * 1000, 3),
                     "clients": round(client_s / len(lat16) * 1000, 3)},
                 cores=cores, cpu_bound_rps=round(cores / cpu_s, 1),
                 cpu_bound_ratio=round(cores / cpu_s / (ok1 / s1), 2))

            game_state(port)

            ok, err, lat, secs = asyncio.run(run_clients(port, inputs, CLIENTS,
                                                         seconds=LOAD_SECONDS))
            emit("load_test", seconds=round(secs, 1), clients=CLIENTS, requests=ok + err,
                 errors=err, rps=round((ok + err) / secs, 1), p50_ms=pct(lat, 50),
                 p99_ms=pct(lat, 99), baseline_one_client_p99_ms=pct(http, 99))
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            for server in servers:
                stop(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
