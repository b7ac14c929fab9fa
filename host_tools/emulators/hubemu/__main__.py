"""Run the Hub emulator on 127.0.0.1 for local rehearsal: point HF_ENDPOINT at the URL it prints
(and set HF_HUB_DISABLE_XET=1 before huggingface_hub is imported).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path

from host_tools.emulators.hubemu.server import DEFAULT_USER, HubEmulator


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m host_tools.emulators.hubemu",
        description="A local Hugging Face Hub emulator (repo create/delete/info/settings, "
        "preupload, LFS, commit to any branch, tree, paths-info, refs, commits, branches, tags, "
        "resolve, whoami) on 127.0.0.1, storing repos under --dir. Faults can be injected with "
        "POST /_emu/faults; GET /_emu/requests lists the requests served.",
    )
    p.add_argument("--dir", type=Path, required=True, help="storage directory (created if new)")
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    p.add_argument("--tree-page-size", type=int, default=1000, metavar="N",
                   help="entries per tree or commit listing page (default %(default)s)")
    p.add_argument("--token-file", type=Path, metavar="FILE",
                   help="accept only the tokens listed in FILE (one per line) for writes and "
                   "private repos; default: any token or none")
    p.add_argument("--user", default=DEFAULT_USER,
                   help="the user whoami names, commits' author (default %(default)s)")
    args = p.parse_args(argv)
    tokens = None
    if args.token_file is not None:
        try:
            lines = args.token_file.read_text(encoding="utf-8").split()
        except OSError as exc:
            p.error(f"--token-file {args.token_file}: {exc.strerror}")
        tokens = frozenset(lines)
    hub = HubEmulator(args.dir, args.port, args.tree_page_size, tokens, args.user)
    print(f"hubemu listening on {hub.url} (data in {args.dir})", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        hub.serve_forever()
    hub.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
