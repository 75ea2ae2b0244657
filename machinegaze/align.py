"""Face alignment, FFHQ style: detect a face and its 5 landmarks (MTCNN), then crop, rotate and scale it the
way NVlabs' ffhq-dataset script made FFHQ (so our GANs see faces posed like StyleGAN's training data).

The recipe (NVlabs/ffhq-dataset, `recreate_aligned_images`), written with 5-point landmarks:
    eye_avg      = (left_eye + right_eye) / 2          eye_to_eye   = right_eye - left_eye
    mouth_avg    = (left_mouth + right_mouth) / 2      eye_to_mouth = mouth_avg - eye_avg
    x  = eye_to_eye - flipud(eye_to_mouth) * [-1, 1]     (the face's horizontal: eyes and mouth agree)
    x *= max(|eye_to_eye| * 2.0, |eye_to_mouth| * 1.8) / |x|
    y  = flipud(x) * [-1, 1]                             (x turned 90 degrees, same length)
    c  = eye_avg + eye_to_mouth * 0.1                    (centre, a little below the eyes)
    quad = [c - x - y, c - x + y, c + x + y, c + x - y]  (upper-left, lower-left, lower-right, upper-right)
The quad (side 2|x|) is mapped onto the output square. Before that the photo is shrunk if the quad is much
bigger than the output, cropped to the quad plus a border, and, where the quad runs off the photo, padded
by mirroring with a blur that grows away from the edge (FFHQ's padding). The warp runs at 4x the output
size, then a Lanczos downsample (FFHQ: 4096 -> 1024).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from machinegaze import GazeError
from machinegaze.data import atomic_write_bytes, list_images, open_image, pil_to_tensor, save_image, tensor_to_pil
from machinegaze.nets.mtcnn import MTCNN, MTCNNConfig
from machinegaze.progress import ProgressFn, report

SELECT_MODES = ("auto", "largest", "best", "all")
PAD_MODES = ("reflect", "black")


@dataclass(frozen=True)
class AlignConfig:
    size: int = 128  # output side in pixels
    select: str = "auto"  # auto: largest and most central face; largest; best (score); all
    pad: str = "reflect"  # where the crop runs off the photo: reflect (FFHQ's blurred mirror) | black
    supersample: int = 4  # warp at size*supersample, then Lanczos down (FFHQ: 4)
    min_face_size: float = 20.0  # MTCNN: smallest face searched for (px, in the detection image)
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)  # MTCNN stage thresholds (last = final score)
    detect_max_side: int = 1024  # detect on a copy shrunk to this longest side (speed on big photos)

    def __post_init__(self):
        if not 8 <= int(self.size) <= 4096:
            raise GazeError(f"--size: {self.size} is out of range (8 .. 4096)")
        if self.select not in SELECT_MODES:
            raise GazeError(f"--select: '{self.select}' is not one of {', '.join(SELECT_MODES)}")
        if self.pad not in PAD_MODES:
            raise GazeError(f"--pad: '{self.pad}' is not one of {', '.join(PAD_MODES)}")
        if not 1 <= int(self.supersample) <= 8:
            raise GazeError(f"supersample must be 1 .. 8, got {self.supersample}")
        if self.min_face_size < 12:
            raise GazeError(f"--min-face: {self.min_face_size} px is below MTCNN's 12 px window")

    def mtcnn(self) -> MTCNNConfig:
        return MTCNNConfig(min_face_size=self.min_face_size, thresholds=tuple(self.thresholds))


@dataclass
class AlignedFace:
    image: torch.Tensor  # [1, 3, size, size] float32 in [-1, 1]
    landmarks: torch.Tensor  # [5, 2] landmarks in the aligned image's pixels (pixel k's centre = k)
    box: tuple[float, float, float, float]  # detected box in the source photo (x1, y1, x2, y2)
    score: float  # MTCNN face probability
    source_landmarks: torch.Tensor  # [5, 2] landmarks in the source photo's pixels
    quad: np.ndarray  # [4, 2] the FFHQ quad in the source photo's pixels (UL, LL, LR, UR)
    outside: float  # fraction of the aligned image that lies outside the photo (padding)


# ---------------------------------------------------------------- the recipe
def ffhq_quad(landmarks: np.ndarray | torch.Tensor) -> np.ndarray:
    """FFHQ's oriented square from 5 landmarks [5, 2] (pixel-centre coordinates). Returns [4, 2]: UL, LL, LR, UR."""
    lm = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    eye_left, eye_right = lm[0], lm[1]
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (lm[3] + lm[4]) * 0.5
    eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    norm = np.hypot(*x)
    if not np.isfinite(norm) or norm < 1e-6:
        raise GazeError("degenerate landmarks: cannot orient the face")
    x = x / norm * max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def quad_to_output(quad: np.ndarray, points: np.ndarray, size: int) -> np.ndarray:
    """Where source points (pixel-centre coords) land in the aligned size x size image (pixel-centre coords)."""
    q0 = np.asarray(quad[0], dtype=np.float64)
    ex, ey = quad[3] - quad[0], quad[1] - quad[0]  # the square's top and left edges
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2) - q0
    u = p @ ex / (ex @ ex)
    v = p @ ey / (ey @ ey)
    return np.stack([u, v], axis=1) * size - 0.5  # continuous -> pixel-centre coordinates


def outside_fraction(quad: np.ndarray, width: int, height: int, n: int = 32) -> float:
    """Fraction of the quad's area (sampled on an n x n grid) that falls outside a width x height photo."""
    t = (np.arange(n) + 0.5) / n
    u, v = np.meshgrid(t, t)
    pts = quad[0] + u[..., None] * (quad[3] - quad[0]) + v[..., None] * (quad[1] - quad[0]) + 0.5
    inside = (pts[..., 0] >= 0) & (pts[..., 0] <= width) & (pts[..., 1] >= 0) & (pts[..., 1] <= height)
    return float(1.0 - inside.mean())


def _mirror_pad(img: Image.Image, pad: tuple[int, int, int, int], qsize: float) -> Image.Image:
    """FFHQ's padding: mirror the photo outwards, blur more and fade to the median colour away from the edge."""
    from scipy.ndimage import gaussian_filter

    left, top, right, bottom = (max(int(p), 1) for p in pad)
    a = np.pad(np.asarray(img, dtype=np.float32), ((top, bottom), (left, right), (0, 0)), mode="reflect")
    h, w, _ = a.shape
    yy, xx = np.ogrid[:h, :w]
    mask = np.maximum(
        1.0 - np.minimum(xx.astype(np.float32) / left, (w - 1 - xx).astype(np.float32) / right),
        1.0 - np.minimum(yy.astype(np.float32) / top, (h - 1 - yy).astype(np.float32) / bottom),
    )[..., None]
    blur = qsize * 0.02
    a += (gaussian_filter(a, [blur, blur, 0]) - a) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
    a += (np.median(a, axis=(0, 1)) - a) * np.clip(mask, 0.0, 1.0)
    return Image.fromarray(np.uint8(np.clip(np.rint(a), 0, 255)), "RGB")


def warp_quad(img: Image.Image, quad: np.ndarray, size: int, pad: str = "reflect", supersample: int = 4) -> Image.Image:
    """Cut the oriented square `quad` (pixel-centre coords, UL LL LR UR) out of `img` as a size x size image."""
    img = img.convert("RGB")
    q = np.asarray(quad, dtype=np.float64) + 0.5  # pixel-centre -> continuous coordinates (PIL's)
    qsize = float(np.hypot(*(q[3] - q[0])))
    transform_size = int(size) * int(supersample)

    # Shrink: a quad much larger than the output is first reduced with a proper low-pass resize.
    shrink = int(math.floor(qsize / size * 0.5))
    if shrink > 1:
        w, h = img.size
        rw, rh = max(int(np.rint(w / shrink)), 1), max(int(np.rint(h / shrink)), 1)
        img = img.resize((rw, rh), Image.LANCZOS)
        q = q * [rw / w, rh / h]
        qsize /= shrink

    # Crop to the quad plus a border.
    border = max(int(np.rint(qsize * 0.1)), 3)
    w, h = img.size
    lo, hi = np.floor(q.min(0)).astype(int), np.ceil(q.max(0)).astype(int)
    crop = (max(lo[0] - border, 0), max(lo[1] - border, 0), min(hi[0] + border, w), min(hi[1] + border, h))
    if crop[2] - crop[0] < w or crop[3] - crop[1] < h:
        img = img.crop(crop)
        q = q - crop[:2]

    # Pad where the quad runs off the photo.
    w, h = img.size
    lo, hi = np.floor(q.min(0)).astype(int), np.ceil(q.max(0)).astype(int)
    pads = (max(-lo[0] + border, 0), max(-lo[1] + border, 0), max(hi[0] - w + border, 0), max(hi[1] - h + border, 0))
    if pad == "reflect" and max(pads) > border - 4:
        pads = tuple(max(p, int(np.rint(qsize * 0.3))) for p in pads)
        img = _mirror_pad(img, pads, qsize)
        q = q + pads[:2]

    out = img.transform((transform_size, transform_size), Image.QUAD, tuple(q.flatten()), Image.BILINEAR)
    if transform_size != size:
        out = out.resize((size, size), Image.LANCZOS)
    return out


# ---------------------------------------------------------------- detection + alignment
def _as_pil(img) -> Image.Image:
    if isinstance(img, Image.Image):
        return img.convert("RGB")
    if isinstance(img, torch.Tensor):
        if img.ndim == 3:
            img = img.unsqueeze(0)
        if img.ndim != 4 or img.shape[0] != 1 or img.shape[1] not in (1, 3):
            raise GazeError(f"expected one image [1, 3, H, W] in [-1, 1], got a tensor of shape {tuple(img.shape)}")
        return tensor_to_pil(img).convert("RGB")
    if isinstance(img, np.ndarray):
        if img.dtype != np.uint8:
            raise GazeError(f"expected a uint8 HxWx3 array, got {img.dtype}")
        return Image.fromarray(img).convert("RGB")
    return open_image(img)  # path or bytes


def detect_landmarks(img, detector: MTCNN | None = None, config: AlignConfig = AlignConfig()):
    """MTCNN on a photo (PIL, path, bytes, uint8 array or [1,3,H,W] tensor). Returns Detections in its pixels."""
    pil = _as_pil(img)
    detector = detector if detector is not None else _default_detector()
    w, h = pil.size
    s = min(1.0, config.detect_max_side / max(w, h))
    small = pil if s >= 1.0 else pil.resize((max(int(round(w * s)), 1), max(int(round(h * s)), 1)), Image.BOX)
    det = detector.detect(pil_to_tensor(small), config.mtcnn())
    if s < 1.0:
        sx, sy = w / small.size[0], h / small.size[1]
        det.boxes = det.boxes * torch.tensor([sx, sy, sx, sy])
        det.landmarks = (det.landmarks + 0.5) * torch.tensor([sx, sy]) - 0.5
    return det


def _default_detector() -> MTCNN:
    from machinegaze import zoo

    return zoo.load_mtcnn()


def _rank(boxes: torch.Tensor, scores: torch.Tensor, width: int, height: int, select: str) -> list[int]:
    """Order faces for `select`: auto = area minus twice the squared distance of the box centre from the photo's."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    if select == "largest":
        key = area
    elif select == "best":
        key = scores
    else:
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2 - width / 2, (boxes[:, 1] + boxes[:, 3]) / 2 - height / 2
        key = area - 2.0 * (cx**2 + cy**2)
    return torch.argsort(key, descending=True, stable=True).tolist()


def align_image(img, config: AlignConfig = AlignConfig(), detector: MTCNN | None = None) -> list[AlignedFace]:
    """Detect faces and return them aligned FFHQ-style: one face (config.select) or all; [] if none found."""
    pil = _as_pil(img)
    det = detect_landmarks(pil, detector, config)
    if len(det) == 0:
        return []
    order = _rank(det.boxes, det.scores, pil.size[0], pil.size[1], config.select)
    if config.select != "all":
        order = order[:1]
    faces = []
    for i in order:
        lm = det.landmarks[i].double().numpy()
        quad = ffhq_quad(lm)
        out = warp_quad(pil, quad, config.size, config.pad, config.supersample)
        faces.append(
            AlignedFace(
                image=pil_to_tensor(out),
                landmarks=torch.from_numpy(quad_to_output(quad, lm, config.size)).float(),
                box=tuple(float(v) for v in det.boxes[i].tolist()),
                score=float(det.scores[i]),
                source_landmarks=det.landmarks[i].clone(),
                quad=quad,
                outside=outside_fraction(quad, *pil.size),
            )
        )
    return faces


# ---------------------------------------------------------------- folders
@dataclass
class AlignReport:
    total: int = 0
    aligned: list[tuple[str, str]] = field(default_factory=list)  # (input, output) relative paths
    no_face: list[str] = field(default_factory=list)
    corrupt: list[tuple[str, str]] = field(default_factory=list)  # (input, reason)

    def summary(self) -> dict:
        return {
            "total": self.total,
            "aligned_images": len({a for a, _ in self.aligned}),
            "faces_written": len(self.aligned),
            "no_face": len(self.no_face),
            "corrupt": len(self.corrupt),
        }


def align_folder(
    in_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: AlignConfig = AlignConfig(),
    detector: MTCNN | None = None,
    progress: ProgressFn = None,
) -> AlignReport:
    """Align every image under in_dir into out_dir (same relative paths, .png). Photos without a face and
    corrupt files are skipped and listed in the report (also written to out_dir/align_report.json)."""
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    files = list_images(in_dir)
    if not files:
        raise GazeError(f"no images found in {in_dir}")
    if out_dir.resolve() == in_dir.resolve():
        raise GazeError("OUT_DIR must differ from IN_DIR (aligned images would mix with the originals)")
    detector = detector if detector is not None else _default_detector()
    rep = AlignReport(total=len(files))
    used: set[str] = set()
    for k, path in enumerate(files):
        rel = path.relative_to(in_dir).as_posix()
        try:
            faces = align_image(path, config, detector)
        except GazeError as e:
            rep.corrupt.append((rel, str(e)))
            faces = None
        if faces == []:
            rep.no_face.append(rel)
        for j, face in enumerate(faces or []):
            stem = Path(rel).with_suffix("").as_posix() + (f"_{j}" if j else "")
            name = stem + ".png"
            if name in used:  # a.jpg and a.png in the same folder
                name = f"{stem}{Path(rel).suffix.replace('.', '_')}.png"
            used.add(name)
            save_image(face.image, out_dir / name)
            rep.aligned.append((rel, name))
        report(
            progress, k + 1, len(files), aligned=len(rep.aligned), no_face=len(rep.no_face), corrupt=len(rep.corrupt)
        )
    out = {
        "summary": rep.summary(),
        "config": asdict(config),
        "aligned": rep.aligned,
        "no_face": rep.no_face,
        "corrupt": [{"file": f, "reason": r} for f, r in rep.corrupt],
    }
    atomic_write_bytes(out_dir / "align_report.json", json.dumps(out, indent=1).encode())
    return rep
