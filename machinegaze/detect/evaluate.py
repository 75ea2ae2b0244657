"""How good is a detector, for whom, and why: metrics, confidence intervals, calibration, top losses, Grad-CAM.

Label convention: 1 = fake (the positive class), 0 = real. Scores are probabilities of "fake" (or logits).
Everything below works on plain numpy arrays, except `predict_logits`, `top_losses` and `grad_cam`, which
run a model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from machinegaze import GazeError
from machinegaze.progress import ProgressFn, report


# ---------------------------------------------------------------- threshold metrics
def confusion_matrix(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """[[TN, FP], [FN, TP]]: rows are the true class (real, fake), columns the predicted class."""
    y, pred = np.asarray(y).astype(int), np.asarray(pred).astype(int)
    cm = np.zeros((2, 2), dtype=int)
    np.add.at(cm, (y, pred), 1)
    return cm


def accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    y = np.asarray(y)
    return float(np.mean(np.asarray(pred) == y)) if len(y) else float("nan")


def balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean of the per-class recalls (real and fake count equally, whatever the mix)."""
    y, pred = np.asarray(y), np.asarray(pred)
    recalls = [np.mean(pred[y == c] == c) for c in (0, 1) if np.any(y == c)]
    return float(np.mean(recalls)) if recalls else float("nan")


# ---------------------------------------------------------------- ranking metrics
def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve = P(score of a random fake > score of a random real), ties counting 1/2."""
    y, score = np.asarray(y).astype(int), np.asarray(score, dtype=np.float64)
    n1, n0 = int(y.sum()), int(len(y) - y.sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    from scipy.stats import rankdata

    ranks = rankdata(score)  # average ranks handle ties
    return float((ranks[y == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def roc_curve(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false-positive rate, true-positive rate, thresholds), one point per distinct score, from (0, 0)."""
    y, score = np.asarray(y).astype(int), np.asarray(score, dtype=np.float64)
    order = np.argsort(-score, kind="mergesort")
    y, s = y[order], score[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # last index of each distinct score
    tp, fp = np.cumsum(y)[last], np.cumsum(1 - y)[last]
    P, N = max(int(y.sum()), 1), max(int(len(y) - y.sum()), 1)
    return np.r_[0.0, fp / N], np.r_[0.0, tp / P], np.r_[np.inf, s[last]]


def precision_recall_curve(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, thresholds) for thresholds from high to low (one per distinct score)."""
    y, score = np.asarray(y).astype(int), np.asarray(score, dtype=np.float64)
    order = np.argsort(-score, kind="mergesort")
    y, s = y[order], score[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp = np.cumsum(y)[last]
    k = last + 1
    return tp / k, tp / max(int(y.sum()), 1), s[last]


def average_precision(y: np.ndarray, score: np.ndarray) -> float:
    """AP = sum over thresholds of (R_k - R_{k-1}) * P_k (step-wise, no interpolation)."""
    y = np.asarray(y).astype(int)
    if y.sum() == 0:
        return float("nan")
    p, r, _ = precision_recall_curve(y, score)
    return float(np.sum(np.diff(np.r_[0.0, r]) * p))


# ---------------------------------------------------------------- bootstrap
def bootstrap_ci(
    metric: Callable[..., float],
    *arrays: np.ndarray,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    strata: np.ndarray | None = None,
) -> tuple[float, float, float]:
    """(value, low, high): the metric on the data and a percentile bootstrap interval (resampling rows).

    `strata` (e.g. the labels) resamples within each stratum, keeping the real/fake mix of the test set.
    Resamples where the metric is undefined (NaN) are skipped.
    """
    arrays = tuple(np.asarray(a) for a in arrays)
    n = len(arrays[0])
    value = float(metric(*arrays))
    if n == 0:
        return value, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    groups = [np.arange(n)] if strata is None else [np.nonzero(np.asarray(strata) == s)[0] for s in np.unique(strata)]
    stats = np.empty(n_boot)
    for b in range(n_boot):
        idx = np.concatenate([g[rng.integers(0, len(g), len(g))] for g in groups])
        stats[b] = metric(*(a[idx] for a in arrays))
    stats = stats[np.isfinite(stats)]
    if len(stats) == 0:
        return value, float("nan"), float("nan")
    a = (1 - level) / 2
    return value, float(np.quantile(stats, a)), float(np.quantile(stats, 1 - a))


# ---------------------------------------------------------------- calibration
def sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-z)) in float64, without overflow for |z| beyond 709 (confident detectors reach that)."""
    from scipy.special import expit

    return expit(np.asarray(z, dtype=np.float64))


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """Temperature T > 0 minimising the NLL of sigmoid(logit / T) (Guo et al. 2017), by bounded search on log T."""
    from scipy.optimize import minimize_scalar

    z, y = np.asarray(logits, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(z) == 0 or len(np.unique(y)) < 2:
        return 1.0

    def nll(log_t: float) -> float:
        s = z / np.exp(log_t)
        return float(np.mean(np.logaddexp(0.0, s) - y * s))  # -[y log p + (1-y) log(1-p)]

    res = minimize_scalar(nll, bounds=(np.log(0.02), np.log(50.0)), method="bounded", options={"xatol": 1e-5})
    return float(np.exp(res.x))


def expected_calibration_error(y: np.ndarray, prob: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE: bins by confidence max(p, 1-p); sum of |accuracy - confidence| weighted by bin size."""
    y, prob = np.asarray(y).astype(int), np.asarray(prob, dtype=np.float64)
    if len(y) == 0:
        return float("nan")
    conf = np.maximum(prob, 1 - prob)
    correct = ((prob >= 0.5).astype(int) == y).astype(np.float64)
    edges = np.linspace(0.5, 1.0, n_bins + 1)
    b = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    ece = 0.0
    for k in range(n_bins):
        m = b == k
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def reliability_bins(y: np.ndarray, prob: np.ndarray, n_bins: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean predicted P(fake), observed fraction fake, count) per equal-width bin of P(fake)."""
    y, prob = np.asarray(y, dtype=np.float64), np.asarray(prob, dtype=np.float64)
    b = np.clip((prob * n_bins).astype(int), 0, n_bins - 1)
    cnt = np.bincount(b, minlength=n_bins)
    mp = np.bincount(b, prob, n_bins) / np.maximum(cnt, 1)
    fy = np.bincount(b, y, n_bins) / np.maximum(cnt, 1)
    return mp, fy, cnt


def best_threshold(y: np.ndarray, prob: np.ndarray) -> float:
    """The probability threshold maximising balanced accuracy (Youden's J) on a labelled set.

    Returned as the midpoint between neighbouring scores, so it generalises rather than sitting on a sample.
    """
    y, prob = np.asarray(y).astype(int), np.asarray(prob, dtype=np.float64)
    if len(np.unique(y)) < 2:
        return 0.5
    fpr, tpr, thr = roc_curve(y, prob)
    j = tpr - fpr
    k = int(np.argmax(j))
    if k == 0:
        return float(min(1.0, prob.max() + 1e-6))
    hi = thr[k]
    lower = prob[prob < hi]
    return float((hi + lower.max()) / 2) if len(lower) else float(hi)


# ---------------------------------------------------------------- bundled summaries
def summarize(
    y: np.ndarray,
    prob: np.ndarray,
    threshold: float = 0.5,
    n_boot: int = 1000,
    seed: int = 0,
    score: np.ndarray | None = None,
) -> dict:
    """Every headline number for one labelled set, with 95 % bootstrap intervals (stratified by label).

    The ranking metrics (ROC AUC, AP) use `score` if given: pass the logits, because a very confident detector's
    probabilities saturate to exactly 0 or 1 in float64 (logit/T beyond ~37) and saturated ties look like chance.
    """
    y, prob = np.asarray(y).astype(int), np.asarray(prob, dtype=np.float64)
    rank = prob if score is None else np.asarray(score, dtype=np.float64)
    pred = (prob >= threshold).astype(int)
    out: dict = {
        "n": int(len(y)),
        "n_real": int((y == 0).sum()),
        "n_fake": int((y == 1).sum()),
        "threshold": float(threshold),
        "confusion": confusion_matrix(y, pred).tolist(),
    }
    strata = y
    acc = lambda a, b: accuracy(a, (b >= threshold).astype(int))  # noqa: E731
    bacc = lambda a, b: balanced_accuracy(a, (b >= threshold).astype(int))  # noqa: E731
    for name, fn in (
        ("accuracy", acc),
        ("balanced_accuracy", bacc),
        ("roc_auc", roc_auc),
        ("average_precision", average_precision),
    ):
        s = rank if name in ("roc_auc", "average_precision") else prob
        v, lo, hi = bootstrap_ci(fn, y, s, n_boot=n_boot, seed=seed, strata=strata)
        out[name], out[name + "_ci"] = v, [lo, hi]
    for c, name in ((0, "real"), (1, "fake")):
        m = y == c
        v, lo, hi = bootstrap_ci(
            lambda a, b: accuracy(a, (b >= threshold).astype(int)), y[m], prob[m], n_boot=n_boot, seed=seed
        )
        out[f"accuracy_{name}"], out[f"accuracy_{name}_ci"] = v, [lo, hi]
    out["ece"] = expected_calibration_error(y, prob)
    return out


def accuracy_by(
    keys: Sequence[str | None],
    y: np.ndarray,
    prob: np.ndarray,
    threshold: float,
    n_boot: int = 1000,
    seed: int = 0,
    min_n: int = 1,
) -> list[dict]:
    """Accuracy with a 95 % bootstrap CI for each distinct key (a source, or 'race=Black'), sorted by key."""
    y, prob = np.asarray(y).astype(int), np.asarray(prob, dtype=np.float64)
    keys = np.asarray([k if k is not None else "" for k in keys], dtype=object)
    rows = []
    for k in sorted(set(keys) - {""}):
        m = keys == k
        if m.sum() < min_n:
            continue
        v, lo, hi = bootstrap_ci(
            lambda a, b: accuracy(a, (b >= threshold).astype(int)), y[m], prob[m], n_boot=n_boot, seed=seed
        )
        rows.append({"group": str(k), "n": int(m.sum()), "n_fake": int(y[m].sum()), "accuracy": v, "ci": [lo, hi]})
    return rows


# ---------------------------------------------------------------- model runs
@torch.no_grad()
def predict_logits(
    model: torch.nn.Module,
    images: torch.Tensor | np.ndarray,
    batch_size: int | None = None,
    progress: ProgressFn = None,
    precision: str = "fp32",
) -> np.ndarray:
    """Raw (uncalibrated) logits for images: a float tensor in [-1, 1] or a uint8 [N, H, W, 3] array, computed
    on the model's device under autocast at `precision` (device.resolve_precision), read back once at the end.

    Channels-last layout everywhere. Batch size (None: by device): 8 on the CPU, where EfficientNet's depthwise
    convolutions are memory-bound and small batches run 4x faster than batches of 64 (benchmarks/detect.py,
    256 px); 128 on an accelerator, which needs large batches to fill."""
    from machinegaze import device as devmod
    from machinegaze.detect.sources import to_tensor

    dev = next(model.parameters()).device
    batch_size = batch_size or (8 if dev.type == "cpu" else 128)
    was = model.training
    model.eval()
    out = []
    n = len(images)
    try:
        for i in range(0, n, batch_size):
            chunk = images[i : i + batch_size]
            x = (to_tensor(chunk) if isinstance(chunk, np.ndarray) else chunk).to(dev, non_blocking=True)
            with devmod.autocast(dev, precision):
                out.append(model(x.contiguous(memory_format=torch.channels_last)).float().reshape(-1))
            report(progress, min(i + batch_size, n), n, stage="predict")
    finally:
        model.train(was)
    return torch.cat(out).cpu().numpy() if out else np.zeros(0, np.float32)


def losses(y: np.ndarray, prob: np.ndarray) -> np.ndarray:
    """Per-image binary cross-entropy of P(fake) against the label."""
    p = np.clip(np.asarray(prob, dtype=np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(y, dtype=np.float64)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def top_losses(y: np.ndarray, prob: np.ndarray, k: int = 16) -> np.ndarray:
    """Indices of the k most confidently wrong images (largest loss first), as in fastai's plot_top_losses."""
    return np.argsort(-losses(y, prob), kind="mergesort")[:k]


def grad_cam(model: torch.nn.Module, x: torch.Tensor, target: int = 1) -> torch.Tensor:
    """Grad-CAM heat maps [N, 1, H, W] in [0, 1] for the 'fake' logit (target=1) or the 'real' one (target=0).

    The model must expose `feature_map(x)` (last conv features, [N, C, h, w]) and `logit_from_map(f)`.
    Channel weights are the spatially averaged gradients of the target score; the map is ReLU(sum_c w_c f_c),
    upsampled bilinearly to the input size and scaled so each image's maximum is 1.
    """
    if x.ndim != 4:
        raise GazeError(f"grad_cam expects [N, 3, H, W] images, got shape {tuple(x.shape)}")
    if not hasattr(model, "feature_map") or not hasattr(model, "logit_from_map"):
        raise GazeError("grad_cam needs a detector model (feature_map / logit_from_map)")
    was = model.training
    model.eval()
    try:
        with torch.enable_grad():
            fmap = model.feature_map(x.detach())
            fmap.retain_grad()
            logit = model.logit_from_map(fmap).reshape(-1)
            score = logit if target == 1 else -logit
            score.sum().backward()
        w = fmap.grad.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((w * fmap.detach()).sum(1, keepdim=True))
        cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)
        cam = cam / cam.amax(dim=(2, 3), keepdim=True).clamp_min(1e-12)
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was)
    return cam.detach()


def cam_overlay(x: torch.Tensor, cam: torch.Tensor, alpha: float = 0.45) -> torch.Tensor:
    """Images x [N, 3, H, W] in [-1, 1] with their Grad-CAM maps cam [N, 1, H, W] in [0, 1] blended over them
    in matplotlib's 'jet' colours (red: where the score looked), in [-1, 1]."""
    import matplotlib

    jet = matplotlib.colormaps["jet"](cam[:, 0].detach().cpu().numpy())[..., :3]  # [N, H, W, 3] in [0, 1]
    heat = torch.from_numpy(jet).permute(0, 3, 1, 2).float().to(x.device)
    return ((1 - alpha) * x + alpha * (heat * 2 - 1)).clamp(-1, 1)


@dataclass
class Calibration:
    temperature: float = 1.0
    threshold: float = 0.5  # on the calibrated probability

    def prob(self, logits: np.ndarray) -> np.ndarray:
        return sigmoid(np.asarray(logits, dtype=np.float64) / self.temperature)


def calibrate(logits: np.ndarray, y: np.ndarray) -> Calibration:
    """Temperature scaling on validation logits, then the balanced-accuracy threshold on the calibrated P(fake)."""
    t = fit_temperature(logits, y)
    return Calibration(t, best_threshold(y, sigmoid(np.asarray(logits) / t)))


# ---------------------------------------------------------------- a detector on a labelled set
def subgroup_keys(item) -> list[str]:
    """'source attr=value' keys of an item (e.g. 'utkface race=Black'), one per attribute."""
    return [f"{item.source} {k}={v}" for k, v in item.attrs]


@dataclass
class EvalResult:
    """Per-image predictions on a labelled set and every summary computed from them."""

    items: list
    logits: np.ndarray
    temperature: float
    threshold: float
    summary: dict
    per_source: list[dict]
    per_subgroup: list[dict]
    preprocess: dict = field(default_factory=dict)  # {"size", "jpeg_quality"} the images were fed at

    @property
    def labels(self) -> np.ndarray:
        return np.array([it.label for it in self.items], dtype=int)

    @property
    def prob(self) -> np.ndarray:
        return sigmoid(self.logits / self.temperature)

    def to_dict(self) -> dict:
        return {
            "temperature": self.temperature,
            "threshold": self.threshold,
            "preprocess": self.preprocess,
            "summary": self.summary,
            "per_source": self.per_source,
            "per_subgroup": self.per_subgroup,
        }

    def write(self, out_dir) -> None:
        """metrics.json and predictions.csv (path, source, label, logit, prob_fake, verdict) into out_dir."""
        import csv
        import io
        import json
        from pathlib import Path

        from machinegaze.data import atomic_write_bytes

        out = Path(out_dir)
        atomic_write_bytes(out / "metrics.json", json.dumps(self.to_dict(), indent=2).encode())
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["path", "source", "label", "logit", "prob_fake", "verdict", "attrs"])
        for it, z, p in zip(self.items, self.logits, self.prob):
            w.writerow(
                [
                    it.path,
                    it.source,
                    "fake" if it.label else "real",
                    f"{z:.5f}",
                    f"{p:.5f}",
                    "fake" if p >= self.threshold else "real",
                    ";".join(f"{k}={v}" for k, v in it.attrs),
                ]
            )
        atomic_write_bytes(out / "predictions.csv", buf.getvalue().encode())


def score_items(
    items: list,
    logits: np.ndarray,
    temperature: float,
    threshold: float,
    n_boot: int = 1000,
    seed: int = 0,
    min_subgroup: int = 10,
) -> EvalResult:
    """Summaries for logits already computed on labelled items."""
    y = np.array([it.label for it in items], dtype=int)
    prob = sigmoid(np.asarray(logits, dtype=np.float64) / temperature)
    summary = summarize(y, prob, threshold, n_boot, seed, score=np.asarray(logits, dtype=np.float64))
    summary["ece_uncalibrated"] = expected_calibration_error(y, sigmoid(logits))
    summary["nll"] = float(losses(y, prob).mean()) if len(y) else float("nan")
    per_source = accuracy_by([it.source for it in items], y, prob, threshold, n_boot, seed)
    keys, ys, ps = [], [], []
    for it, yy, pp in zip(items, y, prob):
        for k in subgroup_keys(it):
            keys.append(k)
            ys.append(yy)
            ps.append(pp)
    per_sub = accuracy_by(keys, np.array(ys, dtype=int), np.array(ps), threshold, n_boot, seed, min_n=min_subgroup)
    return EvalResult(
        list(items),
        np.asarray(logits, dtype=np.float64),
        float(temperature),
        float(threshold),
        summary,
        per_source,
        per_sub,
    )


def evaluate_detector(
    model: torch.nn.Module,
    items: list,
    sources: Sequence | None = None,
    cache=None,
    n_boot: int = 1000,
    seed: int = 0,
    progress: ProgressFn = None,
    precision: str = "fp32",
) -> EvalResult:
    """Run the detector (with its own preprocessing and calibration) on labelled items, on the detector's
    device at `precision`, and score it (on the host)."""
    from machinegaze.detect.sources import ImageCache, preprocess_of

    if not items:
        raise GazeError("no test images to evaluate on")
    pre = preprocess_of(model)
    cache = cache or ImageCache()
    x = cache.arrays(items, pre, sources, progress)
    logits = predict_logits(model, x, progress=progress, precision=precision)
    res = score_items(items, logits, float(model.temperature), float(model.threshold), n_boot, seed)
    res.preprocess = {"size": pre.size, "jpeg_quality": pre.jpeg_quality}
    return res
