"""`provision.py cycle` (host_tools/podjobs.py) against localpod: phases and the timing log,
cleanup on each kind of failure, bad input before anything bills, and unsafe tars from the pod.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from host_tools.emulators.localpod import Fault
from host_tools.podjobs import PRESET
from tests.unit.podjobs_harness import (
    GPU,
    POD_STATUS,
    POD_TIMING,
    THEN_TEXT,
    Harness,
    cycle,
    make_dataset,
    pod_files,
    ssh_prefix,
    table_rows,
)
from tests.utils.localpod import CANARY

pytestmark = pytest.mark.timeout(60)


# -- cycle: success -------------------------------------------------------------------------------


@pytest.mark.parametrize("then", ["stop", "terminate", "keep"])
def test_cycle_trains_fetches_and_then(h: Harness, then: str) -> None:
    dataset = make_dataset(h.tmp / "ds", "train.jsonl", "val.jsonl")
    out = h.tmp / "out"
    code, cli = cycle(h, "--dataset", str(dataset), "--train-env", "TRAIN_EPOCHS=5",
                      "--train-env", "TRAIN_EXTRA_ARGS=--embed-dim 32", "--then", then)
    assert code == 0, cli.err
    pod = h.only_pod()
    assert pod.status == POD_STATUS[then]
    assert pod.name == "chessbot-r1"
    remote = "/workspace/cycle/r1"

    # What ran in the pod, in order, each through batch-mode ssh pinned to the pod's host key.
    assert h.pod.commands == [
        f"mkdir -p {remote}/dataset && tar -xf - -C {remote}/dataset",
        f"mkdir -p {remote} && cd {remote} && env RUN_ID=r1 TRAIN_DATASET_DIR={remote}/dataset "
        f"TRAIN_OUTPUT_DIR={remote}/artifacts RUNPOD_PHASE_TIMING_LOG={remote}/timings.jsonl "
        f"TRAIN_PROGRESS_JSONL_OUT={remote}/artifacts/progress.jsonl TRAIN_EPOCHS=5 "
        f"TRAIN_EXTRA_ARGS='--embed-dim 32' {PRESET}",
        f"cd {remote} && tar -cf - artifacts $(test -f timings.jsonl && echo timings.jsonl)",
    ]
    for argv, _, _ in h.pod.calls:
        assert argv[:-1] == ssh_prefix(h, pod.id)
    assert h.pod.uploaded == {"train.jsonl": (dataset / "train.jsonl").read_bytes(),
                              "val.jsonl": (dataset / "val.jsonl").read_bytes()}

    # The artifacts are in --out.
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "artifacts/metrics.json", "artifacts/model_best.pt", "report.json", "report.md",
        "run.json", "timings.jsonl"]
    assert (out / "artifacts" / "model_best.pt").read_bytes() == b"weights"

    # One timing log: the host's phases in order, and the pod's preset phases merged in.
    records = h.records()
    assert [(r["source"], r["phase"], r["status"]) for r in records] == [
        ("host_cycle", "provision", "ok"), ("host_cycle", "wait_ssh", "ok"),
        ("host_cycle", "upload_dataset", "ok"), ("host_cycle", "train", "ok"),
        ("host_cycle", "fetch_artifacts", "ok"), ("runpod_train_preset", "train", "ok"),
        ("host_cycle", f"then_{then}", "ok")]
    assert {r["run_id"] for r in records} == {"r1"}
    assert records[5] == POD_TIMING
    assert all(isinstance(r["elapsed_ms"], int) and r["elapsed_ms"] >= 0 for r in records)

    # The text summary.
    text = THEN_TEXT[then].format(id=pod.id)
    assert cli.out.splitlines()[-2:] == [
        f"cycle r1: pod {pod.id} {text}; artifacts in {out} (3 files); timings in {h.log}; "
        f"report {out / 'report.md'}",
        f"cost: $0.48 (1.50 h at $0.32/h, from create to {then}"
        + ("; it is still billing)" if then == "keep" else ")")]
    # The pod carries the run id (`provision.py pods --all` shows it).
    assert pod.env["RUN_ID"] == "r1"
    rows = table_rows(cli.out, "PHASE")
    assert [r[:2] for r in rows] == [["provision", "ok"], ["wait_ssh", "ok"],
                                     ["upload_dataset", "ok"], ["train", "ok"],
                                     ["fetch_artifacts", "ok"], [f"then_{then}", "ok"]]
    assert all(re.fullmatch(r"\d+\.\d s", r[2]) for r in rows)
    assert f"train: {PRESET} in pod {pod.id}" in cli.err
    assert f"upload_dataset: {dataset}" in cli.err
    assert f"fetch_artifacts: {out}" in cli.err
    assert re.search(rf"\n  \d+\.\d MB to {pod.id}:/workspace/cycle/r1/dataset\n", cli.err)
    assert re.search(rf"\n  \d+\.\d MB from {pod.id}:/workspace/cycle/r1\n", cli.err)
    expected_events = {"stop": [("start", pod.id), ("stop", pod.id)],
                       "terminate": [("start", pod.id), ("remove", pod.id)],
                       "keep": [("start", pod.id)]}[then]
    assert h.backend.events == expected_events
    h.assert_no_canary()


def test_cycle_json_summary_and_sample_dataset(h: Harness) -> None:
    code, cli = cycle(h, "--json", "--then", "terminate")
    assert code == 0, cli.err
    pod = h.only_pod()
    summary = json.loads(cli.out)
    host = [r for r in h.records() if r["source"] == "host_cycle"]
    assert summary == {"run_id": "r1", "pod": pod.id, "then": "terminate",
                       "out": str(h.tmp / "out"),
                       "files": ["artifacts/metrics.json", "artifacts/model_best.pt",
                                 "timings.jsonl"],
                       "phases": host, "timing_log": str(h.log),
                       "report": str(h.tmp / "out" / "report.md"),
                       "cost": {"usd": 0.48, "hours": 1.5, "costPerHr": 0.32}}
    # Without --dataset: no upload, the image's sample data.
    assert [p["phase"] for p in summary["phases"]] == [
        "provision", "wait_ssh", "train", "fetch_artifacts", "then_terminate"]
    assert len(h.pod.calls) == 2
    assert "TRAIN_DATASET_DIR=/opt/chessbot/data/sample " in h.pod.commands[0]
    h.assert_no_canary()


def test_cycle_defaults_run_id_out_and_remote_root(h: Harness) -> None:
    code, cli = h.run("cycle", *GPU, "--json", "--poll-interval", "0.5", "--remote-root",
                      "/workspace/runs/", "--pod-repo-dir", "/srv/chessbot", "--then", "keep")
    assert code == 0, cli.err
    summary = json.loads(cli.out)
    run_id = summary["run_id"]
    assert re.fullmatch(r"cycle-\d{8}T\d{6}Z", run_id)
    assert summary["out"] == str(h.tmp / "repo" / "artifacts" / "cycle" / run_id)
    assert (Path(summary["out"]) / "artifacts" / "model_best.pt").is_file()
    assert h.only_pod().name == f"chessbot-{run_id}"
    assert h.pod.commands[0] == (
        f"mkdir -p /workspace/runs/{run_id} && cd /workspace/runs/{run_id} && env "
        f"RUN_ID={run_id} TRAIN_DATASET_DIR=/srv/chessbot/data/sample "
        f"TRAIN_OUTPUT_DIR=/workspace/runs/{run_id}/artifacts "
        f"RUNPOD_PHASE_TIMING_LOG=/workspace/runs/{run_id}/timings.jsonl "
        f"TRAIN_PROGRESS_JSONL_OUT=/workspace/runs/{run_id}/artifacts/progress.jsonl {PRESET}")
    assert {r["run_id"] for r in h.records() if r["source"] == "host_cycle"} == {run_id}


def test_cycle_out_may_exist_when_empty(h: Harness) -> None:
    out = h.tmp / "empty"
    out.mkdir()
    code, cli = cycle(h, out=out)
    assert code == 0, cli.err
    assert (out / "artifacts" / "metrics.json").read_bytes() == b'{"val_loss": 1.5}'


def test_cycle_without_pod_timings_still_succeeds(h: Harness) -> None:
    h.pod.files = [("artifacts/model_best.pt", b"w")]
    code, cli = cycle(h)
    assert code == 0, cli.err
    assert [r["source"] for r in h.records()] == ["host_cycle"] * 5
    assert cli.out.splitlines()[-2].endswith(f"artifacts in {h.tmp / 'out'} (1 files); "
                                             f"timings in {h.log}; report "
                                             f"{h.tmp / 'out' / 'report.md'}")


# -- cycle: failures and cleanup ------------------------------------------------------------------


def test_cycle_training_failure_only_stops_the_pod(h: Harness) -> None:
    h.pod.train_code = 3
    out = h.tmp / "out"
    # Even with --then terminate: the volume may hold artifacts that were not copied back.
    code, cli = cycle(h, "--then", "terminate")
    pod = h.only_pod()
    assert code == 1
    assert cli.err.splitlines()[-1] == (
        f"error: the training preset in pod {pod.id} failed (exit 3); its output is above, its "
        "files under /workspace/cycle/r1")
    assert pod.status == "EXITED"
    assert h.phases() == [("provision", "ok"), ("wait_ssh", "ok"), ("train", "error"),
                          ("cleanup_stop", "ok")]
    assert ("cleanup_stop: only stopped: /workspace/cycle/... on its volume may hold artifacts "
            "not copied back") in cli.err
    assert (f"cleanup: pod {pod.id} stopped, /workspace kept (`provision.py start {pod.id}` "
            f"resumes, `provision.py terminate {pod.id}` deletes it)") in cli.err
    assert cli.out == ""
    assert not out.exists()
    assert len(h.pod.calls) == 1  # nothing fetched
    h.assert_no_canary()


@pytest.mark.parametrize("then", ["terminate", "keep"])
def test_cycle_upload_failure_terminates_the_pod(h: Harness, then: str) -> None:
    dataset = make_dataset(h.tmp / "ds", "train.jsonl", "val.jsonl")
    h.pod.upload_code = 2
    code, cli = cycle(h, "--dataset", str(dataset), "--then", then)
    pod = h.only_pod()
    assert code == 1
    assert cli.err.splitlines()[-1] == f"error: uploading {dataset} to the pod failed"
    assert pod.status == "TERMINATED"
    assert h.phases() == [("provision", "ok"), ("wait_ssh", "ok"), ("upload_dataset", "error"),
                          ("cleanup_terminate", "ok")]
    assert f"cleanup: pod {pod.id} terminated, nothing left billing" in cli.err
    assert len(h.pod.calls) == 1  # no training after a failed upload
    h.assert_no_canary()


def test_cycle_upload_failure_with_default_then_terminates_the_pod(h: Harness) -> None:
    dataset = make_dataset(h.tmp / "ds", "train.jsonl", "val.jsonl")
    h.pod.upload_code = 2
    code, cli = cycle(h, "--dataset", str(dataset))
    assert code == 1
    assert h.phases()[-1] == ("cleanup_terminate", "ok")
    assert h.only_pod().status == "TERMINATED"


def test_cycle_fetch_failure_stops_the_pod(h: Harness) -> None:
    h.pod.fetch_code = 2
    code, cli = cycle(h, "--then", "terminate")
    pod = h.only_pod()
    assert code == 1
    assert cli.err.splitlines()[-1] == (
        f"error: copying /workspace/cycle/r1/artifacts from pod {pod.id} failed")
    assert pod.status == "EXITED"
    assert h.phases()[-2:] == [("fetch_artifacts", "error"), ("cleanup_stop", "ok")]


def test_cycle_keep_on_failure_leaves_the_pod_running(h: Harness) -> None:
    h.pod.train_code = 3
    code, cli = cycle(h, "--keep-on-failure")
    pod = h.only_pod()
    assert code == 1
    assert pod.status == "RUNNING"
    assert h.phases() == [("provision", "ok"), ("wait_ssh", "ok"), ("train", "error"),
                          ("keep_on_failure", "ok")]
    assert h.records()[-1]["elapsed_ms"] == 0
    assert (f"--keep-on-failure: pod {pod.id} is still there and billing:\n"
            f"pod {pod.id} (chessbot-r1): RUNNING") in cli.err
    assert "cleanup" not in cli.err
    assert h.backend.events == [("start", pod.id)]


def test_cycle_wait_timeout_terminates_the_pod(h: Harness) -> None:
    del h.backend.port_map[22]  # nothing greets on the pod's SSH port
    code, cli = cycle(h, "--then", "keep", "--wait-timeout", "2", "--poll-interval", "1")
    pod = h.only_pod()
    assert code == 1
    assert pod.status == "TERMINATED"
    assert h.phases() == [("provision", "ok"), ("wait_ssh", "error"),
                          ("cleanup_terminate", "ok")]
    assert f"cleanup: pod {pod.id} terminated, nothing left billing" in cli.err
    # The cleanup has terminated it: the error does not say it is still billing.
    assert cli.err.splitlines()[-1] == (
        f"error: pod {pod.id} was not ready after 2 s (RUNNING, waiting for sshd)")
    assert h.pod.calls == []
    h.assert_no_canary()


def test_cycle_interrupt_cleans_up_and_exits_130(h: Harness) -> None:
    h.pod.train_raises = KeyboardInterrupt()
    code, cli = cycle(h, "--then", "terminate")
    assert code == 130
    assert cli.err.splitlines()[-1] == "error: interrupted"
    assert h.only_pod().status == "EXITED"
    assert h.phases()[-2:] == [("train", "error"), ("cleanup_stop", "ok")]


def test_cycle_cleanup_failure_keeps_the_original_error(h: Harness) -> None:
    h.pod.train_code = 3
    h.server.account.faults.append(Fault(r"^POST /v2/pods/[a-z0-9]+/action$", status=400,
                                         message="stop refused"))
    code, cli = cycle(h)
    pod = h.only_pod()
    assert code == 1
    assert cli.err.splitlines()[-1].startswith(
        f"error: the training preset in pod {pod.id} failed (exit 3)")
    cleanup = [line for line in cli.err.splitlines() if line.startswith("cleanup failed: ")]
    assert len(cleanup) == 1
    assert "stop refused" in cleanup[0]
    assert cleanup[0].endswith(f"; pod {pod.id} may still bill: `provision.py stop {pod.id}`")
    assert pod.status == "RUNNING"
    assert h.phases()[-1] == ("cleanup_stop", "error")


# -- cycle: only its own pod, never one that merely shares its name -------------------------------


def same_name_pod(h: Harness) -> str:
    """A pod named like the cycle's, created earlier by another command."""
    code, cli = h.run("provision", "--json", *GPU, "--name", "chessbot-r1")
    assert code == 0, cli.err
    return str(json.loads(cli.out)["id"])


@pytest.mark.parametrize("mode", ["adopt", "remove"])
def test_cycle_failed_create_leaves_a_same_name_pod_alone(h: Harness, mode: str) -> None:
    other = same_name_pod(h)
    h.server.account.faults.append(Fault(r"^POST /v2/pods$", status=500))
    code, cli = cycle(h, "--half-created", mode)
    assert code == 1
    assert cli.err.splitlines()[-2:] == [
        f"pod {other} is also named 'chessbot-r1', but it does not carry this request's "
        "marker: left alone",
        "error: create pod 'chessbot-r1': Something went wrong. Please try again later or "
        "contact support. (HTTP 500); RunPod failed on its side; try again later; no pod "
        "carries this request's marker, so nothing it created bills; no other pod was touched"]
    assert h.phases() == [("provision", "error")]
    assert h.only_pod().id == other and h.only_pod().status == "RUNNING"
    assert h.backend.events == [("start", other)]
    assert h.pod.calls == []
    h.assert_no_canary()


@pytest.mark.parametrize(("failure", "cleanup"), [("upload", "terminate"), ("train", "stop")])
def test_cycle_cleanup_acts_only_on_its_own_pod(h: Harness, failure: str, cleanup: str) -> None:
    other = same_name_pod(h)
    h.server.account.faults.append(Fault(r"^CREATE ", kind="create_then_500"))
    extra: list[str] = []
    if failure == "upload":
        h.pod.upload_code = 2
        extra = ["--dataset", str(make_dataset(h.tmp / "ds", "train.jsonl", "val.jsonl"))]
    else:
        h.pod.train_code = 3
    code, cli = cycle(h, *extra)
    assert code == 1
    ours = next(p for p in h.server.account.pods.values() if p.id != other)
    assert (f"pod {ours.id} was created despite the error (it carries this request's marker); "
            "continuing with it") in cli.err
    assert h.phases()[-1] == (f"cleanup_{cleanup}", "ok")
    assert {p.id: p.status for p in h.server.account.pods.values()} == {
        other: "RUNNING", ours.id: POD_STATUS[cleanup]}
    assert h.backend.events == [("start", other), ("start", ours.id),
                                ("remove" if cleanup == "terminate" else "stop", ours.id)]
    assert all(argv[:-1] == ssh_prefix(h, ours.id) for argv, _, _ in h.pod.calls)
    h.assert_no_canary()


# -- cycle: bad input -----------------------------------------------------------------------------


def test_cycle_refuses_a_non_empty_out_before_anything_bills(h: Harness) -> None:
    out = h.tmp / "out"
    out.mkdir()
    (out / "old.pt").write_bytes(b"old")
    code, cli = cycle(h, out=out)
    assert (code, cli.out, cli.err) == (
        2, "", f"error: --out {out} is not empty; choose another --out or --run-id\n")
    assert h.server.account.pods == {}
    assert h.server.account.requests == []
    assert not h.log.exists()
    assert (out / "old.pt").read_bytes() == b"old"


@pytest.mark.parametrize(("extra", "message"), [
    (["--run-id", "a/b"], "error: --run-id 'a/b': letters, digits, '-' and '_' only\n"),
    (["--run-id", ".."], "error: --run-id '..': letters, digits, '-' and '_' only\n"),
    (["--run-id", "x y"], "error: --run-id 'x y': letters, digits, '-' and '_' only\n"),
    (["--train-env", "HF_TOKEN=x"],
     "error: --train-env HF_TOKEN: secrets would show on the pod's command line; give them to "
     "the pod with --env or --env-file instead\n"),
    (["--train-env", f"RUNPOD_API_KEY={CANARY}"],
     "error: --train-env RUNPOD_API_KEY: secrets would show on the pod's command line; give "
     "them to the pod with --env or --env-file instead\n"),
    (["--train-env", "WANDB_PASSWORD=x"],
     "error: --train-env WANDB_PASSWORD: secrets would show on the pod's command line; give "
     "them to the pod with --env or --env-file instead\n"),
    (["--train-env", "TRAIN_OUTPUT_DIR=/tmp/x"],
     "error: --train-env TRAIN_OUTPUT_DIR: cycle sets it (use --run-id or --dataset)\n"),
    (["--train-env", "RUN_ID=x"],
     "error: --train-env RUN_ID: cycle sets it (use --run-id or --dataset)\n"),
    (["--env", "RUN_ID=x"], "error: --env RUN_ID: cycle sets it\n"),
    (["--max-hours", "2", "--env", "AUTOSTOP_MAX_HOURS=1"],
     "error: --env AUTOSTOP_MAX_HOURS: --max-hours sets it\n"),
])
def test_cycle_bad_input_is_a_usage_error(h: Harness, extra: list[str], message: str) -> None:
    code, cli = h.run("cycle", *GPU, "--out", str(h.tmp / "out"), *extra)
    assert (code, cli.out, cli.err) == (2, "", message)
    assert h.server.account.pods == {}
    assert not (h.tmp / "out").exists()
    h.assert_no_canary()


@pytest.mark.parametrize("names", [("train.jsonl",), ("val.jsonl",), ()])
def test_cycle_dataset_needs_both_splits(h: Harness, names: tuple[str, ...]) -> None:
    dataset = make_dataset(h.tmp / "ds", *names)
    code, cli = cycle(h, "--dataset", str(dataset))
    assert (code, cli.err) == (2, f"error: --dataset {dataset}: needs train.jsonl and "
                                  "val.jsonl\n")
    assert h.server.account.pods == {}


def test_cycle_missing_dataset_dir(h: Harness) -> None:
    code, cli = cycle(h, "--dataset", str(h.tmp / "nope"))
    assert (code, cli.err) == (2, f"error: --dataset {h.tmp / 'nope'}: needs train.jsonl and "
                                  "val.jsonl\n")


def test_cycle_bad_known_hosts_fails_before_anything_bills(
        h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNPOD_SSH_KNOWN_HOSTS_FILE", "/dev/null")
    code, cli = cycle(h)
    assert code == 2
    assert cli.err.startswith("error: bad environment: RUNPOD_SSH_KNOWN_HOSTS_FILE='/dev/null'")
    assert h.server.account.pods == {}


def test_cycle_without_image_or_template(h: Harness) -> None:
    code, cli = h.run("cycle", "--gpu-type-id", "NVIDIA RTX A4000", "--out",
                      str(h.tmp / "out"), "--run-id", "r1")
    assert (code, cli.err.splitlines()[-1]) == (
        2, "error: give --template-id, --template-name or --image")
    assert h.server.account.pods == {}
    assert h.phases() == [("provision", "error")]


def test_cycle_bad_train_env_names_its_flag(h: Harness) -> None:
    code, cli = cycle(h, "--train-env", "NOEQ")
    assert code == 2
    assert cli.err == ("error: --train-env: 'NOEQ' is not KEY=VALUE with a variable name of "
                       "letters, digits and _\n")


# -- cycle: what comes back from the pod is not trusted ------------------------------------------


def test_cycle_tar_escaping_out_is_refused(h: Harness) -> None:
    out = h.tmp / "out"
    h.pod.files = [*pod_files(), ("../evil", b"x")]
    code, cli = cycle(h, "--then", "terminate")
    pod = h.only_pod()
    assert code == 1
    target = os.path.realpath(h.tmp / "evil")
    assert cli.err.splitlines()[-1] == (
        f"error: the artifacts from pod {pod.id} could not be unpacked into {out}: '../evil' "
        f"would be extracted to '{target}', which is outside the destination")
    assert not (h.tmp / "evil").exists()
    # The artifacts were not saved, so the pod is only stopped.
    assert pod.status == "EXITED"
    assert h.phases()[-2:] == [("fetch_artifacts", "error"), ("cleanup_stop", "ok")]


@pytest.mark.parametrize("absolute", [True, False])
def test_cycle_tar_link_out_of_out_is_refused(h: Harness, absolute: bool) -> None:
    out = h.tmp / "out"
    secret = h.tmp / "secret.txt"
    secret.write_text("private")
    h.pod.links = [("artifacts/link", str(secret) if absolute else "../../secret.txt")]
    code, cli = cycle(h)
    pod = h.only_pod()
    assert code == 1
    why = ("is a link to an absolute path" if absolute else
           f"would link to '{os.path.realpath(secret)}', which is outside the destination")
    assert cli.err.splitlines()[-1] == (
        f"error: the artifacts from pod {pod.id} could not be unpacked into {out}: "
        f"'artifacts/link' {why}")
    assert not (out / "artifacts" / "link").is_symlink()
    assert pod.status == "EXITED"


def test_cycle_tar_absolute_member_is_refused_before_anything_is_written(h: Harness) -> None:
    out = h.tmp / "out"
    absolute = h.tmp / "abs_evil"
    h.pod.files = [*pod_files(), (str(absolute), b"x")]
    code, cli = cycle(h)
    pod = h.only_pod()
    assert code == 1
    assert cli.err.splitlines()[-1] == (
        f"error: the artifacts from pod {pod.id} could not be unpacked into {out}: "
        f"{str(absolute)!r} is an absolute path")
    assert not absolute.exists() and list(out.iterdir()) == []  # nothing half-unpacked
    assert pod.status == "EXITED"
