"""The run report: `report.md`, `report.json` and `loss_curves.png` in a run's folder, written at
the end of `provision.py cycle` and by `provision.py report RUN_ID` later.

A `RunReport` is built from what the run left: the phase-timing records of the run (the host's
cycle phases and the pod's, merged by cycle), `run.json` (what cycle knew: pod, GPU, $/h, running
time, dataset), the trainer's progress events (`artifacts/progress.jsonl`), `metrics.json` and the
evaluation against the baselines (`artifacts/evaluation.json`, the preset's `evaluate --json-out`)
and, when cycle played one, the arena against the previous best model (`arena.json`).
Whatever is missing is named in the report (`missing`), never an error. matplotlib is a
workstation dependency (the `workstation` extra), imported only where the plot is drawn.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from appliance import settings
from appliance.atomic import atomic_write_json
from host_tools import cycle_arena
from host_tools.cli import CliError, Env, emit, load_settings, table

RUN_INFO = "run.json"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
PLOT = "loss_curves.png"
POD_TIMINGS = "timings.jsonl"
# Where the trainer's files land in a run folder (cycle's TRAIN_OUTPUT_DIR is REMOTE/artifacts).
PROGRESS = ("artifacts/progress.jsonl", "progress.jsonl")
METRICS = ("artifacts/metrics.json", "metrics.json")
EVALUATION = ("artifacts/evaluation.json", "evaluation.json")
# The loss-curve figure: inches x dpi = pixels of the PNG.
FIG_INCHES = (8.0, 4.5)
FIG_DPI = 100
EVAL_KEYS = ("top1", "top5", "legal_top1", "best_legal_top1")


class ReportError(Exception):
    """A report that cannot be made at all (no run folder); anything less is `missing`."""


@dataclass
class RunInfo:
    """What cycle knew about the run that its files do not say; `run.json` in the run folder."""

    run_id: str
    pod_id: str = ""
    gpu_type: str = ""
    gpu_count: int = 0
    cost_per_hr: float | None = None
    running_s: float | None = None
    then: str = ""
    dataset_path: str = ""
    dataset_location: str = ""  # "workstation" (uploaded) or "pod"
    dataset_stats: dict[str, Any] | None = None

    def cost_usd(self) -> float | None:
        """$/h x running time, when both are known."""
        if self.cost_per_hr is None or self.running_s is None:
            return None
        return round(self.cost_per_hr * self.running_s / 3600, 4)

    def write(self, run_dir: Path) -> None:
        atomic_write_json(run_dir / RUN_INFO, asdict(self))

    @classmethod
    def read(cls, path: Path) -> RunInfo:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class RunReport:
    run_id: str
    run_dir: str
    phases: list[dict[str, Any]] = field(default_factory=list)
    phase_totals_s: dict[str, float] = field(default_factory=dict)
    dataset: dict[str, Any] = field(default_factory=dict)
    gpu: dict[str, Any] = field(default_factory=dict)
    epochs: list[dict[str, Any]] = field(default_factory=list)
    throughput: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    arena: dict[str, Any] = field(default_factory=dict)
    cost: dict[str, Any] = field(default_factory=dict)
    plot: dict[str, Any] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- reading the run folder -----------------------------------------------------------------------


def _first(run_dir: Path, names: tuple[str, ...]) -> Path | None:
    return next((run_dir / n for n in names if (run_dir / n).is_file()), None)


def _jsonl(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The JSON objects of a JSONL file and how many lines were not one."""
    records, bad = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(rec, dict):
            records.append(rec)
        else:
            bad += 1
    return records, bad


def _json(path: Path, missing: list[str], what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        missing.append(f"no {what}: {path} is not readable JSON ({exc})")
        return {}
    if not isinstance(data, dict):
        missing.append(f"no {what}: {path} holds no JSON object")
        return {}
    return data


def timing_records(run_id: str, run_dir: Path, timing_log: Path | None,
                   missing: list[str]) -> list[dict[str, Any]]:
    """The run's records from the timing log (run_id matches), then those of the pod's own log in
    the run folder that the timing log does not already hold."""
    records: list[dict[str, Any]] = []
    for path in (timing_log, run_dir / POD_TIMINGS):
        if path is None or not path.is_file():
            continue
        got, bad = _jsonl(path)
        if bad:
            missing.append(f"{bad} line(s) of {path} are not JSON records; left out")
        records += [r for r in got if r.get("run_id") == run_id and r not in records]
    if not records:
        missing.append(f"no phase timings: no record with run_id {run_id!r} in "
                       f"{timing_log or '(no timing log)'} or {run_dir / POD_TIMINGS}")
    return records


def _phases(report: RunReport, records: list[dict[str, Any]]) -> None:
    for r in records:
        try:
            seconds = int(r["elapsed_ms"]) / 1000
        except (KeyError, TypeError, ValueError):
            continue
        source = str(r.get("source", "?"))
        report.phases.append({"source": source, "phase": str(r.get("phase", "?")),
                              "status": str(r.get("status", "?")), "seconds": seconds})
        report.phase_totals_s[source] = round(report.phase_totals_s.get(source, 0.0) + seconds, 3)


EPOCH_FIELDS = ("epoch", "train_loss", "val_loss", "val_top1", "lr", "targets_per_s",
                "train_targets", "train_seconds")


def _epochs(report: RunReport, run_dir: Path, metrics: dict[str, Any]) -> None:
    """Epochs from the progress events, else from metrics.json's history."""
    path = _first(run_dir, PROGRESS)
    rows: list[dict[str, Any]] = []
    if path is not None:
        events, bad = _jsonl(path)
        if bad:
            report.missing.append(f"{bad} line(s) of {path} are not JSON events; left out")
        rows = [e for e in events if e.get("event") == "epoch"]
        start = next((e for e in events if e.get("event") == "start"), None)
        if start is not None:
            report.gpu.setdefault("device", start.get("device"))
            report.gpu.setdefault("world_size", start.get("world_size"))
        if not rows:
            report.missing.append(f"no epoch events in {path}")
    else:
        report.missing.append("no progress events: none of " + ", ".join(PROGRESS)
                              + " in the run folder (the trainer's --progress-jsonl-out)")
    if not rows and metrics.get("history"):
        rows = list(metrics["history"])
        report.missing.append("epochs taken from metrics.json's history")
    report.epochs = [{k: row.get(k) for k in EPOCH_FIELDS} for row in rows]
    rates = [(e["train_targets"], e["train_seconds"]) for e in report.epochs
             if isinstance(e["train_targets"], (int, float))
             and isinstance(e["train_seconds"], (int, float))]
    if rates and sum(s for _, s in rates) > 0:
        targets = sum(t for t, _ in rates)
        seconds = sum(s for _, s in rates)
        report.throughput = {"targets": targets, "train_seconds": seconds,
                             "targets_per_s": targets / seconds,
                             "last_epoch_targets_per_s": report.epochs[-1]["targets_per_s"]}
    else:
        report.missing.append("no throughput: no epoch with train_targets and train_seconds")


METRIC_FIELDS = ("best_epoch", "best_val_loss", "best_val_top1", "epochs_run", "stopped_early",
                 "elapsed_s", "parameters", "features", "device", "world_size")


def _evaluation(report: RunReport, run_dir: Path) -> None:
    path = _first(run_dir, EVALUATION)
    if path is None:
        report.missing.append("no evaluation: none of " + ", ".join(EVALUATION) + " in the run "
                              "folder (the preset's `evaluate --json-out`)")
        return
    data = _json(path, report.missing, "evaluation")
    if not data:
        return
    try:
        rows = {"model": data, **data["baselines"]}
        report.evaluation = {
            name: {k: r[k] for k in (*EVAL_KEYS, "positions")} for name, r in rows.items()}
    except (KeyError, TypeError):
        report.missing.append(f"no evaluation: {path} lacks the model's or the baselines' "
                              f"{', '.join(EVAL_KEYS)}")


def _dataset(report: RunReport, info: RunInfo | None, metrics: dict[str, Any]) -> None:
    ds: dict[str, Any] = {}
    if info is not None and info.dataset_path:
        ds["path"] = info.dataset_path
        ds["location"] = info.dataset_location
    stats = info.dataset_stats if info is not None else None
    if stats:
        for key in ("dataset_format", "train_rows", "val_rows", "train_positions",
                    "val_positions"):
            if key in stats:
                ds[key] = stats[key]
    for key in ("train_games", "val_games", "train_targets", "val_targets", "dataset_formats"):
        if key in metrics:
            ds[key] = metrics[key]
    if "dataset_format" not in ds and len(metrics.get("dataset_formats") or {}) == 1:
        ds["dataset_format"] = next(iter(metrics["dataset_formats"]))
    if not stats:
        report.missing.append("no dataset stats: stats.json of the dataset was not recorded")
    report.dataset = ds


def _gpu_and_cost(report: RunReport, info: RunInfo | None, metrics: dict[str, Any]) -> None:
    if "device" in metrics:
        report.gpu["device"] = metrics["device"]
    if info is None:
        report.missing.append(f"no pod facts (GPU type, $/h, running time): no {RUN_INFO}")
        return
    report.gpu.update({"type": info.gpu_type or None, "count": info.gpu_count,
                       "pod_id": info.pod_id})
    usd = info.cost_usd()
    if usd is None:
        report.missing.append("no cost: the pod's $/h or its running time is not known")
        return
    report.cost = {"cost_per_hr": info.cost_per_hr, "running_s": info.running_s, "usd": usd,
                   "then": info.then}


def build_report(run_id: str, run_dir: Path, timing_log: Path | None,
                 plot: Callable[[list[dict[str, Any]], Path], dict[str, list[float]]] | None = None,
                 ) -> RunReport:
    """The report of the run in `run_dir`; draws the plot unless there are no epochs."""
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        raise ReportError(f"{run_dir}: no such run folder, or it is empty")
    report = RunReport(run_id, str(run_dir))
    info = None
    if (run_dir / RUN_INFO).is_file():
        try:
            info = RunInfo.read(run_dir / RUN_INFO)
        except (OSError, ValueError, TypeError) as exc:
            report.missing.append(f"{run_dir / RUN_INFO} is not readable ({exc})")
    _phases(report, timing_records(run_id, run_dir, timing_log, report.missing))
    metrics_path = _first(run_dir, METRICS)
    metrics = _json(metrics_path, report.missing, "metrics") if metrics_path else {}
    if metrics_path is None:
        report.missing.append("no final metrics: none of " + ", ".join(METRICS))
    report.metrics = {k: metrics[k] for k in METRIC_FIELDS if k in metrics}
    _dataset(report, info, metrics)
    _gpu_and_cost(report, info, metrics)
    _epochs(report, run_dir, metrics)
    _evaluation(report, run_dir)
    report.arena = cycle_arena.read_result(run_dir, report.missing)
    if not report.epochs:
        report.missing.append("no loss curves: no epochs")
    else:
        try:
            series = (plot or plot_loss_curves)(report.epochs, run_dir / PLOT)
            w, h = (round(x * FIG_DPI) for x in FIG_INCHES)
            report.plot = {"file": PLOT, "width": w, "height": h, "series": series}
        except ReportError as exc:
            report.missing.append(f"no loss curves: {exc}")
    return report


# -- the plot -------------------------------------------------------------------------------------


def plot_loss_curves(epochs: list[dict[str, Any]], path: Path) -> dict[str, list[float]]:
    """Train and val loss per epoch, the learning rate on a second axis, as a PNG of
    FIG_INCHES x FIG_DPI pixels; returns the series as the figure holds them."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise ReportError("matplotlib is not installed (pip install -e '.[workstation]')"
                          ) from None
    xs = [e["epoch"] for e in epochs]
    fig = Figure(figsize=FIG_INCHES, dpi=FIG_DPI)
    ax = fig.add_subplot()
    ax.plot(xs, [e["train_loss"] for e in epochs], marker="o", label="train loss")
    ax.plot(xs, [e["val_loss"] for e in epochs], marker="o", label="val loss")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("loss")
    lr_ax = ax.twinx()
    lr_ax.plot(xs, [e["lr"] for e in epochs], color="gray", linestyle="--", label="learning rate")
    lr_ax.set_ylabel("learning rate")
    ax.legend(handles=[*ax.get_lines(), *lr_ax.get_lines()], loc="best")
    fig.suptitle("loss per epoch")
    fig.tight_layout()
    lines = {line.get_label(): line for line in [*ax.get_lines(), *lr_ax.get_lines()]}
    series = {"epoch": [float(x) for x in np.asarray(lines["train loss"].get_xdata())]}
    for key, label in (("train_loss", "train loss"), ("val_loss", "val loss"),
                       ("lr", "learning rate")):
        series[key] = [float(y) for y in np.asarray(lines[label].get_ydata())]
    fig.savefig(path, dpi=FIG_DPI, format="png")
    return series


# -- writing --------------------------------------------------------------------------------------


def _num(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "-"


def _pct(value: Any) -> str:
    return f"{value * 100:.1f}%" if isinstance(value, (int, float)) else "-"


def _md_table(rows: list[list[str]], headers: list[str]) -> list[str]:
    return ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers),
            *("| " + " | ".join(r) + " |" for r in rows)]


def render_markdown(r: RunReport) -> str:
    lines = [f"# Run {r.run_id}", ""]
    gpu = r.gpu
    gpu_text = (f"{gpu.get('count') or 1}x {gpu['type']}" if gpu.get("type") else "unknown")
    lines.append(f"- GPU: {gpu_text} (device {gpu.get('device') or '-'}"
                 + (f", pod {gpu['pod_id']})" if gpu.get("pod_id") else ")"))
    ds = r.dataset
    parts = [f"{ds['path']} ({ds.get('location') or 'location unknown'})" if "path" in ds
             else "path unknown"]
    if "dataset_format" in ds:
        parts.append(f"format {ds['dataset_format']}")
    for what, key in (("rows", "rows"), ("games", "games")):
        if f"train_{key}" in ds:
            parts.append(f"{what} {ds[f'train_{key}']} train / {ds.get(f'val_{key}', '-')} val")
    lines.append("- dataset: " + ", ".join(parts))
    if r.throughput:
        lines.append(f"- throughput: {r.throughput['targets_per_s']:,.0f} targets/s "
                     f"({r.throughput['targets']:,.0f} targets in "
                     f"{r.throughput['train_seconds']:.1f} s of training)")
    if r.cost:
        lines.append(f"- cost: ${r.cost['usd']:.4f} (${r.cost['cost_per_hr']:.3f}/h x "
                     f"{r.cost['running_s']:.0f} s)")
    m = r.metrics
    if m:
        lines.append(f"- best epoch {m.get('best_epoch', '-')} of {m.get('epochs_run', '-')}: "
                     f"val loss {_num(m.get('best_val_loss'))}, val top-1 "
                     f"{_pct(m.get('best_val_top1'))}")
    lines += ["", "## Phases", ""]
    lines += _md_table([[p["source"], p["phase"], p["status"], f"{p['seconds']:.1f} s"]
                        for p in r.phases], ["source", "phase", "status", "time"])
    lines += ["", "Total per source: " + ", ".join(
        f"{s} {t:.1f} s" for s, t in r.phase_totals_s.items()), ""]
    lines += ["## Epochs", ""]
    lines += _md_table([[str(e["epoch"]), _num(e["train_loss"]), _num(e["val_loss"]),
                         _pct(e["val_top1"]), f"{e['lr']:.2g}" if e["lr"] else "-",
                         f"{e['targets_per_s']:,.0f}" if e["targets_per_s"] else "-"]
                        for e in r.epochs],
                       ["epoch", "train loss", "val loss", "val top-1", "lr", "targets/s"])
    if r.evaluation:
        lines += ["", "## Final metrics and baselines", ""]
        lines += _md_table([[name, str(v["positions"]), *(_pct(v[k]) for k in EVAL_KEYS)]
                            for name, v in r.evaluation.items()], ["", "positions", *EVAL_KEYS])
    lines += cycle_arena.markdown(r.arena)
    if r.plot:
        lines += ["", "## Loss curves", "", f"![loss curves]({r.plot['file']})"]
    if r.missing:
        lines += ["", "## Missing", "", *(f"- {m}" for m in r.missing)]
    return "\n".join(lines) + "\n"


def write_report(report: RunReport) -> Path:
    """report.json and report.md into the run folder; returns report.md's path."""
    run_dir = Path(report.run_dir)
    atomic_write_json(run_dir / REPORT_JSON, report.to_dict())
    md = run_dir / REPORT_MD
    md.write_text(render_markdown(report), encoding="utf-8")
    return md


def make_report(run_id: str, run_dir: Path, timing_log: Path | None) -> RunReport:
    report = build_report(run_id, run_dir, timing_log)
    write_report(report)
    return report


# -- provision.py report --------------------------------------------------------------------------


def cmd_report(env: Env, args: argparse.Namespace) -> int:
    if not args.run_id.replace("-", "").replace("_", "").isalnum():
        raise CliError(f"RUN_ID {args.run_id!r}: letters, digits, '-' and '_' only", 2)
    paths = load_settings(settings.PathSettings)
    run_dir = args.dir or paths.REPO_DIR / "artifacts" / "cycle" / args.run_id
    try:
        report = make_report(args.run_id, run_dir, paths.timing_log)
    except ReportError as exc:
        raise CliError(f"report {args.run_id}: {exc}", 2) from None
    text = table([[p["source"], p["phase"], p["status"], f"{p['seconds']:.1f} s"]
                  for p in report.phases], ["SOURCE", "PHASE", "STATUS", "TIME"])
    missing = "".join(f"\n  missing: {m}" for m in report.missing)
    emit(env, args.json, report.to_dict(),
         f"{text}\n\nreport of {args.run_id}: {run_dir / REPORT_MD}, {run_dir / REPORT_JSON}"
         + missing)
    return 0


def add_command(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Adds `report` through provision.py's `add(name, help, handler)`."""
    sp = add("report", "write report.md, report.json and the loss curves of a run into its "
             "folder (cycle does it at the end)", cmd_report)
    sp.add_argument("run_id", metavar="RUN_ID")
    sp.add_argument("--dir", type=Path, metavar="DIR",
                    help="the run's folder (default artifacts/cycle/RUN_ID)")
