"""The `gaze` command line: parse flags, call one library function, print a summary. No math here.

One module per command group (generate.py: generate/mix/interpolate/convert; project.py: project/breed; dream.py;
uncanny.py; detect.py; train.py: align/dataset/train/metrics; serve.py; tour.py); this file registers them in
the order `gaze --help` lists them. User errors (GazeError, bad flags) print one line and exit non-zero, never
a traceback.
"""

from __future__ import annotations

import os
import sys
from typing import Optional

import typer

from machinegaze import GazeError
from machinegaze.cli import detect, dream, generate, project, serve, tour, train, uncanny
from machinegaze.cli._common import app, console, print_error

app.command()(generate.generate)
app.command()(generate.mix)
app.command()(generate.interpolate)
app.command()(generate.convert)
app.command("align")(train.align_cmd)
app.add_typer(train.dataset_app, name="dataset")
app.command()(tour.tour)
app.add_typer(detect.detect_app, name="detect")
app.command()(dream.dream)
app.command("uncanny")(uncanny.uncanny_cmd)
app.command("project")(project.project_cmd)
app.command("breed")(project.breed_cmd)
app.command("train")(train.train_cmd)
app.command("metrics")(train.metrics_cmd)
app.command()(serve.serve)

__all__ = ["app", "main"]


def main(argv: Optional[list[str]] = None) -> None:
    from machinegaze.perf import tune_allocator

    tune_allocator()  # keep freed activation memory in-process: up to ~3x faster CPU inference (benchmarks/generator.py)
    try:
        rc = app(args=argv, standalone_mode=False)  # click returns a command's typer.Exit code in this mode
        if isinstance(rc, int) and rc != 0:
            sys.exit(rc)
    except GazeError as e:
        print_error(str(e))
        sys.exit(1)
    except typer.Abort:
        console.print("aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)
    except Exception as e:  # click usage errors and anything unexpected: one line, non-zero
        import click

        if isinstance(e, click.exceptions.ClickException):
            print_error(e.format_message())
            sys.exit(e.exit_code or 2)
        if isinstance(e, click.exceptions.Exit):
            sys.exit(e.exit_code)
        if os.environ.get("GAZE_DEBUG"):
            raise
        print_error(f"{type(e).__name__}: {e} (set GAZE_DEBUG=1 for a traceback)")
        sys.exit(1)
