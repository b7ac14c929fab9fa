"""`provision.py cycle` ends with the run report (host_tools/report.py): run.json, report.json and
report.md in --out, from the cycle's phases, the pod's merged records, its progress events and
the pod's $/h; `provision.py report` later gives the same report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.unit.podjobs_harness import POD_TIMING, Harness, cycle, make_dataset, pod_files

pytestmark = pytest.mark.timeout(60)

EPOCHS = [{"event": "epoch", "ts": 2.0, "epoch": n, "lr": lr, "train_loss": tl, "val_loss": vl,
           "val_top1": 0.1 * n, "train_targets": 1000, "targets_per_s": 500.0 * n,
           "train_seconds": 2.0 / n, "best_epoch": n}
          for n, lr, tl, vl in ((1, 0.001, 3.5, 3.0), (2, 0.0005, 2.5, 2.75))]
PROGRESS = [{"event": "start", "ts": 1.0, "device": "cuda:0", "world_size": 1}, *EPOCHS]


def test_cycle_writes_the_run_report(h: Harness) -> None:
    h.pod.files = [*pod_files(), ("artifacts/progress.jsonl",
                                  "".join(json.dumps(e) + "\n" for e in PROGRESS).encode())]
    dataset = make_dataset(h.tmp / "ds", "train.jsonl", "val.jsonl")
    (dataset / "stats.json").write_text(json.dumps({"dataset_format": "game_jsonl_runtime_"
                                                    "splice_v1", "train_rows": 1, "val_rows": 1}))
    # The harness's fake pod moves the wall clock by 1.5 h while it trains.
    code, cli = cycle(h, "--dataset", str(dataset), "--json")
    assert code == 0, cli.err
    out = h.tmp / "out"
    pod = h.only_pod()
    summary = json.loads(cli.out)
    assert summary["report"] == str(out / "report.md")
    running_s = 5400.0
    assert pod.price == 0.32

    info = json.loads((out / "run.json").read_text())
    assert info == {"run_id": "r1", "pod_id": pod.id, "gpu_type": "NVIDIA RTX A4000",
                    "gpu_count": 1, "cost_per_hr": pod.price, "running_s": running_s,
                    "then": "stop", "dataset_path": str(dataset), "dataset_location":
                    "workstation", "dataset_stats": json.loads((dataset / "stats.json")
                                                               .read_text())}
    got = json.loads((out / "report.json").read_text())
    # The cycle's phases (then_stop included) and the pod's merged record, in log order.
    assert [(p["source"], p["phase"], p["status"]) for p in got["phases"]] == [
        ("host_cycle", "provision", "ok"), ("host_cycle", "wait_ssh", "ok"),
        ("host_cycle", "upload_dataset", "ok"), ("host_cycle", "train", "ok"),
        ("host_cycle", "fetch_artifacts", "ok"), ("runpod_train_preset", "train", "ok"),
        ("host_cycle", "then_stop", "ok")]
    host = {r["phase"]: r["elapsed_ms"] / 1000 for r in summary["phases"]}
    assert [p["seconds"] for p in got["phases"] if p["source"] == "host_cycle"] == \
        list(host.values())
    assert got["phases"][5]["seconds"] == POD_TIMING["elapsed_ms"] / 1000
    assert got["gpu"] == {"device": "cuda:0", "world_size": 1, "type": "NVIDIA RTX A4000",
                          "count": 1, "pod_id": pod.id}
    assert got["cost"] == {"cost_per_hr": pod.price, "running_s": running_s,
                           "usd": 0.48, "then": "stop"}
    assert summary["cost"]["usd"] == got["cost"]["usd"]
    assert [e["val_loss"] for e in got["epochs"]] == [3.0, 2.75]
    assert got["throughput"] == {"targets": 2000, "train_seconds": 3.0,
                                 "targets_per_s": 2000 / 3.0, "last_epoch_targets_per_s": 1000.0}
    assert got["dataset"]["path"] == str(dataset) and got["dataset"]["train_rows"] == 1
    # The loss curves: drawn where matplotlib is installed, else named as missing.
    no_mpl = "no loss curves: matplotlib is not installed (pip install -e '.[workstation]')"
    assert (no_mpl in got["missing"]) != (out / "loss_curves.png").is_file()
    md = (out / "report.md").read_text()
    assert md.startswith("# Run r1\n\n- GPU: 1x NVIDIA RTX A4000 (device cuda:0, pod ")
    assert "\n- cost: $0.4800 ($0.320/h x 5400 s)\n" in md
    assert "| runpod_train_preset | train | ok | 4.3 s |" in md

    # `provision.py report` later, from the same folder and timing log, says the same.
    first = (out / "report.json").read_text()
    code, again = h.run("report", "r1", "--dir", str(out))
    assert code == 0, again.err
    assert (out / "report.json").read_text() == first
    h.assert_no_canary()


def test_a_report_that_cannot_be_written_does_not_fail_the_cycle(
        h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object) -> Path:
        raise OSError("disk full")

    monkeypatch.setattr("host_tools.podjobs.write_report", refuse)
    code, cli = cycle(h)
    assert code == 0, cli.err
    out = h.tmp / "out"
    assert (f"warning: no run report: disk full; `provision.py report r1 --dir {out}` tries "
            "again") in cli.err.splitlines()
    assert cli.out.splitlines()[-2].endswith("; report (none)")
    assert h.only_pod().status == "EXITED"
