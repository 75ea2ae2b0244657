"""Where tensors live and at what precision: one place that turns `--device` / `--precision` into torch objects.

    device     auto | cpu | cuda | cuda:N | mps       (or the GAZE_DEVICE environment variable)
               auto picks CUDA, then Apple MPS, then the CPU. Under torchrun a bare `cuda` means
               cuda:LOCAL_RANK, so every process gets its own GPU.
    precision  auto | fp32 | fp16 | bf16 | mixed
               auto is fp32 on the CPU and MPS (bit-exact with the golden files) and mixed on CUDA.
               mixed: StyleGAN2 runs its reduced precision in the blocks its checkpoint flags (num_fp16_res,
               clamped by conv_clamp): fp16 on CUDA, bfloat16 on a CPU (fast where it has AMX or AVX512-BF16
               units, about 2x at 1024 px; pixels differ from fp32 by a few levels, as NVIDIA's fp16 ones
               do). The other networks (detector, LPIPS, dream nets) run under bf16 autocast on a GPU with bf16,
               fp16 autocast on other GPUs, and fp32 on a CPU.

Library functions take a ready `torch.device` and a precision string; only entry points (CLI, web, benchmarks)
call `resolve_device`.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import re
from typing import Optional

import torch

from machinegaze import GazeError

DEVICE_CHOICES = "auto | cpu | cuda | cuda:N | mps"
PRECISIONS = ("auto", "fp32", "fp16", "bf16", "mixed")
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def _local_rank() -> int:
    try:
        return int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        return 0


def resolve_device(spec: Optional[str] = None) -> torch.device:
    """A torch.device for `spec` (None: $GAZE_DEVICE, else 'auto'). A device that is not there is a GazeError
    naming it, so the CLI prints one line and exits non-zero."""
    raw = spec if spec not in (None, "") else os.environ.get("GAZE_DEVICE") or "auto"
    s = str(raw).strip().lower()
    where = "--device" if spec not in (None, "") else "GAZE_DEVICE"
    if s == "auto":
        if torch.cuda.is_available():
            s = "cuda"
        elif _mps_available():
            s = "mps"
        else:
            s = "cpu"
    m = re.fullmatch(r"(cpu|mps|cuda)(?::(\d+))?", s)
    if m is None or (m.group(1) != "cuda" and m.group(2) is not None and m.group(2) != "0"):
        raise GazeError(f"{where}: '{raw}' is not a device (choose from: {DEVICE_CHOICES})")
    kind, index = m.group(1), m.group(2)
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "mps":
        if not _mps_available():
            raise GazeError(f"{where} {raw}: Apple MPS is not available on this machine")
        return torch.device("mps")
    if not torch.cuda.is_available():
        build = "a CPU-only torch build" if torch.version.cuda is None else "no CUDA GPU visible"
        raise GazeError(f"{where} {raw}: CUDA is not available here (torch {torch.__version__}, {build})")
    count = torch.cuda.device_count()
    i = int(index) if index is not None else _local_rank() % count
    if i >= count:
        raise GazeError(f"{where} {raw}: there are only {count} CUDA device(s) (cuda:0 .. cuda:{count - 1})")
    return torch.device("cuda", i)


def describe(device: torch.device) -> str:
    """'cuda:0 (NVIDIA H100 80GB HBM3)', 'cpu (4 threads)', 'mps'."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return str(device)


# ---------------------------------------------------------------- precision
def resolve_precision(precision: Optional[str], device: torch.device) -> str:
    """'fp32' | 'fp16' | 'bf16' | 'mixed' for a device. 'mixed' (auto on CUDA) means: networks with their own
    fp16 plan (StyleGAN2's num_fp16_res) follow it; others use autocast_dtype(device)."""
    p = (precision or "auto").strip().lower()
    if p not in PRECISIONS:
        raise GazeError(f"--precision: '{precision}' is not one of {', '.join(PRECISIONS)}")
    if p == "auto":
        return "mixed" if device.type == "cuda" else "fp32"
    if p == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise GazeError(f"--precision bf16: {describe(device)} has no bfloat16 support (use fp16)")
    return p


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (AMX tiles or AVX512-BF16): there `mixed`
    (a StyleGAN checkpoint's own reduced-precision blocks, in bfloat16) pays, about 2x at 1024 px."""
    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except AttributeError:  # an older torch without the probes
        return False


def autocast_dtype(device: torch.device, precision: str) -> Optional[torch.dtype]:
    """The autocast dtype for the non-StyleGAN networks, or None for plain fp32. 'mixed' on a CPU leaves them
    in fp32 (it only switches on StyleGAN's own bfloat16 blocks)."""
    if precision in _DTYPES:
        return _DTYPES[precision]
    if precision == "mixed" and device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def autocast(device: torch.device, precision: str):
    """A context that runs the enclosed forward passes at `precision` (nothing at all for fp32)."""
    dtype = autocast_dtype(device, precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def synthesis_kwargs(synthesis: torch.nn.Module, precision: str) -> dict:
    """Keyword arguments that switch a StyleGAN synthesis network's own fp16 blocks on or off.

    The networks take `force_fp32` as NVIDIA's do (fp16 only in blocks flagged use_fp16, activations
    clamped at conv_clamp). Networks without that switch get {} and run as they are (fp32)."""
    try:
        params = inspect.signature(synthesis.forward).parameters
    except (TypeError, ValueError):
        return {}
    if "force_fp32" not in params:
        return {}
    return {"force_fp32": precision not in ("mixed", "fp16")}


def uses_autocast_for_synthesis(synthesis: torch.nn.Module, precision: str) -> bool:
    """Networks without their own fp16 switch: a forced fp16/bf16 precision falls back to autocast."""
    return precision in _DTYPES and not synthesis_kwargs(synthesis, precision)


# ---------------------------------------------------------------- memory layout, timing, randomness
def prefers_channels_last(device: torch.device, precision: str) -> bool:
    """Channels-last pays on CUDA tensor cores (fp16/bf16 convolutions); on the CPU for dense fp32 convs too,
    but it changes summation order, so fp32 on the CPU keeps the default layout (bit-exact goldens)."""
    return device.type == "cuda" and precision != "fp32"


def to_channels_last(module: torch.nn.Module, device: torch.device, precision: str) -> torch.nn.Module:
    """`module` in channels-last memory format where that pays (see prefers_channels_last), else unchanged."""
    if prefers_channels_last(device, precision):
        return module.to(memory_format=torch.channels_last)
    return module


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels (before reading a clock)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.synchronize()


def accumulate_dtype(device: torch.device) -> torch.dtype:
    """float64 for sums of statistics, except on MPS, which has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


def generator(device: torch.device, seed: int) -> torch.Generator:
    """A torch.Generator on `device` seeded with `seed` (CPU generators for the CPU and MPS-less builds)."""
    return torch.Generator(device=device).manual_seed(int(seed))


def peak_memory_bytes(device: torch.device) -> Optional[int]:
    """Peak allocated device memory since the last reset (CUDA), else None."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return None
