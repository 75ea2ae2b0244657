"""Is this face real? Run a detector on files and folders; verdicts use the detector's calibrated threshold."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from machinegaze import GazeError
from machinegaze.data import IMAGE_EXTS, atomic_write_bytes, list_images, open_image
from machinegaze.detect.sources import preprocess_of
from machinegaze.progress import ProgressFn, report


@dataclass(frozen=True)
class Prediction:
    path: str
    prob_fake: float  # calibrated P(fake)
    verdict: str  # "fake" | "real", by the detector's calibrated threshold


def expand_paths(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Files as given, folders expanded to their images (sorted). Missing paths are user errors."""
    if not paths:
        raise GazeError("no input images given")
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = list_images(p)
            if not found:
                raise GazeError(f"no images ({', '.join(sorted(IMAGE_EXTS))}) in folder {p}")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise GazeError(f"no such file or folder: {p}")
    return out


@torch.no_grad()
def predict_paths(
    model: torch.nn.Module,
    paths: Sequence[str | os.PathLike],
    batch_size: int = 32,
    progress: ProgressFn = None,
    skipped: list[tuple[str, str]] | None = None,
) -> list[Prediction]:
    """Calibrated P(fake) and a verdict for every image, preprocessed exactly as the detector was trained.

    Files that do not decode as images are left out. With a `skipped` list they are appended to it as
    (path, reason) and the others are still predicted; without one, the first such file is an error. Either
    way, if no image at all can be read, that is an error."""
    from machinegaze.detect.evaluate import predict_logits

    files = expand_paths(paths)
    pre = preprocess_of(model)
    t, thr = float(model.temperature), float(model.threshold)
    model.eval()
    out: list[Prediction] = []
    bad: list[tuple[str, str]] = []
    for i in range(0, len(files), batch_size):
        chunk, arrays = [], []
        for f in files[i : i + batch_size]:
            try:
                arrays.append(pre(open_image(f)))
                chunk.append(f)
            except GazeError as e:
                if skipped is None:
                    raise
                bad.append((str(f), str(e)))
        if arrays:
            prob = torch.sigmoid(torch.from_numpy(predict_logits(model, np.stack(arrays))) / t).tolist()
            out += [Prediction(str(f), float(p), "fake" if p >= thr else "real") for f, p in zip(chunk, prob)]
        report(progress, len(out) + len(bad), len(files), stage="predict")
    if skipped is not None:
        skipped.extend(bad)
    if not out:
        raise GazeError(
            f"none of the {len(files)} input file(s) could be read as an image"
            + (f" (first: {bad[0][1]})" if bad else "")
        )
    return out


def write_predictions_csv(preds: Sequence[Prediction], path: str | os.PathLike) -> Path:
    """CSV with columns path,prob_fake,verdict (written atomically)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "prob_fake", "verdict"])
    for p in preds:
        w.writerow([p.path, f"{p.prob_fake:.5f}", p.verdict])
    atomic_write_bytes(path, buf.getvalue().encode())
    return Path(path)
