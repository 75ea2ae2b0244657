"""The one progress callback type that long loops report through (CLI: Rich bar; web: job events)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class Progress:
    step: int
    total: int
    info: dict[str, Any] = field(default_factory=dict)


ProgressFn = Optional[Callable[[Progress], None]]


def report(fn: ProgressFn, step: int, total: int, **info: Any) -> None:
    """Call the callback if there is one. A callback may raise to cancel the loop."""
    if fn is not None:
        fn(Progress(step, total, dict(info)))
