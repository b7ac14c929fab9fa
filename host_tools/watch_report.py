"""What a watched run is reported as (host_tools/watch.py follows it): the status line of a run
from its progress events (RunView: epoch, step, losses, targets/s, ETA, elapsed, cost, GPU use),
and the pings to a healthchecks-style URL, whose path is a secret and never printed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx


def redacted_url(url: str) -> str:
    """What an error may show of a ping URL: scheme and host; the path holds the check's key."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}/<redacted>"


class Healthchecks:
    """Pings to a healthchecks-style URL: POST URL/start, URL/log, URL (success), URL/fail, with
    the last progress lines as the body. Failures are warnings on `err`, never errors."""

    def __init__(self, url: str | None, err: Any, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/") if url else None
        self.err = err
        self.timeout = timeout

    def ping(self, kind: str, body: str = "") -> bool:
        if self.url is None:
            return False
        target = self.url if kind == "success" else f"{self.url}/{kind}"
        try:
            resp = httpx.post(target, content=body.encode("utf-8"), timeout=self.timeout)
        except httpx.HTTPError as exc:
            why = type(exc).__name__
        else:
            if resp.status_code < 400:
                return True
            why = f"HTTP {resp.status_code}"
        print(f"watch: warning: healthchecks ping {kind} to {redacted_url(self.url)} failed "
              f"({why})", file=self.err, flush=True)
        return False


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(max(seconds, 0))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


@dataclass
class RunView:
    """What the events so far say about the run, rendered as one status line."""

    epochs: int | None = None
    start_epoch: int = 1
    started_ts: float | None = None
    epoch: int | None = None
    finished_epoch: int | None = None
    step: str = "-"
    train_loss: float | None = None
    val_loss: float | None = None
    targets_per_s: float | None = None
    epoch_ts: float | None = None
    done: bool = False
    cost_per_hr: float | None = None
    created: float | None = None
    gpu_util: float | None = None

    def update(self, rec: dict[str, Any]) -> None:
        kind = rec.get("event")
        if kind == "start":
            self.epochs = _int(rec.get("epochs"))
            self.start_epoch = _int(rec.get("start_epoch")) or 1
            self.started_ts = _float(rec.get("ts"))
        elif kind == "step":
            self.epoch = _int(rec.get("epoch"))
            self.step = f"{rec.get('step')}/{rec.get('steps')}"
            self.train_loss = _float(rec.get("loss"))
        elif kind == "epoch":
            self.epoch = self.finished_epoch = _int(rec.get("epoch"))
            self.step = "-"
            self.train_loss = _float(rec.get("train_loss"))
            self.val_loss = _float(rec.get("val_loss"))
            self.targets_per_s = _float(rec.get("targets_per_s"))
            self.epoch_ts = _float(rec.get("ts"))
        elif kind == "done":
            self.done = True

    def eta(self) -> float | None:
        if self.done:
            return 0.0
        last, total = self.finished_epoch, self.epochs
        if last is None or total is None or self.started_ts is None or self.epoch_ts is None:
            return None
        finished = last - self.start_epoch + 1
        if finished <= 0:
            return None
        return (self.epoch_ts - self.started_ts) / finished * (total - last)

    def cost(self, now: float) -> float | None:
        if self.cost_per_hr is None or self.created is None:
            return None
        return self.cost_per_hr * max(now - self.created, 0.0) / 3600

    def line(self, now: float) -> str:
        cost = self.cost(now)
        parts = [
            f"epoch {self.epoch or '-'}/{self.epochs or '-'}", f"step {self.step}",
            f"train {_num(self.train_loss, '.4f')}", f"val {_num(self.val_loss, '.4f')}",
            f"{_num(self.targets_per_s, ',.0f')} targets/s", f"ETA {fmt_duration(self.eta())}",
            "elapsed " + fmt_duration(None if self.started_ts is None else now - self.started_ts),
            "cost " + ("-" if cost is None else f"${cost:.2f}"),
            "GPU " + ("-" if self.gpu_util is None else f"{self.gpu_util:.0f}%"),
        ]
        return "  ".join(parts)


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
