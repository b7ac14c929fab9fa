"""`provision.py logs`, `cp` and `ssh-config`: a pod's logs and files from the workstation, and
OpenSSH `Host` entries for its pods, all over the same pinned host key as `provision.py ssh`
(pods.ssh_options: known-hosts file, HostKeyAlias per pod, identity).

logs: without PROGRAM and -f, the container's output through REST v2 (`GET /v2/pods/{id}/logs`,
which works while SSH does not); a PROGRAM, -f, or a REST API without the route go over SSH to
`supervisorctl tail` (every program, each line after its name, when none is given).
cp: rsync (`--info=progress2`) with ssh as its remote shell; scp when rsync is missing here or in
the pod. ssh-config: `Host chessbot-<id>` blocks between marker comments in one file the user
includes from ~/.ssh/config; only those blocks are ever rewritten.
"""

from __future__ import annotations

import argparse
import re
import shlex
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from appliance.runpod import Pod, RunpodError, TransportError
from appliance.runpod.client import FALLBACK_STATUSES
from host_tools.cli import CliError, Env, emit
from host_tools.pods import SSH_USER, host_key_alias, ssh_endpoint, ssh_options, ssh_settings
from host_tools.settings import ROOT

SSH_CONFIG_FILE = Path("config/ssh_config.d/chessbot")
HOST_PREFIX = "chessbot-"
POD_PATH = re.compile(r"^([A-Za-z0-9_-]{1,64}):(.*)$")

# -- logs -----------------------------------------------------------------------------------------


def all_programs_command(follow: bool) -> str:
    """Every program's log, each line after `NAME | `; with `follow` interleaved as written."""
    each = ("supervisorctl tail -f \"$p\" | sed -u \"s/^/$p | /\" &" if follow else
            "supervisorctl tail \"$p\" | sed \"s/^/$p | /\";")
    return ("for p in $(supervisorctl avail | awk '{print $1}'); do " + each + " done"
            + ("; wait" if follow else ""))


def cmd_logs(env: Env, args: argparse.Namespace) -> int:
    with env.client_factory() as client:
        pod = client.get_pod(args.pod)
        if args.program is None and not args.follow:
            try:
                lines = client.pod_logs(pod.id, args.tail)
            except RunpodError as exc:
                if not isinstance(exc, TransportError) and exc.status not in FALLBACK_STATUSES:
                    raise
                print(f"REST v2 pod logs unavailable ({exc.call}: {exc.message}); reading the "
                      "programs' logs over SSH", file=env.err)
            else:
                print(f"container output of pod {pod.id} (REST v2, last {args.tail} lines; a "
                      "program's own log: `provision.py logs POD PROGRAM`)", file=env.err)
                for line in lines:
                    print(line, file=env.out)
                return 0
    if args.program is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+", args.program):
        raise CliError(f"PROGRAM {args.program!r}: a supervisord program name (letters, digits, "
                       "'.', '_', '-')", 2)
    if args.program is None:
        command = all_programs_command(args.follow)
    else:
        command = f"supervisorctl tail {'-f ' if args.follow else ''}{args.program}"
    host, port = ssh_endpoint(pod)
    argv = ["ssh", "-p", str(port), *ssh_options(pod, ssh_settings()),
            f"{args.user}@{host}", command]
    return env.run(argv)


# -- cp -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Side:
    """One side of a copy: a local path, or PATH in pod `pod_id`."""

    path: str
    pod_id: str | None = None


def parse_side(text: str) -> Side:
    """POD:PATH is in a pod; anything else (./a:b too) is local."""
    match = POD_PATH.match(text)
    if match is None or text.startswith(("/", ".", "~")):
        return Side(text)
    return Side(match.group(2) or ".", match.group(1))


def copy_argvs(pod: Pod, src: Side, dst: Side, user: str, rsync: bool) -> list[str]:
    """The rsync (or scp) command that copies src to dst, one of them in `pod`."""
    host, port = ssh_endpoint(pod)
    opts = ssh_options(pod, ssh_settings())

    def spell(side: Side) -> str:
        return f"{user}@{host}:{side.path}" if side.pod_id else side.path

    if rsync:
        shell = shlex.join(["ssh", "-p", str(port), *opts])
        return ["rsync", "-a", "--info=progress2", "-e", shell, spell(src), spell(dst)]
    return ["scp", "-r", "-P", str(port), *opts, spell(src), spell(dst)]


def cmd_cp(env: Env, args: argparse.Namespace) -> int:
    src, dst = parse_side(args.src), parse_side(args.dst)
    if src.pod_id and dst.pod_id:
        raise CliError("cp copies between this machine and one pod: copy to this machine "
                       "first, then to the other pod", 2)
    if not src.pod_id and not dst.pod_id:
        raise CliError("cp needs POD:PATH on one side (e.g. `provision.py cp POD:/workspace/"
                       "cycle/r1/artifacts ./r1`)", 2)
    if not src.pod_id and not Path(src.path).expanduser().exists():
        raise CliError(f"{src.path}: no such file or directory here", 2)
    pod_id = src.pod_id or dst.pod_id
    assert pod_id is not None
    with env.client_factory() as client:
        pod = client.get_pod(pod_id)
    ssh_settings().known_hosts_path().parent.mkdir(parents=True, exist_ok=True)
    rsync = env.which("rsync") is not None
    if not rsync:
        print("rsync is not installed here: copying with scp", file=env.err)
    elif not _pod_has_rsync(env, pod, args.user):
        rsync = False
        print(f"rsync is not in pod {pod.id}: copying with scp", file=env.err)
    code = env.run(copy_argvs(pod, src, dst, args.user, rsync))
    if code != 0:
        raise CliError(f"{'rsync' if rsync else 'scp'} exited {code} copying {args.src} to "
                       f"{args.dst}; its message is above")
    return 0


def _pod_has_rsync(env: Env, pod: Pod, user: str) -> bool:
    host, port = ssh_endpoint(pod)
    argv = ["ssh", "-p", str(port), *ssh_options(pod, ssh_settings(), batch=True),
            f"{user}@{host}", "command -v rsync"]
    with tempfile.TemporaryDirectory() as tmp:
        return env.remote(argv, None, Path(tmp) / "out") == 0


# -- ssh-config -----------------------------------------------------------------------------------

BEGIN, END = "# BEGIN provision.py ssh-config ", "# END provision.py ssh-config "


def host_alias(pod_id: str) -> str:
    return f"{HOST_PREFIX}{pod_id}"


def _quoted(value: str) -> str:
    return f'"{value}"' if any(c.isspace() for c in value) else value


def host_block(pod: Pod, user: str) -> list[str]:
    """The `Host chessbot-<id>` entry of a pod with an SSH endpoint, between its markers."""
    host, port = ssh_endpoint(pod)
    settings = ssh_settings()
    lines = [f"{BEGIN}{pod.id}", f"Host {host_alias(pod.id)}", f"    HostName {host}",
             f"    Port {port}", f"    User {user}"]
    if settings.RUNPOD_SSH_IDENTITY_FILE is not None:
        identity = settings.RUNPOD_SSH_IDENTITY_FILE.expanduser().resolve()
        lines += [f"    IdentityFile {_quoted(str(identity))}", "    IdentitiesOnly yes"]
    lines += [f"    HostKeyAlias {host_key_alias(pod.id)}",
              f"    UserKnownHostsFile {_quoted(str(settings.known_hosts_path().resolve()))}",
              f"    StrictHostKeyChecking {settings.RUNPOD_SSH_HOST_KEY_CHECKING}",
              f"{END}{pod.id}"]
    return lines


def split_blocks(text: str) -> tuple[list[str], dict[str, list[str]]]:
    """The file's own lines (kept as they are) and this tool's blocks by pod id."""
    own: list[str] = []
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if current is None and line.startswith(BEGIN):
            current = [line]
        elif current is not None:
            current.append(line)
            if line.startswith(END):
                blocks[line[len(END):].strip()] = current
                current = None
        else:
            own.append(line)
    if current is not None:
        raise CliError(f"{current[0]!r} has no matching {END.strip()!r} line: fix the file by "
                       "hand (or remove that block)")
    return own, blocks


def update_ssh_config(text: str, pods: list[Pod], only: str | None, user: str
                      ) -> tuple[str, list[str], list[str]]:
    """The new file text, the pod ids written and those removed (gone from the account). With
    `only`, that pod's entry alone is written; a stopped pod's entry is kept as it was."""
    own, blocks = split_blocks(text)
    listed = {p.id: p for p in pods}
    removed = sorted(pid for pid in blocks if pid not in listed)
    written = []
    for pod in pods:
        if (only is None or pod.id == only) and pod.ssh_endpoint() is not None:
            blocks[pod.id] = host_block(pod, user)
            written.append(pod.id)
    kept = {pid: b for pid, b in blocks.items() if pid in listed}
    while own and not own[-1].strip():
        own.pop()
    body = [*own, *([""] if own and kept else [])]
    for i, pid in enumerate(sorted(kept)):
        body += ([""] if i else []) + kept[pid]
    return ("\n".join(body) + "\n" if body else ""), sorted(written), removed


def cmd_ssh_config(env: Env, args: argparse.Namespace) -> int:
    path = (args.file or ROOT / SSH_CONFIG_FILE).expanduser().resolve()
    with env.client_factory() as client:
        pods = [p for p in client.list_pods() if p.status != "TERMINATED"]
        if args.pod is not None:
            pod = client.get_pod(args.pod)
            ssh_endpoint(pod)  # no endpoint: say why
            pods = [p for p in pods if p.id != pod.id] + [pod]
    try:
        old = path.read_text(encoding="utf-8") if path.exists() else ""
    except OSError as exc:
        raise CliError(f"{path}: {exc.strerror}") from None
    text, written, removed = update_ssh_config(old, pods, args.pod, args.user)
    if text != old:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    include = f"Include {_quoted(str(path))}"
    lines = [f"{path}: " + (", ".join(f"ssh {host_alias(p)}" for p in written) or
                            "no running pod with SSH")]
    if removed:
        lines.append(f"removed the entries of pods that are gone: {', '.join(removed)}")
    lines.append(f"once, at the top of ~/.ssh/config (before any Host line):\n  {include}")
    emit(env, args.json, {"file": str(path), "written": [host_alias(p) for p in written],
                          "removed": [host_alias(p) for p in removed], "include": include},
         "\n".join(lines))
    return 0


# -- parser ---------------------------------------------------------------------------------------


def add_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Adds logs, cp and ssh-config through provision.py's `add(name, help, handler)`."""
    sp = add("logs", "a pod's logs: the container output (REST v2), or a program's log over SSH "
             "(supervisorctl tail)", cmd_logs)
    sp.add_argument("pod")
    sp.add_argument("program", nargs="?",
                    help="a supervisord program (sshd, inference, jupyter, hf-sync, "
                    "idle-watchdog, fatal-reviver); default all, over SSH when following")
    sp.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    sp.add_argument("--tail", type=int, default=200, metavar="N",
                    help="container output: the last N lines (default %(default)s)")
    sp.add_argument("--user", default=SSH_USER, help=argparse.SUPPRESS)

    sp = add("cp", "copy files between this machine and a pod (POD:PATH on one side): rsync "
             "with progress, scp where rsync is missing; host key pinned", cmd_cp)
    sp.add_argument("src", help="LOCAL_PATH or POD:PATH")
    sp.add_argument("dst", help="LOCAL_PATH or POD:PATH")
    sp.add_argument("--user", default=SSH_USER, help="default %(default)s")

    sp = add("ssh-config", "write `Host chessbot-<id>` entries for running pods (ssh, scp, "
             "rsync, VS Code Remote) into a file ~/.ssh/config includes", cmd_ssh_config)
    sp.add_argument("pod", nargs="?", help="only this pod's entry (default: every running pod)")
    sp.add_argument("--file", type=Path, help=f"default {SSH_CONFIG_FILE} in the checkout")
    sp.add_argument("--user", default=SSH_USER, help="default %(default)s")
