"""appliance.credentials: the one keyring lookup against keyring backends set by the test (never
the machine's own keyring): a secret present, none stored, no backend, a failing backend, and no
keyring package at all."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator

import keyring
import pytest
from keyring.backend import KeyringBackend
from keyring.backends import fail
from keyring.errors import KeyringLocked, PasswordDeleteError

from appliance.credentials import (
    HF_TOKEN_ENTRY,
    RUNPOD_KEY_ENTRY,
    KeyringEntry,
    keyring_secret,
)

SetKeyring = Callable[[KeyringBackend], None]


class MemoryKeyring(KeyringBackend):
    priority = 0  # only ever chosen by set_keyring

    def __init__(self, secrets: dict[tuple[str, str], str]) -> None:
        super().__init__()
        self.secrets = secrets
        self.asked: list[tuple[str, str]] = []

    def get_password(self, service: str, username: str) -> str | None:
        self.asked.append((service, username))
        return self.secrets.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.secrets[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        if self.secrets.pop((service, username), None) is None:
            raise PasswordDeleteError(username)


class FailingKeyring(MemoryKeyring):
    def __init__(self, error: Exception) -> None:
        super().__init__({})
        self.error = error

    def get_password(self, service: str, username: str) -> str | None:
        raise self.error


@pytest.fixture
def use_keyring() -> Iterator[SetKeyring]:
    """Set a backend for one test; afterwards the "no keyring" backend, never the machine's."""
    yield keyring.set_keyring
    keyring.set_keyring(fail.Keyring())


def test_a_stored_secret_is_found(use_keyring: SetKeyring) -> None:
    ring = MemoryKeyring({("runpod", "RUNPOD_API_KEY"): "rp-key",
                          ("huggingface", "codex_hf_write_token"): "hf-token"})
    use_keyring(ring)
    assert keyring_secret("runpod", "RUNPOD_API_KEY") == "rp-key"
    assert RUNPOD_KEY_ENTRY.lookup() == "rp-key"
    assert HF_TOKEN_ENTRY.lookup() == "hf-token"
    assert ring.asked == [("runpod", "RUNPOD_API_KEY"), ("runpod", "RUNPOD_API_KEY"),
                          ("huggingface", "codex_hf_write_token")]


def test_nothing_stored_or_an_empty_secret_is_none(use_keyring: SetKeyring) -> None:
    use_keyring(MemoryKeyring({("svc", "empty"): ""}))
    assert keyring_secret("svc", "missing") is None
    assert keyring_secret("svc", "empty") is None


def test_no_backend_is_none(use_keyring: SetKeyring) -> None:
    use_keyring(fail.Keyring())
    assert keyring_secret("runpod", "RUNPOD_API_KEY") is None


@pytest.mark.parametrize("error", [KeyringLocked("locked"), RuntimeError("dbus"),
                                   OSError(5, "I/O error")])
def test_a_failing_backend_is_none(use_keyring: SetKeyring, error: Exception) -> None:
    use_keyring(FailingKeyring(error))
    assert keyring_secret("huggingface", "codex_hf_write_token") is None


def test_no_keyring_package_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "keyring", None)  # `import keyring` raises ImportError
    assert keyring_secret("runpod", "RUNPOD_API_KEY") is None


def test_the_documented_set_commands() -> None:
    assert HF_TOKEN_ENTRY.set_command == "keyring set huggingface codex_hf_write_token"
    assert RUNPOD_KEY_ENTRY.set_command == "keyring set runpod RUNPOD_API_KEY"
    assert KeyringEntry("s", "u").set_command == "keyring set s u"
