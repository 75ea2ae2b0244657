"""Train a StyleGAN2 generator + discriminator (Karras et al. 2020), the NVlabs recipe in one visible loop.

    for each minibatch (step):
        Gmain  G loss: softplus(-D(aug(G(z))))                          non-saturating logistic loss
        Greg   path-length regularisation, every pl_interval steps      (optional, pl_weight > 0)
        Dmain  D loss: softplus(D(aug(G(z)))) + softplus(-D(aug(x)))
        Dreg   R1: gamma/2 * |grad_x D(aug(x))|^2, every r1_interval steps ("lazy"), weighted by the interval
        G_ema  <- exponential moving average of G (half-life ema_kimg, ramped up over the first images)

with style-mixing regularisation (two z's, a random crossover layer, probability 0.9), DiffAugment
(Zhao et al. 2020: colour, translation, cutout, applied to every image D sees, real or fake) and Adam
(lr 0.0025, betas (0, 0.99), with NVlabs' lazy-regularisation correction of lr and betas).

With `d_arch="projected"` D is a projected discriminator (nets/projected.py: frozen EfficientNet-Lite0 features,
trainable multi-scale patch heads), trained with the hinge loss, relu(1 + D(fake)) + relu(1 - D(real)) for D and
-D(fake) for G, both averaged over the patches, and no R1 (Sauer et al. 2021).

Exact resume and rank-independence come from one rule: every random number of a step is drawn from a
generator seeded by (seed, step, phase, chunk), where a chunk is a fixed slice of `batch_gpu` images of the
global minibatch. Data order is a per-epoch permutation seeded by (seed, epoch). Nothing depends on how
many steps ran in this process or on which process ran a chunk, so

  - a run killed and resumed from a snapshot (weights, Adam moments, step, pl_mean) is bit-identical to an
    uninterrupted one;
  - N processes (torchrun, gloo) each computing `batch / (N * batch_gpu)` chunks give the same gradients as
    one process accumulating all chunks (gradients are summed over chunks and ranks, every loss is divided
    by the global batch).

The minibatch-stddev layer of D groups samples within a chunk, so results depend on `batch_gpu` (as in
NVlabs), not on the number of processes. A projected D's spectral-norm estimates advance once per D call, so its
runs also depend on the number of chunks per process (resume stays exact: the estimates are saved).

Snapshots are machinegaze .safetensors files (checkpoints.save_networks, atomic): G, D, G_ema and the
training state in `extra` tensors, so `gaze generate --network snapshot-....safetensors` works on them.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from machinegaze import GazeError
from machinegaze.nets.projected import HEAD_NORMS
from machinegaze.progress import ProgressFn, report

SNAPSHOT_PREFIX = "snapshot-"
METRICS_FILE = "metrics.jsonl"
AUGMENT_OPS = ("color", "translation", "cutout")
D_ARCHS = ("stylegan", "projected")  # StyleGAN2 D (logistic loss + R1), or projected D (hinge loss, no R1)
LOSS_NOTES = {
    "stylegan": "non-saturating logistic, R1, style mixing, DiffAugment; Adam",
    "projected": "hinge on the patch logits of a projected D (frozen EfficientNet-Lite0), style mixing, DiffAugment; Adam",
}

# Network presets. Channels per resolution r are min(cbase // r, cmax), as in NVlabs.
PRESETS = {
    # unit tests: 16-32 px, a few thousand parameters
    "tiny": dict(z_dim=32, w_dim=32, map_layers=2, cbase=512, cmax=32),
    # the bundled CPU face model (64 px): small enough to learn faces in about an hour on two CPU cores
    "small": dict(z_dim=128, w_dim=128, map_layers=2, cbase=2048, cmax=128),
    # between the two: a little more capacity, a few times slower
    "medium": dict(z_dim=256, w_dim=256, map_layers=4, cbase=4096, cmax=256),
    # a lighter 128 px generator: channels halved at 16 px and above (min(1024 / r, 128)), ~1/3 of small's FLOPs
    "light": dict(z_dim=128, w_dim=128, map_layers=2, cbase=1024, cmax=128),
    # NVlabs' StyleGAN2 config F (for GPUs)
    "paper": dict(z_dim=512, w_dim=512, map_layers=8, cbase=32768, cmax=512),
}


@dataclass(frozen=True)
class TrainConfig:
    data: str = ""  # folder or .zip of images (centre-cropped and resized to res)
    outdir: str = "runs/train"  # snapshots, metrics.jsonl, fakes grids
    kimg: float = 100.0  # train until this many thousand real images have been shown to D
    batch: int = 32  # global minibatch
    batch_gpu: int = 0  # images per chunk per process (gradient accumulation); 0 = batch / processes
    res: int = 64
    split: str = ""  # train on one split of the dataset (data.ImageDataset.split); '' = all images
    cfg: str = "small"  # network preset (PRESETS); the fields below override it when non-zero
    z_dim: int = 0
    w_dim: int = 0
    map_layers: int = 0
    cbase: int = 0
    cmax: int = 0
    mbstd_group: int = 4
    lr: float = 0.0025  # Adam, G (and D unless dlr is set)
    dlr: Optional[float] = None  # Adam learning rate of D; None = lr
    beta1: float = 0.0
    beta2: float = 0.99
    gamma: Optional[float] = None  # R1 weight; None = NVlabs' auto 0.0002 * res^2 / batch
    r1_interval: int = 16
    pl_weight: float = 0.0  # path-length regularisation (0 = off)
    pl_interval: int = 4
    pl_batch_shrink: int = 2
    pl_decay: float = 0.01
    style_mixing: float = 0.9
    ema_kimg: Optional[float] = None  # None = NVlabs' auto batch * 10 / 32
    ema_rampup: Optional[float] = 0.05
    augment: str = "color,translation,cutout"  # DiffAugment ops, comma-separated; '' or 'none' = off
    mirror: bool = True  # random x-flips of real images
    seed: int = 0
    tick_kimg: float = 1.0  # log a line of metrics every tick
    snap_kimg: float = 5.0  # write a snapshot every this many kimg (and at the end)
    threads: int = 0  # torch threads per process; 0 = CPU count / processes
    resume: bool = False  # continue from the latest snapshot in outdir
    d_arch: str = "stylegan"  # discriminator: stylegan | projected (nets/projected.py)
    d_norm: str = "group"  # projected D: norm after each head conv (none | group | batch)
    d_backbone_res: int = 0  # projected D: resize images to this size for the frozen backbone (0 = as trained)
    init_from: str = ""  # start from a network (name or file), often of a lower resolution: see init_from_network
    d_warmup_kimg: float = 0.0  # train D alone (G frozen) for the first this many kimg, e.g. after --init-from
    g_freeze_below: int = 0  # G trains only its synthesis blocks of at least this resolution (0 = all of G)
    g_detail_weight: float = 0.0  # with g_freeze_below: penalise the colour (4x4 means, chroma) the top blocks add

    def __post_init__(self):
        if self.cfg not in PRESETS:
            raise GazeError(f"--cfg: unknown preset '{self.cfg}' (choose from: {', '.join(PRESETS)})")
        if self.res < 8 or self.res & (self.res - 1):
            raise GazeError(f"--res: {self.res} is not a power of two >= 8")
        if self.batch < 1 or self.batch_gpu < 0:
            raise GazeError("--batch must be >= 1 (and --batch-gpu >= 0)")
        if not self.kimg > 0:
            raise GazeError(f"--kimg: {self.kimg} must be > 0")
        if not (self.tick_kimg > 0 and self.snap_kimg > 0):
            raise GazeError("--tick-kimg and --snap-kimg must be > 0")
        bad = [op for op in self.augment_ops() if op not in AUGMENT_OPS]
        if bad:
            raise GazeError(f"--augment: unknown op '{bad[0]}' (choose from: {', '.join(AUGMENT_OPS)})")
        if self.d_arch not in D_ARCHS:
            raise GazeError(f"--d-arch: unknown discriminator '{self.d_arch}' (choose from: {', '.join(D_ARCHS)})")
        if self.d_norm not in HEAD_NORMS:
            raise GazeError(f"--d-norm: unknown norm '{self.d_norm}' (choose from: {', '.join(HEAD_NORMS)})")
        if self.dlr is not None and not self.dlr > 0:
            raise GazeError(f"--dlr: {self.dlr} must be > 0")
        if not self.lr > 0:
            raise GazeError(f"--lr: {self.lr} must be > 0")
        if self.g_freeze_below < 0 or self.g_freeze_below > self.res:
            raise GazeError(f"--g-freeze-below: {self.g_freeze_below} is not between 0 and --res {self.res}")
        if self.g_freeze_below and self.pl_weight > 0:
            raise GazeError("--g-freeze-below freezes the mapping network, which --pl-weight needs: use --pl-weight 0")
        if not self.g_detail_weight >= 0:
            raise GazeError(f"--g-detail-weight: {self.g_detail_weight} must be >= 0")
        if self.g_detail_weight and not self.g_freeze_below:
            raise GazeError(
                "--g-detail-weight needs --g-freeze-below (it keeps the blocks below it in charge of colour)"
            )
        if not self.d_warmup_kimg >= 0:
            raise GazeError(f"--d-warmup-kimg: {self.d_warmup_kimg} must be >= 0")
        if self.d_backbone_res < 0:
            raise GazeError(f"--d-backbone-res: {self.d_backbone_res} must be >= 0")
        if not 0.0 <= self.style_mixing <= 1.0:
            raise GazeError(f"--style-mixing: {self.style_mixing} is not in [0, 1]")

    def augment_ops(self) -> list[str]:
        s = (self.augment or "").strip().lower()
        return [] if s in ("", "none", "off") else [p.strip() for p in s.split(",") if p.strip()]

    def net(self, key: str) -> int:
        v = getattr(self, key)
        return int(v) if v else int(PRESETS[self.cfg][key])

    def resolved_gamma(self) -> float:
        if self.gamma is not None:
            return float(self.gamma)
        return 0.0 if self.d_arch == "projected" else 0.0002 * self.res**2 / self.batch

    def resolved_ema_kimg(self) -> float:
        return float(self.ema_kimg) if self.ema_kimg is not None else self.batch * 10 / 32


# Fields that may change when a run is resumed (run length and I/O); everything else must match the snapshot.
RESUMABLE_CHANGES = ("data", "outdir", "kimg", "tick_kimg", "snap_kimg", "threads", "init_from", "resume")
# Values of fields added later, for snapshots saved before they existed (projected heads had no norm then).
LEGACY_FIELDS = {"d_norm": "none", "init_from": "", "d_warmup_kimg": 0.0, "g_freeze_below": 0, "g_detail_weight": 0.0}


def build_networks(cfg: TrainConfig, img_channels: int = 3):
    """Fresh G and D for a config (weights from torch's global RNG: seed it first)."""
    from machinegaze.nets.stylegan2 import Discriminator, Generator

    G = Generator(
        z_dim=cfg.net("z_dim"),
        c_dim=0,
        w_dim=cfg.net("w_dim"),
        img_resolution=cfg.res,
        img_channels=img_channels,
        mapping_kwargs=dict(num_layers=cfg.net("map_layers")),
        synthesis_kwargs=dict(channel_base=cfg.net("cbase"), channel_max=cfg.net("cmax")),
    )
    if cfg.d_arch == "projected":
        return G, build_projected_discriminator(cfg)
    D = Discriminator(
        c_dim=0,
        img_resolution=cfg.res,
        img_channels=img_channels,
        channel_base=cfg.net("cbase"),
        channel_max=cfg.net("cmax"),
        epilogue_kwargs=dict(mbstd_group_size=cfg.mbstd_group),
    )
    return G, D


def build_projected_discriminator(cfg: TrainConfig):
    """A projected D (frozen ImageNet EfficientNet-Lite0 + random CCM/CSM + trainable heads); heads and
    projections from torch's global RNG."""
    from machinegaze import zoo
    from machinegaze.nets.projected import ProjectedDiscriminator

    D = ProjectedDiscriminator(img_resolution=cfg.res, backbone_res=cfg.d_backbone_res, head_norm=cfg.d_norm)
    D.fill_backbone(zoo.load_efficientnet_lite0().state_dict())
    return D


def d_logits(D, x: torch.Tensor) -> torch.Tensor:
    """[N, K] logits D trains on: K patch logits of a projected D, the one logit of a StyleGAN2 D."""
    return D.patch_logits(x) if hasattr(D, "patch_logits") else D(x)


def g_loss(logits: torch.Tensor, d_arch: str) -> torch.Tensor:
    """Per-image G loss: non-saturating logistic softplus(-l), or the hinge GAN's -l (mean over patches)."""
    return (-logits if d_arch == "projected" else F.softplus(-logits)).mean(1)


def d_losses(fake: torch.Tensor, real: torch.Tensor, d_arch: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image D losses on fakes and reals: logistic softplus(l_f), softplus(-l_r), or hinge relu(1 + l_f),
    relu(1 - l_r) (mean over patches)."""
    if d_arch == "projected":
        return F.relu(1 + fake).mean(1), F.relu(1 - real).mean(1)
    return F.softplus(fake).mean(1), F.softplus(-real).mean(1)


# ================================================================ randomness: a pure function of (seed, step, ...)
PHASES = {"Gmain": 1, "Greg": 2, "Dmain": 3, "Dreg": 4, "data": 5}


def step_generator(
    seed: int, step: int, phase: str, chunk: int, device: torch.device | str = "cpu", stream: int = 0
) -> torch.Generator:
    """The generator of one (seed, step, phase, chunk) on `device`. Stream 1 is a second, independent
    sequence (host-side scalar draws when the tensors live on a GPU)."""
    key = [seed, step, PHASES[phase], chunk] + ([stream] if stream else [])
    state = np.random.SeedSequence(key).generate_state(2, np.uint32)
    return torch.Generator(device=device).manual_seed((int(state[0]) << 32) | int(state[1]))


def chunk_generators(
    seed: int, step: int, phase: str, chunk: int, device: torch.device
) -> tuple[torch.Generator, torch.Generator]:
    """(tensor generator on the device, host generator for scalar decisions). On the CPU both are the same
    generator (the original single stream); on a GPU the scalars come from the host, so no step waits for
    the device to answer a random number."""
    g = step_generator(seed, step, phase, chunk, device)
    return g, (g if g.device.type == "cpu" else step_generator(seed, step, phase, chunk, "cpu", stream=1))


class DataStream:
    """An endless stream of dataset indices: epoch e is a permutation seeded by (seed, e)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed
        self._epoch, self._perm = -1, None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            g = step_generator(self.seed, epoch, "data", 0)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=g)
        return self._perm

    def indices(self, start: int, count: int) -> torch.Tensor:
        """Indices of stream positions start .. start + count - 1."""
        out = []
        pos = start
        while pos < start + count:
            epoch, off = divmod(pos, self.n)
            take = min(self.n - off, start + count - pos)
            out.append(self._permutation(epoch)[off : off + take])
            pos += take
        return torch.cat(out)


# ================================================================ DiffAugment (Zhao et al. 2020), our own code
def diff_augment(x: torch.Tensor, ops: list[str], g: torch.Generator) -> torch.Tensor:
    """Differentiable augmentations, parameters drawn from g (per sample, in a fixed order).

    color: brightness +U(-0.5, 0.5), saturation x U(0, 2), contrast x U(0.5, 1.5);
    translation: integer shift up to 1/8 of the side, zero fill; cutout: a zero square of half the side.
    """
    n, _, h, w = x.shape
    dev = x.device
    if "color" in ops:
        x = x + (torch.rand(n, 1, 1, 1, generator=g, device=dev) - 0.5)
        m = x.mean(dim=1, keepdim=True)
        x = (x - m) * (torch.rand(n, 1, 1, 1, generator=g, device=dev) * 2) + m
        m = x.mean(dim=[1, 2, 3], keepdim=True)
        x = (x - m) * (torch.rand(n, 1, 1, 1, generator=g, device=dev) + 0.5) + m
    if "translation" in ops:
        sy, sx = int(h * 0.125 + 0.5), int(w * 0.125 + 0.5)
        ty = torch.randint(-sy, sy + 1, (n, 1), generator=g, device=dev)
        tx = torch.randint(-sx, sx + 1, (n, 1), generator=g, device=dev)
        iy = torch.arange(h, device=dev)[None, :] - ty  # output row i reads input row i - ty
        ix = torch.arange(w, device=dev)[None, :] - tx
        my = ((iy >= 0) & (iy < h)).to(x.dtype)
        mx = ((ix >= 0) & (ix < w)).to(x.dtype)
        c = x.shape[1]
        x = x.gather(2, iy.clamp(0, h - 1)[:, None, :, None].expand(n, c, h, w))
        x = x.gather(3, ix.clamp(0, w - 1)[:, None, None, :].expand(n, c, h, w))
        x = x * (my[:, None, :, None] * mx[:, None, None, :])
    if "cutout" in ops:
        ch, cw = int(h * 0.5 + 0.5), int(w * 0.5 + 0.5)
        cy = torch.randint(0, h + (1 - ch % 2), (n, 1), generator=g, device=dev)  # square centre
        cx = torch.randint(0, w + (1 - cw % 2), (n, 1), generator=g, device=dev)
        ry = torch.arange(h, device=dev)[None, :] - (cy - ch // 2)
        rx = torch.arange(w, device=dev)[None, :] - (cx - cw // 2)
        inside_y = (ry >= 0) & (ry < ch)
        inside_x = (rx >= 0) & (rx < cw)
        mask = ~(inside_y[:, :, None] & inside_x[:, None, :])
        x = x * mask[:, None].to(x.dtype)
    return x


# ================================================================ data
def load_training_images(cfg: TrainConfig) -> tuple[torch.Tensor, dict]:
    """All training images as one uint8 tensor [N, 3, res, res] in memory, and a description."""
    from machinegaze.data import ImageDataset

    if not cfg.data:
        raise GazeError("--data: give a folder or .zip of training images")
    ds = ImageDataset(cfg.data, resolution=cfg.res)
    if cfg.split:
        ds = ds.split(cfg.split)
        if not ds.names:
            raise GazeError(f"{cfg.data}: split '{cfg.split}' holds no images")
    arr = np.stack([ds.image_uint8(i) for i in range(len(ds.names))])
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()
    import hashlib

    h = hashlib.sha256(x.numpy().tobytes()).hexdigest()[:16]
    sources: dict[str, int] = {}
    for n in ds.names:
        src = n.split("/", 1)[0] if "/" in n else "."
        sources[src] = sources.get(src, 0) + 1
    return x, {"path": str(cfg.data), "split": cfg.split, "images": int(x.shape[0]), "sha256_16": h, "sources": sources}


# ================================================================ distributed helpers (gloo on CPU)
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_world: int = 1

    @property
    def on(self) -> bool:
        return self.world > 1

    def all_reduce_(self, t: torch.Tensor) -> torch.Tensor:
        if self.on:
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
        return t

    def broadcast_(self, t: torch.Tensor) -> torch.Tensor:
        if self.on:
            torch.distributed.broadcast(t, src=0)
        return t

    def barrier(self) -> None:
        from machinegaze import distributed

        distributed.barrier(distributed.World(self.rank, self.world))


def init_dist(device: torch.device = torch.device("cpu")) -> Dist:
    """Join the process group when started by torchrun (WORLD_SIZE > 1): NCCL on CUDA, gloo otherwise."""
    from machinegaze import distributed

    w = distributed.init(device)
    return Dist(rank=w.rank, world=w.size, local_world=w.local_size)


def _sync_grads(params: list[torch.nn.Parameter], dist: Dist) -> None:
    """Sum gradients over ranks (one flat all-reduce) and replace NaN/Inf like NVlabs."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    if dist.on:
        flat = torch.cat([g.flatten() for g in grads])
        dist.all_reduce_(flat)
        torch.nan_to_num(flat, nan=0, posinf=1e5, neginf=-1e5, out=flat)
        off = 0
        for p, g in zip(params, grads):
            p.grad = flat[off : off + g.numel()].view_as(p).clone()
            off += g.numel()
    else:
        for p, g in zip(params, grads):
            p.grad = torch.nan_to_num(g, nan=0, posinf=1e5, neginf=-1e5)


# ================================================================ the training state
@dataclass
class State:
    cfg: TrainConfig
    G: torch.nn.Module
    D: torch.nn.Module
    G_ema: torch.nn.Module
    opt_G: torch.optim.Optimizer
    opt_D: torch.optim.Optimizer
    pl_mean: torch.Tensor
    step: int = 0
    wall_s: float = 0.0  # training time of earlier sessions (for the model card)
    dataset: dict = field(default_factory=dict)


def _adam(params, cfg: TrainConfig, interval: Optional[int], lr: float) -> torch.optim.Adam:
    ratio = interval / (interval + 1) if interval else 1.0  # lazy regularisation correction (NVlabs)
    return torch.optim.Adam(params, lr=lr * ratio, betas=(cfg.beta1**ratio, cfg.beta2**ratio), eps=1e-8)


def new_state(cfg: TrainConfig, img_channels: int = 3, device: torch.device = torch.device("cpu")) -> State:
    """Networks initialised on the CPU from the seed (the same weights on every device), then moved."""
    import copy

    torch.manual_seed(cfg.seed)
    G, D = build_networks(cfg, img_channels)
    G, D = G.to(device), D.to(device)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    opt_G = _adam(G.parameters(), cfg, cfg.pl_interval if cfg.pl_weight > 0 else None, cfg.lr)
    opt_D = _adam(
        [p for p in D.parameters() if p.requires_grad],
        cfg,
        cfg.r1_interval if cfg.resolved_gamma() > 0 else None,
        cfg.dlr if cfg.dlr is not None else cfg.lr,
    )
    return State(
        cfg, G.requires_grad_(False), D.requires_grad_(False), G_ema, opt_G, opt_D, torch.zeros([], device=device)
    )


def _copy_matching(dst: torch.nn.Module, src: Optional[torch.nn.Module]) -> int:
    """Copy every parameter and buffer of src whose name and shape dst shares; how many were copied."""
    if src is None:
        return 0
    theirs = src.state_dict()
    done = 0
    with torch.no_grad():
        for name, t in dst.state_dict().items():
            if name in theirs and theirs[name].shape == t.shape:
                t.copy_(theirs[name].to(t.dtype))
                done += 1
    return done


def init_from_network(state: State, name_or_path: str) -> dict[str, int]:
    """Start a run from a trained network, as progressive growing's next stage would: every tensor of its
    G_ema (into G and G_ema) and D whose name and shape match is copied. A generator of a lower resolution
    gains new top blocks; their toRGB starts at zero, so the grown G first draws exactly the old images,
    upsampled, and learns the new detail from there. D's new top block (and its fromRGB) start fresh."""
    from machinegaze import zoo

    nets = zoo.load_networks(name_or_path)
    src_g = nets.G_ema if nets.G_ema is not None else nets.G
    if src_g is None:
        raise GazeError(f"--init-from {name_or_path}: holds no generator")
    G, G_ema, D = state.G, state.G_ema, state.D
    if (src_g.z_dim, src_g.w_dim) != (G.z_dim, G.w_dim) or src_g.img_resolution > G.img_resolution:
        raise GazeError(
            f"--init-from {name_or_path}: a {src_g.img_resolution} px generator with z {src_g.z_dim}, w {src_g.w_dim} "
            f"cannot start a {G.img_resolution} px one with z {G.z_dim}, w {G.w_dim} (choose the same --cfg)"
        )
    copied = _copy_matching(G, src_g)
    total = len(src_g.state_dict())
    if copied < total:
        raise GazeError(
            f"--init-from {name_or_path}: only {copied} of its {total} generator tensors fit this --cfg "
            f"(use the preset it was trained with)"
        )
    with torch.no_grad():
        for block in G.synthesis.blocks():
            if block.resolution > src_g.img_resolution and block.num_torgb:
                block.torgb.weight.zero_()
                block.torgb.bias.zero_()
    G_ema.load_state_dict(G.state_dict())
    return {"G": copied, "D": _copy_matching(D, nets.D)}


def _opt_tensors(prefix: str, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {}
    for idx, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            out[f"{prefix}.{idx}.{k}"] = v.cpu() if isinstance(v, torch.Tensor) else torch.tensor(v)
    return out


def _load_opt(prefix: str, opt: torch.optim.Optimizer, extra: dict[str, torch.Tensor]) -> None:
    sd = opt.state_dict()
    state: dict[int, dict] = {}
    for k, v in extra.items():
        if k.startswith(prefix + "."):
            _, idx, name = k.split(".", 2)
            state.setdefault(int(idx), {})[name] = v.clone()
    params = [p for group in opt.param_groups for p in group["params"]]
    # parameters that never stepped (frozen by --g-freeze-below) have no state; every other entry must fit its own
    if any(
        i >= len(params) or any(t.dim() and t.shape != params[i].shape for t in entry.values())
        for i, entry in state.items()
    ):
        raise GazeError(f"snapshot: optimiser state '{prefix}' does not match the networks")
    opt.load_state_dict({"state": state, "param_groups": sd["param_groups"]})


def snapshot_path(outdir: str | os.PathLike, nimg: int) -> Path:
    return Path(outdir) / f"{SNAPSHOT_PREFIX}{nimg:09d}.safetensors"


def save_snapshot(state: State, path: str | os.PathLike, nimg: int) -> Path:
    from machinegaze import checkpoints

    extra = {
        "pl_mean": state.pl_mean.reshape(1).cpu(),
        "step": torch.tensor([state.step], dtype=torch.int64),
        **_opt_tensors("opt_G", state.opt_G),
        **_opt_tensors("opt_D", state.opt_D),
    }
    meta = {
        "kind": "machinegaze-training-snapshot",
        "step": state.step,
        "nimg": nimg,
        "kimg": nimg / 1000,
        "config": asdict(state.cfg),
        "dataset": state.dataset,
        "wall_s": round(state.wall_s, 1),
        "rng": "counter-based: every draw of a step comes from a generator seeded by (seed, step, phase, chunk)",
        "loss": LOSS_NOTES[state.cfg.d_arch],
    }
    return checkpoints.save_networks(path, {"G": state.G, "D": state.D, "G_ema": state.G_ema}, meta=meta, extra=extra)


def latest_snapshot(outdir: str | os.PathLike) -> Optional[Path]:
    snaps = sorted(Path(outdir).glob(f"{SNAPSHOT_PREFIX}*.safetensors"))
    return snaps[-1] if snaps else None


def load_snapshot(
    path: str | os.PathLike, cfg: Optional[TrainConfig] = None, device: torch.device = torch.device("cpu")
) -> State:
    """A State from a snapshot. With cfg, its RESUMABLE_CHANGES fields are taken; every other field is the
    snapshot's, and one that cfg sets to a value other than its default must equal the snapshot's (so
    `gaze train --resume --outdir RUN --data DATA` continues any run without repeating its flags)."""
    from machinegaze import checkpoints

    nets = checkpoints.load_networks(path)
    meta = nets.meta
    if meta.get("kind") != "machinegaze-training-snapshot" or nets.G is None or nets.D is None:
        raise GazeError(f"{path}: not a machinegaze training snapshot (no training state to resume from)")
    saved = {**LEGACY_FIELDS, **meta["config"]}
    if cfg is not None:
        mine, default = asdict(cfg), asdict(TrainConfig())
        diff = [
            k for k in saved if k not in RESUMABLE_CHANGES and mine.get(k) != default.get(k) and saved[k] != mine.get(k)
        ]
        if diff:
            k = diff[0]
            raise GazeError(
                f"--resume: --{k.replace('_', '-')} is {mine.get(k)!r} but the run was started with "
                f"{saved[k]!r} (only {', '.join(RESUMABLE_CHANGES[:-1])} may change on resume)"
            )
        saved.update({k: mine[k] for k in RESUMABLE_CHANGES})
    run_cfg = TrainConfig(**saved)
    st = new_state(run_cfg, nets.G.img_channels, device)
    for mine_net, theirs in ((st.G, nets.G), (st.D, nets.D), (st.G_ema, nets.G_ema or nets.G)):
        mine_net.load_state_dict(theirs.state_dict())
    _load_opt("opt_G", st.opt_G, nets.extra)
    _load_opt("opt_D", st.opt_D, nets.extra)
    st.pl_mean = nets.extra["pl_mean"].reshape([]).clone().to(device)
    st.step = int(nets.extra["step"][0])
    st.wall_s = float(meta.get("wall_s", 0.0))
    st.dataset = dict(meta.get("dataset") or {})
    return st


# ================================================================ one step, phase by phase
def run_G(
    G, z: torch.Tensor, g: torch.Generator, mixing_prob: float, host: Optional[torch.Generator] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Image and ws for z, with style mixing (a second z from g after a random crossover layer, prob p).
    Scalar decisions come from `host` (default: g), a CPU generator, so they need no device round trip."""
    host = g if host is None else host
    ws = G.mapping(z, None)
    z2 = torch.randn(z.shape, generator=g, device=z.device)
    cutoff = int(torch.randint(1, ws.shape[1], (), generator=host)) if ws.shape[1] > 1 else ws.shape[1]
    if float(torch.rand((), generator=host)) < mixing_prob and cutoff < ws.shape[1]:
        ws = torch.cat([ws[:, :cutoff], G.mapping(z2, None)[:, cutoff:]], dim=1)
    # Synthesis noise is drawn from torch's global RNG: seed it from the chunk's stream (on every device).
    noise_seed = int(torch.randint(0, 2**62, (), generator=host))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(noise_seed)
        img = G.synthesis(ws, noise_mode="random")
    return img, ws


@contextlib.contextmanager
def detail_rgb(G, res: int):
    """Collect the RGB that G's synthesis blocks of resolution >= res add to the image (their toRGB outputs) while
    the block runs; res 0 collects nothing."""
    added: list[torch.Tensor] = []
    hooks = [
        b.torgb.register_forward_hook(lambda _m, _i, out: added.append(out))
        for b in (G.synthesis.blocks() if res else [])
        if b.resolution >= res and b.num_torgb
    ]
    try:
        yield added
    finally:
        for h in hooks:
            h.remove()


def colour_energy(added: list[torch.Tensor], cell: int = 4) -> torch.Tensor:
    """Per image, summed over the added RGB layers: the mean square of their cell x cell means (a colour cast or a
    brightness shift) plus the mean square of their chroma (each pixel minus its grey level). Detail that only
    sharpens, luminance edges and texture, averages out over a cell and has no chroma, so it costs nothing."""
    total = 0
    for rgb in added:
        rgb = rgb.float()
        chroma = rgb - rgb.mean(dim=1, keepdim=True)
        total = total + F.avg_pool2d(rgb, cell).square().mean(dim=[1, 2, 3]) + chroma.square().mean(dim=[1, 2, 3])
    return total


def _reals(
    images: torch.Tensor, stream: DataStream, start: int, count: int, g: torch.Generator, mirror: bool
) -> torch.Tensor:
    dev = g.device
    x = images[stream.indices(start, count)].to(dev, non_blocking=True).to(torch.float32).div_(127.5).sub_(1.0)
    if mirror:
        flip = torch.rand(count, generator=g, device=dev) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x


class Trainer:
    """Runs steps on a State. Stats of the current tick are summed in self.stats."""

    def __init__(self, state: State, images: torch.Tensor, dist: Dist):
        cfg = state.cfg
        self.s, self.images, self.dist = state, images, dist
        self.device = state.pl_mean.device
        self.acc = torch.float32 if self.device.type == "mps" else torch.float64  # MPS has no float64
        if self.device.type == "cuda":
            self.images = images.pin_memory()  # asynchronous host-to-device copies of each chunk
        self.bg = cfg.batch_gpu or cfg.batch // dist.world
        if self.bg < 1 or cfg.batch % (self.bg * dist.world):
            raise GazeError(f"--batch {cfg.batch} is not a multiple of --batch-gpu {self.bg} x {dist.world} processes")
        g = min(cfg.mbstd_group, self.bg)
        if self.bg % g:
            raise GazeError(f"--batch-gpu {self.bg} is not a multiple of the minibatch-stddev group {cfg.mbstd_group}")
        self.rounds = cfg.batch // (self.bg * dist.world)
        self.ops = cfg.augment_ops()
        self.gamma = cfg.resolved_gamma()
        self.stream = DataStream(images.shape[0], cfg.seed)
        self.stats: dict[str, float] = {}
        self.last_line: dict = {}

    def chunks(self):
        """(global chunk index, first stream offset within the minibatch) for this process."""
        for r in range(self.rounds):
            c = self.dist.rank * self.rounds + r
            yield c, c * self.bg

    def _add(self, **kv: float) -> None:
        """Sum statistics where they are (device tensors stay on the device until the tick reads them)."""
        for k, v in kv.items():
            v = v.detach().to(self.acc) if isinstance(v, torch.Tensor) else float(v)
            self.stats[k] = self.stats.get(k, 0.0) + v

    def tick_stats(self) -> dict[str, float]:
        """This tick's statistics summed over ranks (one all-reduce, one host copy), then reset."""
        keys = sorted(self.stats)
        vals = [torch.as_tensor(self.stats[k], dtype=self.acc, device=self.device) for k in keys]
        stats = torch.stack(vals) if vals else torch.zeros(0, dtype=self.acc, device=self.device)
        self.dist.all_reduce_(stats)
        self.stats = {}
        return dict(zip(keys, stats.tolist()))

    def step(self) -> None:
        """One minibatch: Gmain [+ Greg], Dmain [+ Dreg], w_avg, G_ema. Lazy regularisers (interval > 1) take
        their own optimiser step, as in NVlabs; with interval 1 they join the main loss."""
        s, cfg = self.s, self.s.cfg
        G, D = s.G, s.D
        lazy_pl = cfg.pl_weight > 0 and cfg.pl_interval > 1
        lazy_r1 = self.gamma > 0 and cfg.r1_interval > 1
        train_g = s.step * cfg.batch >= cfg.d_warmup_kimg * 1000  # during D's warm-up G (and G_ema) stay put
        if train_g:
            self._g_trainable(G)
            s.opt_G.zero_grad(set_to_none=True)
            w_sum = self._g_main()
            if cfg.pl_weight > 0 and not lazy_pl:
                self._g_pl(gain=1)
            self._sync_step(G, s.opt_G)
            if lazy_pl and s.step % cfg.pl_interval == 0:
                s.opt_G.zero_grad(set_to_none=True)
                self._g_pl(gain=cfg.pl_interval)
                self._sync_step(G, s.opt_G)
            G.requires_grad_(False)
        D.requires_grad_(True)
        s.opt_D.zero_grad(set_to_none=True)
        self._d_main()
        if self.gamma > 0 and not lazy_r1:
            self._d_r1(gain=1)
        self._sync_step(D, s.opt_D)
        if lazy_r1 and s.step % cfg.r1_interval == 0:
            s.opt_D.zero_grad(set_to_none=True)
            self._d_r1(gain=cfg.r1_interval)
            self._sync_step(D, s.opt_D)
        D.requires_grad_(False)
        s.step += 1
        if not train_g:
            return
        # w_avg (the truncation centre) from this step's mapping outputs, then G_ema
        self.dist.all_reduce_(w_sum)
        G.mapping.w_avg.copy_((w_sum / cfg.batch).float().lerp(G.mapping.w_avg, G.mapping.w_avg_beta))
        nimg = s.step * cfg.batch
        ema_nimg = cfg.resolved_ema_kimg() * 1000
        if cfg.ema_rampup is not None and cfg.ema_rampup > 0:
            ema_nimg = min(ema_nimg, nimg * cfg.ema_rampup)
        beta = 0.5 ** (cfg.batch / max(ema_nimg, 1e-8))
        with torch.no_grad():
            for p_ema, p in zip(s.G_ema.parameters(), G.parameters()):
                p_ema.copy_(p.lerp(p_ema, beta))
            for b_ema, b in zip(s.G_ema.buffers(), G.buffers()):
                b_ema.copy_(b)

    def _g_trainable(self, G) -> None:
        """requires_grad on the parts of G that train: all of it, or with --g-freeze-below R only the synthesis
        blocks of resolution >= R (the mapping network and lower blocks keep their values; Adam skips them)."""
        res = self.s.cfg.g_freeze_below
        G.requires_grad_(res == 0)
        if res:
            for block in G.synthesis.blocks():
                block.requires_grad_(block.resolution >= res)

    def _g_main(self) -> torch.Tensor:
        """G loss softplus(-D(aug(G(z)))), gradients accumulated; returns the sum of this process's w's."""
        s, cfg = self.s, self.s.cfg
        G, D = s.G, s.D
        w_sum = torch.zeros(G.w_dim, dtype=self.acc, device=self.device)
        for c, _ in self.chunks():
            g, host = chunk_generators(cfg.seed, s.step, "Gmain", c, self.device)
            z = torch.randn(self.bg, G.z_dim, generator=g, device=self.device)
            with detail_rgb(G, cfg.g_freeze_below if cfg.g_detail_weight else 0) as added:
                img, ws = run_G(G, z, g, cfg.style_mixing, host)
            logits = d_logits(D, diff_augment(img, self.ops, g))
            loss = g_loss(logits, cfg.d_arch)
            total = loss
            if added:
                penalty = colour_energy(added)
                total = loss + cfg.g_detail_weight * penalty
                self._add(detail_penalty=penalty.detach().sum(), n_detail=self.bg)
            total.sum().div(cfg.batch).backward()
            with torch.no_grad():
                w_sum += G.mapping(z, None)[:, 0].to(self.acc).sum(0)
            self._add(loss_G=loss.sum(), n_G=self.bg)
        return w_sum

    def _g_pl(self, gain: int) -> None:
        """Path-length penalty (|J_w^T y| - pl_mean)^2 on batch_gpu / pl_batch_shrink images per chunk.

        The penalty uses pl_mean from before this step; pl_mean is then updated once with the global mean
        (NVlabs updates it per GPU before the penalty; this way the result does not depend on the rank split)."""
        s, cfg = self.s, self.s.cfg
        G = s.G
        nb = max(self.bg // cfg.pl_batch_shrink, 1)
        n_all = nb * self.rounds * self.dist.world
        pl_sum = torch.zeros([], dtype=self.acc, device=self.device)
        for c, _ in self.chunks():
            g, host = chunk_generators(cfg.seed, s.step, "Greg", c, self.device)
            z = torch.randn(nb, G.z_dim, generator=g, device=self.device)
            img, ws = run_G(G, z, g, cfg.style_mixing, host)
            pl_noise = torch.randn(img.shape, generator=g, device=self.device) / math.sqrt(img.shape[2] * img.shape[3])
            (grad,) = torch.autograd.grad((img * pl_noise).sum(), ws, create_graph=True)
            lengths = grad.square().sum(2).mean(1).sqrt()
            penalty = (lengths - s.pl_mean).square()
            (penalty.sum() * (cfg.pl_weight * gain / n_all)).backward()
            pl_sum += lengths.detach().to(self.acc).sum()
            self._add(pl_penalty=penalty.sum(), n_pl=nb)
        self.dist.all_reduce_(pl_sum)
        s.pl_mean = s.pl_mean.lerp((pl_sum / n_all).float(), cfg.pl_decay)  # stays on the device: no sync

    def _d_main(self) -> None:
        """D loss softplus(D(aug(G(z)))) + softplus(-D(aug(x)))."""
        s, cfg = self.s, self.s.cfg
        G, D = s.G, s.D
        for c, off in self.chunks():
            g, host = chunk_generators(cfg.seed, s.step, "Dmain", c, self.device)
            z = torch.randn(self.bg, G.z_dim, generator=g, device=self.device)
            with torch.no_grad():
                fake, _ = run_G(G, z, g, cfg.style_mixing, host)
            real = _reals(self.images, self.stream, s.step * cfg.batch + off, self.bg, g, cfg.mirror)
            fake_logits = d_logits(D, diff_augment(fake, self.ops, g))
            real_logits = d_logits(D, diff_augment(real, self.ops, g))
            loss_gen, loss_real = d_losses(fake_logits, real_logits, cfg.d_arch)
            (loss_gen.sum() + loss_real.sum()).div(cfg.batch).backward()
            self._add(
                loss_D=loss_gen.sum() + loss_real.sum(),
                fake_score=fake_logits.mean(1).sum(),
                real_score=real_logits.mean(1).sum(),
                n_D=self.bg,
            )

    def _d_r1(self, gain: int) -> None:
        """R1: gamma/2 * |d D(aug(x)) / dx|^2 on this step's reals (gradient w.r.t. the un-augmented image)."""
        s, cfg = self.s, self.s.cfg
        D = s.D
        for c, off in self.chunks():
            g = step_generator(cfg.seed, s.step, "Dreg", c, self.device)
            real = _reals(self.images, self.stream, s.step * cfg.batch + off, self.bg, g, cfg.mirror)
            real.requires_grad_(True)
            logits = D(diff_augment(real, self.ops, g))
            (grad,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
            penalty = grad.square().sum([1, 2, 3])
            (penalty.sum() * (self.gamma / 2 * gain / cfg.batch)).backward()
            self._add(r1_penalty=penalty.sum(), n_r1=self.bg)

    def _sync_step(self, net: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
        _sync_grads([p for p in net.parameters() if p.requires_grad], self.dist)  # a projected D's backbone is frozen
        opt.step()


# ================================================================ the loop
def _fixed_grid_z(G, n: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.RandomState(seed).randn(n, G.z_dim)).float()


def _save_fakes(G_ema, z: torch.Tensor, path: Path) -> None:
    from machinegaze.data import make_grid, save_image

    z = z.to(next(G_ema.parameters()).device)
    with torch.no_grad():
        img = torch.cat([G_ema(z[i : i + 16], noise_mode="const").cpu() for i in range(0, z.shape[0], 16)])
    save_image(make_grid(img.clamp(-1, 1), ncols=int(math.sqrt(z.shape[0]))), path)


def _rewrite_metrics(path: Path, max_step: int) -> None:
    """On resume, drop log lines written after the snapshot we resume from."""
    from machinegaze.data import atomic_write_bytes

    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= max_step:
                keep.append(line)
        except ValueError:
            pass
    atomic_write_bytes(path, ("\n".join(keep) + "\n" if keep else "").encode())


def _open_run(cfg: TrainConfig, device: torch.device, dist: Dist) -> tuple[TrainConfig, State, torch.Tensor, dict]:
    """(the run's config, its state: new or from the last snapshot, the training images, the dataset record)."""
    state = None
    if cfg.resume:
        snap = latest_snapshot(cfg.outdir)
        if snap is None:
            raise GazeError(f"--resume: no snapshot in {cfg.outdir}")
        state = load_snapshot(snap, cfg, device)
        cfg = state.cfg
    images, dsinfo = load_training_images(cfg)
    if state is None:
        state = new_state(cfg, images.shape[1], device)
        state.dataset = dsinfo
        if cfg.init_from:
            init_from_network(state, cfg.init_from)
    elif state.dataset.get("sha256_16") not in (None, dsinfo["sha256_16"]):
        raise GazeError(
            f"--resume: {cfg.data} is not the dataset this run was trained on "
            f"({dsinfo['images']} images, fingerprint {dsinfo['sha256_16']}; the run used "
            f"{state.dataset.get('images')} images, {state.dataset.get('sha256_16')})"
        )
    if images.shape[0] < 1:
        raise GazeError(f"{cfg.data}: no images")
    for net in (state.G, state.D, state.G_ema):  # identical start on every rank
        for t in list(net.parameters()) + list(net.buffers()):
            dist.broadcast_(t.data)
    return cfg, state, images, dsinfo


def _prepare_outdir(
    outdir: Path, cfg: TrainConfig, state: State, images: torch.Tensor, dsinfo: dict, dist: Dist
) -> None:
    """Rank 0: a fresh run writes config.json and reals.png (refusing a folder with snapshots); a resumed run
    cuts metrics.jsonl back to its snapshot."""
    outdir.mkdir(parents=True, exist_ok=True)
    if cfg.resume:
        _rewrite_metrics(outdir / METRICS_FILE, state.step)
        return
    old = latest_snapshot(outdir)
    if old is not None:
        raise GazeError(f"{outdir} already holds snapshots ({old.name}); use --resume or a new --outdir")
    with open(outdir / "config.json", "w") as f:
        json.dump({"config": asdict(cfg), "dataset": dsinfo, "world_size": dist.world}, f, indent=1)
    from machinegaze.data import make_grid, save_image

    save_image(make_grid(images[:64].float().div(127.5).sub(1)), outdir / "reals.png")


def _tick_line(trainer: Trainer, state: State, batch: int, steps: int, seconds: float) -> dict:
    """The metrics.jsonl record of one tick: mean losses and scores over its steps, speed, wall time."""
    st = trainer.tick_stats()

    def mean(key: str, count: str) -> float:
        return st.get(key, 0) / max(st.get(count, 1), 1)

    line = {
        "step": state.step,
        "kimg": round(state.step * batch / 1000, 3),
        "loss_G": mean("loss_G", "n_G"),
        "loss_D": mean("loss_D", "n_D"),
        "real_score": mean("real_score", "n_D"),
        "fake_score": mean("fake_score", "n_D"),
        "img_per_s": round(steps * batch / max(seconds, 1e-9), 2),
        "wall_s": round(state.wall_s, 1),
    }
    if st.get("n_r1"):
        line["r1_penalty"] = st["r1_penalty"] / st["n_r1"]
    if st.get("n_pl"):
        line["pl_penalty"] = st["pl_penalty"] / st["n_pl"]
        line["pl_mean"] = float(state.pl_mean)
    if st.get("n_detail"):
        line["detail_penalty"] = st["detail_penalty"] / st["n_detail"]
    return line


def _report(progress: ProgressFn, trainer: Trainer, state: State, batch: int, total_steps: int) -> None:
    last = getattr(trainer, "last_line", {})  # empty until the first tick: then only the kimg
    shown = {"G": "loss_G", "D": "loss_D", "img_s": "img_per_s"}
    info = {k: last[key] for k, key in shown.items() if key in last}
    report(progress, state.step * batch, total_steps * batch, kimg=round(state.step * batch / 1000, 2), **info)


def train(
    cfg: TrainConfig,
    progress: ProgressFn = None,
    stop_after_steps: Optional[int] = None,
    device: torch.device = torch.device("cpu"),
) -> Path:
    """Train (or resume) and return the path of the last snapshot. Under torchrun every process calls this
    with its own device (cuda:LOCAL_RANK); rank 0 writes files and reports progress. `stop_after_steps`
    ends early (tests: a simulated kill)."""
    device = torch.device(device)
    dist = init_dist(device)
    if device.type == "cpu":
        torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // dist.local_world))
    outdir, main = Path(cfg.outdir), dist.rank == 0  # the folder asked for (a resumed run's record may differ)
    cfg, state, images, dsinfo = _open_run(cfg, device, dist)
    if main:
        _prepare_outdir(outdir, cfg, state, images, dsinfo, dist)
    trainer = Trainer(state, images, dist)
    B = cfg.batch
    total_steps = math.ceil(cfg.kimg * 1000 / B)
    tick_steps = max(1, round(cfg.tick_kimg * 1000 / B))
    snap_steps = max(1, round(cfg.snap_kimg * 1000 / B))
    grid_z = _fixed_grid_z(state.G)
    last = latest_snapshot(outdir) if cfg.resume else None
    t_start = time.time()
    t_tick, steps_tick = time.time(), 0
    wall0 = state.wall_s
    stop_at = state.step + stop_after_steps if stop_after_steps is not None else None
    while state.step < total_steps:
        if stop_at is not None and state.step >= stop_at:
            return Path(last) if last is not None else None  # a simulated kill: no final snapshot
        trainer.step()
        steps_tick += 1
        state.wall_s = wall0 + time.time() - t_start
        done = state.step >= total_steps
        if state.step % tick_steps == 0 or done:
            line = _tick_line(trainer, state, B, steps_tick, time.time() - t_tick)
            if main:
                with open(outdir / METRICS_FILE, "a") as f:
                    f.write(json.dumps(line) + "\n")
            t_tick, steps_tick = time.time(), 0
            trainer.last_line = line
        if state.step % snap_steps == 0 or done:
            if main:
                last = save_snapshot(state, snapshot_path(outdir, state.step * B), state.step * B)
                _save_fakes(state.G_ema, grid_z, outdir / f"fakes-{state.step * B:09d}.png")
            dist.barrier()
        if main:
            _report(progress, trainer, state, B, total_steps)
    final = snapshot_path(outdir, state.step * B)
    if main and not final.is_file():  # resumed a finished run with the same kimg
        save_snapshot(state, final, state.step * B)
    if dist.on:
        dist.barrier()
        torch.distributed.destroy_process_group()
    return final


# ================================================================ shipping a trained model
def export_networks(
    snapshot: str | os.PathLike, out: str | os.PathLike, meta: Optional[dict] = None, half: bool = True
) -> Path:
    """G_ema + D of a training snapshot as a (by default fp16) network file without the training state;
    the run's config, dataset description, step and wall time go into the metadata."""
    from machinegaze import checkpoints

    nets = checkpoints.load_networks(snapshot)
    if nets.G_ema is None:
        raise GazeError(f"{snapshot}: holds no G_ema")
    m = nets.meta
    info = {
        "kind": "machinegaze-trained-generator",
        "source_snapshot": Path(snapshot).name,
        "step": m.get("step"),
        "kimg": m.get("kimg"),
        "wall_s": m.get("wall_s"),
        "config": m.get("config"),
        "dataset": m.get("dataset"),
        "loss": m.get("loss"),
    }
    info.update(meta or {})
    return checkpoints.save_networks(out, {"G_ema": nets.G_ema, "D": nets.D}, meta=info, half=half)
