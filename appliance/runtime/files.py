"""Putting the bootstrap's files in place: the rendered configs, the secret files, --render-only.

Every file is written atomically with its mode (and owner) set before it appears, so a service
never reads half a config and a secret is never readable by the wrong account, even briefly.
Program files and secret files that the current settings no longer produce are removed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from appliance.atomic import atomic_write
from appliance.runtime.config import Layout
from appliance.runtime.render import Rendered


def write_file(path: Path, text: str, mode: int, uid: int = -1, gid: int = -1) -> None:
    """Atomic write with the mode (and owner; -1 keeps it) set before the file appears."""

    def write(fh: IO[bytes]) -> None:
        fh.write(text.encode("utf-8"))
        os.fchown(fh.fileno(), uid, gid)

    atomic_write(path, write, mode)


def write_secrets(layout: Layout, values: Mapping[str, str], gid: int) -> None:
    """One file per secret, root-owned and readable by group `gid`; other files there go."""
    for name, value in values.items():
        # No newline: Jupyter takes JUPYTER_TOKEN_FILE's content verbatim as the token.
        write_file(layout.secret_file(name), value, 0o440, 0, gid)
    for old in layout.secrets_dir.iterdir():
        if old.name not in values:
            old.unlink()


def install_supervisor(layout: Layout, rendered: Mapping[str, Rendered]) -> None:
    """supervisord.conf, the program files in conf.d (only those rendered) and supervisorctl."""
    conf_files = {n: r for n, r in rendered.items() if n.startswith("conf.d/")}
    for path, r in ((layout.supervisord_conf, rendered["supervisord.conf"]),
                    *((layout.supervisor_dir / n, r) for n, r in conf_files.items()),
                    (layout.supervisorctl, rendered["supervisorctl"])):
        write_file(path, r.text, r.mode)
    keep = {Path(n).name for n in conf_files}
    for old in layout.conf_d.glob("*.conf"):
        if old.name not in keep:
            old.unlink()


def write_render_dir(rendered: Mapping[str, Rendered], out: Path) -> list[Path]:
    """--render-only: every rendered file under `out` by its name, nothing anywhere else."""
    written = []
    for name, r in rendered.items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(r.text, encoding="utf-8")
        path.chmod(r.mode)
        written.append(path)
    return written
