"""PID-1 preparation of the pod: settings, account and keys, sshd, repo, configs, then supervisord.

`python -m appliance.runtime.bootstrap` times each step into the phase log
(source=runpod_entrypoint), logs it in one line and ends in os.execve(supervisord);
`--render-only DIR` only writes the rendered files (supervisord.conf, conf.d/, sshd_config,
...) into DIR and changes nothing else. Both say, one line each, what became of the predecessor's
variables that are set (appliance.legacy_env).
"""

from __future__ import annotations

import argparse
import os
import pwd
import secrets
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

from appliance import legacy_env, settings
from appliance.atomic import atomic_write_json
from appliance.redact import Redactor
from appliance.runtime.config import (
    BOOT_SOURCE,
    HOST_KEY_TYPES,
    SYSTEM_PATH,
    Layout,
    PodConfig,
    secret_fields,
    url_password,
)
from appliance.runtime.files import install_supervisor, write_file, write_render_dir, write_secrets
from appliance.runtime.render import (
    Rendered,
    RenderError,
    plan,
    render_all,
    shell_env,
    sshd_config,
)
from appliance.runtime.repo import (
    RepoError,
    checkout_pythonpath,
    code_choice,
    prepare_checkout,
    prepare_state_root,
    sync_requirements,
)
from appliance.runtime.ssh_setup import (
    SetupError,
    ensure_account,
    ensure_host_keys,
    parse_keys,
    write_authorized_keys,
)
from appliance.timing import TimingLog

PREFIX = "appliance-bootstrap"
TORCH_PROBE_TIMEOUT_S = 180


class BootstrapError(RuntimeError):
    """A step that must stop the bootstrap, with what to do about it."""


def boot_redactor(values: list[str | None]) -> Redactor:
    """The bootstrap hides every configured secret, however short, as ***."""
    return Redactor(values, mask="***", min_length=1)


class BootLog:
    """One readable line per event, to stdout (the container log) and to bootstrap.log."""

    def __init__(self, redact: Redactor, stream: IO[str] = sys.stdout) -> None:
        self.redact = redact
        self.stream = stream
        self.path: Path | None = None
        self.pending: list[str] = []

    def __call__(self, message: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        line = f"{stamp} {PREFIX}: {self.redact(message)}"
        print(line, file=self.stream, flush=True)
        if self.path is None:
            self.pending.append(line)
            return
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")

    def attach(self, path: Path) -> None:
        self.path = path
        with path.open("a", encoding="utf-8") as fh:
            fh.writelines(line + "\n" for line in self.pending)
        self.pending.clear()


def torch_importable(python: Path) -> tuple[bool, str]:
    try:
        proc = subprocess.run([str(python), "-c", "import torch"], capture_output=True,
                              text=True, timeout=TORCH_PROBE_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return False, f"import torch took longer than {TORCH_PROBE_TIMEOUT_S} s"
    except OSError as exc:
        return False, f"cannot run {python}: {exc.strerror}"
    if proc.returncode == 0:
        return True, "torch imports"
    lines = proc.stderr.strip().splitlines()
    return False, lines[-1] if lines else f"exit {proc.returncode}"


class Bootstrap:
    def __init__(self, cfg: PodConfig, layout: Layout, environ: Mapping[str, str],
                 log: BootLog, timing: TimingLog, secret_vals: Mapping[str, str],
                 started_ms: int | None = None) -> None:
        self.cfg = cfg
        self.layout = layout
        self.environ = environ
        self.log = log
        self.timing = timing
        self.secrets = dict(secret_vals)
        self.torch_ok = True
        self.torch_why = ""
        self.fingerprints: list[str] = []
        self.left_out: dict[str, str] = {}
        self.rendered: dict[str, Rendered] = {}
        self.pythonpath: Path | None = None
        self.started_ms = int(time.time() * 1000) if started_ms is None else started_ms

    def step(self, phase: str, fn: Callable[[], str | tuple[str, int]]) -> None:
        """Run one step timed into the phase log; (summary, exit code) marks a soft failure."""
        start = time.monotonic()
        try:
            with self.timing.phase(phase) as result:
                out = fn()
                summary, code = out if isinstance(out, tuple) else (out, None)
                result["exit_code"] = code
        except Exception as exc:
            ms = int((time.monotonic() - start) * 1000)
            self.log(f"{phase}: FAILED ({ms} ms): {exc}")
            raise
        ms = int((time.monotonic() - start) * 1000)
        self.log(f"{phase}: {summary} ({ms} ms)")

    # -- 1 -----------------------------------------------------------------------------------
    def prepare_dirs(self) -> str:
        lay = self.layout
        made = []
        for d in (lay.privsep_dir, lay.socket_dir, lay.appliance_run, lay.secrets_dir,
                  lay.fatal_dir, lay.heartbeat_dir, lay.state_dir, lay.log_dir, lay.conf_d,
                  lay.ssh_dir,
                  lay.env_file.parent, lay.bin_dir, lay.workspace):
            if not d.is_dir():
                d.mkdir(parents=True)
                made.append(str(d))
        # sshd refuses a privilege-separation dir that others can write.
        lay.privsep_dir.chmod(0o755)
        for d in (lay.state_dir, lay.log_dir, lay.fatal_dir):
            d.chmod(0o755)
        # FATAL records belong to one supervisord run.
        for old in lay.fatal_dir.glob("*.json"):
            old.unlink()
        self.log.attach(lay.log_dir / "bootstrap.log")
        return f"created {', '.join(made)}" if made else "all dirs present"

    # -- 2 -----------------------------------------------------------------------------------
    def account(self) -> str:
        lay = self.layout
        notes = ensure_account(lay.user, lay.user_home)
        pw = pwd.getpwnam(lay.user)
        # runner reaches the supervisor socket and reads secret files through its group.
        for d in (lay.socket_dir, lay.secrets_dir):
            os.chown(d, 0, pw.pw_gid)
            d.chmod(0o750)
        # inference runs as the user and touches its heartbeat file here.
        os.chown(lay.heartbeat_dir, pw.pw_uid, pw.pw_gid)
        lay.heartbeat_dir.chmod(0o755)
        if lay.workspace.stat().st_uid == 0:
            os.chown(lay.workspace, pw.pw_uid, pw.pw_gid)
            notes.append(f"{lay.workspace} given to {lay.user}")
        ssh = self.cfg.ssh
        report = parse_keys([("PUBLIC_KEY", ssh.PUBLIC_KEY),
                             ("AUTHORIZED_KEYS", ssh.AUTHORIZED_KEYS)])
        for problem in report.problems:
            self.log(f"authorized keys: {problem}")
        if report.keys:
            write_authorized_keys(lay.authorized_keys, report.keys, lay.user)
            notes.append(f"{len(report.keys)} authorized key(s) in {lay.authorized_keys}")
        else:
            notes.append("no key in PUBLIC_KEY or AUTHORIZED_KEYS: nobody can log in over SSH")
        if report.problems:
            notes.append(f"{len(report.problems)} malformed key line(s) skipped")
        return "; ".join(notes)

    # -- 3 -----------------------------------------------------------------------------------
    def sshd(self) -> str:
        if not self.cfg.services.START_SSHD:
            return "START_SSHD=0: sshd not set up"
        lay = self.layout
        made, self.fingerprints = ensure_host_keys(
            lay.host_key_store, {t: lay.host_key(t) for t in HOST_KEY_TYPES})
        for fp in self.fingerprints:
            self.log(f"ssh host key: {fp}")
        write_file(lay.sshd_config, sshd_config(self.cfg, lay, shell_env(
            self.environ, lay, frozenset(self.secrets))), 0o644)
        try:
            proc = subprocess.run([str(lay.sshd), "-t", "-f", str(lay.sshd_config)],
                                  capture_output=True, text=True, timeout=30,
                                  stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise BootstrapError(f"APPLIANCE_SSHD={lay.sshd} not found: install openssh-server "
                                 "or set START_SSHD=0") from None
        if proc.returncode != 0:
            raise BootstrapError(f"sshd -t rejects {lay.sshd_config}: "
                                 f"{(proc.stderr or proc.stdout).strip()}")
        keys = (f"host keys generated now: {', '.join(made)}" if made
                else f"host keys kept from {lay.host_key_store}")
        return f"{keys}; {lay.sshd_config} passes sshd -t (port {self.cfg.ssh.SSH_PORT})"

    # -- 4 -----------------------------------------------------------------------------------
    def repo(self) -> str | tuple[str, int]:
        repo, paths = self.cfg.repo, self.cfg.paths
        repo_dir = paths.REPO_DIR
        try:
            given = prepare_state_root(paths, self.layout.user)
        except OSError as exc:
            return f"state root {paths.state_root} cannot be prepared: {exc}", 1
        if given:
            self.log(f"repo_sync: {', '.join(map(str, given))} given to {self.layout.user}")
        notes, code = [], 0
        if repo.REPO_URL and not repo.CLONE_REPO_ON_START:
            notes.append(f"CLONE_REPO_ON_START=0: {repo_dir} left as it is")
        elif repo.REPO_URL:
            try:
                outcome = prepare_checkout(repo.REPO_URL, repo.REPO_REF, repo_dir,
                                           pull=repo.GIT_AUTO_PULL, run_as=self.layout.user)
                notes.append(f"{outcome.action}: {outcome.detail}")
            except (RepoError, OSError) as exc:
                notes.append(f"{exc}; going on with what is in {repo_dir}")
                code = 1
        notes.append(code_choice(paths, repo.REPO_URL).detail)
        self.pythonpath = checkout_pythonpath(paths)
        if self.pythonpath is not None:
            notes.append(f"services import it ahead of the image's (PYTHONPATH={self.pythonpath})")
        notes.append(f"state under {paths.state_root}")
        summary = "; ".join(notes)
        return (summary, code) if code else summary

    def requirements(self) -> str | tuple[str, int]:
        repo = self.cfg.repo
        if not repo.SYNC_REQUIREMENTS_ON_START:
            return "SYNC_REQUIREMENTS_ON_START=0: pip not run"
        try:
            outcome = sync_requirements(self.cfg.paths.REPO_DIR, self.layout.python,
                                        self.layout.stamp, force=repo.FORCE_REQUIREMENTS_SYNC)
        except (RepoError, OSError) as exc:
            return str(exc), 1
        if outcome.exit_code is not None:
            return f"{outcome.action}: {outcome.detail}", outcome.exit_code
        return f"{outcome.action}: {outcome.detail}"

    # -- 5 -----------------------------------------------------------------------------------
    def torch(self) -> str:
        if not self.cfg.services.START_INFERENCE_API:
            return "START_INFERENCE_API=0: not checked"
        self.torch_ok, self.torch_why = torch_importable(self.layout.python)
        if self.torch_ok:
            return f"torch imports in {self.layout.python}"
        return (f"torch cannot be imported in {self.layout.python} ({self.torch_why}): the "
                "inference program is left out instead of crash-looping")

    # -- 6 -----------------------------------------------------------------------------------
    def write_secrets(self) -> list[str]:
        lay = self.layout
        values = dict(self.secrets)
        note = []
        if self.cfg.services.START_JUPYTER:
            token = self.cfg.jupyter.token
            if token is None:
                token = secrets.token_hex(24)
                note.append("no JUPYTER_TOKEN or JUPYTER_PASSWORD: generated a token; read it "
                            f"over SSH with: cat {lay.secret_file('JUPYTER_TOKEN')}")
            values["JUPYTER_TOKEN"] = token
            self.log.redact.add(token)
        write_secrets(lay, values, pwd.getpwnam(lay.user).pw_gid)
        self.secrets = values
        return note

    def supervisor(self) -> str:
        lay = self.layout
        notes = self.write_secrets()
        self.rendered = render_all(self.cfg, lay, torch_ok=self.torch_ok, environ=self.environ,
                                   secret_names=frozenset(self.secrets))
        p = plan(self.cfg.services, self.torch_ok, self.cfg.max_hours, self.cfg.uploads)
        self.left_out = dict(p.left_out)
        if "inference" in p.left_out:
            self.left_out["inference"] = f"{p.left_out['inference']} ({self.torch_why})"
        install_supervisor(lay, self.rendered)
        record = {"programs": list(p.programs), "left_out": self.left_out,
                  "run_id": self.timing.run_id, "ssh_host_keys": self.fingerprints,
                  "supervisord_conf": str(lay.supervisord_conf),
                  # the service_start records: elapsed since this, into the same phase log
                  "started_epoch_ms": self.started_ms, "timing_log": str(self.timing.path)}
        atomic_write_json(lay.boot_record, record, mode=0o644)
        for note in notes:
            self.log(f"jupyter: {note}")
        return (f"programs {', '.join(p.programs)} in {lay.conf_d}; supervisorctl in "
                f"{lay.bin_dir}")

    # -- 7 -----------------------------------------------------------------------------------
    def login_env(self) -> str:
        env = self.rendered["appliance-env.sh"]
        write_file(self.layout.env_file, env.text, env.mode)
        count = sum(1 for line in env.text.splitlines() if line.startswith("export "))
        return f"{count} variables for login shells in {self.layout.env_file}"

    # -- 8 -----------------------------------------------------------------------------------
    def supervisord_argv(self) -> list[str]:
        return [sys.executable, "-m", "supervisor.supervisord", "-n", "-c",
                str(self.layout.supervisord_conf)]

    def supervisord_env(self) -> dict[str, str]:
        hidden = set(secret_fields())
        env = {k: v for k, v in self.environ.items() if k not in hidden}
        env["APPLIANCE_SECRETS_DIR"] = str(self.layout.secrets_dir)
        env["HF_HOME"] = str(self.layout.hf_home)
        venv_bin = str(self.layout.venv_bin)
        path = env.get("PATH", ":".join(SYSTEM_PATH))
        if venv_bin not in path.split(":"):
            env["PATH"] = f"{venv_bin}:{path}"
        if self.pythonpath is not None:
            env["PYTHONPATH"] = ":".join(
                [str(self.pythonpath), *filter(None, env.get("PYTHONPATH", "").split(":"))])
        return env

    def give_timing_log(self) -> None:
        """runner appends to the same phase log (training presets over SSH)."""
        log = self.timing.path
        if log.exists() and log.stat().st_uid == 0:
            pw = pwd.getpwnam(self.layout.user)
            os.chown(log, pw.pw_uid, pw.pw_gid)


def render_only(cfg: PodConfig, layout: Layout, environ: Mapping[str, str], out: Path,
                secret_names: frozenset[str]) -> list[Path]:
    torch_ok = (torch_importable(layout.python)[0] if cfg.services.START_INFERENCE_API
                else True)
    if cfg.services.START_JUPYTER:
        secret_names = secret_names | {"JUPYTER_TOKEN"}
    return write_render_dir(render_all(cfg, layout, torch_ok=torch_ok, environ=environ,
                                       secret_names=secret_names), out)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m appliance.runtime.bootstrap",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--render-only", metavar="DIR", type=Path,
                   help="write supervisord.conf, conf.d/, sshd_config, supervisorctl and "
                   "appliance-env.sh into DIR; change nothing else")
    p.add_argument("--no-exec", action="store_true",
                   help="do every step but the last: print the supervisord command instead")
    args = p.parse_args(argv)
    env = dict(os.environ)
    started = time.monotonic()
    started_ms = int(time.time() * 1000)
    try:
        cfg = PodConfig.load()
    except settings.SettingsError as exc:
        print(f"{PREFIX}: error: {exc}", file=sys.stderr, flush=True)
        return 2
    secret_vals = cfg.secret_values()
    layout = Layout.of(cfg.runtime)
    redact = boot_redactor([*secret_vals.values(), url_password(cfg.repo.REPO_URL)])
    old_vars = [o.line() for o in legacy_env.outcomes(env)]
    if args.render_only is not None:
        for line in old_vars:
            print(f"{PREFIX}: {redact(line)}", file=sys.stderr, flush=True)
        try:
            written = render_only(cfg, layout, env, args.render_only,
                                  frozenset(secret_vals))
        except (RenderError, OSError) as exc:
            print(f"{PREFIX}: error: {redact(str(exc))}", file=sys.stderr, flush=True)
            return 1
        for path in written:
            print(path)
        return 0
    if os.geteuid() != 0:
        print(f"{PREFIX}: error: must run as root (it creates the {layout.user} account, starts "
              "sshd and runs services as that account); --render-only DIR needs no root",
              file=sys.stderr, flush=True)
        return 2
    log = BootLog(redact)
    run_id = cfg.paths.RUN_ID or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    timing = TimingLog(cfg.paths.timing_log, BOOT_SOURCE, run_id)
    timing.record("validate_settings", "ok", int((time.monotonic() - started) * 1000))
    log(f"validate_settings: {len(settings.pod_settings_classes())} settings groups valid; run "
        f"{run_id}; phase log {cfg.paths.timing_log}")
    for line in old_vars:
        log(line)
    boot = Bootstrap(cfg, layout, env, log, timing, secret_vals, started_ms)
    try:
        boot.step("prepare_dirs", boot.prepare_dirs)
        boot.step("runner_account", boot.account)
        boot.step("sshd_setup", boot.sshd)
        boot.step("repo_sync", boot.repo)
        boot.step("requirements_sync", boot.requirements)
        boot.step("torch_check", boot.torch)
        boot.step("render_supervisor", boot.supervisor)
        boot.step("login_env", boot.login_env)
        boot.give_timing_log()
    except (BootstrapError, SetupError, RenderError, OSError, subprocess.SubprocessError) as exc:
        log(f"stopped: {exc}")
        return 1
    argv_exec = boot.supervisord_argv()
    if args.no_exec:
        log(f"--no-exec: would exec {shlex.join(argv_exec)}")
        return 0
    timing.record("exec_supervisord", "ok", 0)
    log(f"exec {shlex.join(argv_exec)} (bootstrap took "
        f"{time.monotonic() - started:.2f} s)")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv_exec[0], argv_exec, boot.supervisord_env())
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
