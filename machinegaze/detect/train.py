"""Training a detector, fastai's `fine_tune` recipe written out as one loop you can read whole.

1. Freeze the body and train the new head for `freeze_epochs` with a one-cycle schedule (warm-up almost the
   whole way, pct_start=0.99, as fastai does for this phase). Unlike fastai (train_bn=True) the body's
   BatchNorm statistics are frozen too, so this phase costs one forward pass per image and no backward
   pass through the body: on a CPU that is the difference between one and three units of work.
2. Unfreeze; train everything for `epochs` with a one-cycle schedule (pct_start=0.3, div=5) and
   discriminative learning rates: from lr/lr_mult for the layers nearest the input, geometrically up to lr
   for the head (the ImageNet features near the input need the least change).
3. Calibrate on the validation split: temperature scaling, then the threshold with the best balanced accuracy.

AdamW (betas 0.9/0.99, as fastai), binary cross-entropy with fakes weighted by n_real/n_fake so the classes
count equally, random horizontal flips. Images arrive already preprocessed (uint8, see sources.py).

Devices: the model and every batch live on `device`, forward passes run under autocast at `precision`. The
sampling plan (batch order, crops, flips) is drawn on the host from the seed, so a seed picks the same batches on
every device. Loss values stay on the device and are read back every `log_every` steps and at the end of an
epoch. Under torchrun every rank takes a strided share of each batch and the gradients are averaged over the
ranks (distributed.average_gradients_), so every step still learns from the whole batch.

With `augment` on, every training batch goes through Wang et al.'s augmentation (sources.Augment: random
resize, Gaussian blur, JPEG re-encoding, crop, flip), drawn from the run's seed; validation and test images
never are.

Distillation: with a `teacher` (any detector, e.g. the two-network any-of default), each training batch's target is
`hard_weight` * label + (1 - hard_weight) * the teacher's P(fake) for the same augmented, flipped batch, where
the teacher's P(fake) is the sigmoid of its decision margin (calibrated logit minus the logit of its threshold),
so the student learns where the teacher decides. `init` starts the student from a trained detector instead of
ImageNet weights. With `patch` set the detector trains on random patch x patch crops at native pixels and classifies
whole images by their mean patch logit (detect/native.py). From-scratch bodies (smallcnn, npr, spectrum) want
freeze_epochs = 0: there is nothing pretrained to protect.
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from machinegaze import GazeError, distributed, zoo
from machinegaze import device as devmod
from machinegaze.detect import evaluate as ev
from machinegaze.detect.model import Detector, DetectorSpec, bce_loss, freeze_body
from machinegaze.detect.sources import (
    Augment,
    ImageCache,
    Item,
    Source,
    gather,
    parse_sources,
    preprocess_for,
    to_tensor,
)
from machinegaze.progress import ProgressFn, report


@dataclass(frozen=True)
class TrainConfig:
    arch: str = "effnet_lite0"
    pretrained: bool = True
    size: int = 128
    jpeg_quality: int = 75
    policy: bool = True  # preprocessing policy: same size and same JPEG quality for every image
    freeze_epochs: int = 1
    epochs: int = 3
    batch_size: int = 32
    lr: float = 2e-3  # head LR in the frozen phase; lr/2 is the head LR after unfreezing (fastai)
    lr_mult: float = 100.0  # body LRs go down to (lr/2)/lr_mult near the input
    weight_decay: float = 0.01
    max_per_source: int | None = 400  # images per source and split (train, test; val gets a quarter)
    balance: bool = True  # fakes weighted n_real/n_fake so the two classes count equally
    balance_sources: bool = False  # every source counts equally within its class (a small source is not drowned)
    seed: int = 0
    width: int = 32  # smallcnn width
    dropout: float = 0.2  # before the head; 0 makes training independent of the process count (no masks)
    crop: int | None = None  # train on random crops of this size (native pixels kept); test sees the whole image
    patch: int | None = None  # native-resolution patch policy: train on patches, test by the mean patch logit
    augment: bool = False  # Wang et al. blur / JPEG / resize / crop / flip augmentation of training batches
    pool: int = 1  # average-pool inputs by this factor before the body (DetectorSpec.pool)
    hard_weight: float = 0.5  # with a teacher: the weight of the true label in the target (1 - it: the teacher's)

    def __post_init__(self):
        if self.epochs < 0 or self.freeze_epochs < 0 or self.epochs + self.freeze_epochs == 0:
            raise GazeError("need at least one training epoch (--epochs / --freeze-epochs)")
        if self.batch_size < 2:
            raise GazeError(f"batch size must be >= 2, got {self.batch_size}")
        if not self.lr > 0:
            raise GazeError(f"learning rate must be > 0, got {self.lr}")
        if self.crop is not None and not 16 <= self.crop <= self.size:
            raise GazeError(f"crop must be 16..size ({self.size}) px, got {self.crop}")
        if self.patch is not None and not 16 <= self.patch <= self.size:
            raise GazeError(f"patch must be 16..size ({self.size}) px, got {self.patch}")
        if not 0.0 <= self.dropout < 1.0:
            raise GazeError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.hard_weight <= 1.0:
            raise GazeError(f"hard label weight must be in [0, 1], got {self.hard_weight}")
        _ = self.spec  # an unknown architecture is an error before any image is loaded

    @property
    def spec(self) -> DetectorSpec:
        return DetectorSpec(
            self.arch,
            self.size,
            self.jpeg_quality if self.policy else None,
            self.width,
            dropout=self.dropout,
            patch=self.patch,
            pool=self.pool,
        )

    @property
    def train_crop(self) -> int | None:
        """The size of training inputs when not the whole image: the patch, else the crop."""
        return self.patch or self.crop

    @property
    def preprocess(self):
        return preprocess_for(self.policy, self.size, self.jpeg_quality)

    def split_cap(self, split: str) -> int | None:
        if self.max_per_source is None:
            return None
        return {
            "train": self.max_per_source,
            "val": max(1, math.ceil(self.max_per_source / 4)),
            "test": self.max_per_source,
        }[split]


@dataclass
class TrainResult:
    model: Detector
    history: list[dict] = field(default_factory=list)
    train_items: list[Item] = field(default_factory=list)
    val_items: list[Item] = field(default_factory=list)
    seconds: float = 0.0
    images_per_s: float = 0.0


def _one_cycle(opt: torch.optim.Optimizer, max_lrs: list[float], total: int, pct_start: float, div: float):
    return torch.optim.lr_scheduler.OneCycleLR(
        opt,
        max_lr=max_lrs,
        total_steps=max(total, 1),
        pct_start=pct_start,
        div_factor=div,
        final_div_factor=1e5,
        anneal_strategy="cos",
        cycle_momentum=True,
        base_momentum=0.85,
        max_momentum=0.95,
    )


def _discriminative(lr: float, mult: float, n: int) -> list[float]:
    """n learning rates spaced geometrically from lr/mult to lr (fastai's slice(lr/mult, lr))."""
    if n == 1:
        return [lr]
    return [float(lr / mult * mult ** (i / (n - 1))) for i in range(n)]


def _batches(n: int, bs: int, g: torch.Generator) -> list[torch.Tensor]:
    perm = torch.randperm(n, generator=g)
    out = [perm[i : i + bs] for i in range(0, n, bs)]
    if len(out) > 1 and len(out[-1]) < 2:  # BatchNorm cannot train on one image
        last = out.pop()
        out[-1] = torch.cat([out[-1], last])
    return out


def _random_crops(x: np.ndarray, crop: int, g: torch.Generator) -> np.ndarray:
    """One random crop x crop window per image of a uint8 [N, H, W, 3] batch (no resampling: pixels stay native)."""
    n, h, w = x.shape[:3]
    if crop >= h and crop >= w:
        return x
    top = torch.randint(0, h - crop + 1, (n,), generator=g).numpy()
    left = torch.randint(0, w - crop + 1, (n,), generator=g).numpy()
    rows = top[:, None] + np.arange(crop)[None, :]  # [N, crop]
    cols = left[:, None] + np.arange(crop)[None, :]
    return x[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def training_images(x: np.ndarray, cfg: TrainConfig, g: torch.Generator) -> np.ndarray:
    """uint8 images of one batch -> the uint8 images the model trains on: Wang et al.-augmented (cfg.augment),
    else randomly cropped to the patch / crop size (native pixels), else unchanged. Flips come after, as always."""
    if cfg.augment:
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=g)))
        return Augment().batch(x, cfg.train_crop or x.shape[1], rng)
    return _random_crops(x, cfg.train_crop, g) if cfg.train_crop else x


def sample_weights(y: np.ndarray, sources: list[str] | None, balance: bool, balance_sources: bool) -> np.ndarray:
    """Per-image loss weights, mean 1: the classes count equally (balance), and with balance_sources also every
    source within its class. Class balance alone is the case of one source per class."""
    y = np.asarray(y)
    if not (balance or balance_sources):
        return np.ones(len(y), np.float32)
    g = np.asarray(sources if balance_sources and sources is not None else [""] * len(y))
    w = np.zeros(len(y), np.float64)
    for lab in (0, 1):
        names = np.unique(g[y == lab])
        for name in names:
            m = (y == lab) & (g == name)
            w[m] = 1.0 / (m.sum() * len(names))  # each class sums to 1
    return (w / w.mean()).astype(np.float32)


class _Amp:
    """Autocast for the forward pass, and loss scaling when that is fp16 on CUDA (bf16 and fp32 need none)."""

    def __init__(self, dev: torch.device, precision: str):
        self.dev, self.precision = dev, precision
        half = devmod.autocast_dtype(dev, precision) is torch.float16 and dev.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if half else None

    def autocast(self):
        return devmod.autocast(self.dev, self.precision)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, opt: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            opt.step()
        else:
            self.scaler.step(opt)
            self.scaler.update()


def _rank_share(n: int, world: distributed.World) -> torch.Tensor:
    """Positions in a batch of n this rank trains on: every size-th from its rank, or the whole batch when a
    share would have fewer than 2 images (BatchNorm needs two; identical copies average to the same gradient).
    A share's mean loss is weighted by its share of the batch, so the averaged gradient is the batch mean's."""
    if not world.on or n < 2 * world.size:
        return torch.arange(n)
    return torch.arange(world.rank, n, world.size)


def _batch_on(dev: torch.device, xa: np.ndarray, flip: torch.Tensor) -> torch.Tensor:
    """uint8 [n, H, W, 3] on the host -> the flipped float batch in channels-last layout on `dev`."""
    xb = to_tensor(xa).to(dev, non_blocking=True)
    flip = flip.to(dev, non_blocking=True).view(-1, 1, 1, 1)
    xb = torch.where(flip, xb.flip(-1), xb)  # not xb[flip] = ...: a boolean index waits for the device
    return xb.contiguous(memory_format=torch.channels_last)  # 1.6x faster on CPU (depthwise convs)


def decision_margin(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A detector's (or an any-of's) calibrated logit minus the logit of its threshold: > 0 where it says fake."""
    t = model.threshold.float().clamp(1e-6, 1 - 1e-6)
    return model(x).float() / model.temperature.float() - torch.log(t / (1 - t))


def _targets(teacher: torch.nn.Module | None, xb: torch.Tensor, yb: torch.Tensor, hard_weight: float) -> torch.Tensor:
    """The labels, or with a teacher the mix of labels and the teacher's P(fake) on this very batch."""
    if teacher is None:
        return yb
    with torch.no_grad():
        soft = torch.sigmoid(decision_margin(teacher, xb))
    return hard_weight * yb.float() + (1.0 - hard_weight) * soft


def _loss(model: Detector, phase: str, xb: torch.Tensor, yb: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    """Weighted BCE of one batch (yb: labels or soft targets); in the frozen phase no graph is kept through the body."""
    if phase == "frozen":
        with torch.no_grad():
            fmap = model.feature_map(xb)
        logits = model.logit_from_map(fmap)
    else:
        logits = model(xb)
    return bce_loss(logits.float(), yb, weight=wb)


def _check_finite(loss_sum: torch.Tensor, step: int) -> None:
    if not torch.isfinite(loss_sum):
        raise GazeError(f"training diverged (loss {float(loss_sum)}) by step {step}; try a lower --lr")


def _phase_optimizer(model: Detector, groups: list, phase: str, cfg: TrainConfig, n_steps: int):
    """AdamW and its one-cycle schedule for one phase: the head alone (frozen body), or every layer group with
    discriminative learning rates (unfrozen)."""
    if phase == "frozen":
        freeze_body(model, True)
        lrs = [cfg.lr] * len(groups)
        pct, div = 0.99, 25.0
    else:
        freeze_body(model, False)
        lrs = _discriminative(cfg.lr / 2, cfg.lr_mult, len(groups))
        pct, div = 0.3, 5.0
    param_groups = [{"params": [p for p in grp if p.requires_grad], "lr": lr} for grp, lr in zip(groups, lrs)]
    param_groups = [pg for pg in param_groups if pg["params"]]
    opt = torch.optim.AdamW(param_groups, betas=(0.9, 0.99), weight_decay=cfg.weight_decay)
    return opt, _one_cycle(opt, [pg["lr"] for pg in param_groups], n_steps, pct, div)


def _validation(model: Detector, x_val, y_val, precision: str) -> dict:
    """Validation loss, accuracy at 0.5 and AUC after an epoch (empty without a validation set)."""
    if x_val is None or y_val is None or not len(x_val):
        return {}
    p = ev.sigmoid(ev.predict_logits(model, x_val, precision=precision))
    return {
        "val_loss": float(ev.losses(y_val, p).mean()),
        "val_accuracy": ev.accuracy(y_val, (p >= 0.5).astype(int)),
        "val_auc": ev.roc_auc(y_val, p),
    }


def fit(
    model: Detector,
    x: np.ndarray,
    y: np.ndarray,
    cfg: TrainConfig,
    x_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    progress: ProgressFn = None,
    sources: list[str] | None = None,
    device: torch.device | str | None = None,
    precision: str = "fp32",
    log_every: int = 10,
    teacher: torch.nn.Module | None = None,
) -> list[dict]:
    """Train `model` in place on uint8 images [N, H, W, 3] with labels y (1 = fake); return the history.

    `sources` (the source name of each image) is used by `cfg.balance_sources`. The model moves to `device`
    (default: where it is); `precision` (device.resolve_precision) is the autocast precision of the forward
    passes. Progress comes every step, with the loss every `log_every` steps. With a `teacher` the targets mix
    the labels with its verdicts (cfg.hard_weight; module docstring)."""
    y = np.asarray(y).astype(np.float32)
    if len(x) < 2 or len(np.unique(y)) < 2:
        raise GazeError(
            f"training needs real and fake images (got {int((y == 0).sum())} real, {int((y == 1).sum())} fake)"
        )
    g = torch.Generator().manual_seed(cfg.seed)
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    devmod.to_channels_last(model.to(dev), dev, precision)
    if teacher is not None:
        devmod.to_channels_last(teacher.to(dev).eval(), dev, precision)
    world, amp = distributed.joined(), _Amp(dev, precision)
    weights = torch.from_numpy(sample_weights(y, sources, cfg.balance, cfg.balance_sources)).to(dev)
    y_dev = torch.from_numpy(y).to(dev)
    groups = model.layer_groups()
    steps_per_epoch = len(_batches(len(x), cfg.batch_size, torch.Generator().manual_seed(0)))
    total_steps = (cfg.freeze_epochs + cfg.epochs) * steps_per_epoch
    history: list[dict] = []
    step = 0
    phases = [("frozen", cfg.freeze_epochs), ("unfrozen", cfg.epochs)]
    for phase, n_epochs in phases:
        if n_epochs == 0:
            continue
        opt, sched = _phase_optimizer(model, groups, phase, cfg, n_epochs * steps_per_epoch)
        for _ in range(n_epochs):
            model.train()
            if phase == "frozen":
                model.body.eval()  # frozen BatchNorm statistics as well as weights
            t0, seen, loss_sum = time.perf_counter(), 0, torch.zeros((), dtype=devmod.accumulate_dtype(dev), device=dev)
            for idx in _batches(len(x), cfg.batch_size, g):
                xa = x[idx.numpy()]
                xa = training_images(xa, cfg, g)
                flip = torch.rand(len(idx), generator=g) < 0.5
                mine = _rank_share(len(idx), world)
                xb = _batch_on(dev, xa[mine.numpy()], flip[mine])
                sel = idx[mine].to(dev, non_blocking=True)
                with amp.autocast():
                    target = _targets(teacher, xb, y_dev[sel], cfg.hard_weight)
                    loss = _loss(model, phase, xb, target, weights[sel])
                opt.zero_grad(set_to_none=True)
                amp.backward(loss if len(mine) == len(idx) else loss * (len(mine) * world.size / len(idx)))
                distributed.average_gradients_(model.parameters(), world)
                amp.step(opt)
                sched.step()
                step += 1
                # A batch too small to share is trained whole on every rank: count it once across the ranks.
                n_mine = len(mine) if len(mine) < len(idx) else len(idx) / world.size
                seen += n_mine
                loss_sum += loss.detach().to(loss_sum.dtype) * n_mine
                if step % log_every == 0:  # the only read-backs inside an epoch
                    _check_finite(loss_sum, step)
                    report(progress, step, total_steps, stage=phase, epoch=len(history) + 1, loss=float(loss.detach()))
                else:
                    report(progress, step, total_steps, stage=phase, epoch=len(history) + 1)
            sums = distributed.all_reduce_sum_(torch.stack([loss_sum, loss_sum.new_tensor(seen)]), world)
            _check_finite(sums[0], step)
            rec = {
                "epoch": len(history) + 1,
                "phase": phase,
                "train_loss": float(sums[0] / sums[1]),
                "images_per_s": float(sums[1]) / (time.perf_counter() - t0),
            }
            history.append({**rec, **_validation(model, x_val, y_val, precision)})
    freeze_body(model, False)
    model.eval()
    return history


def train_detector(
    train_sources: str | list[str] | list[Source],
    cfg: TrainConfig = TrainConfig(),
    data_root: str | os.PathLike | None = None,
    cache: ImageCache | None = None,
    progress: ProgressFn = None,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    teacher: torch.nn.Module | None = None,
    init: Detector | None = None,
) -> TrainResult:
    """Train on the train split of the sources, calibrate on their val split; return the ready detector (on
    `device`; `precision` as in `fit`). `teacher`: distil it (module docstring); `init`: a trained detector to
    start from (a copy; its spec must be cfg.spec's)."""
    if teacher is not None and (teacher.spec.size, teacher.spec.jpeg_quality) != (cfg.size, cfg.spec.jpeg_quality):
        raise GazeError(
            f"the teacher takes {teacher.spec.size} px, JPEG {teacher.spec.jpeg_quality}; the student "
            f"{cfg.size} px, JPEG {cfg.spec.jpeg_quality}: they must see the same images"
        )
    if init is not None and init.spec != cfg.spec:
        raise GazeError(f"--init-from is a {init.spec}, the training config asks for {cfg.spec}")
    sources = (
        train_sources
        if train_sources and not isinstance(train_sources, str) and not isinstance(train_sources[0], str)
        else parse_sources(train_sources, data_root)
    )  # type: ignore[arg-type]
    cache = cache or ImageCache()
    pre = cfg.preprocess
    tr = gather(sources, "train", cfg.split_cap("train"), cfg.seed)
    va = gather(sources, "val", cfg.split_cap("val"), cfg.seed)
    x_tr = cache.arrays(tr, pre, sources, progress)
    x_va = cache.arrays(va, pre, sources, progress)
    y_tr = np.array([it.label for it in tr])
    y_va = np.array([it.label for it in va])
    torch.manual_seed(cfg.seed)
    model = (copy.deepcopy(init) if init is not None else zoo.new_detector(cfg.spec, pretrained=cfg.pretrained)).to(
        device
    )
    t0 = time.perf_counter()
    history = fit(
        model, x_tr, y_tr, cfg, x_va, y_va, progress, [it.source for it in tr], device, precision, teacher=teacher
    )
    seconds = time.perf_counter() - t0
    if len(va) and len(np.unique(y_va)) == 2:
        cal = ev.calibrate(ev.predict_logits(model, x_va, precision=precision), y_va)
        model.set_calibration(cal.temperature, cal.threshold)
    n_seen = len(tr) * (cfg.freeze_epochs + cfg.epochs)
    return TrainResult(model, history, tr, va, seconds, n_seen / max(seconds, 1e-9))
