"""`python -m appliance.runtime.status`: the pod's health for an operator (also as runner over SSH).

Every program's state and uptime, the inference API's /healthz, FATAL revivals, the last
boot's phases and the idle watchdog's summary. Exit 0 when every enabled program runs, 1 when one
does not, 2 on bad settings, 3 when supervisord cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from appliance import settings
from appliance.atomic import read_json
from appliance.runtime.config import Layout, PodConfig
from appliance.runtime.health import TIMEOUT_S, gather, local_url, render_table
from appliance.watchdog.decision import STATE_FILE, summary_line

EXIT_OK, EXIT_UNHEALTHY, EXIT_SETTINGS, EXIT_UNREACHABLE = 0, 1, 2, 3


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m appliance.runtime.status", description=__doc__.split("\n\n")[0],
        epilog="exit status: 0 healthy, 1 a program is not running, 2 bad settings, "
        "3 supervisord unreachable")
    p.add_argument("--json", action="store_true", help="one JSON object, for machines")
    p.add_argument("--timeout", type=float, default=TIMEOUT_S,
                   help=f"seconds per request (default {TIMEOUT_S:g})")
    args = p.parse_args(argv)
    try:
        cfg = PodConfig.load()
    except settings.SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_SETTINGS
    layout = Layout.of(cfg.runtime)
    boot = read_json(layout.boot_record) or {}
    programs = boot.get("programs")
    report = gather(
        socket_path=layout.socket,
        expected=list(programs) if isinstance(programs, list) else None,
        left_out=dict(boot.get("left_out") or {}),
        records=layout.fatal_dir,
        timing_log=cfg.paths.timing_log,
        inference_url=local_url(cfg.inference.listen_host(cfg.runtime.APPLIANCE_BIND_HOST),
                                cfg.inference.INFERENCE_PORT, "/healthz"),
        timeout=args.timeout,
    )
    # The running watchdog's own view (its state file): reading signals here would need its
    # secrets and could disagree with what it decides.
    watchdog = read_json(layout.state_dir / STATE_FILE) \
        if cfg.services.START_IDLE_WATCHDOG or cfg.max_hours is not None else None
    if args.json:
        print(json.dumps({**report.to_json(), "watchdog": watchdog}, indent=2))
    else:
        lines = render_table(report).splitlines()
        if watchdog is not None:
            lines.insert(len(lines) - 1, summary_line(watchdog))
        print("\n".join(lines))
    if not report.reachable:
        return EXIT_UNREACHABLE
    return EXIT_OK if report.ok else EXIT_UNHEALTHY


if __name__ == "__main__":
    sys.exit(main())
