"""The one keyring lookup, and the keyring entries the project reads (one place, so the clients
and their `keyring set ...` hints agree). No keyring package, no usable backend, or a backend that
fails: all mean "no secret there", and the caller goes on to its next source or its error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger("appliance.credentials")


def keyring_secret(service: str, username: str) -> str | None:
    """The secret stored under (service, username) in the system keyring, or None."""
    try:
        import keyring  # imported late: a broken keyring install must not break a client

        return keyring.get_password(service, username) or None
    except Exception as exc:  # noqa: BLE001 (any keyring failure means "no secret there")
        log.debug("keyring lookup (service=%s) failed: %s", service, type(exc).__name__)
        return None


@dataclass(frozen=True)
class KeyringEntry:
    service: str
    username: str

    def lookup(self) -> str | None:
        return keyring_secret(self.service, self.username)

    @property
    def set_command(self) -> str:
        """The command that stores this secret (the keyring CLI prompts for it)."""
        return f"keyring set {self.service} {self.username}"


HF_TOKEN_ENTRY = KeyringEntry("huggingface", "codex_hf_write_token")
RUNPOD_KEY_ENTRY = KeyringEntry("runpod", "RUNPOD_API_KEY")
