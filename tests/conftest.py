"""Root conftest: the fixture plugins every tier may use, loaded once here so that tests request
fixtures by name instead of importing them (tests/utils holds the code), and `refused_port`."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from appliance.legacy_env import OLD_VARIABLES

pytest_plugins = [
    "tests.utils.hubemu",  # first: it sets huggingface_hub's environment before its import
    "tests.utils.localpod",
    "tests.utils.containers",
    "tests.unit.podjobs_harness",
    "tests.unit.process_fakes",
    "tests.unit.watchdog_fakes",
]


@pytest.fixture(autouse=True)
def no_predecessor_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """The predecessor's names (OUTPUT_PATH, VENV_DIR, ...) in the shell never reach a test: every
    settings class reads them."""
    for var in OLD_VARIABLES:
        monkeypatch.delenv(var.name, raising=False)


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A loopback port this test holds without listening: a connection to it is refused, whatever
    else runs on the machine (unlike a fixed port such as 1, or a free port someone may take)."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield int(held.getsockname()[1])
