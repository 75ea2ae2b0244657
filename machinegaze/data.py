"""Images at the edges: files <-> tensors (float32, NCHW, RGB, [-1, 1]), grids, atomic writes.

Every image that enters machinegaze goes through `load_image` (decoded, verified, EXIF-rotated, converted to
RGB, guarded against decompression bombs); every image that leaves goes through `save_image`.
"""
from __future__ import annotations

import contextlib
import io
import os
import tempfile
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from machinegaze import GazeError

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".pgm", ".ppm", ".tif", ".tiff", ".gif"}
MAX_PIXELS = 64_000_000  # ~8000x8000; larger images are refused before decoding (decompression-bomb guard)
MIN_SIDE = 8


# ---------------------------------------------------------------- atomic writes
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path` (never a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


# ---------------------------------------------------------------- decoding
def open_image(source: str | os.PathLike | bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode an image file (or bytes) into an RGB PIL image, or raise GazeError with one clear line."""
    name = "upload" if isinstance(source, (bytes, bytearray)) else str(source)
    if not isinstance(source, (bytes, bytearray)):
        p = Path(source)
        if not p.exists():
            raise GazeError(f"no such file: {p}")
        if p.is_dir():
            raise GazeError(f"expected an image file, got a directory: {p}")
    fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    old = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = max_pixels
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(fp)
            w, h = img.size
            if w * h > max_pixels:
                raise GazeError(f"{name}: image is {w}x{h}, larger than the limit of {max_pixels} pixels")
            img.load()
    except GazeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise GazeError(f"{name}: refused, image too large (decompression-bomb guard): {e}") from None
    except UnidentifiedImageError:
        raise GazeError(f"{name}: not an image file (could not decode it)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise GazeError(f"{name}: corrupt or truncated image ({e})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = old
    img = ImageOps.exif_transpose(img)
    return to_rgb(img, name)


def to_rgb(img: Image.Image, name: str = "image") -> Image.Image:
    """Grayscale, 16-bit, palette and alpha images to 8-bit RGB (alpha composited on white)."""
    if min(img.size) < MIN_SIDE:
        raise GazeError(f"{name}: image is {img.size[0]}x{img.size[1]}, too small (need at least {MIN_SIDE} px a side)")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        img = Image.fromarray(np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        a = np.asarray(img, dtype=np.float64)
        a = (a - a.min()) / max(a.max() - a.min(), 1e-12)
        img = Image.fromarray((a * 255 + 0.5).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, rgba)
    return img.convert("RGB")


def center_crop(img: Image.Image) -> Image.Image:
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return img.crop((left, top, left + s, top + s))


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> [1, 3, H, W] float32 in [-1, 1]."""
    a = np.asarray(img.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(a).permute(2, 0, 1).unsqueeze(0).div(127.5).sub(1.0).contiguous()


def load_image(source: str | os.PathLike | bytes, size: int | tuple[int, int] | None = None,
               crop: bool = True, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """Load an image as [1, 3, H, W] in [-1, 1]; optionally centre-crop to square and resize (Lanczos)."""
    img = open_image(source, max_pixels=max_pixels)
    if crop:
        img = center_crop(img)
    if size is not None:
        wh = (size, size) if isinstance(size, int) else (size[1], size[0])
        img = img.resize(wh, Image.LANCZOS)
    return pil_to_tensor(img)


# ---------------------------------------------------------------- encoding
def to_uint8(img: torch.Tensor) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> [N, H, W, C] uint8 with NVlabs' rounding (x*127.5+128, clamp, truncate)."""
    x = img.detach().float().cpu()
    if x.ndim == 3:
        x = x.unsqueeze(0)
    x = (x.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    return x.numpy()


def tensor_to_pil(img: torch.Tensor) -> Image.Image:
    a = to_uint8(img)[0]
    return Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a, "L" if a.shape[-1] == 1 else "RGB")


def save_image(img: torch.Tensor | Image.Image | np.ndarray, path: str | os.PathLike) -> Path:
    """Write one image (tensor [1|C,H,W] in [-1,1], uint8 HWC array, or PIL) atomically."""
    if isinstance(img, torch.Tensor):
        pil = tensor_to_pil(img)
    elif isinstance(img, np.ndarray):
        pil = Image.fromarray(img)
    else:
        pil = img
    path = Path(path)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP"}.get(path.suffix.lower(), "PNG")
    with atomic_path(path) as tmp:
        pil.save(tmp, format=fmt)
    return path


def make_grid(images: torch.Tensor | Sequence[torch.Tensor], ncols: int | None = None, pad: int = 0,
              pad_value: float = 1.0) -> torch.Tensor:
    """Tile [N, C, H, W] images into one [1, C, H', W'] grid (row-major)."""
    x = torch.cat(list(images), 0) if not isinstance(images, torch.Tensor) else images
    n, c, h, w = x.shape
    ncols = ncols or int(np.ceil(np.sqrt(n)))
    nrows = int(np.ceil(n / ncols))
    grid = torch.full((c, nrows * (h + pad) - pad, ncols * (w + pad) - pad), pad_value, dtype=x.dtype)
    for i in range(n):
        r, col = divmod(i, ncols)
        grid[:, r * (h + pad):r * (h + pad) + h, col * (w + pad):col * (w + pad) + w] = x[i]
    return grid.unsqueeze(0)


def list_images(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Image files under a folder, sorted (deterministic)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise GazeError(f"not a folder: {folder}")
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in it if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
