"""The `--device` and `--precision` options every computing command shares, and the one call that resolves them.

def cmd(..., device: Optional[str] = DeviceOpt, precision: str = PrecisionOpt):
    dev, prec = resolve(device, precision)
"""

from __future__ import annotations

from typing import Optional

import torch
import typer

from machinegaze.device import DEVICE_CHOICES, resolve_device, resolve_precision

DeviceOpt = typer.Option(
    None, "--device", help=f"{DEVICE_CHOICES} (default: $GAZE_DEVICE, else auto: CUDA, then MPS, then CPU)"
)
PrecisionOpt = typer.Option(
    "auto",
    "--precision",
    help="auto | fp32 | fp16 | bf16 | mixed (auto: mixed on CUDA, fp32 elsewhere; mixed: a checkpoint's own fp16 blocks, as bf16 on a CPU)",
)


def resolve(device: Optional[str], precision: Optional[str] = "auto") -> tuple[torch.device, str]:
    """(torch.device, precision) for the flags; a missing device is a one-line GazeError."""
    dev = resolve_device(device)
    return dev, resolve_precision(precision, dev)
