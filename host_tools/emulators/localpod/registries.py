"""localpod's container registry auths: a pod or template may name only one the account has
(their CRUD routes are in rest.py; a password is never answered)."""

from __future__ import annotations

from host_tools.emulators.localpod.common import AccountBase, ApiError


class RegistriesMixin(AccountBase):
    def check_registry(self, registry: str | None) -> None:
        if registry is not None and registry not in self.registries:
            raise ApiError(400, f"container registry auth {registry!r} not found")
