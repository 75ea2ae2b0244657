"""gaze tour: every capability on the bundled models, one HTML page."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from machinegaze.cli._common import console
from machinegaze.cli._options import DeviceOpt, PrecisionOpt, resolve


def tour(
    outdir: Path = typer.Option(Path("tour"), "--outdir"),
    network: Optional[str] = typer.Option(None, "--network", help="Default: the bundled face GAN"),
    faces: Optional[Path] = typer.Option(None, "--faces", help="A folder of your own faces for the detector stop"),
    quick: bool = typer.Option(False, "--quick", help="Fewer frames and steps"),
    device: Optional[str] = DeviceOpt,
    precision: str = PrecisionOpt,
):
    """Run every capability on the bundled models and write OUTDIR/index.html."""
    from machinegaze.perf import tune_allocator
    from machinegaze.tour import TourConfig, run_tour

    dev, prec = resolve(device, precision)
    tune_allocator()

    def on_stop(s):
        status = f"skipped ({s.skipped})" if s.skipped else f"{len(s.files)} files"
        console.print(f"  {s.title}: {status} [{s.seconds:.1f} s]", highlight=False, markup=False)

    cfg = TourConfig(outdir=outdir, network=network, faces=faces, quick=quick)
    index, stops = run_tour(cfg, on_stop=on_stop, device=dev, precision=prec)
    print(f"wrote {index}")
