"""Run the app with uvicorn (what `gaze serve` calls)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from machinegaze.web.config import ServeConfig


def serve(cfg: ServeConfig, say: Callable[[str], None] = print) -> None:
    """Open the gallery (a damaged or foreign database stops here with a GazeError), then serve until Ctrl-C."""
    import uvicorn

    from machinegaze.device import describe
    from machinegaze.web.app import create_app

    app = create_app(cfg)
    lab = app.state.lab
    say(f"gallery: {lab.gallery.db_path} (schema v{lab.gallery.version})")
    for what, path, reason in (
        ("network", lab.network_path, lab.network_reason),
        ("detector", lab.detector_path, lab.detector_reason),
    ):
        say(f"{what}: {path}" if path is not None else f"{what}: unavailable - {reason}")
    say(f"device: {describe(lab.device)}, precision {lab.precision}")
    if not cfg.is_loopback:
        say(f"warning: listening on {cfg.host}: anyone who can reach this machine can use the lab and read its gallery")
    shown = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    say(f"open http://{shown}:{cfg.port}/  (API docs at /docs; Ctrl-C stops)")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    uvicorn.run(
        app,
        host=cfg.host,
        port=cfg.port,
        log_level="warning",
        timeout_graceful_shutdown=3,
        limit_concurrency=256,
        access_log=False,
    )
