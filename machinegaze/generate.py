"""Generate faces from seeds, save latents, and make looping latent-walk videos.

Seeds mean what NVlabs' seeds mean: z = np.random.RandomState(seed).randn(1, z_dim). The 'rosinality' seed
convention draws z = torch.randn(1, z_dim, generator=torch.Generator().manual_seed(seed)) instead.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from machinegaze import GazeError
from machinegaze.data import atomic_path, images_to_uint8, make_grid, save_image, to_uint8
from machinegaze.nets.stylegan2 import NOISE_MODES, Generator
from machinegaze.progress import ProgressFn, report


@dataclass(frozen=True)
class GenerateConfig:
    trunc: float = 1.0
    trunc_cutoff: Optional[int] = None
    class_idx: Optional[int] = None
    noise_mode: str = "const"
    batch_size: int = 8
    seed_convention: str = "nvlabs"  # 'nvlabs' | 'rosinality' (see z_from_seed)
    translate: Optional[tuple[float, float]] = None  # StyleGAN3 only: image translation (fractions of the size)
    rotate: Optional[float] = None  # StyleGAN3 only: image rotation in degrees


SEED_CONVENTIONS = ("nvlabs", "rosinality")


# ---------------------------------------------------------------- latents
def z_from_seed(seed: int, z_dim: int, convention: str = "nvlabs") -> torch.Tensor:
    """[1, z_dim] float32. 'nvlabs': RandomState(seed).randn(1, z_dim) (float64, cast as their mapping does).
    'rosinality': torch.randn(1, z_dim) from torch.Generator().manual_seed(seed), the first row of what
    rosinality's scripts draw after seeding torch."""
    if not 0 <= int(seed) < 2**32:
        raise GazeError(f"seed {seed} out of range (0 .. 2^32-1)")
    if convention == "rosinality":
        return torch.randn(1, z_dim, generator=torch.Generator().manual_seed(int(seed)))
    if convention != "nvlabs":
        raise GazeError(f"--seed-convention must be one of {', '.join(SEED_CONVENTIONS)}, got {convention!r}")
    return torch.from_numpy(np.random.RandomState(int(seed)).randn(1, z_dim)).float()


def class_vector(
    G: Generator, class_idx: Optional[int], n: int = 1, device: torch.device | str = "cpu"
) -> Optional[torch.Tensor]:
    if G.c_dim == 0:
        if class_idx is not None:
            raise GazeError("--class given, but this network is unconditional")
        return None
    if class_idx is None:
        raise GazeError(f"this network is conditional ({G.c_dim} classes): pass --class 0..{G.c_dim - 1}")
    if not 0 <= class_idx < G.c_dim:
        raise GazeError(f"--class {class_idx} out of range 0..{G.c_dim - 1}")
    c = torch.zeros(n, G.c_dim, device=device)
    c[:, class_idx] = 1
    return c


@torch.no_grad()
def seeds_to_ws(
    G: Generator,
    seeds: Sequence[int],
    trunc: float = 1.0,
    trunc_cutoff: Optional[int] = None,
    class_idx: Optional[int] = None,
    seed_convention: str = "nvlabs",
) -> torch.Tensor:
    """[len(seeds), num_ws, w_dim] ws for the seeds, truncated towards w_avg with psi=trunc, on G's device.

    z is drawn on the host (NVlabs' RandomState semantics, or rosinality's torch.randn, on every device) and
    moved once."""
    dev = next(G.parameters()).device
    z = torch.cat([z_from_seed(s, G.z_dim, seed_convention) for s in seeds]).to(dev)
    c = class_vector(G, class_idx, len(seeds), dev)
    return G.mapping(z, c, truncation_psi=trunc, truncation_cutoff=trunc_cutoff)


def images_per_chunk(G: Generator, budget_bytes: float = 1.5e9) -> int:
    """How many images to synthesise at once so the largest activations stay within a memory budget.

    A layer holds about five activation-sized buffers at its peak (input, modulated input, conv output,
    padded/filtered copies when upsampling), so per image ~ 5 * 4 bytes * max(channels * res^2)."""
    if hasattr(G.synthesis, "max_activation_elements"):  # StyleGAN3: activations at the upsampled rate
        return max(1, int(budget_bytes // (5 * 4 * G.synthesis.max_activation_elements())))
    biggest = 0
    for res in G.synthesis.block_resolutions:
        conv1 = getattr(G.synthesis, f"b{res}").conv1
        biggest = max(biggest, conv1.weight.shape[0] * (res + 3) ** 2)
    return max(1, int(budget_bytes // (5 * 4 * biggest)))


def synthesize_batch(
    G: Generator, ws: torch.Tensor, noise_mode: str = "const", precision: str = "fp32"
) -> torch.Tensor:
    """One batch through G.synthesis on G's device at `precision` (device.resolve_precision); float32 out."""
    from machinegaze import device as devmod

    dev = next(G.parameters()).device
    kwargs = devmod.synthesis_kwargs(G.synthesis, precision)
    ctx = (
        devmod.autocast(dev, precision) if devmod.uses_autocast_for_synthesis(G.synthesis, precision) else nullcontext()
    )
    with ctx, _lean_last_block(G.synthesis):
        return G.synthesis(ws.to(dev), noise_mode=noise_mode, **kwargs).float()


@contextlib.contextmanager
def _lean_last_block(synthesis):
    """On the CPU at 512 px and above, hand the heap's free pages back to the OS (malloc_trim) just before the
    last block runs: the lower blocks' freed buffers are too small for its activations and would otherwise stay
    resident beside them. The pages come back as cheap page faults when the next image reuses them."""
    blocks = synthesis.blocks() if hasattr(synthesis, "blocks") else []
    on_cpu = next(synthesis.parameters()).device.type == "cpu"
    if not blocks or not on_cpu or synthesis.img_resolution < 512:
        yield
        return
    from machinegaze.perf import release_free_memory

    hook = blocks[-1].register_forward_pre_hook(lambda module, args: release_free_memory() and None)
    try:
        yield
    finally:
        hook.remove()


@torch.no_grad()
def synthesize(
    G: Generator,
    ws: torch.Tensor,
    noise_mode: str = "const",
    batch_size: int = 8,
    progress: ProgressFn = None,
    precision: str = "fp32",
) -> torch.Tensor:
    """Images [N, C, R, R] (raw, nominally [-1, 1], on the CPU) for ws [N, num_ws, w_dim], in batches.

    Batches are split further when one would exceed the activation-memory budget (large resolutions)."""
    if noise_mode not in NOISE_MODES:
        raise GazeError(f"--noise-mode must be one of {', '.join(NOISE_MODES)}, got {noise_mode!r}")
    if ws.ndim != 3 or ws.shape[1:] != (G.num_ws, G.w_dim):
        raise GazeError(f"latent has shape {tuple(ws.shape)}, this network needs [N, {G.num_ws}, {G.w_dim}]")
    batch_size = max(1, min(batch_size, images_per_chunk(G)))
    out = []
    for i in range(0, ws.shape[0], batch_size):
        out.append(synthesize_batch(G, ws[i : i + batch_size], noise_mode, precision).cpu())
        report(progress, min(i + batch_size, ws.shape[0]), ws.shape[0])
    return torch.cat(out)


def generate_images(
    G: Generator, seeds: Sequence[int], cfg: GenerateConfig = GenerateConfig(), progress: ProgressFn = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, ws) for the seeds. translate/rotate (StyleGAN3) replace the input transform for this call."""
    ws = seeds_to_ws(G, seeds, cfg.trunc, cfg.trunc_cutoff, cfg.class_idx, cfg.seed_convention)
    with input_transform(G, cfg.translate, cfg.rotate):
        return synthesize(G, ws, cfg.noise_mode, cfg.batch_size, progress), ws


@contextlib.contextmanager
def input_transform(G: Generator, translate: Optional[Sequence[float]] = None, rotate: Optional[float] = None):
    """Within the block, a StyleGAN3 generator shows its images translated/rotated, as NVIDIA's gen_images.py
    --translate/--rotate: the stored `synthesis.input.transform` is replaced by inv(make_transform(...)) (both
    None: left as stored). Restored afterwards."""
    if translate is None and rotate is None:
        yield G
        return
    from machinegaze.nets.stylegan3 import image_transform

    inp = getattr(G.synthesis, "input", None)
    if inp is None or not hasattr(inp, "transform"):
        raise GazeError("--translate/--rotate need a StyleGAN3 network (this one has no input transform)")
    tx, ty = (float(v) for v in (translate if translate is not None else (0.0, 0.0)))
    angle = float(rotate) if rotate is not None else 0.0
    if not all(np.isfinite([tx, ty, angle])):
        raise GazeError("--translate/--rotate must be finite numbers")
    saved = inp.transform.clone()
    inp.transform.copy_(image_transform((tx, ty), angle))
    try:
        yield G
    finally:
        inp.transform.copy_(saved)


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        a = np.asarray(im)
    return a[..., None] if a.ndim == 2 else a


GRID_MAX = 64  # grid.png shows the first 64 seeds (a grid of 100,000 faces helps nobody)
GRID_TILE = 256  # grid.png is an overview: larger images are shrunk (box filter) to at most this size per tile
PNG_LEVEL = 1  # zlib level for written PNGs: lossless at every level; 1 encodes several times faster than 6


class PngWriter:
    """Writes uint8 [H, W, C] arrays as PNGs (atomically) on one background thread, so encoding overlaps the
    next batch's synthesis. At most `pending` images wait at a time; close() waits for all of them and
    re-raises the first error."""

    def __init__(self, level: int = PNG_LEVEL, pending: int = 4):
        from concurrent.futures import ThreadPoolExecutor
        from threading import BoundedSemaphore

        self.level, self._pool, self._slots, self._futures = level, ThreadPoolExecutor(1), BoundedSemaphore(pending), []

    def submit(self, array: np.ndarray, path: str | os.PathLike) -> None:
        self._slots.acquire()
        self._futures.append(self._pool.submit(self._write, array, Path(path)))

    def _write(self, array: np.ndarray, path: Path) -> None:
        from PIL import Image

        try:
            im = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
            with atomic_path(path) as tmp:
                im.save(tmp, format="PNG", compress_level=self.level)
        finally:
            self._slots.release()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for f in self._futures:
            f.result()

    def __enter__(self) -> PngWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class GridCanvas:
    """The grid of the first n tiles, filled in place in uint8 (row-major, ceil(sqrt(n)) columns, empty cells
    white): the pixels of data.make_grid(images) through to_uint8, without a float copy of the grid. Tiles
    larger than max_tile are shrunk by an integer factor (the mean of each f x f box, rounded), so a grid of
    1024 px faces is an overview of 256 px tiles and not a 30-megapixel PNG."""

    def __init__(self, n: int, h: int, w: int, c: int, max_tile: int = GRID_TILE):
        self.cols = int(np.ceil(np.sqrt(n)))
        f = max(1, -(-max(h, w) // max_tile))
        while h % f or w % f:
            f += 1
        self.f, self.h, self.w = f, h // f, w // f
        self.pixels = np.full(((n + self.cols - 1) // self.cols * self.h, self.cols * self.w, c), 255, dtype=np.uint8)

    def put(self, i: int, tile: np.ndarray) -> None:
        if self.f > 1:
            f = self.f
            boxes = tile.reshape(self.h, f, self.w, f, tile.shape[-1]).sum(axis=(1, 3), dtype=np.uint32)
            tile = ((boxes + f * f // 2) // (f * f)).astype(np.uint8)
        r, col = divmod(i, self.cols)
        self.pixels[r * self.h : (r + 1) * self.h, col * self.w : (col + 1) * self.w] = tile


@torch.no_grad()
def generate_to_dir(
    G: Generator,
    seeds: Sequence[int],
    outdir: str | os.PathLike,
    cfg: GenerateConfig = GenerateConfig(),
    precision: str = "fp32",
    world=None,
    progress: ProgressFn = None,
) -> int:
    """seedNNNN.png per seed, streamed batch by batch, then ws.npz (all seeds) and grid.png (first GRID_MAX).

    Under torchrun (`world` from distributed.init) each rank takes a contiguous run of whole batches and
    writes its PNGs; rank 0 gathers the latents and writes ws.npz and grid.png. Every image is computed in
    the same batch as in one process, so the files are identical. PNGs are encoded on a background thread
    while the next batch is synthesised. Returns the images this process wrote."""
    from machinegaze import distributed

    if cfg.noise_mode not in NOISE_MODES:
        raise GazeError(f"--noise-mode must be one of {', '.join(NOISE_MODES)}, got {cfg.noise_mode!r}")
    world = world or distributed.World()
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    batch = max(1, min(cfg.batch_size, images_per_chunk(G)))
    start, stop = distributed.shard_batches(len(seeds), batch, world.rank, world.size)
    first = list(seeds[:GRID_MAX])
    res, ch = G.img_resolution, G.img_channels
    # Everything that outlives a batch is allocated here, before the first activation: the grid, and two
    # batches' worth of uint8 tiles used in turn (a batch's tiles are rewritten only after the writer, which
    # holds at most one batch, has finished them). Buffers made between batches would split the allocator's
    # free space and grow the heap by an activation's size at 1024 px.
    grid = GridCanvas(len(first), res, res, ch) if len(first) > 1 and world.main else None
    slots = np.empty((2, batch, res, res, ch), dtype=np.uint8)
    ws_parts = [torch.empty(0, G.num_ws, G.w_dim)]
    with PngWriter(pending=batch) as writer:
        for i in range(start, stop, batch):
            chunk = list(seeds[i : min(i + batch, stop)])
            ws = seeds_to_ws(G, chunk, cfg.trunc, cfg.trunc_cutoff, cfg.class_idx, cfg.seed_convention)
            with input_transform(G, cfg.translate, cfg.rotate):
                images = synthesize_batch(G, ws, cfg.noise_mode, precision).cpu()
            tiles = images_to_uint8(images, out=slots[(i - start) // batch % 2, : len(chunk)])
            del images
            for j, (s, tile) in enumerate(zip(chunk, tiles)):
                writer.submit(tile, outdir / f"seed{s:04d}.png")
                if grid is not None and i + j < len(first):
                    grid.put(i + j, tile)
            ws_parts.append(ws.cpu())
            report(progress, i + len(chunk) - start, stop - start)
        parts = distributed.gather_to_main(torch.cat(ws_parts), world)
        if world.main:
            save_w(outdir / "ws.npz", torch.cat(parts))
    distributed.barrier(world)  # every rank's PNGs are on disk before rank 0 reads the other ranks' back
    if grid is not None:
        for i, s in enumerate(first):
            if not start <= i < stop:  # a tile another rank computed
                grid.put(i, _read_png(outdir / f"seed{s:04d}.png"))
        with PngWriter() as writer:
            writer.submit(grid.pixels, outdir / "grid.png")
    return stop - start


# ---------------------------------------------------------------- .npz latents (NVlabs projector convention)
def save_w(path: str | os.PathLike, ws: torch.Tensor) -> Path:
    """Save ws [N, num_ws, w_dim] as .npz with key 'w' (what NVlabs' generate.py --projected-w reads)."""
    ws = ws.detach().cpu().float()
    if ws.ndim == 2:
        ws = ws.unsqueeze(0)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, w=ws.numpy())
    return Path(path)


def load_w(path: str | os.PathLike, G: Optional[Generator] = None) -> torch.Tensor:
    """Load a 'w' latent from .npz (never with pickle). Returns [N, num_ws, w_dim]; [w_dim] vectors are broadcast."""
    path = Path(path)
    if not path.is_file():
        raise GazeError(f"no such latent file: {path}")
    try:
        with np.load(path, allow_pickle=False) as d:
            if "w" not in d.files:
                raise GazeError(f"{path}: no 'w' array in this .npz (keys: {', '.join(d.files) or 'none'})")
            w = np.asarray(d["w"], dtype=np.float32)
    except GazeError:
        raise
    except Exception as e:
        raise GazeError(f"{path}: not a readable .npz latent ({type(e).__name__})") from None
    t = torch.from_numpy(w)
    if G is not None:
        if t.ndim == 1:
            t = t.reshape(1, 1, -1)
        if t.ndim == 2:
            t = t.unsqueeze(1) if t.shape[-1] == G.w_dim and t.shape[0] != G.num_ws else t.unsqueeze(0)
        if t.shape[1] == 1:
            t = t.repeat(1, G.num_ws, 1)
        if t.ndim != 3 or t.shape[1:] != (G.num_ws, G.w_dim):
            raise GazeError(
                f"{path}: latent shape {tuple(w.shape)} does not fit this network ([N, {G.num_ws}, {G.w_dim}])"
            )
    if not torch.isfinite(t).all():
        raise GazeError(f"{path}: latent contains NaN or inf")
    return t


def write_generated(
    images: torch.Tensor, seeds: Sequence[int], outdir: str | os.PathLike, grid: bool = True
) -> list[Path]:
    """seedNNNN.png per image, plus grid.png."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    paths = [save_image(images[i : i + 1], outdir / f"seed{s:04d}.png") for i, s in enumerate(seeds)]
    if grid and len(seeds) > 1:
        paths.append(save_image(make_grid(images.clamp(-1, 1)), outdir / "grid.png"))
    return paths


# ---------------------------------------------------------------- interpolation video
def loop_path(keys: torch.Tensor, frames: int) -> torch.Tensor:
    """Smooth looping path through key latents [K, ...] in W: periodic Catmull-Rom spline, `frames` samples."""
    k = keys.shape[0]
    if k == 1:
        return keys.repeat(frames, *[1] * (keys.ndim - 1))
    out = []
    for f in range(frames):
        t = f * k / frames
        i = int(np.floor(t))
        u = t - i
        p0, p1, p2, p3 = (keys[(i + d) % k] for d in (-1, 0, 1, 2))
        # Catmull-Rom: C1-continuous through every key, no overshoot-free guarantee but smooth in W.
        out.append(
            0.5
            * ((2 * p1) + (-p0 + p2) * u + (2 * p0 - 5 * p1 + 4 * p2 - p3) * u**2 + (-p0 + 3 * p1 - 3 * p2 + p3) * u**3)
        )
    return torch.stack(out)


def write_video(frames_uint8: list[np.ndarray] | np.ndarray, out: str | os.PathLike, fps: int = 30) -> Path:
    """mp4 (H.264 via imageio-ffmpeg) or gif, chosen by the extension; written atomically."""
    import imageio.v2 as imageio

    out = Path(out)
    ext = out.suffix.lower()
    if ext not in (".mp4", ".gif"):
        raise GazeError(f"--out must end in .mp4 or .gif, got {out.name}")
    with atomic_path(out) as tmp:
        if ext == ".gif":
            imageio.mimsave(tmp, list(frames_uint8), format="GIF", duration=1000 / fps, loop=0)
        else:
            w = imageio.get_writer(
                tmp,
                format="FFMPEG",
                fps=fps,
                codec="libx264",
                quality=8,
                macro_block_size=1,
                ffmpeg_log_level="error",
                pixelformat="yuv420p",
            )
            try:
                for fr in frames_uint8:
                    w.append_data(fr)
            finally:
                w.close()
    return out


def interpolate(
    G: Generator,
    seeds: Sequence[int],
    frames: int = 60,
    trunc: float = 1.0,
    class_idx: Optional[int] = None,
    noise_mode: str = "const",
    batch_size: int = 8,
    progress: ProgressFn = None,
    seed_convention: str = "nvlabs",
) -> torch.Tensor:
    """Frames [F, C, R, R] of a looping walk through the seeds' w vectors."""
    if frames < 2:
        raise GazeError("--frames must be at least 2")
    ws = seeds_to_ws(G, seeds, trunc=trunc, class_idx=class_idx, seed_convention=seed_convention)
    path = loop_path(ws, frames)
    return synthesize(G, path, noise_mode=noise_mode, batch_size=batch_size, progress=progress)


def frames_to_uint8(images: torch.Tensor, even: bool = True) -> list[np.ndarray]:
    arr = to_uint8(images.clamp(-1, 1))
    if even and arr.shape[1] % 2:
        arr = np.pad(arr, ((0, 0), (0, 1), (0, 1), (0, 0)), mode="edge")
    return list(arr)
