"""Face alignment, FFHQ style: find a face and its 5 landmarks (MTCNN), then cut out an oriented square around
it posed the way the FFHQ dataset's faces are posed, so that our GANs see faces like StyleGAN's training data.

The FFHQ alignment recipe, as we implement it from its description (Karras et al. 2019, ffhq-dataset README):
  * Frame: e = midpoint of the eyes, d = left-to-right eye vector, m = vector from e to the mouth's midpoint.
  * The face's horizontal axis blends the eye line with the mouth direction turned a quarter turn
    (d minus m rotated by +90 degrees in image coordinates), so a tilted head gets an upright crop.
  * The square's half side is the larger of 2.0 |d| and 1.8 |m|; its centre sits 0.1 m below e.
  * Its corners, in the order upper-left, lower-left, lower-right, upper-right, map onto the output square.
Before warping, a square much larger than the output shrinks the photo first (low-pass), the photo is cut
down to the square plus a margin, and where the square reaches past the photo's edges the photo is mirrored
outwards and the mirrored band is blurred and faded towards the median colour the further it lies from the
edge. The warp itself runs at `supersample` times the output side, followed by a Lanczos downsample.
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
_CORNER_SIGNS = np.array([[-1.0, -1.0], [-1.0, 1.0], [1.0, 1.0], [1.0, -1.0]])  # (along x, along y): UL LL LR UR


def _quarter_turn(v: np.ndarray) -> np.ndarray:
    """v rotated by +90 degrees in image coordinates (x right, y down): (vx, vy) -> (-vy, vx)."""
    return np.array([-v[1], v[0]])


def ffhq_quad(landmarks: np.ndarray | torch.Tensor) -> np.ndarray:
    """FFHQ's oriented square from 5 landmarks [5, 2] (pixel-centre coordinates). Returns [4, 2]: UL, LL, LR, UR."""
    eyes_l, eyes_r, _, mouth_l, mouth_r = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    eyes_mid = (eyes_l + eyes_r) * 0.5
    across = eyes_r - eyes_l
    down = (mouth_l + mouth_r) * 0.5 - eyes_mid
    axis = across - _quarter_turn(down)
    length = np.hypot(*axis)
    if not np.isfinite(length) or length < 1e-6:
        raise GazeError("degenerate landmarks: cannot orient the face")
    half_side = max(2.0 * np.hypot(*across), 1.8 * np.hypot(*down))
    half_x = axis / length * half_side
    half_y = _quarter_turn(half_x)
    centre = eyes_mid + down * 0.1
    return np.stack([centre + sx * half_x + sy * half_y for sx, sy in _CORNER_SIGNS])


def quad_to_output(quad: np.ndarray, points: np.ndarray, size: int) -> np.ndarray:
    """Where source points (pixel-centre coords) land in the aligned size x size image (pixel-centre coords)."""
    origin = np.asarray(quad[0], dtype=np.float64)
    top, left = quad[3] - quad[0], quad[1] - quad[0]  # the square's top and left edges
    rel = np.asarray(points, dtype=np.float64).reshape(-1, 2) - origin
    uv = np.stack([rel @ top / (top @ top), rel @ left / (left @ left)], axis=1)
    return uv * size - 0.5  # continuous -> pixel-centre coordinates


def outside_fraction(quad: np.ndarray, width: int, height: int, n: int = 32) -> float:
    """Fraction of the quad's area (sampled on an n x n grid) that falls outside a width x height photo."""
    t = (np.arange(n) + 0.5) / n
    u, v = np.meshgrid(t, t)
    pts = quad[0] + u[..., None] * (quad[3] - quad[0]) + v[..., None] * (quad[1] - quad[0]) + 0.5
    inside = (pts[..., 0] >= 0) & (pts[..., 0] <= width) & (pts[..., 1] >= 0) & (pts[..., 1] <= height)
    return float(1.0 - inside.mean())


def _edge_ramp(n: int, before: int, after: int) -> np.ndarray:
    """Per position along one axis of a padded image: 1 at the outer edges, falling linearly to 0 where the
    original photo starts (`before` / `after` = the padding widths on either side); negative inside."""
    pos = np.arange(n, dtype=np.float32)
    return 1.0 - np.minimum(pos / before, pos[::-1] / after)


def _blend(a: np.ndarray, b, weight: np.ndarray) -> np.ndarray:
    """a moved towards b by `weight` (clipped to [0, 1]), in place."""
    a += (b - a) * np.clip(weight, 0.0, 1.0)
    return a


def _mirror_pad(img: Image.Image, pads: tuple[int, int, int, int], qsize: float) -> Image.Image:
    """Mirror the photo outwards by `pads` (left, top, right, bottom); blur the mirrored band and fade it to the
    photo's median colour, more so the further a pixel lies from the original edge."""
    from scipy.ndimage import gaussian_filter

    left, top, right, bottom = (max(int(p), 1) for p in pads)
    arr = np.pad(np.asarray(img, dtype=np.float32), ((top, bottom), (left, right), (0, 0)), mode="reflect")
    rows, cols = arr.shape[:2]
    depth = np.maximum(_edge_ramp(cols, left, right)[None, :], _edge_ramp(rows, top, bottom)[:, None])[..., None]
    sigma = qsize * 0.02
    _blend(arr, gaussian_filter(arr, [sigma, sigma, 0]), depth * 3.0 + 1.0)
    _blend(arr, np.median(arr, axis=(0, 1)), depth)
    return Image.fromarray(np.uint8(np.clip(np.rint(arr), 0, 255)), "RGB")


def _bounds(q: np.ndarray, margin: int) -> np.ndarray:
    """Integer box (x0, y0, x1, y1) around the quad's corners, widened by `margin` on every side."""
    return np.concatenate([np.floor(q.min(0)) - margin, np.ceil(q.max(0)) + margin]).astype(int)


def _shrink_for(img: Image.Image, q: np.ndarray, qsize: float, size: int):
    """Reduce the photo by an integer factor when the quad is at least 4x the output side (cheaper warp, no
    aliasing); returns the photo, the quad and its side in the new pixels."""
    factor = int(math.floor(qsize / size * 0.5))
    if factor <= 1:
        return img, q, qsize
    w, h = img.size
    new_w, new_h = max(int(np.rint(w / factor)), 1), max(int(np.rint(h / factor)), 1)
    return img.resize((new_w, new_h), Image.LANCZOS), q * [new_w / w, new_h / h], qsize / factor


def _crop_around(img: Image.Image, q: np.ndarray, margin: int):
    """Cut the photo down to the quad plus `margin` (as far as the photo reaches); returns photo and quad."""
    w, h = img.size
    x0, y0, x1, y1 = _bounds(q, margin)
    box = (max(x0, 0), max(y0, 0), min(x1, w), min(y1, h))
    if box[2] - box[0] >= w and box[3] - box[1] >= h:
        return img, q
    return img.crop(box), q - box[:2]


def warp_quad(img: Image.Image, quad: np.ndarray, size: int, pad: str = "reflect", supersample: int = 4) -> Image.Image:
    """Cut the oriented square `quad` (pixel-centre coords, UL LL LR UR) out of `img` as a size x size image."""
    q = np.asarray(quad, dtype=np.float64) + 0.5  # pixel-centre -> continuous coordinates (PIL's)
    img, q, qsize = _shrink_for(img.convert("RGB"), q, float(np.hypot(*(q[3] - q[0]))), size)
    margin = max(int(np.rint(qsize * 0.1)), 3)
    img, q = _crop_around(img, q, margin)
    if pad == "reflect":
        w, h = img.size
        x0, y0, x1, y1 = _bounds(q, margin)
        overhang = (max(-x0, 0), max(-y0, 0), max(x1 - w, 0), max(y1 - h, 0))
        if max(overhang) > margin - 4:
            pads = tuple(max(o, int(np.rint(qsize * 0.3))) for o in overhang)
            img, q = _mirror_pad(img, pads, qsize), q + pads[:2]
    side = int(size) * int(supersample)
    out = img.transform((side, side), Image.QUAD, tuple(q.flatten()), Image.BILINEAR)
    return out if side == size else out.resize((size, size), Image.LANCZOS)


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
