"""MTCNN face detector (Zhang, Zhang, Li, Qiao 2016): three small CNNs in a cascade.

    image pyramid ──► P-Net (fully convolutional, 12 px window, stride 2) ──► candidate boxes
                  ──► R-Net (24x24 crops) ──► refined boxes
                  ──► O-Net (48x48 crops) ──► final boxes + 5 landmarks

After each stage: drop low scores, non-maximum suppression (NMS), bounding-box regression, and make the
boxes square. Layer names match the weight files shipped with facenet-pytorch (pnet.pt, rnet.pt, onet.pt),
so they load with `strict=True`; those weights came from the original Caffe model, which saw transposed
images; the (0, 3, 2, 1) permute before the dense layers undoes that.

Coordinates: boxes are (x1, y1, x2, y2) in pixels of the input image, continuous (the box [x1, x2) covers
pixels x1 .. x2-1); landmarks are pixel positions (pixel k's centre is at k), ordered
left eye, right eye, nose, left mouth corner, right mouth corner ("left" = image left).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


# ---------------------------------------------------------------- the three networks
class PNet(nn.Module):
    """Proposal net: fully convolutional; each output cell scores one 12x12 window (stride 2)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)  # face / not face
        self.conv4_2 = nn.Conv2d(32, 4, 1)  # box offsets

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 2, 2, ceil_mode=True)
        x = self.prelu2(self.conv2(x))
        x = self.prelu3(self.conv3(x))
        prob = self.conv4_1(x).softmax(dim=1)[:, 1]  # [N, h, w]
        return prob, self.conv4_2(x)  # [N, 4, h, w]


class RNet(nn.Module):
    """Refinement net: 24x24 crops -> face probability, box offsets."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = self.prelu3(self.conv3(x))
        x = self.prelu4(self.dense4(x.permute(0, 3, 2, 1).flatten(1)))
        return self.dense5_1(x).softmax(dim=1)[:, 1], self.dense5_2(x)


class ONet(nn.Module):
    """Output net: 48x48 crops -> face probability, box offsets, 5 landmarks (x1..x5, y1..y5 in [0, 1])."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu3(self.conv3(x)), 2, 2, ceil_mode=True)
        x = self.prelu4(self.conv4(x))
        x = self.prelu5(self.dense5(x.permute(0, 3, 2, 1).flatten(1)))
        return self.dense6_1(x).softmax(dim=1)[:, 1], self.dense6_2(x), self.dense6_3(x)


# ---------------------------------------------------------------- box helpers
def nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float, mode: str = "union") -> torch.Tensor:
    """Greedy non-maximum suppression. Returns indices of kept boxes, best score first.

    overlap = intersection / union ("union") or intersection / smaller area ("min", MTCNN's last stage).
    A box is dropped when its overlap with an already kept, higher-scoring box is > threshold.
    """
    if mode not in ("union", "min"):
        raise ValueError(f"nms mode must be 'union' or 'min', got {mode!r}")
    n = boxes.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.long)
    order = torch.argsort(scores, descending=True, stable=True)
    b = boxes[order].double()
    area = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    iw = (torch.minimum(b[:, None, 2], b[None, :, 2]) - torch.maximum(b[:, None, 0], b[None, :, 0])).clamp(min=0)
    ih = (torch.minimum(b[:, None, 3], b[None, :, 3]) - torch.maximum(b[:, None, 1], b[None, :, 1])).clamp(min=0)
    inter = iw * ih
    denom = torch.minimum(area[:, None], area[None, :]) if mode == "min" else area[:, None] + area[None, :] - inter
    overlap = (inter / denom.clamp(min=1e-12)).numpy() > threshold
    removed = np.zeros(n, dtype=bool)
    keep = []
    for i in range(n):
        if removed[i]:
            continue
        keep.append(i)
        removed |= overlap[i]
    return order[torch.as_tensor(keep, dtype=torch.long)]


def regress(boxes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Shift each box edge by offset * box size (MTCNN's bounding-box regression)."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    return boxes + offsets * torch.stack([w, h, w, h], dim=1)


def square(boxes: torch.Tensor) -> torch.Tensor:
    """Grow each box to a square around its centre (side = the longer side)."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = torch.maximum(w, h)
    cx, cy = boxes[:, 0] + w / 2, boxes[:, 1] + h / 2
    return torch.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], dim=1)


def crop_boxes(image: torch.Tensor, boxes: torch.Tensor, size: int, fill: float) -> torch.Tensor:
    """Cut each box (rounded to whole pixels) out of image [1, 3, H, W], resize to size x size (area).

    Parts of a box outside the image are filled with `fill` (MTCNN pads with black).
    """
    _, c, h, w = image.shape
    out = torch.empty(boxes.shape[0], c, size, size, dtype=image.dtype)
    for k, (x1, y1, x2, y2) in enumerate(boxes.round().long().tolist()):
        x2, y2 = max(x2, x1 + 1), max(y2, y1 + 1)
        patch = image.new_full((1, c, y2 - y1, x2 - x1), fill)
        sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
        if sx2 > sx1 and sy2 > sy1:
            patch[:, :, sy1 - y1 : sy2 - y1, sx1 - x1 : sx2 - x1] = image[:, :, sy1:sy2, sx1:sx2]
        out[k] = F.interpolate(patch, size=(size, size), mode="area")[0]
    return out


# ---------------------------------------------------------------- the cascade
@dataclass(frozen=True)
class MTCNNConfig:
    min_face_size: float = 20.0  # smallest face (px) the pyramid looks for
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)  # P-, R-, O-Net face-probability cut-offs
    scale_factor: float = 0.709  # pyramid step (area halves every two levels)
    nms_thresholds: tuple[float, float, float, float] = (0.5, 0.7, 0.7, 0.7)  # per scale, P-Net all, R, O(min)
    max_proposals: int = 2000  # cap on P-Net boxes passed to R-Net (highest scores first)


@dataclass
class Detections:
    boxes: torch.Tensor  # [N, 4] x1, y1, x2, y2 (input-image pixels)
    scores: torch.Tensor  # [N] O-Net face probability
    landmarks: torch.Tensor  # [N, 5, 2] (x, y): left eye, right eye, nose, left mouth, right mouth

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


def _empty() -> Detections:
    return Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, 5, 2))


class MTCNN(nn.Module):
    """The three nets plus the cascade. Build with `zoo.load_mtcnn()` for the pretrained weights."""

    def __init__(self):
        super().__init__()
        self.pnet, self.rnet, self.onet = PNet(), RNet(), ONet()
        self.eval()

    @torch.no_grad()
    def detect(self, image: torch.Tensor, config: MTCNNConfig = MTCNNConfig()) -> Detections:
        """Faces in one image [1, 3, H, W] (or [3, H, W]), float RGB in [-1, 1]. Best score first."""
        if image.ndim == 3:
            image = image.unsqueeze(0)
        if image.ndim != 4 or image.shape[0] != 1 or image.shape[1] != 3:
            raise ValueError(f"MTCNN.detect expects one RGB image [1, 3, H, W], got {tuple(image.shape)}")
        # MTCNN's input normalisation is (pixel - 127.5) / 128; ours is (pixel - 127.5) / 127.5.
        x = image.float().cpu() * (127.5 / 128.0)
        fill = -127.5 / 128.0  # a black pixel
        t1, t2, t3 = config.thresholds
        n_scale, n_all, n_r, n_o = config.nms_thresholds

        # Stage 1: P-Net over the pyramid.
        boxes, scores = self._propose(x, config.min_face_size, config.scale_factor, t1, n_scale)
        if boxes.shape[0] == 0:
            return _empty()
        keep = nms(boxes[:, :4], scores, n_all)[: config.max_proposals]
        boxes = square(regress(boxes[keep, :4], boxes[keep, 4:]))

        # Stage 2: R-Net on 24x24 crops.
        prob, offsets = self.rnet(crop_boxes(x, boxes, 24, fill))
        ok = prob > t2
        boxes, prob, offsets = boxes[ok], prob[ok], offsets[ok]
        if boxes.shape[0] == 0:
            return _empty()
        keep = nms(boxes, prob, n_r)
        boxes = square(regress(boxes[keep], offsets[keep]))

        # Stage 3: O-Net on 48x48 crops; landmarks are relative to the crop box.
        crops_at = boxes.round()
        prob, offsets, marks = self.onet(crop_boxes(x, boxes, 48, fill))
        ok = prob > t3
        crops_at, prob, offsets, marks = crops_at[ok], prob[ok], offsets[ok], marks[ok]
        if crops_at.shape[0] == 0:
            return _empty()
        wh = (crops_at[:, 2:] - crops_at[:, :2])[:, None, :]  # [N, 1, 2]
        landmarks = crops_at[:, None, :2] + wh * torch.stack([marks[:, :5], marks[:, 5:]], dim=2)
        boxes = regress(crops_at, offsets)
        keep = nms(boxes, prob, n_o, mode="min")
        return Detections(boxes[keep], prob[keep], landmarks[keep])

    def _propose(self, x: torch.Tensor, min_face: float, factor: float, threshold: float, nms_threshold: float):
        """P-Net on every pyramid level -> [M, 8] (box, offsets) and [M] scores, NMS within each level."""
        _, _, h, w = x.shape
        if not 0.0 < factor < 1.0:
            raise ValueError(f"scale_factor must be in (0, 1), got {factor}")
        scale = 12.0 / max(float(min_face), 1.0)  # a min_face face becomes P-Net's 12 px window
        all_boxes, all_scores = [], []
        while min(h, w) * scale >= 12:
            hs, ws = int(math.ceil(h * scale)), int(math.ceil(w * scale))
            prob, reg = self.pnet(F.interpolate(x, size=(hs, ws), mode="area"))
            iy, ix = torch.nonzero(prob[0] >= threshold, as_tuple=True)
            if iy.numel():
                sx, sy = ws / w, hs / h  # exact per-axis scales of this level
                x1, y1 = 2.0 * ix / sx, 2.0 * iy / sy
                b = torch.stack([x1, y1, x1 + 12.0 / sx, y1 + 12.0 / sy], dim=1).float()
                s = prob[0, iy, ix]
                keep = nms(b, s, nms_threshold)
                all_boxes.append(torch.cat([b[keep], reg[0][:, iy[keep], ix[keep]].t()], dim=1))
                all_scores.append(s[keep])
            scale *= factor
        if not all_boxes:
            return torch.zeros(0, 8), torch.zeros(0)
        return torch.cat(all_boxes), torch.cat(all_scores)
