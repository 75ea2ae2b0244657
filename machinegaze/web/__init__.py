"""`gaze serve`: the lab in a browser (FastAPI app + one static page). Nothing is loaded at import time."""

from __future__ import annotations

from machinegaze.web.config import ServeConfig, default_data_dir

__all__ = ["ServeConfig", "create_app", "default_data_dir"]


def create_app(config: ServeConfig | None = None):
    """The FastAPI app for `config` (see machinegaze.web.app.create_app)."""
    from machinegaze.web.app import create_app as _create

    return _create(config)
