"""What every command module shares: the Typer app, the stderr console, flag parsing, the progress bar,
thread settings and the one-line error printer."""

from __future__ import annotations

import sys
from typing import Optional

import typer
from rich.console import Console

from machinegaze import GazeError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="machinegaze: see what face GANs and face classifiers see.",
)
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
                a, b = (
                    part.split("-", 1)
                    if not part.startswith("-")
                    else ("-" + part[1:].split("-", 1)[0], part[1:].split("-", 1)[1])
                )
                lo, hi = int(a), int(b)
                if hi < lo:
                    raise GazeError(f"--{what}: range '{part}' goes backwards (did you mean {hi}-{lo}?)")
                out.extend(range(lo, hi + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise GazeError(f"--{what}: '{part}' is not an integer or a range like 0-7") from None
    if what == "seeds":
        bad = [v for v in out if not 0 <= v < 2**32]
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


LOG_EVERY_S = 30.0  # without a terminal (nohup, CI, a log file) one plain progress line per this many seconds


def progress_bar(description: str, every_s: float = LOG_EVERY_S, out: Optional[Console] = None):
    """A Rich progress bar usable as a machinegaze.progress callback: `with progress_bar(..) as cb: f(progress=cb)`.
    When the console is not a terminal (a redirected log), plain lines instead: the first step, then at most one
    every `every_s` seconds, and the last."""
    import time
    from contextlib import contextmanager

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    out = out or console

    def info_of(p) -> str:
        return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in p.info.items())

    @contextmanager
    def plain():
        last = [-float("inf")]

        def cb(p):
            now = time.monotonic()
            if now - last[0] >= every_s or (p.total and p.step >= p.total):
                last[0] = now
                done = f"{p.step}/{p.total}" if p.total else f"{p.step}"
                out.print(f"{description} {done} {info_of(p)}".rstrip(), markup=False, highlight=False)

        yield cb

    @contextmanager
    def cm():
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=out,
            transient=False,
        ) as bar:
            task = bar.add_task(description, total=None, info="")

            def cb(p):
                bar.update(task, completed=p.step, total=p.total, info=info_of(p))

            yield cb

    return cm() if out.is_terminal else plain()


def set_threads(threads: Optional[int]) -> None:
    if threads is not None:
        if threads < 1:
            raise GazeError(f"--threads must be >= 1, got {threads}")
        import torch

        torch.set_num_threads(threads)


def print_list(title: str, items: list[str], limit: int = 20) -> None:
    if not items:
        return
    typer.echo(f"{title} ({len(items)}):")
    for it in items[:limit]:
        typer.echo(f"  {it}")
    if len(items) > limit:
        typer.echo(f"  ... and {len(items) - limit} more")


def print_error(msg: str) -> None:
    """One line on stderr, never wrapped."""
    msg = " ".join(str(msg).split())
    sys.stderr.write(f"error: {msg}\n")
    sys.stderr.flush()
