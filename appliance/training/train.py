"""The trainer: whole-game training with a loss at every eligible position, alone or data-parallel.

With the legal-move mask (the default) the loss of each position is taken over its legal moves
only: the logits of illegal moves are masked before the softmax, in training and validation, and
the checkpoint says so (`meta["legal_mask"]`), so inference ranks legal moves only.

Run `python -m appliance.training.train --help` (options: `training.options`); under torchrun it
trains data-parallel (gloo on CPU, NCCL on GPU; the step, the process group and the defaults that
fit the pod: `training.distributed`). Global rank 0 alone writes checkpoint_last.pt every epoch,
model_best.pt and metrics.json; progress events: `training.progress`.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from appliance import settings
from appliance.atomic import atomic_write, atomic_write_json
from appliance.datasets.encoded_cache import load_cached
from appliance.datasets.rows import DatasetError, SpliceConfig
from appliance.model import BEST_MODEL, LAST_CHECKPOINT
from appliance.model.checkpoint import (
    AnyModel,
    CheckpointError,
    architecture_of,
    build_model,
    read_checkpoint,
    save_checkpoint,
)
from appliance.model.network import count_parameters
from appliance.training import distributed
from appliance.training.batching import IGNORE, Batch, Collator, GameDataset, bucketed_batches
from appliance.training.options import build_parser
from appliance.training.progress import Progress

METRICS = "metrics.json"


class TrainError(RuntimeError):
    """A training run that cannot go on, with the reason for a person."""


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise TrainError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise TrainError(f"--device {name}: CUDA is not available on this machine")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    elif device.type != "cpu":
        raise TrainError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N")
    return device


ILLEGAL_LOGIT = -1e9  # what an illegal move's logit becomes under the legal-move mask


def mask_illegal(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """The logits with every illegal move's at ILLEGAL_LOGIT (unchanged without a mask)."""
    if batch.legal is None:
        return logits
    return logits.float().masked_fill(~batch.legal, ILLEGAL_LOGIT)


def model_config(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The architecture and its config dict that the trainer's flags describe."""
    if args.arch == "conv":
        return "conv", {"channels": args.channels, "blocks": args.blocks,
                        "history": args.history_moves, "flip": args.flip}
    return "recurrent", {
        "embed_dim": args.embed_dim, "hidden_dim": args.hidden_dim,
        "num_layers": args.num_layers, "dropout": args.dropout, "rnn": args.rnn,
        "phase_feature": args.phase_feature, "side_feature": args.side_to_move_feature,
        "board_feature": args.board_feature,
    }


def masked_loss(logits: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(weighted training loss, per-position cross-entropy) over the batch's targets."""
    ce = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        batch.targets.reshape(-1),
        ignore_index=IGNORE,
        reduction="none",
    ).reshape(batch.targets.shape)
    weight_sum = batch.weights.sum()
    loss = (ce * batch.weights).sum() / weight_sum.clamp_min(1e-8)
    return loss, ce


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class Trainer:
    def __init__(self, args: argparse.Namespace, group: distributed.Group) -> None:
        self.args = args
        self.rank = group.rank
        self.world = group.world
        self.primary = group.primary
        self.device = resolve_device(args.device, group.local_rank)
        self.progress = Progress(args.progress_jsonl_out, self.primary)
        if args.batch_size is None:
            args.batch_size = distributed.auto_batch_size(self.device)
        if args.num_workers is None:
            args.num_workers = distributed.auto_workers(self.device, group.local_world)
        self.splice = SpliceConfig(
            args.runtime_min_context, args.runtime_min_target, args.runtime_max_samples_per_game
        )
        self.amp = self.device.type == "cuda"
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)

    def _load_data(self) -> None:
        t0 = time.monotonic()
        self.progress.say("loading datasets ...")
        legal, cache = self.args.legal_mask, self.args.encoded_cache
        train_games, train_formats, hits = load_cached(self.args.train, cache, legal,
                                                       self.primary)
        val_games, val_formats, val_hits = load_cached(self.args.val, cache, legal, self.primary)
        self.train_set = GameDataset(train_games, self.splice, self.args.seed, sample=True)
        self.val_set = GameDataset(val_games, self.splice, self.args.seed, sample=False)
        self.train_targets = self.train_set.count_targets()
        self.val_targets = self.val_set.count_targets()
        if self.train_targets == 0:
            raise TrainError(
                "no training targets: every position was excluded by the runtime splice settings "
                f"(--runtime-min-context {self.splice.min_context}, --runtime-min-target "
                f"{self.splice.min_target})"
            )
        if self.val_targets == 0:
            raise TrainError("no validation targets under the runtime splice settings")
        self.formats = {k: n for k in train_formats if (n := train_formats[k] + val_formats[k])}
        self.progress.say(
            f"data: {len(train_games)} train games ({self.train_targets} targets), "
            f"{len(val_games)} val games ({self.val_targets} targets) in "
            f"{time.monotonic() - t0:.1f}s ({hits + val_hits} files from the encoded cache)"
        )

    def _loader(self, dataset: GameDataset, epoch: int, shuffle: bool) -> DataLoader[Any]:
        lengths = [len(g) for g in dataset.games]
        batches = bucketed_batches(
            lengths, self.args.batch_size, self.args.seed, epoch, self.rank, self.world, shuffle
        )
        dataset.epoch = epoch
        return DataLoader(
            dataset,
            batch_sampler=batches,
            collate_fn=Collator(self.args.endgame_phase_weight if shuffle else 1.0,
                                self.args.legal_mask),
            num_workers=self.args.num_workers,
            pin_memory=self.device.type == "cuda",
        )

    def _forward(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            out: torch.Tensor = model(batch.tokens, batch.phase, batch.side, batch.boards)
        return mask_illegal(out, batch)

    def _all_reduce(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def train_epoch(
        self, model: nn.Module, opt: torch.optim.Optimizer, epoch: int
    ) -> dict[str, float]:
        model.train()
        loader = self._loader(self.train_set, epoch, shuffle=True)
        total = len(loader.batch_sampler)  # type: ignore[arg-type]
        if self.args.max_steps_per_epoch:
            total = min(total, self.args.max_steps_per_epoch)
        loss_sum = weight_sum = 0.0
        targets = 0
        t0 = time.monotonic()
        bar = tqdm(total=total, desc=f"epoch {epoch}", unit="batch", disable=None if
                   self.primary else True, leave=False)
        self.stepper.start_epoch()
        for step, batch in enumerate(loader):
            if step >= total or self._out_of_time():
                break
            loss_b, w = self.stepper.step(batch, f" at epoch {epoch} step {step}")
            loss_sum += loss_b
            weight_sum += w
            targets += batch.num_targets
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / max(weight_sum, 1e-8):.3f}")
            if step % 50 == 0:
                self.progress.event(
                    "step", epoch=epoch, step=step, steps=total, loss=loss_b / max(w, 1e-8)
                )
        bar.close()
        elapsed = time.monotonic() - t0
        loss_sum, weight_sum, targets_all = self._all_reduce([loss_sum, weight_sum, float(targets)])
        return {
            "train_loss": loss_sum / max(weight_sum, 1e-8),
            "train_targets": targets_all,
            "targets_per_s": targets_all / max(elapsed, 1e-9),
            "train_seconds": elapsed,
            **self.stepper.times,
        }

    def _loss_sum(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, float]:
        """(weighted loss sum, weight sum) of a batch, for the data-parallel step."""
        loss, _ = masked_loss(self._forward(model, batch), batch)
        weight = float(batch.weights.sum())
        return loss * weight, weight

    @torch.no_grad()
    def validate(self, model: nn.Module) -> dict[str, float]:
        model.eval()  # ranks may see different numbers of validation batches: no collective
        ce_sum = correct = count = 0.0
        for batch in self._loader(self.val_set, 0, shuffle=False):
            batch = batch.to(self.device)
            logits = self._forward(model, batch)
            _, ce = masked_loss(logits, batch)
            mask = batch.targets != IGNORE
            ce_sum += float(ce[mask].sum())
            correct += float((logits.argmax(-1) == batch.targets)[mask].sum())
            count += float(mask.sum())
        ce_sum, correct, count = self._all_reduce([ce_sum, correct, count])
        return {"val_loss": ce_sum / max(count, 1.0), "val_top1": correct / max(count, 1.0)}

    def _out_of_time(self) -> bool:
        budget = self.args.time_budget_min * 60
        if not budget:
            return False
        out = time.monotonic() - self.t_start >= budget
        return bool(self._all_reduce([float(out)])[0]) if self.world > 1 else out

    def _resume_path(self) -> Path | None:
        if self.args.resume is None:
            return None
        if self.args.resume == "auto":
            return Path(self.args.output_dir) / LAST_CHECKPOINT
        return Path(self.args.resume)

    def run(self, on_epoch_end: Callable[[int], None] | None = None) -> dict[str, Any]:
        args = self.args
        torch.manual_seed(args.seed)
        random.seed(args.seed)
        np.random.seed(args.seed % 2**32)
        self._load_data()
        arch, config_dict = model_config(args)
        state: dict[str, Any] = {
            "epoch": 0, "history": [], "best_val_loss": math.inf, "best_epoch": 0, "bad_epochs": 0,
        }
        resume = self._resume_path()
        payload = None
        if resume is not None:
            try:
                payload = read_checkpoint(resume)
            except CheckpointError as exc:
                raise TrainError(f"--resume: {exc}") from None
            if "train_state" not in payload:
                raise TrainError(
                    f"--resume: {resume} holds no training state (use {LAST_CHECKPOINT})")
            arch = payload.get("architecture", "recurrent")
            config_dict = payload["model_config"]
        core = build_model(arch, config_dict).to(self.device)
        config = core.config
        model: nn.Module = core
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="min", factor=0.5, patience=args.lr_patience
        )
        if payload is not None:
            core.load_state_dict(payload["state_dict"])
            ts = payload["train_state"]
            opt.load_state_dict(ts["optimizer"])
            sched.load_state_dict(ts["scheduler"])
            state = ts["progress"]
            _set_rng_state(ts["rng"][min(self.rank, len(ts["rng"]) - 1)], self.device)
            self.progress.say(f"resumed from {resume} after epoch {state['epoch']}")
        self.stepper = distributed.DataParallelStep(
            core, opt, lambda b: self._loss_sum(core, b), self.device, self.world)
        self.stepper.broadcast_parameters()
        params = self.parameters = count_parameters(core)
        self.progress.say(
            f"model: {params:,} parameters, features {config.features()}, device {self.device}, "
            f"world size {self.world}"
        )
        self.progress.event(
            "start", parameters=params, device=str(self.device), world_size=self.world,
            train_targets=self.train_targets, val_targets=self.val_targets,
            start_epoch=state["epoch"] + 1, epochs=args.epochs,
        )
        out = Path(args.output_dir)
        t_start = self.t_start = time.monotonic()
        cpu_start = time.process_time()
        stopped_early = out_of_time = False
        for epoch in range(state["epoch"] + 1, args.epochs + 1):
            if args.early_stopping_patience and state["bad_epochs"] >= args.early_stopping_patience:
                stopped_early = True
                break
            if out_of_time:
                break
            tr = self.train_epoch(model, opt, epoch)
            out_of_time = self._out_of_time()
            va = self.validate(model)
            sched.step(va["val_loss"])
            rec = {"epoch": epoch, "lr": opt.param_groups[0]["lr"], **tr, **va}
            state["history"].append(rec)
            state["epoch"] = epoch
            improved = va["val_loss"] < state["best_val_loss"]
            if improved:
                state["best_val_loss"] = va["val_loss"]
                state["best_epoch"] = epoch
                state["bad_epochs"] = 0
            else:
                state["bad_epochs"] += 1
            rng = self._gather_rng()
            if self.primary:
                common = self._meta(core, state)
                if improved:
                    save_checkpoint(out / BEST_MODEL, core, **common)
                save_checkpoint(
                    out / LAST_CHECKPOINT, core, **common,
                    train_state={
                        "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                        "progress": state, "rng": rng,
                    },
                )
            self.progress.event("epoch", **rec, best_epoch=state["best_epoch"])
            self.progress.say(
                f"epoch {epoch}/{args.epochs}: train loss {tr['train_loss']:.4f}, val loss "
                f"{va['val_loss']:.4f}, val top-1 {va['val_top1']:.3f}, "
                f"{tr['targets_per_s']:,.0f} targets/s" + (" (best)" if improved else "")
            )
            if self.world > 1:
                dist.barrier()
            if on_epoch_end is not None:
                on_epoch_end(epoch)
        metrics = {
            **self._meta(core, state)["metrics"],
            "stopped_early": stopped_early,
            "stopped_by_time_budget": out_of_time,
            "elapsed_s": time.monotonic() - t_start,
            "cpu_s": time.process_time() - cpu_start,
            "model_path": str(out / BEST_MODEL),
        }
        if self.primary:
            # Re-save so the best model is also the newest .pt in the output dir.
            best = read_checkpoint(out / BEST_MODEL)
            best["metrics"] = metrics
            atomic_write(out / BEST_MODEL, lambda fh: torch.save(best, fh))
            atomic_write_json(out / METRICS, metrics)
            self.progress.event("done", **{k: v for k, v in metrics.items() if k != "history"})
            self.progress.say(
                f"done: best epoch {state['best_epoch']}, val loss {state['best_val_loss']:.4f}; "
                f"model {out / BEST_MODEL}, metrics {out / METRICS}"
            )
        self.progress.close()
        return metrics

    def _gather_rng(self) -> list[dict[str, Any]]:
        mine = _rng_state(self.device)
        if self.world == 1:
            return [mine]
        everyone: list[Any] = [None] * self.world
        dist.all_gather_object(everyone, mine)
        return everyone

    def _meta(self, core: AnyModel, state: dict[str, Any]) -> dict[str, Any]:
        config = core.config
        best = next(
            (h for h in state["history"] if h["epoch"] == state["best_epoch"]), None
        )
        return {
            "metrics": {
                "best_epoch": state["best_epoch"],
                "best_val_loss": state["best_val_loss"],
                "best_val_top1": best["val_top1"] if best else None,
                "epochs_run": state["epoch"],
                "history": state["history"],
                "train_games": len(self.train_set),
                "val_games": len(self.val_set),
                "train_targets": self.train_targets,
                "val_targets": self.val_targets,
                "dataset_formats": self.formats,
                "parameters": self.parameters,
                "features": config.features(),
                "architecture": architecture_of(core),
                "model_config": config.to_dict(),
                "runtime_splice": vars(self.splice),
                "device": str(self.device),
                "world_size": self.world,
            },
            "legal_mask": bool(self.args.legal_mask),
            "train_args": {
                k: (str(v) if isinstance(v, Path) else [str(x) for x in v] if isinstance(v, list)
                    else v)
                for k, v in vars(self.args).items()
            },
        }


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        dist_env = settings.load(settings.DistributedEnv)
    except settings.SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    group = distributed.join(dist_env, args.device)
    try:
        Trainer(args, group).run()
    except (DatasetError, TrainError, distributed.OutOfMemory, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        last = Path(args.output_dir) / LAST_CHECKPOINT
        print(f"interrupted: continue with --resume (from {last})", file=sys.stderr)
        return 130
    finally:
        distributed.leave()
    return 0


if __name__ == "__main__":
    sys.exit(main())
