"""The run report (host_tools/report.py, `provision.py report`): built from a run folder holding
real trainer output (progress events, metrics.json), a real evaluation (evaluate --json-out),
phase-timing records and the pod facts cycle records; report.json's values, report.md's lines and
the loss-curve PNG."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import struct
import sys
from pathlib import Path
from typing import Any

import pytest

from appliance.training import evaluate
from host_tools.provision import main
from host_tools.report import FIG_DPI, FIG_INCHES, RunInfo, build_report
from tests.utils.datasets import make_dataset
from tests.utils.localpod import make_cli_env
from tests.utils.training import run_trainer, trainer_args

pytestmark = pytest.mark.timeout(120)

HOST = [("provision", 2500), ("wait_ssh", 41000), ("upload_dataset", 800), ("train", 95000),
        ("fetch_artifacts", 1200), ("then_stop", 300)]
POD = [("resolve_dataset_paths", 12), ("train_baseline", 90000), ("evaluate", 3500)]
INFO = RunInfo("r1", "pod123", "NVIDIA RTX A4000", 1, 0.25, 7200.0, "stop", "/data/ds",
               "workstation", {"dataset_format": "game_jsonl_runtime_splice_v1",
                               "train_rows": 24, "val_rows": 8})


def _rec(source: str, phase: str, ms: int, run_id: str = "r1") -> dict[str, Any]:
    return {"ts_epoch_ms": 1, "source": source, "run_id": run_id, "phase": phase,
            "status": "ok", "elapsed_ms": ms}


def _lines(records: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder as cycle leaves it: artifacts/ from the real tiny trainer (3 epochs, progress
    events) and the evaluation's JSON."""
    root = tmp_path_factory.mktemp("trained")
    ds = make_dataset(root / "ds")
    art = root / "run" / "artifacts"
    run_trainer(trainer_args(ds, art, "--epochs", "3", "--lr", "0.05", "--lr-patience", "0",
                             "--progress-jsonl-out", str(art / "progress.jsonl")))
    with contextlib.redirect_stdout(io.StringIO()):
        assert evaluate.main(["--model", str(art / "model_best.pt"), "--data",
                              str(ds / "val.jsonl"), "--train-data", str(ds / "train.jsonl"),
                              "--json", "--json-out", str(art / "evaluation.json")]) == 0
    return root / "run"


@pytest.fixture
def run(trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the trained run with the timing records and run.json; the timing log holds the
    host's and (merged) the pod's records of r1, and one record of another run."""
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    log = tmp_path / "timings" / "phases.jsonl"
    log.parent.mkdir()
    host = [_rec("host_cycle", p, ms) for p, ms in HOST]
    pod = [_rec("runpod_train_preset", p, ms) for p, ms in POD]
    log.write_text(_lines([*host[:5], _rec("host_cycle", "train", 5, "other"), *pod, host[5]]))
    (run_dir / "timings.jsonl").write_text(_lines(pod))  # already merged: counted once
    INFO.write(run_dir)
    monkeypatch.setenv("RUNPOD_PHASE_TIMING_LOG", str(log))
    monkeypatch.setenv("REPO_DIR", str(tmp_path / "repo"))
    return run_dir


def _events(run_dir: Path, kind: str) -> list[dict[str, Any]]:
    events = [json.loads(line) for line in
              (run_dir / "artifacts" / "progress.jsonl").read_text().splitlines()]
    return [e for e in events if e["event"] == kind]


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert (length, kind) == (13, b"IHDR")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_report_from_a_run_folder(run: Path) -> None:
    pytest.importorskip("matplotlib")
    cli = make_cli_env()
    assert main(["report", "r1", "--dir", str(run)], cli.env) == 0, cli.err
    got = json.loads((run / "report.json").read_text())
    epochs = _events(run, "epoch")
    metrics = json.loads((run / "artifacts" / "metrics.json").read_text())
    ev = json.loads((run / "artifacts" / "evaluation.json").read_text())

    assert got["run_id"] == "r1" and got["run_dir"] == str(run)
    assert got["phases"] == [
        *({"source": "host_cycle", "phase": p, "status": "ok", "seconds": ms / 1000}
          for p, ms in HOST[:5]),
        *({"source": "runpod_train_preset", "phase": p, "status": "ok", "seconds": ms / 1000}
          for p, ms in POD),
        {"source": "host_cycle", "phase": "then_stop", "status": "ok", "seconds": 0.3}]
    assert got["phase_totals_s"] == {"host_cycle": 140.8, "runpod_train_preset": 93.512}
    assert got["dataset"] == {
        "path": "/data/ds", "location": "workstation",
        "dataset_format": "game_jsonl_runtime_splice_v1", "train_rows": 24, "val_rows": 8,
        "train_games": 24, "val_games": 8, "train_targets": metrics["train_targets"],
        "val_targets": metrics["val_targets"],
        "dataset_formats": {"game_jsonl_runtime_splice_v1": 32}}
    assert got["gpu"] == {"device": "cpu", "world_size": 1, "type": "NVIDIA RTX A4000",
                          "count": 1, "pod_id": "pod123"}
    assert len(epochs) == 3
    assert got["epochs"] == [
        {k: e[k] for k in ("epoch", "train_loss", "val_loss", "val_top1", "lr", "targets_per_s",
                           "train_targets", "train_seconds")} for e in epochs]
    targets = sum(e["train_targets"] for e in epochs)
    seconds = sum(e["train_seconds"] for e in epochs)
    assert got["throughput"] == {"targets": targets, "train_seconds": seconds,
                                 "targets_per_s": targets / seconds,
                                 "last_epoch_targets_per_s": epochs[-1]["targets_per_s"]}
    assert got["metrics"] == {k: metrics[k] for k in (
        "best_epoch", "best_val_loss", "best_val_top1", "epochs_run", "stopped_early",
        "elapsed_s", "parameters", "features", "device", "world_size")}
    keys = ("top1", "top5", "legal_top1", "best_legal_top1", "positions")
    assert got["evaluation"] == {
        "model": {k: ev[k] for k in keys},
        "random_legal": {k: ev["baselines"]["random_legal"][k] for k in keys},
        "frequent_prefix": {k: ev["baselines"]["frequent_prefix"][k] for k in keys}}
    assert got["cost"] == {"cost_per_hr": 0.25, "running_s": 7200.0, "usd": 0.5, "then": "stop"}
    assert got["missing"] == []

    # The PNG: a valid image of the figure's size, drawn from exactly the epoch events.
    w, h = round(FIG_INCHES[0] * FIG_DPI), round(FIG_INCHES[1] * FIG_DPI)
    assert _png_size(run / "loss_curves.png") == (w, h) == (800, 450)
    assert got["plot"] == {"file": "loss_curves.png", "width": 800, "height": 450, "series": {
        "epoch": [1.0, 2.0, 3.0], "train_loss": [e["train_loss"] for e in epochs],
        "val_loss": [e["val_loss"] for e in epochs], "lr": [e["lr"] for e in epochs]}}
    assert got["plot"]["series"]["lr"] == [0.05, 0.025, 0.0125]  # the schedule halved it

    md = (run / "report.md").read_text().splitlines()
    assert md[0] == "# Run r1"
    assert "- GPU: 1x NVIDIA RTX A4000 (device cpu, pod pod123)" in md
    assert ("- dataset: /data/ds (workstation), format game_jsonl_runtime_splice_v1, rows 24 "
            "train / 8 val, games 24 train / 8 val") in md
    assert "- cost: $0.5000 ($0.250/h x 7200 s)" in md
    assert f"- throughput: {targets / seconds:,.0f} targets/s ({targets:,.0f} targets in " \
           f"{seconds:.1f} s of training)" in md
    assert "| host_cycle | wait_ssh | ok | 41.0 s |" in md
    assert "| runpod_train_preset | train_baseline | ok | 90.0 s |" in md
    assert "Total per source: host_cycle 140.8 s, runpod_train_preset 93.5 s" in md
    e1 = epochs[0]
    assert (f"| 1 | {e1['train_loss']:.4f} | {e1['val_loss']:.4f} | {e1['val_top1'] * 100:.1f}% "
            f"| {e1['lr']:.2g} | {e1['targets_per_s']:,.0f} |") in md
    assert (f"| random_legal | {ev['positions']} | "
            f"{ev['baselines']['random_legal']['top1'] * 100:.1f}%") in "\n".join(md)
    assert "![loss curves](loss_curves.png)" in md
    assert "## Missing" not in md
    assert cli.out.splitlines()[-1] == (f"report of r1: {run / 'report.md'}, "
                                        f"{run / 'report.json'}")


def test_missing_pieces_are_named_not_fatal(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("progress.jsonl", "evaluation.json"):
        (run / "artifacts" / name).unlink()
    (run / "run.json").unlink()
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    report = build_report("r1", run, None)
    metrics = json.loads((run / "artifacts" / "metrics.json").read_text())
    # Epochs fall back to metrics.json's history; the pod's own records still give phases.
    assert [e["val_loss"] for e in report.epochs] == [h["val_loss"] for h in metrics["history"]]
    assert [p["phase"] for p in report.phases] == [p for p, _ in POD]
    assert report.cost == {} and report.evaluation == {} and report.plot == {}
    assert report.missing == [
        "no dataset stats: stats.json of the dataset was not recorded",
        "no pod facts (GPU type, $/h, running time): no run.json",
        "no progress events: none of artifacts/progress.jsonl, progress.jsonl in the run folder "
        "(the trainer's --progress-jsonl-out)",
        "epochs taken from metrics.json's history",
        "no evaluation: none of artifacts/evaluation.json, evaluation.json in the run folder "
        "(the preset's `evaluate --json-out`)",
        "no loss curves: matplotlib is not installed (pip install -e '.[workstation]')"]
    assert not (run / "loss_curves.png").exists()


def test_a_folder_with_almost_nothing_still_reports(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "timings.jsonl").write_text("not json\n" + json.dumps(_rec("x", "p", 5)) + "\n")
    (run_dir / "run.json").write_text(json.dumps({"run_id": "r1", "cost_per_hr": 0.5}))
    report = build_report("r1", run_dir, tmp_path / "absent.jsonl")
    (run_dir / "run.json").write_text("[1]")
    assert build_report("r1", run_dir, None).missing[0] == (
        f"{run_dir / 'run.json'} is not readable (not a JSON object)")
    assert report.phases == [{"source": "x", "phase": "p", "status": "ok", "seconds": 0.005}]
    assert report.missing == [
        f"1 line(s) of {run_dir / 'timings.jsonl'} are not JSON records; left out",
        "no final metrics: none of artifacts/metrics.json, metrics.json",
        "no dataset stats: stats.json of the dataset was not recorded",
        "no cost: the pod's $/h or its running time is not known",
        "no progress events: none of artifacts/progress.jsonl, progress.jsonl in the run folder "
        "(the trainer's --progress-jsonl-out)",
        "no throughput: no epoch with train_targets and train_seconds",
        "no evaluation: none of artifacts/evaluation.json, evaluation.json in the run folder "
        "(the preset's `evaluate --json-out`)",
        "no loss curves: no epochs"]


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_report_on_a_missing_or_empty_folder_exits_2(tmp_path: Path, make: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPO_DIR", str(tmp_path / "repo"))
    folder = tmp_path / "run"
    if make == "empty":
        folder.mkdir()
    cli = make_cli_env()
    assert main(["report", "r1", "--dir", str(folder)], cli.env) == 2
    assert cli.err == f"error: report r1: {folder}: no such run folder, or it is empty\n"
    assert not folder.exists() or list(folder.iterdir()) == []


def test_report_default_folder_and_bad_run_id(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPO_DIR", str(tmp_path / "repo"))
    cli = make_cli_env()
    assert main(["report", "r9"], cli.env) == 2
    folder = tmp_path / "repo" / "artifacts" / "cycle" / "r9"
    assert cli.err == f"error: report r9: {folder}: no such run folder, or it is empty\n"
    cli = make_cli_env()
    assert main(["report", "../etc"], cli.env) == 2
    assert cli.err == "error: RUN_ID '../etc': letters, digits, '-' and '_' only\n"


def test_matplotlib_is_a_workstation_extra_not_a_pod_dependency() -> None:
    import tomllib

    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.startswith("matplotlib")]
    assert project["optional-dependencies"]["workstation"] == ["matplotlib>=3.8"]
    assert "chessbot-pod-appliance[workstation]" in project["optional-dependencies"]["dev"]
