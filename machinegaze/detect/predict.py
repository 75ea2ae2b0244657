"""Is this face real? Find the faces in each photo, classify each one, one row per face.

    photo ──► MTCNN (align.detect_landmarks) ──► boxes ──► square crop with margin, native pixels
          ──► the detector's own preprocessing (sources.preprocess_of) ──► P(fake) per face

A photo without a face gets one `no_face` row and no probability: a coffee cup is neither a real nor a fake
face. `face_check=False` treats every image as one pre-cropped face (the image is the crop).

Folders stream: DataLoader worker processes decode each image, find its faces and preprocess them while this
process classifies; the faces of each chunk of `batch_size` images are classified together and handed back
(or appended to a CSV) before the next chunk is read, so memory does not grow with the folder. Under torchrun
every process takes whole chunks (distributed.my_share), so each face is classified in the same batch as in
one process and the rows are identical.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from machinegaze import GazeError
from machinegaze.data import IMAGE_EXTS, atomic_write_bytes, list_images, open_image
from machinegaze.detect.sources import preprocess_of, to_tensor
from machinegaze.progress import ProgressFn, report

CSV_COLUMNS = ("path", "face", "box", "prob_fake", "verdict")
NO_FACE = "no_face"
MICRO_BATCH = 4  # faces per forward pass: small channels-last batches are fastest on a CPU (benchmarks/detect.py)

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class PredictConfig:
    face_check: bool = True  # find faces first (MTCNN); False: every image is one pre-cropped face
    margin: float = 0.4  # the crop is the face box's long side grown by this fraction on every side
    min_face: float = 32.0  # smallest face looked for, in pixels of the detection copy
    detect_max_side: int = 640  # faces are looked for on a copy shrunk to this longest side (crops are native)
    batch_size: int = 32  # images per chunk: their faces are classified together (torchrun deals whole chunks)
    workers: int = 1  # DataLoader processes decoding images and finding faces (0: all in this process)

    def __post_init__(self):
        if not 0.0 <= self.margin <= 2.0:
            raise GazeError(f"--margin must be in 0 .. 2 (a fraction of the face box), got {self.margin}")
        if self.min_face < 12:
            raise GazeError(f"--min-face: {self.min_face} px is below MTCNN's 12 px window")
        if self.batch_size < 1:
            raise GazeError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.workers < 0:
            raise GazeError(f"--workers must be >= 0, got {self.workers}")
        if self.detect_max_side < 64:
            raise GazeError(f"--detect-size must be >= 64 px, got {self.detect_max_side}")


@dataclass(frozen=True)
class Prediction:
    """One face of one image (or the image's single no_face row)."""

    path: str
    face: Optional[int]  # index of the face in its image, left to right; None: no face found
    box: Optional[Box]  # x0 y0 x1 y1 in the image's pixels (x1, y1 exclusive)
    prob_fake: Optional[float]  # calibrated P(fake); None without a face
    verdict: str  # "fake" | "real" (by the detector's calibrated threshold) | "no_face"

    def row(self) -> list[str]:
        return [
            self.path,
            "" if self.face is None else str(self.face),
            "" if self.box is None else " ".join(map(str, self.box)),
            "" if self.prob_fake is None else f"{self.prob_fake:.5f}",
            self.verdict,
        ]


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


# ---------------------------------------------------------------- faces
def face_boxes(img: Image.Image, mtcnn, cfg: PredictConfig = PredictConfig()) -> list[Box]:
    """The faces MTCNN finds in a photo, as integer boxes inside it, left to right."""
    from machinegaze.align import AlignConfig, detect_landmarks

    acfg = AlignConfig(min_face_size=cfg.min_face, detect_max_side=cfg.detect_max_side)
    det = detect_landmarks(img, mtcnn, acfg)
    w, h = img.size
    out = []
    for x0, y0, x1, y1 in det.boxes.tolist():
        b = (max(round(x0), 0), max(round(y0), 0), min(round(x1), w), min(round(y1), h))
        if b[2] - b[0] >= 2 and b[3] - b[1] >= 2:
            out.append(b)
    return sorted(out)


def crop_square(box: Box, width: int, height: int, margin: float) -> Box:
    """The square around a face box: its long side plus `margin` of it on every side, centred on the box,
    moved (and if need be shrunk) to lie inside the width x height image."""
    x0, y0, x1, y1 = box
    side = round(max(x1 - x0, y1 - y0) * (1.0 + 2.0 * margin))
    side = max(1, min(side, width, height))
    left = min(max(round((x0 + x1 - side) / 2), 0), width - side)
    top = min(max(round((y0 + y1 - side) / 2), 0), height - side)
    return (left, top, left + side, top + side)


def crop_face(img: Image.Image, box: Box, margin: float) -> Image.Image:
    """The square crop around a face box (crop_square), at the photo's own pixels."""
    return img.crop(crop_square(box, img.size[0], img.size[1], margin))


def faces_of(img: Image.Image, mtcnn, cfg: PredictConfig = PredictConfig()) -> list[tuple[Box, Image.Image]]:
    """(face box, square crop at the photo's own pixels) for every face; the whole image with face_check off."""
    w, h = img.size
    if not cfg.face_check:
        return [((0, 0, w, h), img)]
    return [(b, crop_face(img, b, cfg.margin)) for b in face_boxes(img, mtcnn, cfg)]


# ---------------------------------------------------------------- classification
def classify_faces(fast, temperature: float, arrays: np.ndarray) -> list[float]:
    """Calibrated P(fake) for preprocessed uint8 faces [N, S, S, 3], on the model's device (a detector, or
    its detect.fast.fast_detector copy), in batches of MICRO_BATCH."""
    from machinegaze.detect.evaluate import predict_logits

    if len(arrays) == 0:
        return []
    dev = next(fast.parameters()).device
    with torch.inference_mode():
        logits = predict_logits(fast, to_tensor(arrays).to(dev), batch_size=MICRO_BATCH)
    return torch.sigmoid(torch.from_numpy(logits).double() / float(temperature)).tolist()


def _verdict(p: float, threshold: float) -> str:
    return "fake" if p >= threshold else "real"


@dataclass
class _Chunk:
    """The images of one chunk: (path, [(box, preprocessed face)]) in order."""

    images: list[tuple[str, list[tuple[Box, np.ndarray]]]] = field(default_factory=list)

    def classify(self, fast, temperature: float, threshold: float) -> list[Prediction]:
        faces = [a for _, found in self.images for _, a in found]
        probs = iter(classify_faces(fast, temperature, np.stack(faces) if faces else np.zeros((0, 1, 1, 3), np.uint8)))
        rows = []
        for path, found in self.images:
            if not found:
                rows.append(Prediction(path, None, None, None, NO_FACE))
            for k, (box, _) in enumerate(found):
                p = next(probs)
                rows.append(Prediction(path, k, box, p, _verdict(p, threshold)))
        return rows


def predict_image(
    model: torch.nn.Module,
    img: Image.Image,
    cfg: PredictConfig = PredictConfig(),
    mtcnn=None,
    fast: Optional[torch.nn.Module] = None,
    name: str = "",
) -> tuple[list[Prediction], list[Image.Image]]:
    """One decoded photo: its rows (one per face, or one no_face row) and the face crops in the same order.
    `fast`: the model's detect.fast.fast_detector copy, if the caller keeps one."""
    pre = preprocess_of(model)
    found = faces_of(img, mtcnn, cfg)
    chunk = _Chunk([(name, [(b, pre(c)) for b, c in found])])
    return chunk.classify(fast or model, float(model.temperature), float(model.threshold)), [c for _, c in found]


# ---------------------------------------------------------------- the per-image work, in DataLoader workers
class _Faces(torch.utils.data.Dataset):
    """Item i: decode file i, find its faces, crop and preprocess each -> (i, [(box, uint8 face)], None), or
    (i, None, reason) when the file does not decode."""

    def __init__(self, files: Sequence[Path], cfg: PredictConfig, mtcnn, pre):
        self.files, self.cfg, self.mtcnn, self.pre = [str(f) for f in files], cfg, mtcnn, pre

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        try:
            img = open_image(self.files[i])
        except GazeError as e:
            return i, None, str(e)
        return i, [(b, self.pre(c)) for b, c in faces_of(img, self.mtcnn, self.cfg)], None


def _keep(x):
    return x


def _per_image(files: Sequence[Path], cfg: PredictConfig, mtcnn, pre) -> Iterator[tuple]:
    """_Faces items in file order, computed by cfg.workers processes (one torch thread each) while this process
    classifies; with 0 workers, or a handful of files, in this process."""
    workers = min(cfg.workers, len(files) // 8)  # a handful of files is not worth starting processes
    loader = torch.utils.data.DataLoader(
        _Faces(files, cfg, mtcnn, pre),
        batch_size=None,
        num_workers=workers,
        collate_fn=_keep,
        prefetch_factor=4 if workers else None,
    )
    yield from loader


def iter_predictions(
    model: torch.nn.Module,
    files: Sequence[str | os.PathLike],
    cfg: PredictConfig = PredictConfig(),
    mtcnn=None,
    progress: ProgressFn = None,
    skipped: Optional[list[tuple[str, str]]] = None,
) -> Iterator[list[Prediction]]:
    """The rows of each chunk of cfg.batch_size files, in file order (one list per chunk).

    Files that do not decode are appended to `skipped` as (path, reason); without a list, the first one is an
    error. `mtcnn`: a face detector (default: zoo.load_mtcnn(); unused with face_check off)."""
    from machinegaze.detect.fast import fast_detector

    files = [Path(f) for f in files]
    if cfg.face_check and mtcnn is None:
        from machinegaze import zoo

        mtcnn = zoo.load_mtcnn()
    pre = preprocess_of(model)
    fast = fast_detector(model)
    temperature, threshold = float(model.temperature), float(model.threshold)
    chunk = _Chunk()
    for i, found, err in _per_image(files, cfg, mtcnn, pre):
        if found is None:
            if skipped is None:
                raise GazeError(err)
            skipped.append((str(files[i]), err))
        else:
            chunk.images.append((str(files[i]), found))
        if (i + 1) % cfg.batch_size == 0 or i + 1 == len(files):
            yield chunk.classify(fast, temperature, threshold)
            chunk = _Chunk()
            report(progress, i + 1, len(files), stage="predict")


def predict_paths(
    model: torch.nn.Module,
    paths: Sequence[str | os.PathLike],
    cfg: PredictConfig = PredictConfig(),
    mtcnn=None,
    progress: ProgressFn = None,
    skipped: Optional[list[tuple[str, str]]] = None,
) -> list[Prediction]:
    """Rows for every face of every image under `paths` (files and folders), in file order.

    Unreadable files: see iter_predictions. If no file at all can be read, that is an error."""
    files = expand_paths(paths)
    bad: Optional[list[tuple[str, str]]] = [] if skipped is not None else None
    rows = [r for chunk in iter_predictions(model, files, cfg, mtcnn, progress, bad) for r in chunk]
    if skipped is not None:
        skipped.extend(bad or [])
    if not rows:
        first = f" (first: {bad[0][1]})" if bad else ""
        raise GazeError(f"none of the {len(files)} input file(s) could be read as an image{first}")
    return rows


# ---------------------------------------------------------------- CSV
def _csv_text(rows: Sequence[Prediction], header: bool) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if header:
        w.writerow(CSV_COLUMNS)
    for r in rows:
        w.writerow(r.row())
    return buf.getvalue()


def write_predictions_csv(rows: Sequence[Prediction], path: str | os.PathLike) -> Path:
    """CSV with columns path,face,box,prob_fake,verdict (written atomically)."""
    atomic_write_bytes(path, _csv_text(rows, True).encode())
    return Path(path)


def append_predictions_csv(rows: Sequence[Prediction], path: str | os.PathLike) -> None:
    """Append rows to a CSV (the header first if the file is new or empty), flushed to disk."""
    path = Path(path)
    new = not path.is_file() or path.stat().st_size == 0
    with open(path, "a", encoding="utf-8", newline="") as fh:
        fh.write(_csv_text(rows, new))
        fh.flush()
        os.fsync(fh.fileno())


def _whole_images(text: str) -> list[str]:
    """A CSV's lines (header first) without what an interrupted write may have left incomplete: the line
    after the last newline and every row of the last image."""
    lines = text.split("\n")[:-1]
    if len(lines) > 1:
        last = next(csv.reader([lines[-1]]))[0]
        while len(lines) > 1 and next(csv.reader([lines[-1]]))[0] == last:
            lines.pop()
    return lines


def resume_csv(path: str | os.PathLike) -> set[str]:
    """The paths an interrupted run already wrote to `path` (none if it does not exist). The last image's rows
    and a cut-off last line are removed from the file first, so that image is predicted again, whole."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return set()
    text = path.read_text(encoding="utf-8")
    lines = _whole_images(text)
    if not lines or next(csv.reader([lines[0]])) != list(CSV_COLUMNS):
        raise GazeError(f"--resume: {path} is not a predictions CSV with columns {','.join(CSV_COLUMNS)}")
    kept = "\n".join(lines) + "\n"
    if kept != text:
        atomic_write_bytes(path, kept.encode())
    return {row[0] for row in csv.reader(lines[1:])}


def read_done(path: str | os.PathLike) -> set[str]:
    """The paths in a predictions CSV, read only (after resume_csv has tidied it)."""
    path = Path(path)
    if not path.is_file():
        return set()
    with open(path, newline="", encoding="utf-8") as fh:
        return {row[0] for row in list(csv.reader(fh))[1:] if row}


def part_path(out: str | os.PathLike, rank: int) -> Path:
    """Where torchrun process `rank` streams its rows before rank 0 merges them into `out`."""
    out = Path(out)
    return out.with_name(f"{out.name}.part{rank}")


def merge_parts(out: str | os.PathLike, interrupted: bool = False) -> int:
    """Append the part files of `out` to it in rank order and delete them; returns the number of rows moved.
    Parts left by an interrupted run lose their possibly incomplete last image (it is predicted again)."""
    out = Path(out)
    parts = [p for p in out.parent.glob(f"{out.name}.part*") if p.name.rsplit(".part", 1)[1].isdigit()]
    moved = 0
    for p in sorted(parts, key=lambda q: int(q.name.rsplit(".part", 1)[1])):
        text = p.read_text(encoding="utf-8")
        lines = (_whole_images(text) if interrupted else text.split("\n")[:-1])[1:]
        if lines:
            new = not out.is_file() or out.stat().st_size == 0
            with open(out, "a", encoding="utf-8", newline="") as fh:
                fh.write((",".join(CSV_COLUMNS) + "\n" if new else "") + "\n".join(lines) + "\n")
            moved += len(lines)
        p.unlink()
    return moved


# ---------------------------------------------------------------- a whole run: CSV, resume, torchrun
@dataclass
class PredictRun:
    """What rank 0 knows at the end of run_predict."""

    rows: list[Prediction]  # this run's rows, every process's, in file order
    skipped: list[tuple[str, str]]  # (path, reason) of files that did not decode
    n_files: int  # files given
    n_resumed: int  # of those, already in the CSV before this run (--resume)


def _start_csv(out: Path, resume: bool, world) -> set[str]:
    """Prepare the CSV on rank 0 (tidy it for a resume, or start afresh), then every rank reads what is done."""
    from machinegaze import distributed

    if world.main:
        if resume:
            merge_parts(out, interrupted=True)  # rows of a torchrun run that was cut off
            resume_csv(out)
        else:
            for p in [out, *out.parent.glob(f"{out.name}.part*")]:
                p.unlink(missing_ok=True)
    distributed.barrier(world)
    return read_done(out) if resume else set()


def run_predict(
    model: torch.nn.Module,
    paths: Sequence[str | os.PathLike],
    cfg: PredictConfig = PredictConfig(),
    out: Optional[str | os.PathLike] = None,
    resume: bool = False,
    world=None,
    mtcnn=None,
    progress: ProgressFn = None,
) -> Optional[PredictRun]:
    """Predict files and folders, streaming rows to the CSV `out` as each chunk is done; with `resume`, files
    already in it are skipped. Under torchrun (`world`, from distributed.init) every process predicts its
    share into its own part file and rank 0 merges them; rank 0 gets a PredictRun, the others None."""
    from machinegaze import distributed

    world = world or distributed.World()
    files = expand_paths(paths)
    if resume and out is None:
        raise GazeError("--resume needs --out (the CSV to continue)")
    out = Path(out) if out is not None else None
    done = _start_csv(out, resume, world) if out is not None else set()
    todo = [f for f in files if str(f) not in done]
    mine = distributed.my_share(todo, world, cfg.batch_size)
    sink = None if out is None else (part_path(out, world.rank) if world.on else out)
    rows: list[Prediction] = []
    skipped: list[tuple[str, str]] = []
    for chunk in iter_predictions(model, mine, cfg, mtcnn, progress if world.main else None, skipped):
        if sink is not None and chunk:
            append_predictions_csv(chunk, sink)
        rows.extend(chunk)
    parts = distributed.gather_to_main((rows, skipped), world)
    if not world.main:
        return None
    if out is not None and world.on:
        merge_parts(out)
    run = PredictRun([r for p in parts for r in p[0]], [s for p in parts for s in p[1]], len(files), len(done))
    if todo and not run.rows:
        first = f" (first: {run.skipped[0][1]})" if run.skipped else ""
        raise GazeError(f"none of the {len(todo)} input file(s) could be read as an image{first}")
    return run
