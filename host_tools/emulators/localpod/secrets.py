"""localpod's account secrets: `{{ RUNPOD_SECRET_<name> }}` in a pod's env is resolved into its
container's env, never into an answer; a pod may refer only to secrets the account has.
"""

from __future__ import annotations

import re

from host_tools.emulators.localpod.common import AccountBase, ApiError

SECRET_REF = re.compile(r"\{\{\s*RUNPOD_SECRET_([A-Za-z0-9_-]+)\s*\}\}")


def secret_refs(env: dict[str, str]) -> dict[str, list[str]]:
    """The secrets an env refers to, each with the variables that name it."""
    found: dict[str, list[str]] = {}
    for var, value in env.items():
        for name in SECRET_REF.findall(value):
            found.setdefault(name, []).append(var)
    return found


def resolve_secrets(env: dict[str, str], secrets_: dict[str, str]) -> dict[str, str]:
    """The env with every secret reference replaced by the secret's value (KeyError: unknown)."""
    return {k: SECRET_REF.sub(lambda m: secrets_[m.group(1)], v) for k, v in env.items()}


class SecretsMixin(AccountBase):
    def check_secrets(self, env: dict[str, str]) -> None:
        """ApiError 400 naming the first secret the env refers to that the account lacks."""
        for name, variables in secret_refs(env).items():
            if name not in self.secrets:
                raise ApiError(400, f"secret {name!r} (referenced by env "
                               f"{', '.join(variables)}) does not exist: create it first")
