"""`provision.py cycle` and `provision.py smoke`: jobs that run in a pod over SSH.

cycle: provision -> wait for SSH -> (upload a dataset) -> the training preset in the pod -> copy
the artifacts back -> stop, terminate or keep the pod -> (an arena against the previous best
model, `host_tools/cycle_arena.py`) -> the run report (host_tools/report.py).
Each phase is timed into the phase-timing log (source=host_cycle) with the pod's own preset
phases. On a failure the pod is cleaned up unless --keep-on-failure: terminated, or only stopped
when it may hold artifacts not copied back. Only the pod this run created is ever cleaned up: it
is known by id, and after a failed create by the request's marker (pods.create_pod), never by its
name.

smoke: SSH, the inference API's /healthz from this machine, then
`python -m appliance.runtime.podcheck` in the pod (supervisorctl status, /healthz, /infer,
Jupyter API, one training epoch); a table of PASS/FAIL/SKIP. Without a POD it provisions a
throwaway pod and always terminates it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

import httpx

from appliance import settings
from appliance.runpod import Pod, RunpodClient
from appliance.runtime.podcheck import Check
from appliance.timing import TimingLog
from host_tools import cycle_arena, watch
from host_tools.cli import CliError, Env, emit, load_settings, price, table, usd
from host_tools.image import IMAGE_CODE_DIR
from host_tools.pod_args import create_request, parse_env_pairs, provision_options, wait_request
from host_tools.pods import (
    SSH_USER,
    create_pod,
    host_key_alias,
    pod_text,
    ssh_argv,
    ssh_settings,
    wait_ready,
)
from host_tools.report import PROGRESS, ReportError, RunInfo, build_report, write_report

CYCLE_SOURCE = "host_cycle"
SMOKE_SOURCE = "host_smoke"
PRESET = "python -m appliance.training.preset"


def _mb(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.1f} MB"


def _stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


class Phases(TimingLog):
    """The timing log of one run that prints a progress line per phase and keeps its records
    for the summary."""

    def __init__(self, log: TimingLog, err: TextIO) -> None:
        super().__init__(log.path, log.source, log.run_id)
        self.err = err
        self.done: list[dict[str, Any]] = []
        self.started = time.monotonic()

    def record(self, *args: Any, **kwargs: Any) -> dict[str, object]:
        rec = super().record(*args, **kwargs)
        self.done.append(rec)
        return rec

    @contextmanager
    def phase(self, name: str, note: str = "") -> Iterator[dict[str, int | None]]:
        print(f"[{time.monotonic() - self.started:6.1f} s] {name}{': ' + note if note else ''}",
              file=self.err, flush=True)
        with super().phase(name) as result:
            yield result

    def table(self) -> str:
        return table([[r["phase"], r["status"], f"{r['elapsed_ms'] / 1000:.1f} s"]
                       for r in self.done], ["PHASE", "STATUS", "TIME"])


def _timing_log(source: str, run_id: str) -> TimingLog:
    return TimingLog(load_settings(settings.PathSettings).timing_log, source, run_id)


def _remote(env: Env, pod: Pod, args: argparse.Namespace, command: str,
            stdin: Path | None = None, stdout: Path | None = None) -> int:
    argv = ssh_argv(pod, ssh_settings(), args.user, [command], batch=True)
    return env.remote(argv, stdin, stdout)


def tar_dir(src: Path, dest: Path) -> None:
    with tarfile.open(dest, "w") as tar:
        for item in sorted(src.iterdir()):
            tar.add(item, arcname=item.name)


def untar_command(dest: str) -> str:
    """The remote command that unpacks a `tar_dir` archive from stdin into `dest`."""
    q = shlex.quote(dest)
    return f"mkdir -p {q} && tar -xf - -C {q}"


def _extract(archive: Path, dest: Path) -> list[str]:
    """Every member is checked before any is written: no absolute or escaping paths, no links
    out, no devices (tarfile's data filter)."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        for member in members:
            if member.name.startswith("/"):
                raise tarfile.TarError(f"{member.name!r} is an absolute path")
            tarfile.data_filter(member, str(dest))
        tar.extractall(dest, filter="data")
        return sorted(m.name for m in members if m.isfile())


# Set by cycle itself from --run-id and --dataset; the fetch relies on them.
CYCLE_VARIABLES = ("RUN_ID", "TRAIN_DATASET_DIR", "TRAIN_OUTPUT_DIR", "RUNPOD_PHASE_TIMING_LOG",
                   "TRAIN_PROGRESS_JSONL_OUT")


def _check_train_env(pairs: dict[str, str]) -> None:
    for name in pairs:
        if name in CYCLE_VARIABLES:
            raise CliError(f"--train-env {name}: cycle sets it (use --run-id or --dataset)", 2)
        if settings.is_secret_name(name):
            raise CliError(f"--train-env {name}: secrets would show on the pod's command line; "
                           "give them to the pod with --env or --env-file instead", 2)


# -- cycle ----------------------------------------------------------------------------------------


def cycle_inputs(args: argparse.Namespace) -> tuple[dict[str, str], str, Path]:
    """cycle's --train-env, run id and output dir, checked (with --dataset and the ssh
    settings) before anything bills."""
    train_env = parse_env_pairs(args.train_env or [], None, flag="--train-env")
    _check_train_env(train_env)
    if args.dataset is not None and not (
            (args.dataset / "train.jsonl").is_file() and (args.dataset / "val.jsonl").is_file()):
        raise CliError(f"--dataset {args.dataset}: needs train.jsonl and val.jsonl", 2)
    cycle_arena.check_options(args)
    run_id = args.run_id or f"cycle-{_stamp()}"
    if not run_id.replace("-", "").replace("_", "").isalnum():
        raise CliError(f"--run-id {run_id!r}: letters, digits, '-' and '_' only", 2)
    paths = settings.load(settings.PathSettings)
    out = args.out or paths.REPO_DIR / "artifacts" / "cycle" / run_id
    if out.exists() and any(out.iterdir()):
        raise CliError(f"--out {out} is not empty; choose another --out or --run-id", 2)
    ssh_settings()  # a bad known-hosts setting fails before anything bills
    return train_env, run_id, out


def preset_command(run_id: str, dataset: str, remote: str, train_env: dict[str, str]) -> str:
    """The shell command that runs the preset in REMOTE with cycle's variables."""
    variables = {"RUN_ID": run_id, "TRAIN_DATASET_DIR": dataset,
                 "TRAIN_OUTPUT_DIR": f"{remote}/artifacts",
                 "RUNPOD_PHASE_TIMING_LOG": f"{remote}/timings.jsonl",
                 "TRAIN_PROGRESS_JSONL_OUT": f"{remote}/{PROGRESS[0]}", **train_env}
    return (f"mkdir -p {shlex.quote(remote)} && cd {shlex.quote(remote)} && env "
            + " ".join(f"{k}={shlex.quote(v)}" for k, v in variables.items()) + f" {PRESET}")


def cmd_cycle(env: Env, args: argparse.Namespace) -> int:
    if args.nodes != 1:  # an Instant Cluster (host_tools/cluster_cycle.py)
        from host_tools.cluster_cycle import cycle_cluster
        return cycle_cluster(env, args)
    train_env, run_id, out = cycle_inputs(args)
    request = create_request(args, f"chessbot-{run_id}", {"RUN_ID": run_id})
    remote = f"{args.remote_root.rstrip('/')}/{run_id}"
    watching = args.watch if args.watch is not None else env.out.isatty()
    if watching:
        watch.options(args, run_id, out)  # a bad --stall-minutes fails before anything bills
    phases = Phases(_timing_log(CYCLE_SOURCE, run_id), env.err)
    pod: Pod | None = None
    created_at = env.clock()
    state = {"train_started": False, "fetched": False}
    with env.client_factory() as client:
        try:
            with phases.phase("provision"):
                pod = create_pod(env, client, request)
                created_at = env.clock()
            with phases.phase("wait_ssh"):
                pod = wait_ready(env, client, pod, wait_request(args, left_running=False))
            dataset = f"{args.pod_repo_dir}/data/sample"
            if args.dataset is not None:
                dataset = f"{remote}/dataset"
                with phases.phase("upload_dataset", str(args.dataset)), \
                        tempfile.TemporaryDirectory() as tmp:
                    archive = Path(tmp) / "dataset.tar"
                    tar_dir(args.dataset, archive)
                    print(f"  {_mb(archive)} to {pod.id}:{dataset}", file=env.err, flush=True)
                    if _remote(env, pod, args, untar_command(dataset), stdin=archive) != 0:
                        raise CliError(f"uploading {args.dataset} to the pod failed")
            command = preset_command(run_id, dataset, remote, train_env)
            state["train_started"] = True
            with phases.phase("train", f"{PRESET} in pod {pod.id}"):
                code = (_train_watched(env, client, pod, args, command, run_id, out) if watching
                        else _remote(env, pod, args, command))
                if code != 0:
                    raise CliError(f"the training preset in pod {pod.id} failed (exit {code}); "
                                   f"its output is above, its files under {remote}")
            with phases.phase("fetch_artifacts", str(out)):
                files = fetch_artifacts(env, pod, args, remote, out)
                state["fetched"] = True
            phases.merge(out / "timings.jsonl")  # the pod's preset phases, in the same log
            with phases.phase(f"then_{args.then}"):
                _finish(client, pod, args.then)
            info = _run_info(run_id, pod, args, dataset, env.clock() - created_at)
        except (Exception, KeyboardInterrupt) as exc:
            if pod is not None:
                _cleanup_on_failure(env, client, pod, args, phases, state)
            if isinstance(exc, KeyboardInterrupt):
                raise CliError("interrupted", 130) from None
            raise
    hours = (env.clock() - created_at) / 3600
    cost = pod.cost_per_hr * hours
    cycle_arena.run(args, out, phases, env.err)  # after the pod stopped: not billed
    report = _report(env, info, out, phases.path)
    summary = {"run_id": run_id, "pod": pod.id, "then": args.then, "out": str(out),
               "files": files, "phases": phases.done, "timing_log": str(phases.path),
               "report": report, "cost": {"usd": round(cost, 4), "hours": round(hours, 4),
                                          "costPerHr": pod.cost_per_hr}}
    emit(env, args.json, summary, f"{phases.table()}\n\ncycle {run_id}: pod {pod.id} "
          f"{_then_text(args.then, pod)}; artifacts in {out} ({len(files)} files); timings in "
          f"{phases.path}; report {report or '(none)'}\ncost: {usd(cost)} ({hours:.2f} h at "
          f"{price(pod.cost_per_hr)}, from create to {args.then}"
          f"{'' if args.then != 'keep' else '; it is still billing'})")
    return 0


def _run_info(run_id: str, pod: Pod, args: argparse.Namespace, dataset: str,
              running_s: float) -> RunInfo:
    """What the report needs that the run folder does not say; the $/h is the running pod's."""
    stats = None
    if args.dataset is not None and (args.dataset / "stats.json").is_file():
        try:
            stats = json.loads((args.dataset / "stats.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            stats = None  # the report says the stats are missing
    return RunInfo(run_id, pod.id, pod.gpu_id, pod.gpu_count, pod.cost_per_hr,
                   round(running_s, 3), args.then,
                   str(args.dataset) if args.dataset is not None else dataset,
                   "workstation" if args.dataset is not None else "pod",
                   stats if isinstance(stats, dict) else None)


def _report(env: Env, info: RunInfo, out: Path, timing_log: Path) -> str | None:
    """run.json, then the run report; a report that cannot be written is a warning, since the
    run itself succeeded."""
    try:
        info.write(out)
        return str(write_report(build_report(info.run_id, out, timing_log)))
    except (ReportError, OSError) as exc:
        print(f"warning: no run report: {exc}; `provision.py report {info.run_id} --dir {out}` "
              "tries again", file=env.err)
        return None


def _train_watched(env: Env, client: RunpodClient, pod: Pod, args: argparse.Namespace,
                   command: str, run_id: str, out: Path) -> int:
    """The preset with its output in OUT/train.log while `watch` shows its progress and copies
    its checkpoints; a stall (after the copy) fails the run, and the cleanup follows."""
    log = out / "train.log"
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, int | BaseException] = {}

    def train() -> None:  # stderr too (the trainer's lines): the terminal has the live view
        try:
            result["code"] = _remote(env, pod, args, f"exec 2>&1; {command}", stdout=log)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            result["code"] = exc

    thread = threading.Thread(target=train, name="cycle-train", daemon=True)
    thread.start()
    print(f"  the preset's output goes to {log}", file=env.err, flush=True)
    watched = watch.Watcher(env, client, pod, watch.options(args, run_id, out),
                            should_end=lambda: not thread.is_alive()).run()
    if watched != 0:
        raise CliError(f"the training in pod {pod.id} stalled (no progress event for "
                       f"{args.stall_minutes:g} min); its log: {log}")
    thread.join()
    code = result["code"]
    if isinstance(code, BaseException):
        raise code
    return code


def fetch_artifacts(env: Env, pod: Pod, args: argparse.Namespace, remote: str, out: Path
                    ) -> list[str]:
    """REMOTE/artifacts (and REMOTE/timings.jsonl) from the pod into OUT."""
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "artifacts.tar"
        q = shlex.quote(remote)
        listing = "artifacts $(test -f timings.jsonl && echo timings.jsonl)"
        if _remote(env, pod, args, f"cd {q} && tar -cf - {listing}", stdout=archive) != 0:
            raise CliError(f"copying {remote}/artifacts from pod {pod.id} failed")
        try:
            files = _extract(archive, out)
            print(f"  {_mb(archive)} from {pod.id}:{remote}", file=env.err, flush=True)
            return files
        except (tarfile.TarError, OSError) as exc:
            raise CliError(f"the artifacts from pod {pod.id} could not be unpacked into "
                           f"{out}: {exc}") from None


def _finish(client: RunpodClient, pod: Pod, then: str) -> None:
    if then == "stop":
        client.stop_pod(pod.id)
    elif then == "terminate":
        client.terminate_pod(pod.id)


def _then_text(then: str, pod: Pod) -> str:
    return {"stop": f"stopped, /workspace kept (`provision.py start {pod.id}` resumes, "
                    f"`provision.py terminate {pod.id}` deletes it)",
            "terminate": (f"terminated; its network volume {pod.network_volume_id} keeps "
                          "/workspace (datasets, artifacts) and bills as storage"
                          if pod.network_volume_id else "terminated, nothing left billing"),
            "keep": f"still RUNNING and billing: `provision.py ssh {pod.id}`, then stop or "
                    "terminate it"}[then]


def _cleanup_on_failure(env: Env, client: RunpodClient, pod: Pod, args: argparse.Namespace,
                        phases: Phases, state: dict[str, bool]) -> None:
    if args.keep_on_failure:
        phases.record("keep_on_failure", "ok", 0)
        print(f"--keep-on-failure: pod {pod.id} is still there and billing:\n"
              f"{pod_text(pod)}", file=env.err)
        return
    unsaved = state["train_started"] and not state["fetched"]
    action = "stop" if unsaved else "terminate"
    why = (f"only stopped: {args.remote_root}/... on its volume may hold artifacts not copied "
           "back" if unsaved else "")
    try:
        with phases.phase(f"cleanup_{action}", why):
            _finish(client, pod, action)
        print(f"cleanup: pod {pod.id} {_then_text(action, pod)}", file=env.err)
    except Exception as exc:  # noqa: BLE001 - the original error is the one to raise
        print(f"cleanup failed: {exc}; pod {pod.id} may still bill: `provision.py {action} "
              f"{pod.id}`", file=env.err)


# -- smoke ----------------------------------------------------------------------------------------


def public_url(pod: Pod, port: int) -> str | None:
    """Where this machine reaches the pod's HTTP port: a published loopback/TCP mapping (local
    pods) or RunPod's proxy."""
    for m in pod.mappings:
        if m.private == port and (m.type == "tcp" or m.ip in ("127.0.0.1", "localhost")):
            return f"http://{m.ip}:{m.public}"
    return pod.proxy_urls().get(port)


def cmd_smoke(env: Env, args: argparse.Namespace) -> int:
    ssh_settings()
    run_id = f"smoke-{_stamp()}"
    log = _timing_log(SMOKE_SOURCE, run_id)
    rows: list[Check] = []
    created: Pod | None = None
    with env.client_factory() as client:
        try:
            if args.pod:
                pod = client.get_pod(args.pod)
            else:
                if not (args.image or args.template_id or args.template_name):
                    raise CliError("give a POD, or --image/--template-id/--template-name for a "
                                   "throwaway pod", 2)
                start = time.monotonic()
                created = create_pod(env, client, create_request(args, f"chessbot-{run_id}"))
                pod = wait_ready(env, client, created, wait_request(args, left_running=False))
                rows.append(Check("provision", "PASS", f"pod {pod.id} ready",
                                  int((time.monotonic() - start) * 1000)))
            rows += _smoke_rows(env, pod, args)
        finally:
            if created is not None:
                start = time.monotonic()
                client.terminate_pod(created.id)
                rows.append(Check("terminate", "PASS", f"throwaway pod {created.id} terminated",
                                  int((time.monotonic() - start) * 1000)))
    for row in rows:
        log.record(row.check, {"PASS": "ok", "SKIP": "skipped"}.get(row.status, "error"),
                   row.elapsed_ms)
    failed = [r.check for r in rows if r.status == "FAIL"]
    text = table([[r.check, r.status, f"{r.elapsed_ms / 1000:.1f} s", r.detail] for r in rows],
                  ["CHECK", "STATUS", "TIME", "DETAIL"])
    verdict = f"smoke: FAIL ({', '.join(failed)})" if failed else "smoke: PASS"
    emit(env, args.json, {"pod": pod.id, "ok": not failed, "checks": [asdict(r) for r in rows]},
          f"{text}\n{verdict}")
    return 1 if failed else 0


def _remote_text(env: Env, pod: Pod, args: argparse.Namespace, command: str) -> tuple[int, str]:
    with tempfile.TemporaryDirectory() as tmp:
        got = Path(tmp) / "out"
        code = _remote(env, pod, args, command, stdout=got)
        return code, got.read_text(encoding="utf-8", errors="replace") if got.exists() else ""


def _smoke_rows(env: Env, pod: Pod, args: argparse.Namespace) -> list[Check]:
    start = time.monotonic()
    code, who = _remote_text(env, pod, args, "id -un")
    who = who.strip()
    ok = code == 0 and who == args.user
    host, port = pod.ssh_endpoint() or ("?", 0)
    detail = (f"{who}@{host}:{port}, host key pinned as {host_key_alias(pod.id)}" if ok else
              f"ssh exit {code}, user {who or '-'}: `provision.py ssh {pod.id}` shows why")
    rows = [Check("ssh", "PASS" if ok else "FAIL", detail,
                  int((time.monotonic() - start) * 1000))]
    if not ok:
        return [*rows, Check("podcheck", "SKIP", "needs SSH", 0), _public_healthz(env, pod)]
    print(f"smoke: checks in pod {pod.id} (the training epoch takes a while)", file=env.err,
          flush=True)
    command = "python -m appliance.runtime.podcheck" + (
        f" --dataset {shlex.quote(args.dataset)}" if args.dataset else "")
    start = time.monotonic()
    code, text = _remote_text(env, pod, args, command)
    for line in text.splitlines():
        try:
            item = json.loads(line)
            rows.append(Check(str(item["check"]), str(item["status"]), str(item["detail"]),
                              int(item["elapsed_ms"])))
        except (ValueError, KeyError, TypeError):
            continue
    if len(rows) == 1:
        rows.append(Check("podcheck", "FAIL", "python -m appliance.runtime.podcheck exit "
                          f"{code} gave no results; is the pod running this project's image?",
                          int((time.monotonic() - start) * 1000)))
    # Last: by now the programs have settled (podcheck waits for STARTING ones).
    return [*rows, _public_healthz(env, pod)]


def _public_healthz(env: Env, pod: Pod, attempts: int = 10, pause: float = 2.0) -> Check:
    """GET /healthz from this machine: 200 or 503 with a JSON status means it answers (a proxy
    that is still coming up gets a few more tries)."""
    base = public_url(pod, 8000)
    if base is None:
        return Check("healthz_public", "SKIP", "the pod publishes no port 8000", 0)
    start = time.monotonic()
    last = ""
    for attempt in range(attempts):
        if attempt:
            env.sleep(pause)
        try:
            resp = env.http_get(f"{base}/healthz")
            status = resp.json().get("status") if resp.status_code in (200, 503) else None
        except (httpx.HTTPError, ValueError) as exc:
            last = type(exc).__name__
            continue
        if status is not None:
            return Check("healthz_public", "PASS",
                         f"{base}/healthz answered {resp.status_code} ({status})",
                         int((time.monotonic() - start) * 1000))
        last = f"answered {resp.status_code}"
    return Check("healthz_public", "FAIL", f"{base}/healthz {last} ({attempts} tries)",
                 int((time.monotonic() - start) * 1000))


# -- parser ---------------------------------------------------------------------------------------


def add_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Adds cycle, smoke and watch through provision.py's `add(name, help, handler)`."""
    watch.add_command(add)
    sp = add("cycle", "provision, wait for SSH, train in the pod, copy the artifacts back, then "
             "stop/terminate/keep; cleans up on failure", cmd_cycle)
    provision_options(sp)
    sp.add_argument("--dataset", type=Path, metavar="DIR", help="local dir with train.jsonl and "
                    "val.jsonl to upload (default: the sample data in the image)")
    sp.add_argument("--train-env", action="append", metavar="K=V",
                    help="TRAIN_* settings for the preset, e.g. TRAIN_EPOCHS=5 (repeatable)")
    sp.add_argument("--then", choices=["stop", "terminate", "keep"], default="stop",
                    help="after copying the artifacts: stop (volume kept, default), terminate "
                    "(everything deleted) or keep running")
    sp.add_argument("--keep-on-failure", action="store_true",
                    help="leave the pod running when a phase fails (it keeps billing)")
    sp.add_argument("--out", type=Path, metavar="DIR",
                    help="where the artifacts go (default artifacts/cycle/RUN_ID)")
    sp.add_argument("--run-id", help="default cycle-<UTC time>")
    sp.add_argument("--remote-root", default="/workspace/cycle",
                    help="runs live under REMOTE_ROOT/RUN_ID in the pod (default %(default)s)")
    sp.add_argument("--pod-repo-dir", default=IMAGE_CODE_DIR,
                    help="the code in the pod, for its sample data (default %(default)s, the "
                    "image's APPLIANCE_CODE_DIR)")
    sp.add_argument("--user", default=SSH_USER, help=argparse.SUPPRESS)
    sp.add_argument("--nodes", type=int, default=1, metavar="N",
                    help="train on an Instant Cluster of N pods (torchrun across them; needs one "
                    "--gpu-type-id); default 1: one pod")
    sp.add_argument("--watch", action=argparse.BooleanOptionalAction, default=None,
                    help="follow the training live (`provision.py watch`), its output in "
                    "OUT/train.log (default: when stdout is a terminal)")
    watch.add_watch_options(sp, on_stall=False)
    cycle_arena.add_options(sp)

    sp = add("smoke", "check a pod end to end: SSH, supervisorctl status, /healthz, /infer, "
             "Jupyter API, one training epoch; without POD on a throwaway pod", cmd_smoke)
    sp.add_argument("pod", nargs="?", help="pod id (default: provision one, terminate after)")
    provision_options(sp)
    sp.add_argument("--dataset", metavar="POD_DIR",
                    help="dataset dir in the pod (default data/sample of the code it runs)")
    sp.add_argument("--user", default=SSH_USER, help=argparse.SUPPRESS)

