"""NPR: neighbouring-pixel relationships (after Tan et al., CVPR 2024), as a pure module.

Generators build images by upsampling, and upsampling leaves a fixed relation between the pixels of each
2x2 cell. The representation makes that relation the only thing the classifier sees: the image minus a copy
that was downsampled by `factor` (nearest neighbour) and upsampled back (nearest neighbour). Inside every
factor x factor cell the residual is each pixel's difference to the cell's anchor pixel; the content of the
face (what is in the picture) mostly cancels out.

A small CNN trained from scratch reads the residual: a stem at full resolution (the artefacts are one or two
pixels wide, so no early striding), then stages that halve the resolution and double the width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def npr_residual(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """x - nearest_up(nearest_down(x)) for x [N, C, H, W]; H and W are cropped to multiples of `factor`."""
    h, w = x.shape[-2] // factor * factor, x.shape[-1] // factor * factor
    x = x[..., :h, :w]
    coarse = x[..., ::factor, ::factor]
    return x - F.interpolate(coarse, scale_factor=factor, mode="nearest")


def _conv_bn(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True)]


class NPRNet(nn.Module):
    """NPR residual -> small CNN: x [N, 3, H, W] in [-1, 1] -> feature map [N, 8*width, H/8, W/8]."""

    def __init__(self, width: int = 16, factor: int = 2, gain: float = 4.0):
        super().__init__()
        self.factor = factor
        self.gain = gain  # residuals are small: scale them up before the first convolution
        chans = [width, 2 * width, 4 * width, 8 * width]
        layers: list[nn.Module] = [*_conv_bn(3, chans[0]), *_conv_bn(chans[0], chans[0])]
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            layers += [*_conv_bn(c_in, c_out, stride=2), *_conv_bn(c_out, c_out)]
        self.layers = nn.Sequential(*layers)
        self.out_channels = chans[-1]

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.gain * npr_residual(x, self.factor))
