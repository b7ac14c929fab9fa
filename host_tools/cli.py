"""What the workstation CLIs (provision.py with its pod jobs, the datasets CLI) share: the error
a person at the terminal reads, the seams a command touches (Env), output as text or JSON, tables,
confirmation, settings errors as usage errors, and the command line a tool records.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO, TypeVar

import httpx
from pydantic_settings import BaseSettings

from appliance.runpod import RunpodClient
from appliance.settings import SettingsError, load


class CliError(Exception):
    """A message for the person at the terminal; exit status 1 (2 for bad usage)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def run_remote(argv: list[str], stdin: Path | None, stdout: Path | None) -> int:
    """A tool's ssh command: stdin from a file, stdout into a file or onto stderr (progress)."""
    with ExitStack() as stack:
        src = stack.enter_context(stdin.open("rb")) if stdin else subprocess.DEVNULL
        dst = stack.enter_context(stdout.open("wb")) if stdout else sys.stderr
        return subprocess.call(argv, stdin=src, stdout=dst)


class LineStream(Protocol):
    def __iter__(self) -> Iterator[str]: ...

    def close(self) -> None: ...


class ProcessLines:
    """A command's stdout as lines while it runs (ssh ... tail -F); close() ends the command and
    with it the iteration."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, bufsize=1)

    def __iter__(self) -> Iterator[str]:
        assert self.proc.stdout is not None
        return iter(self.proc.stdout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@dataclass
class Env:
    """What the commands touch outside themselves; tests replace any of it."""

    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    client_factory: Callable[[], RunpodClient] = RunpodClient
    run: Callable[[Sequence[str]], int] = lambda argv: subprocess.call(list(argv))
    is_tty: Callable[[], bool] = lambda: sys.stdin.isatty()
    ask: Callable[[str], str] = input
    sleep: Callable[[float], None] = time.sleep
    monotonic: Callable[[], float] = time.monotonic
    clock: Callable[[], float] = time.time  # wall clock (epoch seconds), for costs so far
    which: Callable[[str], str | None] = shutil.which
    remote: Callable[[list[str], Path | None, Path | None], int] = \
        lambda argv, stdin, stdout: run_remote(argv, stdin, stdout)
    # A command whose output is read while it runs: an iterable of lines with close().
    stream: Callable[[list[str]], LineStream] = ProcessLines
    http_get: Callable[[str], httpx.Response] = lambda url: httpx.get(url, timeout=15)


def table(rows: list[list[str]], headers: list[str]) -> str:
    """Left-aligned columns two spaces apart, trailing blanks trimmed."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in [headers, *rows]]
    return "\n".join(lines)


def emit(env: Env, as_json: bool, data: Any, text: str) -> None:
    """The result on env.out: indented, sorted JSON with --json, else the text."""
    print(json.dumps(data, indent=2, sort_keys=True) if as_json else text, file=env.out)


def price(value: float | None) -> str:
    return "-" if value is None else f"${value:.2f}/h"


def usd(value: float | None) -> str:
    return "-" if value is None else f"${value:.2f}"


def confirm(env: Env, yes: bool, question: str) -> None:
    """Ask on a terminal unless --yes; anything but y/yes cancels (CliError)."""
    if yes or not env.is_tty():
        return
    if env.ask(f"{question} [y/N] ").strip().lower() not in ("y", "yes"):
        raise CliError("cancelled, nothing changed")


S = TypeVar("S", bound=BaseSettings)


class Named(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str: ...


N = TypeVar("N", bound=Named)


def find_by_ref(items: Sequence[N], ref: str, what: str, listing: str) -> N:
    """The item whose id, else whose name, is `ref`. None found, or a name several items share,
    is a CliError: names are not unique on RunPod, so an ambiguous one is never acted on."""
    found = [i for i in items if i.id == ref] or [i for i in items if i.name == ref]
    if not found:
        raise CliError(f"no {what} has the id or name {ref!r}; `{listing}` shows them")
    if len(found) > 1:
        raise CliError(f"{len(found)} {what}s are named {ref!r} "
                       f"({', '.join(i.id for i in found)}): give the id")
    return found[0]


def load_settings(cls: type[S]) -> S:
    """`cls` from the environment; a bad variable is a usage error (exit 2) naming it."""
    try:
        return load(cls)
    except SettingsError as exc:
        raise CliError(str(exc), 2) from None


def progress_wanted(as_json: bool) -> bool:
    """Progress bars only for a person watching stderr, never around JSON output."""
    return sys.stderr.isatty() and not as_json


def recorded_command(module: str, argv: Sequence[str]) -> str:
    """`python -m MODULE ARGV` as a tool records it (e.g. in a manifest), without --token."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--token":
            skip = True
            continue
        if arg.startswith("--token="):
            continue
        kept.append(arg)
    return shlex.join(["python", "-m", module, *kept])
