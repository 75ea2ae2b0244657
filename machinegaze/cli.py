"""The `gaze` command line: parse flags, call one library function, print a summary. No math here.

User errors (GazeError, bad flags) print one line and exit non-zero, never a traceback.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from machinegaze import GazeError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="machinegaze: see what face GANs and face classifiers see.")
console = Console(stderr=True)


# ---------------------------------------------------------------- flag parsing helpers
def parse_range_list(s: str, what: str = "seeds") -> list[int]:
    """NVlabs-style '0-7,12' -> [0..7, 12]. Bad ranges are user errors."""
    out: list[int] = []
    if s is None or not str(s).strip():
        raise GazeError(f"--{what}: empty list")
    for part in str(s).split(","):
        part = part.strip()
        try:
            if "-" in part[1:]:
                a, b = part.split("-", 1) if not part.startswith("-") else ("-" + part[1:].split("-", 1)[0], part[1:].split("-", 1)[1])
                lo, hi = int(a), int(b)
                if hi < lo:
                    raise GazeError(f"--{what}: range '{part}' goes backwards (did you mean {hi}-{lo}?)")
                out.extend(range(lo, hi + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise GazeError(f"--{what}: '{part}' is not an integer or a range like 0-7") from None
    if what == "seeds":
        bad = [v for v in out if not 0 <= v < 2 ** 32]
        if bad:
            raise GazeError(f"--seeds: {bad[0]} is out of range (seeds are 0 .. 2^32-1, as in NVlabs' scripts)")
    return out


def parse_float(s: str, what: str) -> float:
    try:
        v = float(s)
    except (TypeError, ValueError):
        raise GazeError(f"--{what}: '{s}' is not a number") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise GazeError(f"--{what}: '{s}' is not a finite number")
    return v


def progress_bar(description: str):
    """A Rich progress bar usable as a machinegaze.progress callback: `with progress_bar(..) as cb: f(progress=cb)`."""
    from contextlib import contextmanager

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    @contextmanager
    def cm():
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                      console=console, transient=False) as bar:
            task = bar.add_task(description, total=None, info="")

            def cb(p):
                info = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in p.info.items())
                bar.update(task, completed=p.step, total=p.total, info=info)
            yield cb
    return cm()


# ---------------------------------------------------------------- commands
# Each capability adds its commands below this line (keep them thin).

# --- end of commands ---


def main(argv: Optional[list[str]] = None) -> None:
    try:
        app(args=argv, standalone_mode=False)
    except GazeError as e:
        console.print(f"[red]error:[/red] {e}", highlight=False, markup=True)
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
            console.print(f"[red]error:[/red] {e.format_message()}", highlight=False)
            sys.exit(e.exit_code or 2)
        if isinstance(e, click.exceptions.Exit):
            sys.exit(e.exit_code)
        if os.environ.get("GAZE_DEBUG"):
            raise
        console.print(f"[red]error:[/red] {type(e).__name__}: {e} (set GAZE_DEBUG=1 for a traceback)", highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
