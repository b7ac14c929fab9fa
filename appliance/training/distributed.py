"""Training across processes, GPUs and pods: what to launch, the process group, the step.

- `plan_launch` / `launcher`: what the pod is decides the launch. One GPU or a CPU: a plain
  process. Several GPUs: torchrun, one process per GPU. A RunPod Instant Cluster node
  (NUM_NODES > 1): torchrun across the nodes with a static rendezvous on PRIMARY_ADDR:PRIMARY_PORT
  and --node-rank NODE_RANK, so global ranks follow the node ranks and global rank 0 (the one
  that writes checkpoints, progress and metrics) is on the primary, whose hf-sync uploads them.
  (torchrun's c10d rendezvous ignores --node-rank and numbers the nodes by host name.) Every
  node gives up after TRAIN_RENDEZVOUS_TIMEOUT_SECONDS; `rendezvous_failure` turns torchrun's
  error file into one line naming the rendezvous. `interface_env` points gloo and NCCL at the
  interface holding NODE_ADDR (RunPod's cluster network is not the pod's management interface).
- `join`: the process group of a torchrun worker (NCCL on GPUs, gloo on CPU).
- `DataParallelStep`: one optimizer step over this rank's share of a global batch. Gradients of
  the weighted loss *sum* are all-reduced together with the weight sum, then divided by it, so
  N ranks compute the gradient of the global batch's weighted mean, as one process does over the
  same games. On torch.OutOfMemoryError the step is retried in micro-batches of half the size
  (gradient accumulation, so the result stays the same), and the smaller size is kept.
- `auto_batch_size` / `auto_workers`: defaults that fit the pod when no value is given.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psutil
import torch
import torch.distributed as dist
from torch import nn

from appliance import settings

# The prefix of the rendezvous keys: the same on every node (a RUN_ID may differ per node).
RDZV_ID = "chess-bot-train"
# Batch size (games per rank and step) on CPU, and its bounds on a GPU.
CPU_BATCH_SIZE = 32
GPU_BATCH_RANGE = (32, 512)
# Games per GiB of GPU memory. The default model (256/512, 2 LSTM layers) took about 18 MiB
# a 300-ply game for forward and backward (fp32, measured on CPU by peak RSS), so this leaves
# room for longer games, bigger models and the optimizer; the out-of-memory ladder catches the
# rest. Not yet measured on a GPU.
GAMES_PER_GIB = 4
MAX_WORKERS = 8
# torchrun's error-file messages that mean the nodes never met.
RENDEZVOUS_ERRORS = ("DistStoreError", "DistNetworkError", "RendezvousTimeoutError",
                     "RendezvousConnectionError", "RendezvousClosedError", "TimeoutError")


class LaunchError(ValueError):
    """A cluster environment that cannot be launched, named."""


@dataclass(frozen=True)
class Launch:
    """What one node runs: `nproc` trainer processes, node `node_rank` of `nnodes`."""

    nproc: int
    nnodes: int = 1
    node_rank: int = 0
    endpoint: str = ""  # host:port of the rendezvous, for a cluster

    @property
    def is_cluster(self) -> bool:
        return self.nnodes > 1

    @property
    def holds_rank0(self) -> bool:
        """Global rank 0, the writer, runs on this node."""
        return self.node_rank == 0


def plan_launch(cluster: settings.ClusterSettings, gpus: int) -> Launch:
    """The launch for this node from RunPod's cluster variables and the visible GPUs."""
    nproc = gpus or (cluster.NUM_TRAINERS or 1)
    if not cluster.is_cluster:
        return Launch(max(gpus, 1))
    if cluster.NODE_RANK >= cluster.NUM_NODES:
        raise LaunchError(f"NODE_RANK={cluster.NODE_RANK}: must be below NUM_NODES="
                          f"{cluster.NUM_NODES}")
    addr = cluster.PRIMARY_ADDR or cluster.MASTER_ADDR
    port = cluster.PRIMARY_PORT or cluster.MASTER_PORT
    if not addr or port is None:
        raise LaunchError(f"NUM_NODES={cluster.NUM_NODES} (a cluster node) needs PRIMARY_ADDR "
                          "and PRIMARY_PORT (or MASTER_ADDR and MASTER_PORT), which RunPod sets "
                          "on every node of an Instant Cluster")
    host = f"[{addr}]" if ":" in addr else addr
    return Launch(nproc, cluster.NUM_NODES, cluster.NODE_RANK, f"{host}:{port}")


def launcher(launch: Launch, rendezvous_timeout_s: int) -> list[str]:
    """The command prefix that runs `-m MODULE` as `launch` says."""
    cmd = [sys.executable, "-m"]
    if launch.is_cluster:
        cmd += ["torch.distributed.run", f"--nnodes={launch.nnodes}",
                f"--nproc-per-node={launch.nproc}", f"--node-rank={launch.node_rank}",
                "--rdzv-backend=static", f"--rdzv-endpoint={launch.endpoint}",
                f"--rdzv-id={RDZV_ID}", f"--rdzv-conf=timeout={rendezvous_timeout_s}",
                "--max-restarts=0", "-m"]
    elif launch.nproc > 1:
        cmd += ["torch.distributed.run", "--standalone", f"--nproc_per_node={launch.nproc}", "-m"]
    return cmd


def rendezvous_failure(error_file: Path, launch: Launch, timeout_s: int) -> str | None:
    """One line for a cluster launch that ended before the nodes met (from torchrun's error
    file, TORCHELASTIC_ERROR_FILE); None for any other ending."""
    try:
        message = json.loads(error_file.read_text(encoding="utf-8"))["message"]["message"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(message, str) or not message.startswith(RENDEZVOUS_ERRORS):
        return None
    first = message.splitlines()[0] if message else ""
    return (f"cluster rendezvous failed: node {launch.node_rank} of {launch.nnodes} did not meet "
            f"every other node at {launch.endpoint} within TRAIN_RENDEZVOUS_TIMEOUT_SECONDS="
            f"{timeout_s} ({first}); start the preset on every node")


IFNAME_VARS = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")


def interface_of(addr: str) -> str | None:
    """The network interface that holds `addr`, if any."""
    for name, addrs in psutil.net_if_addrs().items():
        if any(a.address.split("%")[0] == addr for a in addrs):
            return name
    return None


def interface_env(node_addr: str | None, environ: Mapping[str, str]) -> dict[str, str]:
    """GLOO_SOCKET_IFNAME and NCCL_SOCKET_IFNAME for the interface holding NODE_ADDR, those
    not set already; nothing when NODE_ADDR is unset or on no interface."""
    name = interface_of(node_addr) if node_addr else None
    return {} if name is None else {k: name for k in IFNAME_VARS if not environ.get(k)}


@dataclass(frozen=True)
class Group:
    """This process's place: global rank and world size, and its node's share."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def primary(self) -> bool:
        return self.rank == 0


def join(env: settings.DistributedEnv, device_name: str) -> Group:
    """Join torchrun's process group when launched by it (RANK set, WORLD_SIZE > 1)."""
    if env.RANK is None or env.WORLD_SIZE == 1:
        return Group()
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    backend = "nccl" if torch.cuda.is_available() and device_name != "cpu" else "gloo"
    dist.init_process_group(backend)
    return Group(env.RANK, env.WORLD_SIZE, env.LOCAL_RANK, local_world)


def leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def available_cpus() -> int:
    """CPUs this process may use: its affinity, capped by a cgroup v2 quota (containers)."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cpus


def auto_workers(device: torch.device, local_world: int, cpus: int | None = None) -> int:
    """DataLoader workers per rank: on a GPU the CPUs per rank less one (for the rank itself),
    at most MAX_WORKERS; on CPU 0, as the batches are built in a fraction of a step and the
    cores are better spent on the step itself."""
    if device.type != "cuda":
        return 0
    per_rank = (available_cpus() if cpus is None else cpus) // max(local_world, 1)
    return max(0, min(MAX_WORKERS, per_rank - 1))


def auto_batch_size(device: torch.device, total_bytes: int | None = None) -> int:
    """Games per rank and step: CPU_BATCH_SIZE on CPU; on a GPU GAMES_PER_GIB per GiB of its
    memory, rounded down to a power of two within GPU_BATCH_RANGE."""
    if device.type != "cuda":
        return CPU_BATCH_SIZE
    if total_bytes is None:
        total_bytes = torch.cuda.get_device_properties(device).total_memory
    games = total_bytes / 2**30 * GAMES_PER_GIB
    low, high = GPU_BATCH_RANGE
    return min(high, max(low, 2 ** int(math.log2(max(games, 1)))))


B = TypeVar("B")


def split_batch(batch: B, size: int) -> Iterator[B]:
    """`batch` (a dataclass of tensors, games along dim 0) in parts of `size` games."""
    fields = {f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)}  # type: ignore[arg-type]
    n = next(len(v) for v in fields.values() if isinstance(v, torch.Tensor))
    if size >= n:
        yield batch
        return
    for i in range(0, n, size):
        yield dataclasses.replace(  # type: ignore[type-var]
            batch, **{k: v[i : i + size] for k, v in fields.items()
                      if isinstance(v, torch.Tensor)})


class OutOfMemory(RuntimeError):
    """Out of memory with one game per micro-batch: the ladder has no rung left."""


# (weighted loss sum as a tensor to backpropagate, weight sum) of a micro-batch
LossFn = Callable[[Any], tuple[torch.Tensor, float]]


class DataParallelStep:
    """One optimizer step over this rank's share of a global batch (see the module doc).

    `times` holds this rank's seconds per part since `start_epoch`: data (waiting between
    steps, mostly the loader), compute (forward, backward, optimizer) and allreduce (the
    gradient exchange; on a GPU it also waits for the queued compute); `oom_retries` counts
    the ladder's rungs.
    """

    def __init__(self, model: nn.Module, opt: torch.optim.Optimizer, loss_fn: LossFn,
                 device: torch.device, world: int = 1, clip: float = 1.0,
                 log: Callable[[str], None] | None = None) -> None:
        self.model = model
        self.opt = opt
        self.loss_fn = loss_fn
        self.device = device
        self.world = world
        self.clip = clip
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.micro: int | None = None  # games per micro-batch once the ladder has been used
        self.times: dict[str, float] = {}
        self.start_epoch()

    def start_epoch(self) -> None:
        self.times = {"data_s": 0.0, "compute_s": 0.0, "allreduce_s": 0.0, "oom_retries": 0}
        self._last = time.perf_counter()

    def broadcast_parameters(self) -> None:
        """Every rank starts from rank 0's weights."""
        if self.world > 1:
            for p in self.model.state_dict().values():
                dist.broadcast(p, 0)

    def step(self, batch: Any, where: str = "") -> tuple[float, float]:
        """Train on `batch` (already this rank's share); returns (loss sum, weight sum) of
        this rank's share, for the epoch's mean."""
        t0 = time.perf_counter()
        self.times["data_s"] += t0 - self._last
        batch = batch.to(self.device)
        while True:
            t0 = time.perf_counter()
            loss_sum, weight_sum, failed = self._backward(batch)
            t1 = time.perf_counter()
            self.times["compute_s"] += t1 - t0
            stuck = failed and (self.micro or len_of(batch)) == 1
            flat = self._exchange([weight_sum, float(failed), float(stuck)])
            self.times["allreduce_s"] += time.perf_counter() - t1
            total_w, any_failed, any_stuck = flat[-3:].tolist()
            if any_stuck:
                raise OutOfMemory(
                    f"out of memory on {self.device} with one game per micro-batch"
                    + ("" if stuck else " on another rank") + f" ({where.strip()}); lower the "
                    "model size (--hidden-dim, --embed-dim) or the longest games")
            if any_failed:
                self.times["oom_retries"] += 1
                if failed:
                    self._halve(len_of(batch), where)
                continue
            t2 = time.perf_counter()
            self._unflatten(flat[:-3], total_w)
            if self.clip:
                nn.utils.clip_grad_norm_(self.params, self.clip)
            self.opt.step()
            self._last = time.perf_counter()
            self.times["compute_s"] += self._last - t2
            return loss_sum, weight_sum

    def _backward(self, batch: Any) -> tuple[float, float, bool]:
        self.opt.zero_grad(set_to_none=True)
        loss_sum = weight_sum = 0.0
        try:
            for part in split_batch(batch, self.micro or len_of(batch)):
                loss, weight = self.loss_fn(part)
                loss.backward()
                loss_sum += float(loss.detach())
                weight_sum += weight
        except torch.OutOfMemoryError:
            self.opt.zero_grad(set_to_none=True)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            return 0.0, 0.0, True
        return loss_sum, weight_sum, False

    def _halve(self, games: int, where: str) -> None:
        before = self.micro or games
        self.micro = max(1, (before + 1) // 2)
        self.log(f"out of memory{where} with {before} games per micro-batch on {self.device}: "
                 f"retrying the step in micro-batches of {self.micro} (gradients accumulate, so "
                 "the result stays the same)")

    def _exchange(self, extra: list[float]) -> torch.Tensor:
        """The flat gradients with `extra` appended, summed over the ranks."""
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in self.params]
        flat = torch.cat([g.reshape(-1).float() for g in grads]
                         + [torch.tensor(extra, dtype=torch.float32, device=self.device)])
        if self.world > 1:
            dist.all_reduce(flat)
        return flat

    def _unflatten(self, flat: torch.Tensor, total_weight: float) -> None:
        flat /= max(total_weight, 1e-8)
        offset = 0
        for p in self.params:
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p).to(p.dtype)
            offset += n


def len_of(batch: Any) -> int:
    """Games in a batch (a dataclass of tensors along dim 0)."""
    return next(len(getattr(batch, f.name)) for f in dataclasses.fields(batch)
                if isinstance(getattr(batch, f.name), torch.Tensor))
