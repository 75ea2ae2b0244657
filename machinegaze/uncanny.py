"""Amplifying the uncanny (Broad, Leymarie & Grierson 2020): fine-tune a generator *against* its critic.

A trained GAN discriminator has learnt what the generator's mistakes look like. Freeze it and flip the sign of
the generator's objective: instead of NVlabs' non-saturating loss softplus(-D(G(z))) ("look real"), minimise

    loss = softplus(D(G(z)))                                  (D: the critic's "real" logit)

so every step moves the generator towards whatever the frozen critic judges most fake. Faces drift into the
uncanny, then the generator collapses onto a few images the critic hates most. The critic is an interface
(`Critic`): the GAN's own discriminator D (labels passed for conditional nets) or a fake-face detector, whose
"fake" logit is negated (and divided by its calibrated temperature) to give a "real" logit.

The loop (`run_uncanny`) is plain: Adam with NVlabs' G settings (lr 0.0025, betas (0, 0.99), eps 1e-8), fresh
z and per-pixel noise every step, no style mixing, no path-length regularisation. Every `snapshot_every` steps
(and at step 0, the untouched generator) the same 16 faces (NVlabs seeds 0..15, noise_mode const) are rendered
and measured:

    critic_fake     mean sigmoid(-logit) of the critic over the 16 faces (its P(fake)); should rise
    diversity       mean pairwise LPIPS (AlexNet by default) between the 16 faces; the collapse curve
    hue, saturation, value, redness
                    colour of the face region (central crop, half the side): saturation-weighted circular mean
                    hue in degrees signed around red (-180..180; skin is about +20), mean HSV saturation
                    and value, redness = mean(R - (G+B)/2) with RGB in [0, 1]
    param_distance  |theta - theta_0| / |theta_0| over all generator parameters (relative L2)
    uncanniness     critic_fake * diversity / diversity_0: judged fake while still diverse. `--keep-peak`
                    keeps the snapshot (step > 0) where it is highest.

Everything lands in `outdir`:
    run.json                       the configuration and the network's sha256
    metrics.jsonl                  one JSON object per snapshot
    grids/step-NNNNNN.png          the 16 evaluation faces (2 rows of 8) at each snapshot
    snapshots/uncanny-NNNNNN.safetensors
                                   the fine-tuned generator (role "G", so `gaze generate --network` reads it) plus
                                   Adam's state, the step and the torch RNG state: `--resume` continues exactly
                                   (same machine, device and thread count)
    progression.mp4, progression.png
                                   the same faces across snapshots (video: every snapshot; PNG: up to 8 rows)
    summary.png, summary.html      the metric curves, with the peak and the collapse marked
    peak.safetensors, peak.png     with --keep-peak
"""

from __future__ import annotations

import copy
import html
import json
import math
import os
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from machinegaze import GazeError
from machinegaze.nets.stylegan2 import Discriminator, Generator
from machinegaze.progress import ProgressFn, report

SNAPSHOT_FORMAT = "machinegaze-uncanny-snapshot-1"
GRID_COLS = 8
# Fields that change what is trained or measured; a resumed run must use the same ones.
_RESUME_FIELDS = (
    "critic",
    "start_from",
    "batch",
    "lr",
    "betas",
    "eps",
    "seed",
    "eval_seeds",
    "eval_trunc",
    "lpips_net",
    "face_crop",
)


@dataclass(frozen=True)
class UncannyConfig:
    steps: int = 500
    snapshot_every: int = 50
    critic: str = "d"  # "d" (the network's discriminator) | "detector" | "detector:NAME_OR_PATH"
    start_from: str = "G_ema"  # "G_ema" | "G" of the network file, or another network file / model name
    batch: int = 8
    lr: float = 0.0025
    betas: tuple[float, float] = (0.0, 0.99)
    eps: float = 1e-8
    seed: int = 0
    eval_seeds: tuple[int, ...] = tuple(range(16))
    eval_trunc: float = 1.0
    lpips_net: str = "alex"
    face_crop: float = 0.5  # side of the central "face region" crop, as a fraction of the image side
    max_collapse: Optional[float] = None
    keep_peak: bool = False
    video_fps: int = 4

    def __post_init__(self):
        if self.steps < 1:
            raise GazeError(f"--steps must be >= 1, got {self.steps}")
        if self.snapshot_every < 1:
            raise GazeError(f"--snapshot-every must be >= 1, got {self.snapshot_every}")
        if self.batch < 1:
            raise GazeError(f"--batch must be >= 1, got {self.batch}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise GazeError(f"--lr must be a positive number, got {self.lr}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise GazeError(f"Adam betas must be two numbers in [0, 1), got {self.betas}")
        if len(self.eval_seeds) < 2:
            raise GazeError("need at least 2 evaluation seeds (diversity is a pairwise distance)")
        if not 0 < self.face_crop <= 1:
            raise GazeError(f"face crop must be in (0, 1], got {self.face_crop}")
        if self.max_collapse is not None and not self.max_collapse > 0:
            raise GazeError(f"--max-collapse must be > 0, got {self.max_collapse}")
        if self.video_fps < 1:
            raise GazeError(f"video fps must be >= 1, got {self.video_fps}")
        parse_critic_spec(self.critic)

    def record(self) -> dict:
        d = asdict(self)
        d["betas"], d["eval_seeds"] = list(self.betas), list(self.eval_seeds)
        return d


# ================================================================ critics
class Critic(nn.Module):
    """A frozen judge: images [N, 3, R, R] in [-1, 1] (+ one-hot labels [N, c_dim] or None) -> "real" logit [N].

    P(fake) = sigmoid(-logit). Subclasses wrap a discriminator or a fake-face detector."""

    name = "critic"

    def forward(self, img: torch.Tensor, c: Optional[torch.Tensor] = None) -> torch.Tensor:
        raise NotImplementedError


class DiscriminatorCritic(Critic):
    """The GAN's own discriminator: its output is already a "real" logit (labels go in for conditional nets)."""

    name = "discriminator"

    def __init__(self, D: Discriminator):
        super().__init__()
        self.D = D

    def forward(self, img, c=None):
        return self.D(img, c if self.D.c_dim > 0 else None).squeeze(1)


class DetectorCritic(Critic):
    """A fake-face detector (machinegaze.detect): real logit = -fake_logit / temperature, so that
    sigmoid(-real_logit) is its calibrated P(fake). Images are clamped to [-1, 1] and resized (bilinear, not
    JPEG re-encoded: that would not be differentiable) to the detector's input size."""

    name = "detector"

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector
        self.size = int(detector.spec.size)

    def forward(self, img, c=None):
        x = img.clamp(-1, 1)
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(
                x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=self.size < x.shape[-1]
            )
        return -self.detector(x) / self.detector.temperature


def parse_critic_spec(spec: str) -> tuple[str, Optional[str]]:
    """'d' -> ('d', None); 'detector' -> ('detector', None) (the bundled one); 'detector:X' -> ('detector', X)."""
    s = str(spec).strip()
    if s.lower() in ("d", "discriminator"):
        return "d", None
    if s.lower() == "detector":
        return "detector", None
    if s.lower().startswith("detector:") and s[len("detector:") :].strip():
        return "detector", s[len("detector:") :].strip()
    raise GazeError(f"--critic must be 'd' or 'detector:PATH', got {spec!r}")


def build_critic(spec: str, D: Optional[Discriminator]) -> Critic:
    kind, arg = parse_critic_spec(spec)
    if kind == "d":
        if D is None:
            raise GazeError(
                "this network file holds no discriminator (D); pass one that does, or use --critic detector:PATH"
            )
        return DiscriminatorCritic(D)
    from machinegaze import zoo

    return DetectorCritic(zoo.load_detector(arg))


def freeze(module: nn.Module) -> nn.Module:
    """requires_grad False and eval mode (no dropout, no batch-norm statistic updates)."""
    return module.requires_grad_(False).eval()


def fingerprint(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same_state(module: nn.Module, reference: dict[str, torch.Tensor]) -> bool:
    """True when every parameter and buffer is bit-identical to the fingerprint."""
    sd = module.state_dict()
    return set(sd) == set(reference) and all(torch.equal(sd[k], reference[k]) for k in sd)


# ================================================================ the objective and one step
def inverted_loss(real_logits: torch.Tensor) -> torch.Tensor:
    """softplus(logit): NVlabs' generator loss softplus(-logit) with the sign flipped; minimising it pushes the
    critic's judgement towards "fake"."""
    return F.softplus(real_logits).mean()


def random_labels(G: Generator, n: int, device: Optional[torch.device] = None) -> Optional[torch.Tensor]:
    """Uniform one-hot classes for conditional generators (drawn from the global torch RNG of `device`),
    else None."""
    if G.c_dim == 0:
        return None
    return F.one_hot(torch.randint(0, G.c_dim, (n,), device=device), G.c_dim).float()


def finetune_step(G: Generator, critic: Critic, opt: torch.optim.Optimizer, batch: int) -> torch.Tensor:
    """One update of G against the frozen critic; fresh z, labels and per-pixel noise from the global RNG of
    G's device. Returns the loss as a 0-d tensor left on the device (no host round trip)."""
    dev = next(G.parameters()).device
    z = torch.randn([batch, G.z_dim], device=dev)
    c = random_labels(G, batch, dev)
    img = G(z, c, noise_mode="random")
    loss = inverted_loss(critic(img, c))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def make_optimizer(G: Generator, cfg: UncannyConfig) -> torch.optim.Adam:
    return torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=tuple(float(b) for b in cfg.betas), eps=float(cfg.eps))


# ================================================================ measurements
def eval_inputs(G: Generator, seeds: Sequence[int]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Fixed z (NVlabs seed semantics) and, for conditional nets, class seed % c_dim."""
    from machinegaze.generate import z_from_seed

    z = torch.cat([z_from_seed(s, G.z_dim) for s in seeds])
    c = None
    if G.c_dim > 0:
        c = F.one_hot(torch.tensor([s % G.c_dim for s in seeds]), G.c_dim).float()
    return z, c


@torch.no_grad()
def render(
    G: Generator, z: torch.Tensor, c: Optional[torch.Tensor], trunc: float = 1.0, batch: int = 8
) -> torch.Tensor:
    out = []
    for i in range(0, z.shape[0], batch):
        out.append(
            G(z[i : i + batch], None if c is None else c[i : i + batch], truncation_psi=trunc, noise_mode="const")
        )
    return torch.cat(out)


@torch.no_grad()
def critic_logits(critic: Critic, images: torch.Tensor, c: Optional[torch.Tensor], batch: int = 8) -> torch.Tensor:
    """Real logits [N], judged in chunks of `batch` (minibatch-stddev makes D's judgement depend on the chunk)."""
    out = []
    for i in range(0, images.shape[0], batch):
        try:
            out.append(critic(images[i : i + batch], None if c is None else c[i : i + batch]))
        except ValueError as e:  # minibatch-stddev group size that does not divide the chunk
            raise GazeError(
                f"the critic cannot judge {images[i : i + batch].shape[0]} images at once ({e}); choose another --batch"
            ) from None
    return torch.cat(out)


@torch.no_grad()
def mean_pairwise_lpips(lpips: nn.Module, images: torch.Tensor, precision: str = "fp32") -> float:
    """Mean LPIPS over all pairs i < j (autocast at `precision`). Images smaller than the backbone allows are
    upsampled (bilinear)."""
    from machinegaze.device import autocast

    x = images.clamp(-1, 1)
    n = x.shape[0]
    min_size = int(getattr(getattr(lpips, "features", None), "min_size", 1))
    if x.shape[-1] < min_size:
        x = F.interpolate(x, size=(min_size, min_size), mode="bilinear", align_corners=False)
    total, pairs = 0.0, 0
    for i in range(n - 1):
        with autocast(x.device, precision):
            d = lpips(x[i : i + 1], x[i + 1 :])
        total += float(d.double().sum())
        pairs += d.numel()
    return total / pairs


def face_colour(images: torch.Tensor, crop: float = 0.5) -> dict[str, Optional[float]]:
    """Colour of the central crop (side `crop` x the image side) of [N, 3, H, W] images in [-1, 1].

    hue: saturation-weighted circular mean of the HSV hue in degrees, signed around red: (-180, 180], 0 red,
    +60 yellow, +120 green, -120 blue, -60 magenta (None for a grey region); saturation, value: mean HSV S and V in [0, 1]; redness: mean(R - (G+B)/2) with
    RGB in [0, 1] (positive = redder than grey)."""
    h, w = images.shape[-2:]
    ch, cw = max(1, round(h * crop)), max(1, round(w * crop))
    top, left = (h - ch) // 2, (w - cw) // 2
    x = (images[:, :3, top : top + ch, left : left + cw].double().clamp(-1, 1) + 1) / 2
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    maxc, minc = x.max(dim=1).values, x.min(dim=1).values
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    hue = torch.where(
        maxc == r, ((g - b) / safe) % 6, torch.where(maxc == g, (b - r) / safe + 2, (r - g) / safe + 4)
    ) * (math.pi / 3)
    hue = torch.where(delta > 0, hue, torch.zeros_like(hue))
    sat = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    sx, sy = float((sat * torch.cos(hue)).sum()), float((sat * torch.sin(hue)).sum())
    mean_hue = None if math.hypot(sx, sy) < 1e-9 * sat.numel() else math.degrees(math.atan2(sy, sx))
    return {
        "hue": mean_hue,
        "saturation": float(sat.mean()),
        "value": float(maxc.mean()),
        "redness": float((r - (g + b) / 2).mean()),
    }


@torch.no_grad()
def param_distance(G: nn.Module, reference: dict[str, torch.Tensor]) -> float:
    """|theta - theta_0| / |theta_0| over the named parameters (relative L2 distance)."""
    num = den = 0.0
    for name, p in G.named_parameters():
        p0 = reference[name].double()
        num += float((p.detach().double() - p0).square().sum())
        den += float(p0.square().sum())
    return math.sqrt(num) / math.sqrt(den) if den > 0 else math.sqrt(num)


def uncanniness(critic_fake: float, diversity: float, diversity_0: float) -> float:
    """The --keep-peak rule: judged fake while still diverse."""
    return critic_fake * diversity / diversity_0 if diversity_0 > 0 else 0.0


# ================================================================ snapshots (resumable)
def snapshot_path(outdir: Path, step: int) -> Path:
    return Path(outdir) / "snapshots" / f"uncanny-{step:06d}.safetensors"


def grid_path(outdir: Path, step: int) -> Path:
    return Path(outdir) / "grids" / f"step-{step:06d}.png"


def list_snapshots(outdir: Path) -> list[tuple[int, Path]]:
    d = Path(outdir) / "snapshots"
    out = []
    for p in d.glob("uncanny-*.safetensors") if d.is_dir() else []:
        m = re.fullmatch(r"uncanny-(\d+)\.safetensors", p.name)
        if m:
            out.append((int(m.group(1)), p))
    return sorted(out)


def save_snapshot(path: Path, G: Generator, opt: torch.optim.Optimizer, step: int, run: dict) -> Path:
    """G (role "G") + Adam's per-parameter state + the torch RNG state (and the CUDA one for a generator on a
    GPU), with the step and run record in meta."""
    from machinegaze import checkpoints

    extra: dict[str, torch.Tensor] = {"rng.torch": torch.get_rng_state()}
    dev = next(G.parameters()).device
    if dev.type == "cuda":
        extra["rng.cuda"] = torch.cuda.get_rng_state(dev)
    for i, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            extra[f"opt.{i}.{k}"] = v.detach().cpu() if isinstance(v, torch.Tensor) else torch.tensor(v)
    meta = {"uncanny": {"format": SNAPSHOT_FORMAT, "step": int(step), **run}}
    return checkpoints.save_networks(path, {"G": G}, meta=meta, extra=extra)


def load_snapshot(path: Path, G: Generator, opt: torch.optim.Optimizer) -> tuple[int, dict, dict]:
    """Load weights into G and state into opt (in place); returns (step, RNG states {"torch": .., "cuda": ..},
    run record)."""
    from machinegaze import checkpoints

    nets = checkpoints.load_networks(path)
    info = nets.meta.get("uncanny") or {}
    if info.get("format") != SNAPSHOT_FORMAT or nets.G is None or "rng.torch" not in nets.extra:
        raise GazeError(f"{path}: not a resumable uncanny snapshot")
    checkpoints.load_state_strict(G, nets.G.state_dict(), str(path))
    sd = opt.state_dict()
    state: dict[int, dict] = {}
    for k, v in nets.extra.items():
        m = re.fullmatch(r"opt\.(\d+)\.(\w+)", k)
        if m:
            state.setdefault(int(m.group(1)), {})[m.group(2)] = v.clone()
    sd["state"] = state
    opt.load_state_dict(sd)
    rng = {k.split(".", 1)[1]: v.clone() for k, v in nets.extra.items() if k.startswith("rng.")}
    return int(info["step"]), rng, info


# ================================================================ the run
@dataclass
class UncannyResult:
    outdir: Path
    steps_done: int
    metrics: list[dict]
    collapse_step: Optional[int] = None  # first snapshot whose diversity fell below --max-collapse
    peak_step: Optional[int] = None  # highest uncanniness (step > 0)
    resumed_from: Optional[int] = None
    seconds: float = 0.0
    files: dict[str, Path] = field(default_factory=dict)


def start_generator(nets, start_from: str) -> Generator:
    """The generator to fine-tune: G_ema or G of the network file, or the generator of another file/name."""
    from machinegaze import zoo

    if start_from in ("G_ema", "G"):
        g = getattr(nets, start_from)
        if g is None:
            have = [r for r in ("G_ema", "G") if getattr(nets, r) is not None]
            raise GazeError(
                f"{nets.source}: holds no {start_from} (it has: {', '.join(have) or 'no generator'}); "
                f"use --start-from {have[0] if have else 'PATH'}"
            )
        return g
    return zoo.load_generator(start_from)


def _check_pair(G: Generator, critic: Critic) -> None:
    if G.img_channels != 3:
        raise GazeError(f"the generator makes {G.img_channels}-channel images; uncanny needs RGB")
    if isinstance(critic, DiscriminatorCritic):
        D = critic.D
        if (D.img_resolution, D.img_channels) != (G.img_resolution, G.img_channels):
            raise GazeError(f"generator ({G.img_resolution} px) and discriminator ({D.img_resolution} px) do not match")
        if D.c_dim != G.c_dim:
            raise GazeError(f"generator has {G.c_dim} classes, discriminator {D.c_dim}")


def _check_batches(critic: Critic, batch: int, n_eval: int) -> None:
    """D's minibatch-stddev layer needs every batch it judges to be a multiple of its group size."""
    mbstd = getattr(getattr(getattr(critic, "D", None), "b4", None), "mbstd", None)
    if mbstd is None or mbstd.group_size is None:
        return
    for n in {batch, n_eval % batch or batch}:
        g = min(mbstd.group_size, n)
        if n % g:
            raise GazeError(
                f"the discriminator judges images in groups of {mbstd.group_size} (minibatch stddev): "
                f"--batch {batch} with {n_eval} evaluation faces gives a batch of {n}; use a multiple "
                f"of {mbstd.group_size}"
            )


def _write_jsonl(path: Path, records: list[dict]) -> None:
    from machinegaze.data import atomic_write_bytes

    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in records).encode())


def read_metrics(outdir: str | os.PathLike) -> list[dict]:
    p = Path(outdir) / "metrics.jsonl"
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def _resume(outdir: Path, snaps: list, G: Generator, opt, run: dict) -> tuple[list[dict], int, dict]:
    """Load the last snapshot into G and opt: (metrics records up to it, its step, the RNG states to go on with)."""
    _, last_path = snaps[-1]
    start_step, rng_state, info = load_snapshot(last_path, G, opt)
    _check_resume(info, run, last_path)
    records = [r for r in read_metrics(outdir) if r["step"] <= start_step]
    if not records or records[-1]["step"] != start_step or records[0]["step"] != 0:
        raise GazeError(f"{outdir}/metrics.jsonl does not match the snapshots (cannot resume from step {start_step})")
    return records, start_step, rng_state


@dataclass
class _Session:
    """One uncanny run's moving parts: the generator being fine-tuned and its optimiser, the frozen critic and
    LPIPS, the fixed evaluation inputs and the metric records so far (all tensors on one device)."""

    outdir: Path
    cfg: UncannyConfig
    G: Generator
    opt: torch.optim.Optimizer
    critic: Critic
    lpips: nn.Module
    theta0: dict[str, torch.Tensor]
    z_eval: torch.Tensor
    c_eval: Optional[torch.Tensor]
    run: dict
    records: list[dict] = field(default_factory=list)
    precision: str = "fp32"
    t_start: float = 0.0

    def measure(self, step: int, losses: list[torch.Tensor]) -> dict:
        """Render and judge the evaluation faces, write their grid, append and write the metrics record."""
        from machinegaze.data import make_grid, save_image

        cfg, G = self.cfg, self.G
        was_training = G.training
        G.eval()
        images = render(G, self.z_eval, self.c_eval, cfg.eval_trunc, cfg.batch)
        G.train(was_training)
        logits = critic_logits(self.critic, images, self.c_eval, cfg.batch)
        mean_loss = float(np.mean(torch.stack(losses).double().cpu().numpy())) if losses else None
        rec = {
            "step": step,
            "critic_fake": float(torch.sigmoid(-logits.double()).mean()),
            "critic_logit": float(logits.double().mean()),
            "diversity": mean_pairwise_lpips(self.lpips, images, self.precision),
            **face_colour(images, cfg.face_crop),
            "param_distance": param_distance(G, self.theta0),
            "loss": mean_loss,
        }
        d0 = self.records[0]["diversity"] if self.records else rec["diversity"]
        rec["uncanniness"] = uncanniness(rec["critic_fake"], rec["diversity"], d0)
        rec["seconds"] = round(time.perf_counter() - self.t_start, 3)
        grid = make_grid(images.clamp(-1, 1).cpu(), ncols=min(GRID_COLS, images.shape[0]))
        save_image(grid, grid_path(self.outdir, step))
        self.records.append(rec)
        _write_jsonl(self.outdir / "metrics.jsonl", self.records)
        return rec

    def collapsed(self, rec: dict) -> bool:
        return self.cfg.max_collapse is not None and rec["diversity"] < self.cfg.max_collapse


def _open_session(
    network: Path, outdir: Path, cfg: UncannyConfig, resume: bool, lpips, device: torch.device, precision: str
) -> tuple[_Session, int, Optional[dict]]:
    """Load and check the networks onto `device`, start or resume: (session, start step, RNG states or None)."""
    from machinegaze import checkpoints, zoo
    from machinegaze.data import atomic_write_bytes, sha256_file

    snaps = list_snapshots(outdir)
    if not resume and (snaps or (outdir / "metrics.jsonl").exists()):
        raise GazeError(
            f"{outdir} already holds an uncanny run; pass --resume to continue it, or choose another --outdir"
        )
    nets = checkpoints.load_networks(network)
    critic = freeze(build_critic(cfg.critic, nets.D).to(device))
    G0 = freeze(copy.deepcopy(start_generator(nets, cfg.start_from)).float().to(device))
    _check_pair(G0, critic)
    _check_batches(critic, cfg.batch, len(cfg.eval_seeds))
    G = copy.deepcopy(G0).train().requires_grad_(True)
    lpips = freeze(lpips if lpips is not None else zoo.load_lpips(cfg.lpips_net, device=device))
    if next(lpips.parameters()).device != device:  # a caller's shared module is copied, not moved
        lpips = copy.deepcopy(lpips).to(device)
    z_eval, c_eval = eval_inputs(G, cfg.eval_seeds)
    session = _Session(
        outdir=outdir,
        cfg=cfg,
        G=G,
        opt=make_optimizer(G, cfg),
        critic=critic,
        lpips=lpips,
        theta0={k: v.detach().clone() for k, v in G0.named_parameters()},
        z_eval=z_eval.to(device),
        c_eval=None if c_eval is None else c_eval.to(device),
        run={"network": str(network), "network_sha256": sha256_file(network), "config": cfg.record()},
        precision=precision,
        t_start=time.perf_counter(),
    )
    start_step, rng_state = 0, None
    if resume and snaps:  # with --resume and no snapshot yet: a fresh start
        session.records, start_step, rng_state = _resume(outdir, snaps, G, session.opt, session.run)
    outdir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(outdir / "run.json", json.dumps(session.run, indent=2).encode())
    return session, start_step, rng_state


def _seed_rng(device: torch.device, seed: int, state: Optional[dict], step: int) -> None:
    """Inside fork_rng: the global RNGs as a fresh run (seed) or a snapshot (state) left them. A snapshot made on
    another kind of device has no state for this one: it is seeded from (seed, step), so that run goes on
    reproducibly but not bit-identically."""
    if state is None:
        torch.manual_seed(seed)
        return
    torch.set_rng_state(state["torch"])
    if device.type == "cuda":
        if "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"], device)
        else:
            torch.cuda.manual_seed(seed * 1_000_003 + step)


def _first_snapshot(s: _Session, progress: ProgressFn) -> None:
    """Measure the untouched generator (step 0); refuse to start one that is already collapsed."""
    rec0 = s.measure(0, [])
    if s.collapsed(rec0):
        for p in (s.outdir / "metrics.jsonl", grid_path(s.outdir, 0), s.outdir / "run.json"):
            p.unlink(missing_ok=True)  # nothing was fine-tuned: leave no half-started run behind
        raise GazeError(
            f"the starting generator's diversity ({rec0['diversity']:.4f}) is already below "
            f"--max-collapse {s.cfg.max_collapse}"
        )
    report(progress, 0, s.cfg.steps, critic_fake=rec0["critic_fake"], diversity=rec0["diversity"])


def _finetune(s: _Session, step: int, progress: ProgressFn, log_every: int) -> Optional[int]:
    """Fine-tune from `step` to cfg.steps, measuring and snapshotting every snapshot_every steps; the loss is
    read back from the device only at snapshots and every `log_every` steps. Returns the collapse step or None."""
    cfg = s.cfg
    losses: list[torch.Tensor] = []
    while step < cfg.steps:
        step += 1
        losses.append(finetune_step(s.G, s.critic, s.opt, cfg.batch))
        if step % cfg.snapshot_every == 0 or step == cfg.steps:
            rec = s.measure(step, losses)
            losses = []
            save_snapshot(snapshot_path(s.outdir, step), s.G, s.opt, step, s.run)
            report(
                progress, step, cfg.steps, loss=rec["loss"], critic_fake=rec["critic_fake"], diversity=rec["diversity"]
            )
            if s.collapsed(rec):
                return step
        elif step % log_every == 0:
            report(progress, step, cfg.steps, loss=float(losses[-1]))
        else:
            report(progress, step, cfg.steps)
    return None


def run_uncanny(
    network: str | os.PathLike,
    outdir: str | os.PathLike,
    cfg: UncannyConfig = UncannyConfig(),
    resume: bool = False,
    progress: ProgressFn = None,
    lpips: Optional[nn.Module] = None,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    log_every: int = 10,
) -> UncannyResult:
    """Fine-tune the generator of `network` against its frozen critic on `device`, measuring and snapshotting as
    it goes (LPIPS under autocast at `precision`; G and the critic in fp32).

    `lpips` may be given (a loaded LPIPS module) to save loading it; by default zoo.load_lpips(cfg.lpips_net)."""
    device = torch.device(device)
    outdir = Path(outdir)
    s, start_step, rng_state = _open_session(Path(network), outdir, cfg, resume, lpips, device, precision)
    critic_before = fingerprint(s.critic)
    resumed_from = start_step if s.records else None
    collapse_step = s.records[-1]["step"] if resumed_from is not None and s.collapsed(s.records[-1]) else None
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        _seed_rng(device, cfg.seed, rng_state, start_step)
        if start_step == 0:
            _first_snapshot(s, progress)
        if collapse_step is None:
            collapse_step = _finetune(s, start_step, progress, max(1, int(log_every)))
    if not same_state(s.critic, critic_before):
        raise RuntimeError("internal error: the frozen critic changed during fine-tuning")
    files = finalise(outdir, cfg, s.records, collapse_step)
    return UncannyResult(
        outdir=outdir,
        steps_done=s.records[-1]["step"],
        metrics=s.records,
        collapse_step=collapse_step,
        peak_step=find_peak(s.records),
        resumed_from=resumed_from,
        seconds=time.perf_counter() - s.t_start,
        files=files,
    )


def _check_resume(info: dict, run: dict, path: Path) -> None:
    if info.get("network_sha256") != run["network_sha256"]:
        raise GazeError(f"{path} was fine-tuned from a different network file than {run['network']}")
    old = info.get("config") or {}
    for k in _RESUME_FIELDS:
        if old.get(k) != run["config"][k]:
            raise GazeError(f"cannot resume: {k} was {old.get(k)!r} in this run, now {run['config'][k]!r}")


def find_peak(records: list[dict]) -> Optional[int]:
    """The step (> 0) with the highest uncanniness, or None before the first fine-tuned snapshot."""
    cands = [r for r in records if r["step"] > 0]
    return max(cands, key=lambda r: r["uncanniness"])["step"] if cands else None


# ================================================================ outputs derived from what is on disk
def finalise(outdir: Path, cfg: UncannyConfig, records: list[dict], collapse_step: Optional[int]) -> dict[str, Path]:
    """Video, progression grid, summary plot + HTML and (with keep_peak) the peak files, from metrics and grids."""
    from machinegaze import checkpoints
    from machinegaze.data import save_image
    from machinegaze.generate import write_video

    outdir = Path(outdir)
    files: dict[str, Path] = {"metrics": outdir / "metrics.jsonl"}
    steps = [r["step"] for r in records]
    grids = [_read_png(grid_path(outdir, s)) for s in steps]
    frames = [_even(g) for g in grids]
    files["video"] = write_video(frames, outdir / "progression.mp4", fps=cfg.video_fps)
    files["progression"] = save_image(progression_grid(grids, steps), outdir / "progression.png")
    peak = find_peak(records) if cfg.keep_peak else None
    if peak is not None:
        nets = checkpoints.load_networks(snapshot_path(outdir, peak))
        rec = next(r for r in records if r["step"] == peak)
        meta = {
            "uncanny_peak": {
                "step": peak,
                "rule": "max critic_fake * diversity / diversity_0 over steps > 0",
                "metrics": rec,
            }
        }
        files["peak"] = checkpoints.save_networks(outdir / "peak.safetensors", {"G": nets.G}, meta=meta)
        files["peak_grid"] = save_image(grids[steps.index(peak)], outdir / "peak.png")
    files["summary_png"] = plot_summary(
        records, outdir / "summary.png", peak_step=peak, collapse_step=collapse_step, max_collapse=cfg.max_collapse
    )
    files["summary_html"] = write_summary_html(outdir, records, cfg, peak, collapse_step)
    return files


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    if not path.is_file():
        raise GazeError(f"missing snapshot grid {path} (the run folder is incomplete)")
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _even(a: np.ndarray) -> np.ndarray:
    """Pad to even height and width (H.264 with yuv420p needs them)."""
    return np.pad(a, ((0, a.shape[0] % 2), (0, a.shape[1] % 2), (0, 0)), mode="edge")


def progression_grid(grids: list[np.ndarray], steps: list[int], rows: int = 8) -> np.ndarray:
    """Rows = up to `rows` snapshots evenly spaced (first and last included); each row the first grid row of
    that snapshot (the first 8 evaluation faces)."""
    n = len(grids)
    idx = sorted(set(np.linspace(0, n - 1, min(rows, n)).round().astype(int).tolist()))
    tile = grids[0].shape[1] // min(GRID_COLS, grids[0].shape[1])  # grid width / columns = one face's side
    return np.concatenate([grids[i][:tile] for i in idx], axis=0)


def plot_summary(
    records: list[dict],
    out: Path,
    peak_step: Optional[int] = None,
    collapse_step: Optional[int] = None,
    max_collapse: Optional[float] = None,
) -> Path:
    """Six panels against the step: critic P(fake), diversity, uncanniness, parameter distance, redness and
    saturation, hue. Uses the Agg canvas directly (no global matplotlib backend is touched)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from machinegaze.data import atomic_path

    steps = [r["step"] for r in records]

    def series(key):
        return [np.nan if r.get(key) is None else r[key] for r in records]

    fig = Figure(figsize=(11, 6.5), dpi=80)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 3)
    panels = [
        ("critic_fake", "critic P(fake)", None),
        ("diversity", "diversity (mean pairwise LPIPS)", None),
        ("uncanniness", "uncanniness = P(fake) x div/div0", None),
        ("param_distance", "|theta - theta0| / |theta0|", None),
        ("redness", "face colour: redness R-(G+B)/2, saturation", "saturation"),
        ("hue", "face hue (deg, 0 = red, +60 = yellow)", None),
    ]
    for ax, (key, title, key2) in zip(axes.flat, panels):
        ax.plot(steps, series(key), marker="o", ms=3, label=key)
        if key2:
            ax.plot(steps, series(key2), marker="s", ms=3, label=key2)
            ax.legend(fontsize=8)
        if key == "diversity" and max_collapse is not None:
            ax.axhline(max_collapse, color="red", ls=":", lw=1)
        if peak_step is not None:
            ax.axvline(peak_step, color="orange", ls="--", lw=1)
        if collapse_step is not None:
            ax.axvline(collapse_step, color="red", ls="--", lw=1)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    notes = []
    if peak_step is not None:
        notes.append(f"peak (orange) at step {peak_step}")
    if collapse_step is not None:
        notes.append(f"collapse (red) at step {collapse_step}")
    fig.suptitle("Amplifying the uncanny" + (": " + ", ".join(notes) if notes else ""), fontsize=11)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    return Path(out)


def write_summary_html(
    outdir: Path, records: list[dict], cfg: UncannyConfig, peak_step: Optional[int], collapse_step: Optional[int]
) -> Path:
    from machinegaze.data import atomic_write_bytes

    esc = html.escape
    keys = ["step", "critic_fake", "diversity", "uncanniness", "redness", "saturation", "hue", "param_distance", "loss"]

    def fmt(v):
        return "" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))

    rows = "".join("<tr>" + "".join(f"<td>{esc(fmt(r.get(k)))}</td>" for k in keys) + "</tr>" for r in records)
    last = records[-1]["step"]
    parts = [
        "<!doctype html><meta charset='utf-8'><title>uncanny run</title>",
        "<style>body{font-family:sans-serif;max-width:960px;margin:1em auto}td,th{padding:2px 8px;text-align:right}"
        "img{image-rendering:pixelated;max-width:100%}</style>",
        "<h1>Amplifying the uncanny</h1>",
        f"<p>critic <code>{esc(cfg.critic)}</code>, start <code>{esc(cfg.start_from)}</code>, batch {cfg.batch}, "
        f"lr {cfg.lr}; {len(records)} snapshots up to step {last}."
        + (f" Peak uncanniness at step {peak_step}." if peak_step is not None else "")
        + (f" Diversity fell below {cfg.max_collapse} at step {collapse_step}." if collapse_step is not None else "")
        + "</p>",
        "<img src='summary.png' alt='metric curves'>",
        "<h2>Progression</h2><p>Rows: snapshots from first to last; the same 8 faces in every row. "
        "<a href='progression.mp4'>video of every snapshot</a></p><img src='progression.png' width='512'>",
        f"<h2>Last snapshot (step {last})</h2><img src='grids/step-{last:06d}.png' width='768'>",
    ]
    if peak_step is not None:
        parts.append(f"<h2>Peak (step {peak_step})</h2><img src='peak.png' width='768'>")
    parts.append("<h2>Metrics</h2><table><tr>" + "".join(f"<th>{k}</th>" for k in keys) + f"</tr>{rows}</table>")
    out = Path(outdir) / "summary.html"
    atomic_write_bytes(out, "\n".join(parts).encode())
    return out
