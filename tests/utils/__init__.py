"""Shared test code, one module per purpose; here the two helpers every tier uses, each once:
`wait_until` (poll with a deadline) and `free_port` (a loopback port the OS says is free).

The fixture modules (hubemu, localpod, containers) are pytest plugins named in the root
conftest's `pytest_plugins`: tests request their fixtures by name and never import them.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.05,
               what: str = "condition") -> T:
    """Poll until `predicate()` is truthy and return its value; fail naming `what` once
    `timeout` seconds have passed (the predicate is always asked at least once)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not met within {timeout:g} s")
        time.sleep(interval)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on when asked."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
