"""Projection: find the latent whose image looks most like a target photo (GAN inversion).

The baseline is NVlabs' projector (stylegan2-ada-pytorch `projector.py`), preset `nvlabs`:
  - statistics: w_avg and w_std from 10000 mapping samples (z ~ RandomState(123)); start at w = w_avg
  - loss: LPIPS-VGG16 distance (targets and syntheses larger than 256 px area-downsampled to 256)
          + 1e5 * noise regularisation (squared autocorrelation of every noise buffer at a 1-px shift,
            horizontally and vertically, over a 2x2 average-pooling pyramid down to 8 px)
  - variables: one w (space W) and the per-layer noise buffers (re-drawn from N(0, 1) at the start and
    renormalised to zero mean, unit variance after every step)
  - Adam(0.9, 0.999), 1000 steps, lr 0.1 with a linear ramp-up over the first 5% and a cosine ramp-down over
    the last 25%; Gaussian noise on w of std w_std * 0.05 * max(0, 1 - t/0.75)^2
  - outputs use the network's own noise buffers (NVlabs projects a copy of G, then renders with the original),
    so projected_w.npz alone reproduces proj.png with NVlabs' generate.py or `gaze generate`.

The default preset `fast` gets to the same LPIPS in a fraction of the time (see benchmarks/project.py):
a batched, gradient-free search over candidate ws at low resolution picks the start, a short warm start in W
is followed by optimisation in W+, the learning rate decays on a cosine, and the noise buffers stay as they
are (they are thrown away at the end anyway, so optimising them only moves the loss away from the output).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from machinegaze import GazeError
from machinegaze.data import atomic_write_bytes, center_crop, open_image, pil_to_tensor, save_image, to_uint8
from machinegaze.device import autocast
from machinegaze.generate import class_vector, save_w, synthesize, write_video
from machinegaze.nets.lpips import LPIPS, imagenet_normalize, unit_normalize
from machinegaze.nets.stylegan2 import Discriminator, Generator, SynthesisLayer
from machinegaze.progress import ProgressFn, report

SPACES = ("w", "w+")
SCHEDULES = ("nvlabs", "cosine")
INITS = ("w_avg", "search")


# ================================================================ configuration
@dataclass(frozen=True)
class Recipe:
    """The optimisation's hyper-parameters. PRESETS names the two that the CLI offers."""

    steps: int = 1000
    space: str = "w"  # 'w': one w for all layers; 'w+': one w per layer
    w_steps: int = 0  # with space 'w+': optimise a single w for this many steps first
    init: str = "w_avg"  # 'w_avg' | 'search' (best of `candidates` ws by low-res LPIPS)
    candidates: int = 0
    candidate_psi: float = 0.7  # candidates are mapping samples truncated towards w_avg with this psi
    candidate_res: int = 32  # LPIPS resolution of the candidate search
    lr: float = 0.1
    schedule: str = "nvlabs"  # 'nvlabs': ramp-up, flat, cosine ramp-down; 'cosine': ramp-up, cosine decay
    lr_rampup: float = 0.05  # fraction of the steps
    lr_rampdown: float = 0.25  # fraction of the steps (nvlabs schedule)
    w_noise: float = 0.05  # std of the noise added to w, in units of w_std, at the start
    w_noise_ramp: float = 0.75  # ... decaying quadratically to 0 over this fraction of the steps
    optimize_noise: bool = True  # optimise the noise buffers (NVlabs) or keep the network's own
    noise_weight: float = 1e5  # weight of the noise regularisation
    lpips_res: int = 256  # images larger than this are area-downsampled to it for the loss
    clamp: bool = False  # compare the synthesis clamped to [-1, 1] (as it is saved) in the loss

    def __post_init__(self):
        if self.steps < 1:
            raise GazeError(f"--steps must be at least 1, got {self.steps}")
        if self.space not in SPACES:
            raise GazeError(f"--space must be one of {', '.join(SPACES)}, got {self.space!r}")
        if self.schedule not in SCHEDULES:
            raise GazeError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.init not in INITS:
            raise GazeError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.init == "search" and self.candidates < 1:
            raise GazeError("init 'search' needs candidates >= 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise GazeError(f"learning rate must be positive, got {self.lr}")
        if self.lpips_res < 16 or self.candidate_res < 16:
            raise GazeError("LPIPS-VGG needs at least 16 px")


PRESETS: dict[str, Recipe] = {
    # NVlabs stylegan2-ada-pytorch projector.py defaults.
    "nvlabs": Recipe(),
    # Chosen by measurement (benchmarks/project.py): reaches the nvlabs preset's final LPIPS in <= 1/5 of its time.
    "fast": Recipe(
        steps=150,
        space="w+",
        w_steps=15,
        init="search",
        candidates=64,
        lr=0.2,
        schedule="cosine",
        lr_rampup=0.02,
        w_noise=0.0,
        optimize_noise=False,
        noise_weight=0.0,
        clamp=True,
    ),
}


@dataclass(frozen=True)
class ProjectConfig:
    preset: str = "fast"
    space: Optional[str] = None  # None: the preset's
    steps: Optional[int] = None  # None: the preset's
    seed: int = 0  # noise-buffer init, w noise, candidate draw
    class_idx: Optional[int] = None  # conditional networks: the label to project under
    align: bool = False  # FFHQ-align the target's face first (else centre-crop + resize)
    w_avg_samples: int = 10000
    reference_samples: int = 32  # generated images whose D scores are the "in domain" reference
    video: bool = True
    max_frames: int = 300

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise GazeError(f"--preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        if self.space is not None and self.space not in SPACES:
            raise GazeError(f"--space must be one of {', '.join(SPACES)}, got {self.space!r}")
        if self.steps is not None and self.steps < 1:
            raise GazeError(f"--steps must be at least 1, got {self.steps}")
        if not 0 <= int(self.seed) < 2**32:
            raise GazeError(f"--seed {self.seed} out of range (0 .. 2^32-1)")
        if self.w_avg_samples < 1:
            raise GazeError("w_avg_samples must be at least 1")

    def recipe(self) -> Recipe:
        r = PRESETS[self.preset]
        over = {}
        if self.steps is not None:
            over["steps"] = int(self.steps)
            if r.w_steps:  # keep the warm start's share of the steps
                over["w_steps"] = int(round(r.w_steps * self.steps / r.steps))
        if self.space is not None:
            over["space"] = self.space
        return replace(r, **over) if over else r


# ================================================================ targets
def prepare_target(img, resolution: int, align: bool = False, detector=None) -> torch.Tensor:
    """A photo (path, bytes or PIL image) -> [1, 3, R, R] in [-1, 1]: FFHQ-aligned (align=True; an error if no
    face is found) or centre-cropped, then resized with Lanczos (NVlabs' projector does the latter).
    Every file goes through data.open_image: not-an-image, tiny, huge (decompression bombs), grayscale, alpha,
    16-bit and EXIF-rotated inputs are refused or converted there."""
    from PIL import Image

    name = "image" if isinstance(img, (bytes, bytearray, Image.Image)) else str(img)
    pil = img.convert("RGB") if isinstance(img, Image.Image) else open_image(img)
    if align:
        from machinegaze.align import AlignConfig, align_image

        faces = align_image(pil, AlignConfig(size=resolution), detector)
        if not faces:
            raise GazeError(f"{name}: no face found to align (run without --align to centre-crop instead)")
        return faces[0].image
    return pil_to_tensor(center_crop(pil).resize((resolution, resolution), Image.LANCZOS))


def _fit(x: torch.Tensor, res: int) -> torch.Tensor:
    """Area-downsample to res x res if larger (NVlabs: 'VGG was built for 224x224 images')."""
    return F.interpolate(x, size=(res, res), mode="area") if x.shape[-1] > res else x


class TargetDistance:
    """LPIPS(x, target) with the target's features computed once: x [N, 3, H, W] -> [N] (float32), under
    autocast at `precision` on the target's device."""

    def __init__(self, lpips: LPIPS, target: torch.Tensor, res: int, precision: str = "fp32"):
        self.lpips, self.res, self.precision = lpips, int(res), precision
        self.source = target
        self.taps = lpips.features.lpips_taps
        t = _fit(target, self.res)
        if t.shape[-1] < lpips.features.min_size:
            raise GazeError(
                f"LPIPS-{lpips.net} needs images of at least {lpips.features.min_size} px, "
                f"this network makes {t.shape[-1]} px"
            )
        with torch.no_grad(), autocast(target.device, precision):
            self.target = [unit_normalize(f) for f in lpips.features.taps(imagenet_normalize(t), self.taps)]

    def at(self, res: int) -> TargetDistance:
        """The same distance at another resolution."""
        return TargetDistance(self.lpips, self.source, res, self.precision)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with autocast(x.device, self.precision):
            feats = self.lpips.features.taps(imagenet_normalize(_fit(x, self.res)), self.taps)
            out = 0
            for f, t, lin in zip(feats, self.target, self.lpips.lin):
                out = out + lin((unit_normalize(f) - t).square()).mean(dim=(1, 2, 3))
        return out.float()


# ================================================================ pieces of the optimisation
@torch.no_grad()
def w_stats(
    G: Generator, n: int = 10000, c: Optional[torch.Tensor] = None, batch: int = 2048
) -> tuple[torch.Tensor, float, torch.Tensor]:
    """(w_avg [1, 1, C], w_std (NVlabs: root of the summed variance over all C), samples [n, 1, C]) from the
    mapping of z ~ RandomState(123).randn(n, z_dim), as NVlabs' projector does (drawn on the host, moved once
    to G's device)."""
    z = torch.from_numpy(np.random.RandomState(123).randn(n, G.z_dim)).float().to(next(G.parameters()).device)
    ws = []
    for i in range(0, n, batch):
        cc = None if c is None else c.expand(min(batch, n - i), -1)
        ws.append(G.mapping(z[i : i + batch], cc)[:, :1, :])
    ws = torch.cat(ws)
    w_avg = ws.mean(dim=0, keepdim=True)
    w_std = float(((ws - w_avg).square().sum() / n).sqrt())
    return w_avg, w_std, ws


def noise_layers(G: Generator) -> list[SynthesisLayer]:
    return [m for m in G.synthesis.modules() if isinstance(m, SynthesisLayer) and m.use_noise]


@contextlib.contextmanager
def swapped_noise(G: Generator, bufs: list[torch.Tensor]):
    """Temporarily use `bufs` as the generator's noise_const buffers; the originals come back afterwards."""
    layers = noise_layers(G)
    saved = [m.noise_const for m in layers]
    try:
        for m, b in zip(layers, bufs):
            m.noise_const = b
        yield
    finally:
        for m, s in zip(layers, saved):
            m.noise_const = s


def _halvings(m: torch.Tensor):
    """m, then m averaged over 2x2 pixels, and so on while the map is larger than 8x8."""
    yield m
    while m.shape[-1] > 8:
        m = F.avg_pool2d(m, 2)
        yield m


def noise_regularization(bufs: list[torch.Tensor]) -> torch.Tensor:
    """StyleGAN2 paper, appendix (projection): noise maps must not smuggle in image content, so for every map and
    every level of its 2x2-average pyramid (down to 8x8), penalise the squared autocorrelation at a one-pixel
    shift, across and down, with wrap-around."""
    total = torch.zeros((), device=bufs[0].device if bufs else None)
    for buf in bufs:
        for level in _halvings(buf.reshape(1, 1, *buf.shape[-2:])):
            for axis in (3, 2):
                total = total + (level * level.roll(1, dims=axis)).mean().square()
    return total


def learning_rate(r: Recipe, step: int) -> float:
    """'nvlabs' (the paper's projector): linear warm-up over the first lr_rampup of the steps, full rate, then a
    half-cosine down to 0 over the last lr_rampdown. 'cosine': warm-up, then cosine decay over the whole run."""
    progress = step / r.steps
    if r.schedule == "nvlabs":
        warm = min(1.0, progress / r.lr_rampup)
        left = min(1.0, (1.0 - progress) / r.lr_rampdown)  # 1 until the ramp-down starts, then linearly to 0
        return r.lr * warm * (1.0 - math.cos(math.pi * left)) / 2
    warm = min(1.0, (step + 1) / max(1.0, r.lr_rampup * r.steps))
    return r.lr * warm * (1.0 + math.cos(math.pi * progress)) / 2


@torch.inference_mode()
def search_start(
    G: Generator, dist: TargetDistance, pool: torch.Tensor, batch: int = 16, clamp: bool = False
) -> tuple[int, torch.Tensor]:
    """Index of the w in pool [K, 1, C] whose image is closest to the target, and all K distances."""
    d = []
    for i in range(0, pool.shape[0], batch):
        ws = pool[i : i + batch].expand(-1, G.num_ws, -1)
        img = G.synthesis(ws, noise_mode="const")
        d.append(dist(img.clamp(-1, 1) if clamp else img))
    d = torch.cat(d)
    return int(d.argmin()), d


# ================================================================ the projection
@dataclass
class Projection:
    ws: torch.Tensor  # [1, num_ws, w_dim], the result
    image: torch.Tensor  # [1, 3, R, R] G.synthesis(ws, noise_mode='const') (the network's noise)
    target: torch.Tensor  # [1, 3, R, R]
    lpips: float  # LPIPS-VGG(image clamped to [-1, 1], target), at <= 256 px
    steps_ws: torch.Tensor  # [steps, num_ws, w_dim], the latent after every step (for the video)
    history: list[dict] = field(default_factory=list)  # per step: step, wall_s, cpu_s, loss, dist, lr
    recipe: Optional[Recipe] = None
    wall_s: float = 0.0  # setup + optimisation (excluding monitor calls)
    cpu_s: float = 0.0
    setup: dict = field(default_factory=dict)  # e.g. start LPIPS of the chosen candidate
    realism: dict = field(default_factory=dict)


class _Clock:
    """Wall and CPU time since start, minus time spent in excluded blocks (monitoring)."""

    def __init__(self):
        self.w0, self.c0, self.skip_w, self.skip_c = time.perf_counter(), time.process_time(), 0.0, 0.0

    def now(self) -> tuple[float, float]:
        return time.perf_counter() - self.w0 - self.skip_w, time.process_time() - self.c0 - self.skip_c

    @contextlib.contextmanager
    def excluded(self):
        w, c = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.skip_w += time.perf_counter() - w
            self.skip_c += time.process_time() - c


def final_lpips(
    G: Generator, lpips: LPIPS, ws: torch.Tensor, target: torch.Tensor, precision: str = "fp32"
) -> tuple[float, torch.Tensor]:
    """The reported score: LPIPS between the output image (network's own noise, clamped) and the target."""
    with torch.no_grad():
        img = G.synthesis(ws, noise_mode="const")
        with autocast(img.device, precision):
            d = lpips(_fit(img.clamp(-1, 1), 256), _fit(target.clamp(-1, 1), 256))
    return float(d[0]), img


def _check_inputs(G: Generator, target, c: Optional[torch.Tensor]) -> None:
    if not isinstance(target, torch.Tensor) or target.ndim != 4 or target.shape[:2] != (1, 3):
        raise GazeError(f"target must be one RGB image [1, 3, H, W], got {tuple(getattr(target, 'shape', ()))}")
    if G.img_channels != 3:
        raise GazeError(f"projection needs an RGB generator, this one makes {G.img_channels}-channel images")
    if tuple(target.shape[2:]) != (G.img_resolution, G.img_resolution):
        raise GazeError(
            f"target is {target.shape[3]}x{target.shape[2]}, the network makes {G.img_resolution}x{G.img_resolution}"
        )
    if G.c_dim > 0 and (c is None or tuple(c.shape) != (1, G.c_dim)):
        raise GazeError(f"this network is conditional ({G.c_dim} classes): pass a label (--class)")


def _starting_point(
    G: Generator, r: Recipe, dist: TargetDistance, gen: torch.Generator, c, w_avg_samples: int
) -> tuple[torch.Tensor, float, dict]:
    """(the w to start from [1, 1, C], w_std, setup record): w_avg, or the best candidate of a search."""
    w_avg, w_std, pool = w_stats(G, w_avg_samples, c)
    setup: dict = {"w_std": w_std}
    if r.init != "search":
        return w_avg, w_std, setup
    coarse = dist.at(r.candidate_res) if r.candidate_res < dist.res else dist
    pick = torch.randperm(pool.shape[0], generator=gen, device=pool.device)[: r.candidates]
    cands = torch.cat([w_avg, w_avg.lerp(pool[pick], r.candidate_psi)])
    best, d = search_start(G, coarse, cands, clamp=r.clamp)
    setup.update(
        candidates=int(cands.shape[0]),
        start_lpips=float(d[best]),
        w_avg_lpips=float(d[0]),
        start_is_w_avg=best == 0,
    )
    return cands[best : best + 1].clone(), w_std, setup


class _Latents:
    """What the projection optimises: the latent (one w, or one per layer after the warm start), the noise
    buffers (NVlabs recipe) and their Adam optimiser. Random draws come from `gen` on G's device."""

    def __init__(self, G: Generator, r: Recipe, w0: torch.Tensor, gen: torch.Generator):
        self.G, self.r, self.gen = G, r, gen
        w = w0.clone()
        if r.space == "w+" and r.w_steps <= 0:
            w = w.repeat(1, G.num_ws, 1)
        self.w = w.requires_grad_(True)
        layers = noise_layers(G)
        if r.optimize_noise:
            dev = w0.device
            self.bufs = [
                torch.randn(m.noise_const.shape, generator=gen, device=dev).requires_grad_(True) for m in layers
            ]
        else:
            self.bufs = [m.noise_const for m in layers]
        self.opt = self._adam()

    def params(self) -> list[torch.Tensor]:
        return [self.w] + (self.bufs if self.r.optimize_noise else [])

    def _adam(self) -> torch.optim.Adam:
        return torch.optim.Adam(self.params(), betas=(0.9, 0.999), lr=self.r.lr)

    def widen(self) -> None:
        """End of the W warm start: one w per layer from now on; Adam's moments carry over, so the first W+ steps
        are as measured as the last W ones."""
        old = self.opt.state.get(self.w, {})
        self.w = self.w.detach().repeat(1, self.G.num_ws, 1).requires_grad_(True)
        self.opt = self._adam()
        if old:
            num_ws = self.G.num_ws
            self.opt.state[self.w] = {
                k: (v.repeat(1, num_ws, 1) if k.startswith("exp_avg") else v.clone()) for k, v in old.items()
            }

    def broadcast(self, w: torch.Tensor) -> torch.Tensor:
        return w.expand(-1, self.G.num_ws, -1) if w.shape[1] == 1 else w

    def current(self) -> torch.Tensor:
        """The latent now, [1, num_ws, w_dim], detached."""
        return self.broadcast(self.w.detach())

    def step(self, step: int, dist: TargetDistance, w_std: float) -> tuple[float, torch.Tensor, torch.Tensor]:
        """One Adam step; returns (lr, distance, loss), the last two as 0-d tensors left on the device."""
        r = self.r
        if r.space == "w+" and step == r.w_steps and self.w.shape[1] == 1:
            self.widen()
        lr = learning_rate(r, step)
        for group in self.opt.param_groups:
            group["lr"] = lr
        w_in = self.w
        if r.w_noise > 0:
            sigma = w_std * r.w_noise * max(0.0, 1.0 - step / r.steps / r.w_noise_ramp) ** 2
            if sigma > 0:
                w_in = w_in + torch.randn(w_in.shape, generator=self.gen, device=w_in.device) * sigma
        img = self.G.synthesis(self.broadcast(w_in), noise_mode="const")
        d = dist(img.clamp(-1, 1) if r.clamp else img)[0]
        loss = d
        if r.optimize_noise and r.noise_weight > 0:
            loss = loss + r.noise_weight * noise_regularization(self.bufs)
        params = self.params()
        for p, g in zip(params, torch.autograd.grad(loss, params)):  # G's own weights get no gradients
            p.grad = g
        self.opt.step()
        if r.optimize_noise:
            with torch.no_grad():
                for b in self.bufs:
                    b -= b.mean()
                    b *= b.square().mean().rsqrt()
        return lr, d.detach(), loss.detach()


class _Trace:
    """Per-step records kept on the device (latents, loss, distance) and read back to the host only every
    `every` steps, so the loop never waits for the device in between."""

    def __init__(self, G: Generator, steps: int, every: int):
        dev = next(G.parameters()).device
        self.ws = torch.empty(steps, G.num_ws, G.w_dim, device=dev)
        self.values = torch.empty(steps, 2, device=dev)  # loss, dist
        self.times: list[tuple[float, float, float]] = []  # wall, cpu, lr
        self.history: list[dict] = []
        self.every = max(1, int(every))

    def record(self, step: int, ws: torch.Tensor, loss: torch.Tensor, d: torch.Tensor, times) -> None:
        self.ws[step] = ws[0]
        self.values[step, 0] = loss
        self.values[step, 1] = d
        self.times.append(times)

    def flush(self, upto: int) -> Optional[float]:
        """History rows up to step `upto` (exclusive) from the device; returns the last distance."""
        start = len(self.history)
        if upto <= start:
            return None
        vals = self.values[start:upto].tolist()
        for i, ((loss, d), (wall, cpu, lr)) in enumerate(zip(vals, self.times[start:upto])):
            self.history.append(
                {"step": start + i + 1, "wall_s": wall, "cpu_s": cpu, "loss": loss, "dist": d, "lr": lr}
            )
        return vals[-1][1]


def _noise_score(G: Generator, lpips: LPIPS, bufs, ws: torch.Tensor, target: torch.Tensor, precision: str) -> float:
    """LPIPS of the output rendered with the optimised noise buffers (what the loop itself saw)."""
    with swapped_noise(G, [b.detach() for b in bufs]):
        return final_lpips(G, lpips, ws, target, precision)[0]


def project(
    G: Generator,
    target: torch.Tensor,
    recipe: Recipe = PRESETS["fast"],
    lpips: Optional[LPIPS] = None,
    seed: int = 0,
    c: Optional[torch.Tensor] = None,
    w_avg_samples: int = 10000,
    progress: ProgressFn = None,
    monitor: Optional[Callable[[int, torch.Tensor, float, float], None]] = None,
    precision: str = "fp32",
    log_every: int = 10,
) -> Projection:
    """Optimise a latent so that G's image matches `target` [1, 3, R, R] in [-1, 1] (R = G.img_resolution), on
    G's device (LPIPS under autocast at `precision`; `lpips` must live on the same device).

    `c`: one-hot label [1, c_dim] for conditional networks (used for the w statistics and candidates).
    `monitor(step, ws, wall_s, cpu_s)` is called after every step with the current ws [1, num_ws, w_dim]; the
    time it takes is not counted (benchmarks use it to score the curve). Progress is reported every step, with
    the current LPIPS every `log_every` steps: only then does the loop read values back from the device. G is left as
    it was. The returned tensors are on the host.
    """
    r = recipe
    _check_inputs(G, target, c)
    dev = next(G.parameters()).device
    if lpips is None:
        from machinegaze import zoo

        lpips = zoo.load_lpips("vgg", device=dev)
    target = target.detach().float().to(dev)
    c = None if c is None else c.to(dev)
    gen = torch.Generator(device=dev).manual_seed(int(seed))
    clock = _Clock()
    dist = TargetDistance(
        lpips, target.clamp(-1, 1) if r.clamp else target, min(r.lpips_res, G.img_resolution), precision
    )
    w0, w_std, setup = _starting_point(G, r, dist, gen, c, w_avg_samples)
    latents = _Latents(G, r, w0, gen)
    trace = _Trace(G, r.steps, log_every)
    own_noise = [m.noise_const for m in noise_layers(G)]
    with swapped_noise(G, latents.bufs):
        for step in range(r.steps):
            lr, d, loss = latents.step(step, dist, w_std)
            cur = latents.current()
            wall, cpu = clock.now()
            trace.record(step, cur, loss, d, (wall, cpu, lr))
            if (step + 1) % trace.every == 0 or step + 1 == r.steps:
                report(progress, step + 1, r.steps, lpips=trace.flush(step + 1))
            else:
                report(progress, step + 1, r.steps)  # no value: nothing to wait for
            if monitor is not None:
                with clock.excluded(), swapped_noise(G, own_noise):  # scored as the output will be
                    monitor(step + 1, cur.clone(), wall, cpu)
    wall, cpu = clock.now()
    ws = trace.ws[-1:].clone()
    score, img = final_lpips(G, lpips, ws, target, precision)
    if r.optimize_noise:
        setup["lpips_with_optimised_noise"] = _noise_score(G, lpips, latents.bufs, ws, target, precision)
    return Projection(
        ws=ws.cpu(),
        image=img.cpu(),
        target=target.cpu(),
        lpips=score,
        steps_ws=trace.ws.cpu(),
        history=trace.history,
        recipe=r,
        wall_s=wall,
        cpu_s=cpu,
        setup=setup,
    )


# ================================================================ realism (the discriminator's opinion)
@torch.no_grad()
def d_logits(D: Discriminator, images: torch.Tensor, c: Optional[torch.Tensor]) -> torch.Tensor:
    """D's 'real' logit per image, each image on its own (minibatch-std sees a group of one)."""
    dev = next(D.parameters()).device
    images, c = images.to(dev), (None if c is None or D.c_dim == 0 else c.to(dev))
    out = [D(images[i : i + 1], c)[0, 0] for i in range(images.shape[0])]
    return torch.stack(out)


@torch.no_grad()
def reference_logits(G: Generator, D: Discriminator, n: int = 64, class_idx: Optional[int] = None) -> torch.Tensor:
    """D logits of the network's own images for seeds 0..n-1 (psi 1, const noise): what 'in domain' looks like."""
    from machinegaze.generate import seeds_to_ws

    ws = seeds_to_ws(G, list(range(n)), class_idx=class_idx)
    return d_logits(D, synthesize(G, ws), class_vector(G, class_idx, 1))


def realism(
    D: Discriminator,
    image: torch.Tensor,
    c: Optional[torch.Tensor],
    reference: torch.Tensor,
    percentile_cut: float = 5.0,
) -> dict:
    """D's logit and sigmoid for one image, its percentile among the reference logits, and whether it is
    'out of domain' (less real to D than all but `percentile_cut`% of the network's own images)."""
    logit = float(d_logits(D, image, c)[0])
    pct = float((reference < logit).float().mean() * 100)
    return {
        "d_logit": logit,
        "d_sigmoid": 1 / (1 + math.exp(-logit)) if logit > -700 else 0.0,
        "percentile_among_generated": pct,
        "out_of_domain": pct < percentile_cut,
    }


# ================================================================ the command
@dataclass
class ProjectRun:
    projection: Projection
    files: dict[str, Path]
    result: dict


def video_frames(
    G: Generator, target: torch.Tensor, steps_ws: torch.Tensor, max_frames: int = 300, min_side: int = 256
) -> list[np.ndarray]:
    """target | projection side by side for (up to max_frames of) the steps, scaled up to >= min_side px."""
    n = steps_ws.shape[0]
    idx = sorted(set(np.linspace(0, n - 1, min(n, max_frames)).round().astype(int).tolist()))
    imgs = synthesize(G, steps_ws[idx].contiguous(), noise_mode="const", batch_size=8)
    tgt = to_uint8(target.clamp(-1, 1))[0]
    k = max(1, math.ceil(min_side / tgt.shape[0]))
    frames = []
    for a in to_uint8(imgs.clamp(-1, 1)):
        f = np.concatenate([tgt, a], axis=1)
        frames.append(np.ascontiguousarray(f.repeat(k, axis=0).repeat(k, axis=1)))
    return frames


def run_project(
    network: str | os.PathLike | None,
    target_path: str | os.PathLike,
    outdir: str | os.PathLike,
    cfg: ProjectConfig = ProjectConfig(),
    progress: ProgressFn = None,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
) -> ProjectRun:
    """`gaze project`: load onto `device`, prepare the target, project, write target.png, proj.png,
    projected_w.npz, proj.mp4 and result.json into outdir. `precision` applies to LPIPS (autocast)."""
    from machinegaze import zoo

    dev = torch.device(device)
    recipe = cfg.recipe()
    src = zoo.resolve_network(network)
    nets = zoo.load_networks(src)
    G = nets.generator.to(dev)
    c = class_vector(G, cfg.class_idx, 1, device=dev)
    target = prepare_target(target_path, G.img_resolution, align=cfg.align)
    lpips = zoo.load_lpips("vgg", device=dev)
    proj = project(G, target, recipe, lpips, cfg.seed, c, cfg.w_avg_samples, progress=progress, precision=precision)
    if nets.D is not None:
        D = nets.D.to(dev)
        ref = reference_logits(G, D, cfg.reference_samples, cfg.class_idx)
        proj.realism = {
            "projection": realism(D, proj.image, c, ref),
            "target": realism(D, target, c, ref),
            "reference": {
                "n": int(ref.numel()),
                "median_logit": float(ref.median()),
                "p5_logit": float(torch.quantile(ref, 0.05)),
            },
        }
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    files = {
        "target": save_image(target, outdir / "target.png"),
        "proj": save_image(proj.image.clamp(-1, 1), outdir / "proj.png"),
        "projected_w": save_w(outdir / "projected_w.npz", proj.ws),
    }
    if cfg.video:
        files["video"] = write_video(
            video_frames(G, target, proj.steps_ws, cfg.max_frames),
            outdir / "proj.mp4",
            fps=min(30, max(5, proj.steps_ws.shape[0] // 10)),
        )
    result = {
        "network": str(src),
        "target": str(target_path),
        "preset": cfg.preset,
        "recipe": asdict(recipe),
        "seed": cfg.seed,
        "class_idx": cfg.class_idx,
        "align": cfg.align,
        "lpips": proj.lpips,
        "lpips_net": "vgg",
        "lpips_note": "LPIPS-VGG v0.1 of proj.png (the network's own "
        "noise buffers, clamped) against target.png, both area-downsampled to 256 px when larger",
        "wall_s": proj.wall_s,
        "cpu_s": proj.cpu_s,
        "setup": proj.setup,
        "realism": proj.realism or None,
        "realism_note": "D logit ('real' score) and sigmoid; percentile among the network's own images (seeds "
        "0..n-1); out_of_domain = below the 5th percentile"
        if proj.realism
        else "no discriminator in this network file",
        "curve": [{k: h[k] for k in ("step", "wall_s", "cpu_s", "dist")} for h in proj.history],
    }
    files["result"] = outdir / "result.json"
    atomic_write_bytes(files["result"], json.dumps(result, indent=1).encode())
    return ProjectRun(projection=proj, files=files, result=result)
