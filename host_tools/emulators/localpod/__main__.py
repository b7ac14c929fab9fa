"""Run localpod on 127.0.0.1: point RUNPOD_REST_URL / RUNPOD_GRAPHQL_URL (or the runpod SDK's
RUNPOD_API_BASE_URL) at the URLs it prints; pods are records only unless --engine is given.
Secrets that `{{ RUNPOD_SECRET_<name> }}` refers to come from --secrets-file or
POST /_localpod/secrets.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from host_tools.emulators.localpod.common import DEFAULT_IMAGE
from host_tools.emulators.localpod.containers import ContainerBackend
from host_tools.emulators.localpod.pods import PodBackend, RecordsBackend
from host_tools.emulators.localpod.server import LocalPodServer
from host_tools.emulators.localpod.state import Account


def read_secrets(path: Path) -> dict[str, str]:
    """NAME=VALUE lines (# comments); ValueError naming the first bad line (never its value)."""
    secrets: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep or not value or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name.strip()):
            raise ValueError(f"{path}:{number}: not NAME=VALUE with a secret name of letters, "
                             "digits, _ or -")
        secrets[name.strip()] = value
    return secrets


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m host_tools.emulators.localpod",
        description="A local RunPod control plane: REST v2 (/v2) and the GraphQL subset "
        "(/graphql) on 127.0.0.1. Faults: POST /_localpod/faults; request log: "
        "GET /_localpod/requests; secrets: POST /_localpod/secrets (with the account key or the "
        "printed control token as bearer token).",
    )
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    p.add_argument("--engine", choices=["podman", "docker"],
                   help="run pods as containers with this engine (default: records only)")
    p.add_argument("--host-network", action="store_true",
                   help="with --engine: pods use the host's network, their services on free "
                   "127.0.0.1 ports, so they reach localpod and other loopback servers")
    p.add_argument("--stop-delay", type=float, default=0.0, metavar="SECONDS",
                   help="with --engine: a stop answers at once and removes the container this "
                   "much later, as RunPod does (default %(default)s: before answering)")
    p.add_argument("--image", default=DEFAULT_IMAGE, help="image of the templates "
                   "(default %(default)s)")
    p.add_argument("--api-key-file", type=Path, metavar="FILE",
                   help="accept only the account keys listed in FILE (one per line); default: "
                   "any non-empty key")
    p.add_argument("--public-key-file", type=Path, metavar="FILE",
                   help="SSH public keys injected into pods as PUBLIC_KEY")
    p.add_argument("--secrets-file", type=Path, metavar="FILE",
                   help="the account's secrets, NAME=VALUE lines, for {{ RUNPOD_SECRET_<NAME> }} "
                   "references in pods' env (more with POST /_localpod/secrets)")
    p.add_argument("--boot-polls", type=int, default=1, metavar="N",
                   help="reads a records-only pod stays booting (default %(default)s)")
    args = p.parse_args(argv)
    keys: set[str] = set()
    public_key = ""
    secrets: dict[str, str] = {}
    try:
        if args.secrets_file:
            secrets = read_secrets(args.secrets_file)
        if args.api_key_file:
            keys = set(args.api_key_file.read_text(encoding="utf-8").split())
        if args.public_key_file:
            public_key = args.public_key_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        p.error(f"{exc.filename}: {exc.strerror}")
    except ValueError as exc:
        p.error(str(exc))
    if args.host_network and not args.engine:
        p.error("--host-network needs --engine")
    backend: PodBackend = (ContainerBackend(args.engine, host_network=args.host_network,
                                            stop_delay_s=args.stop_delay)
                           if args.engine else RecordsBackend())
    server = LocalPodServer(Account(backend, keys, boot_polls=args.boot_polls, image=args.image,
                                    public_key=public_key), args.port)
    server.account.secrets.update(secrets)
    print(f"localpod listening: RUNPOD_REST_URL={server.rest_url} "
          f"RUNPOD_GRAPHQL_URL={server.graphql_url} RUNPOD_API_BASE_URL={server.url}\n"
          f"localpod controls ({server.url}/_localpod/faults, /_localpod/requests, "
          "/_localpod/secrets): "
          f"Authorization: Bearer {server.account.control_token}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    server.stop()  # closes the socket, removes every pod's container and volume
    return 0


if __name__ == "__main__":
    sys.exit(main())
