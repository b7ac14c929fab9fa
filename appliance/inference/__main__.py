"""`python -m appliance.inference`: serve the model with uvicorn (supervisord's `inference`).

The server's two busy threads, the event loop (HTTP, JSON, the python-chess replay) and the
forward thread, share the GIL. With Python's default 5 ms switch interval a loop busy under load
keeps the forward thread waiting that long each time it needs the GIL back; at GIL_SWITCH_S the
two run side by side on two cores."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import uvicorn

from appliance import settings
from appliance.inference.app import Service, create_app

GIL_SWITCH_S = 1e-4


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m appliance.inference",
                                description="Serve the chess move model over HTTP.")
    p.add_argument("--model", type=Path, help="checkpoint (default: INFERENCE_MODEL_PATH, else "
                   "the newest *.pt under $REPO_DIR/artifacts/)")
    p.add_argument("--host", help="address to listen on (default: INFERENCE_HOST, else 0.0.0.0)")
    p.add_argument("--port", type=int, help="port (default: INFERENCE_PORT, 8000)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"),
                   help="default: INFERENCE_DEVICE (auto = CUDA when available)")
    p.add_argument("--access-log", action="store_true", help="log every request")
    args = p.parse_args(argv)
    try:
        cfg = settings.load(settings.InferenceSettings)
        paths = settings.load(settings.PathSettings)
    except settings.SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=cfg.INFERENCE_LOG_LEVEL, format="%(asctime)s %(levelname)s "
                        "%(name)s: %(message)s")
    port = args.port if args.port is not None else cfg.INFERENCE_PORT
    if not 0 <= port <= 65535:
        print(f"error: --port {port}: expected 0..65535", file=sys.stderr)
        return 2
    service = Service(cfg, args.model or cfg.INFERENCE_MODEL_PATH, paths.REPO_DIR,
                      args.device or cfg.INFERENCE_DEVICE, progress=True)
    app = create_app(service)
    sys.setswitchinterval(GIL_SWITCH_S)
    uvicorn.run(app, host=args.host or cfg.listen_host("0.0.0.0"), port=port,
                log_level=cfg.INFERENCE_LOG_LEVEL.lower(), access_log=args.access_log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
