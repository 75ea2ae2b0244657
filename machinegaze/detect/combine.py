"""Fitting an AnyOf (detect/anyof.py) on validation faces: each later member's offset, then the temperature.

Within every real source, at most `max_flip` of the faces that the members before member k call real may be
turned into "fake" by member k: a second opinion overrules "real" only where it is sure. The combined logit then
gets its own temperature (Guo et al.'s scaling, fitted on the same faces); the threshold stays 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from machinegaze import GazeError
from machinegaze.detect.anyof import AnyOf
from machinegaze.detect.model import Detector


@dataclass(frozen=True)
class CombineConfig:
    max_flip: float = 0.01  # per real source: share of the reals called real before that a later member may flip

    def __post_init__(self):
        if not 0 <= self.max_flip < 1:
            raise GazeError(f"max_flip must be in [0, 1), got {self.max_flip}")


def member_margins(model: AnyOf, images: np.ndarray, precision: str = "fp32") -> np.ndarray:
    """[N, K] margins of uint8 images [N, S, S, 3] (preprocessed for model.spec), each member run once, with the
    model's current offsets (zero while `combine` fits them)."""
    from machinegaze.detect.evaluate import predict_logits

    logits = [predict_logits(m, images, precision=precision) for m in model.members]
    with torch.no_grad():
        return model.margins([torch.from_numpy(z) for z in logits]).double().numpy()


def flip_offset(scores: np.ndarray, max_flip: float) -> float:
    """The smallest offset that leaves at most floor(max_flip * n) of `scores` at or above it, set halfway to
    the next score down so that it generalises rather than sitting on a sample (as evaluate.best_threshold)."""
    s = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    if len(s) == 0:
        return 0.0
    k = int(np.floor(max_flip * len(s)))
    if k >= len(s):
        return float(s[-1] - 1e-3)
    above = s[k - 1] if k > 0 else s[k] + 2e-3
    return float((above + s[k]) / 2)


def fit_offsets(margins: np.ndarray, y: np.ndarray, sources: Sequence[str], max_flip: float) -> list[float]:
    """Offsets (first 0) so that member k flips at most max_flip of each real source's faces that members
    0..k-1 call real. `margins` are with zero offsets."""
    y, src = np.asarray(y), np.asarray(sources)
    offsets = [0.0]
    best = margins[:, 0].copy()
    for k in range(1, margins.shape[1]):
        off = -np.inf
        for name in np.unique(src[y == 0]):
            pool = (y == 0) & (src == name) & (best < 0)
            if pool.any():
                off = max(off, flip_offset(margins[pool, k], max_flip))
        off = 0.0 if not np.isfinite(off) else off
        offsets.append(off)
        best = np.maximum(best, margins[:, k] - off)
    return offsets


def combine(
    members: Sequence[Detector],
    x_val: np.ndarray,
    y_val: np.ndarray,
    sources: Sequence[str],
    cfg: CombineConfig = CombineConfig(),
    precision: str = "fp32",
) -> AnyOf:
    """Members -> an AnyOf with offsets and temperature fitted on labelled validation faces (uint8, preprocessed
    for the members' spec; `sources` names each face's source)."""
    from machinegaze.detect.evaluate import fit_temperature

    y_val = np.asarray(y_val).astype(int)
    if len(np.unique(y_val)) < 2:
        raise GazeError("combining detectors needs real and fake validation images")
    model = AnyOf(members).eval()
    margins = member_margins(model, x_val, precision)
    offsets = fit_offsets(margins, y_val, sources, cfg.max_flip)
    model.offsets.copy_(torch.tensor(offsets))
    combined = (margins - np.asarray(offsets)[None, :]).max(1)
    model.set_calibration(fit_temperature(combined, y_val), 0.5)
    return model


def combine_on_sources(
    members: Sequence[Detector],
    val_sources: str | Sequence[str],
    cfg: CombineConfig = CombineConfig(),
    data_root=None,
    max_per_source: int | None = None,
    progress=None,
    precision: str = "fp32",
    split: str | None = "val",
) -> tuple[AnyOf, list]:
    """`combine` on the validation split of `val_sources` (identity-disjoint from every training split; split=None:
    every image, for folders kept apart from training); returns the model and the items it was fitted on."""
    from machinegaze.detect.sources import ImageCache, gather, parse_sources, preprocess_of

    sources = parse_sources(val_sources, data_root)
    items = gather(sources, split, max_per_source)
    labels = [it.label for it in items]
    if len(set(labels)) < 2:
        where = "the validation split of " if split else ""
        raise GazeError(
            f"combining detectors needs real and fake images in {where}--val (got {labels.count(0)} real, "
            f"{labels.count(1)} fake)"
            + (": add sources, or --split all for folders kept apart from training" if split else "")
        )
    x = ImageCache().arrays(items, preprocess_of(members[0]), sources, progress)
    model = combine(members, x, np.array(labels), [it.source for it in items], cfg, precision)
    return model, items
