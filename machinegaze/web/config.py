"""The web app's configuration (defaults match `gaze serve`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from machinegaze import GazeError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def default_data_dir() -> Path:
    """The user's data dir: $XDG_DATA_HOME/machinegaze, else ~/.local/share/machinegaze."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "machinegaze"


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    network: Optional[str] = None  # StyleGAN2 file or model name; None: the bundled face GAN
    detector: Optional[str] = None  # detector file or name; None: the bundled one
    data_dir: Optional[Path] = None  # None: default_data_dir()
    max_upload_mb: float = 20.0
    workers: int = 1
    queue: int = 8
    uncanny_dirs: tuple[Path, ...] = ()  # existing `gaze uncanny` run folders to browse
    max_pixels: int = 40_000_000  # uploads with more pixels are refused before decoding
    device: Optional[str] = None  # auto | cpu | cuda | cuda:N | mps; None: $GAZE_DEVICE, else auto
    precision: str = "auto"  # auto | fp32 | fp16 | bf16 (device.resolve_precision)

    def __post_init__(self):
        if not 0 <= self.port < 65536:
            raise GazeError(f"--port must be 0..65535, got {self.port}")
        if not 0 < self.max_upload_mb <= 1024:
            raise GazeError(f"--max-upload-mb must be in (0, 1024], got {self.max_upload_mb}")
        if not 1 <= self.workers <= 64:
            raise GazeError(f"--workers must be 1..64, got {self.workers}")
        if not 0 <= self.queue <= 10_000:
            raise GazeError(f"--queue must be 0..10000, got {self.queue}")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser() if self.data_dir is not None else default_data_dir()

    @property
    def is_loopback(self) -> bool:
        return self.host in LOOPBACK or self.host.startswith("127.")
