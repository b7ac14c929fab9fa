"""Root conftest: the fixture plugins every tier may use, loaded once here so that tests request
fixtures by name instead of importing them (tests/utils holds the code), and `refused_port`."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

pytest_plugins = [
    "tests.utils.hubemu",  # first: it sets huggingface_hub's environment before its import
    "tests.utils.localpod",
    "tests.utils.containers",
    "tests.unit.podjobs_harness",
]


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A loopback port this test holds without listening: a connection to it is refused, whatever
    else runs on the machine (unlike a fixed port such as 1, or a free port someone may take)."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield int(held.getsockname()[1])
