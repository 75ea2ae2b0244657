"""gaze serve: the lab in a browser (machinegaze.web)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from machinegaze.cli._common import console, parse_float, set_threads
from machinegaze.cli._options import DeviceOpt, PrecisionOpt, resolve


def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (default: this machine only)"),
    port: int = typer.Option(8000, "--port"),
    network: Optional[str] = typer.Option(
        None, "--network", help="StyleGAN2 .pkl/.safetensors or model name (default: bundled)"
    ),
    detector: Optional[str] = typer.Option(
        None, "--detector", help="Detector file or name (default: bundled; 'none' switches detection off)"
    ),
    data_dir: Optional[Path] = typer.Option(
        None, "--data-dir", help="Gallery folder (default: ~/.local/share/machinegaze)"
    ),
    max_upload_mb: str = typer.Option("20", "--max-upload-mb", help="Largest upload accepted (413 above)"),
    workers: int = typer.Option(1, "--workers", help="Threads running long jobs (and quick requests at once)"),
    queue: int = typer.Option(8, "--queue", help="Jobs that may wait (429 when full)"),
    uncanny_dir: Optional[list[Path]] = typer.Option(
        None, "--uncanny-dir", help="A `gaze uncanny` run folder to browse (repeatable)"
    ),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads (1 is fastest on a busy machine)"),
    device: Optional[str] = DeviceOpt,
    precision: str = PrecisionOpt,
):
    """Serve the lab (Detect, Generate & Mix, Project, Dream, Uncanny, Gallery) as a local web page. Every tab
    computes on --device."""
    from machinegaze.web import ServeConfig
    from machinegaze.web.server import serve as run_server

    set_threads(threads)
    dev, _ = resolve(device, precision)  # a missing device or a bad precision: one line, before the server starts
    cfg = ServeConfig(
        host=host,
        port=port,
        network=network,
        detector=detector,
        data_dir=data_dir,
        max_upload_mb=parse_float(max_upload_mb, "max-upload-mb"),
        workers=workers,
        queue=queue,
        uncanny_dirs=tuple(uncanny_dir or ()),
        device=str(dev),
        precision=precision,
    )
    run_server(cfg, say=lambda msg: console.print(msg, highlight=False, markup=False))
