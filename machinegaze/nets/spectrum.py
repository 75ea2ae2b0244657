"""A frequency-spectrum representation (after Durall et al., CVPR 2020, and Frank et al., ICML 2020).

Upsampling in a generator leaves periodic traces: peaks and a wrong fall-off at high spatial frequencies.
The feature is the log power spectrum of the image's high-pass residual (the image minus a 3x3 box blur,
so the smooth face content weighs little), in two summaries per colour channel:

* the azimuthal average: mean log power over rings of equal radial frequency (`bins` rings), the 1D profile
  Durall et al. classify;
* a coarse 2D map: the centred log spectrum average-pooled to `grid` x `grid` cells (keeps direction: grid
  artefacts sit on the axes).

A small MLP reads the standardised features. The module is size-agnostic: frequencies are normalised.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def highpass(x: torch.Tensor) -> torch.Tensor:
    """x minus its 3x3 box blur (reflect padding): [N, C, H, W] -> same shape."""
    return x - F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), 3, stride=1)


def log_spectrum(x: torch.Tensor) -> torch.Tensor:
    """Centred log power spectrum log(|FFT2(x)|^2 + 1e-8) of each channel: [N, C, H, W] -> [N, C, H, W]."""
    f = torch.fft.fftshift(torch.fft.fft2(x.float(), norm="ortho"), dim=(-2, -1))
    return torch.log(f.real.square() + f.imag.square() + 1e-8)


def radial_index(h: int, w: int, bins: int, device=None) -> torch.Tensor:
    """For each frequency of a centred h x w spectrum, its ring 0..bins-1 by normalised radius (corners: last)."""
    fy = (torch.arange(h, device=device) - h // 2).float() / (h / 2)
    fx = (torch.arange(w, device=device) - w // 2).float() / (w / 2)
    r = torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2) / math.sqrt(2.0)
    return (r * bins).long().clamp(max=bins - 1)


def azimuthal_average(spec: torch.Tensor, bins: int) -> torch.Tensor:
    """Mean of [N, C, H, W] over rings of equal radius -> [N, C, bins]."""
    n, c, h, w = spec.shape
    idx = radial_index(h, w, bins, spec.device).reshape(-1)
    flat = spec.reshape(n, c, -1)
    sums = torch.zeros(n, c, bins, device=spec.device, dtype=spec.dtype).index_add_(2, idx, flat)
    counts = torch.bincount(idx, minlength=bins).clamp(min=1).to(spec.dtype)
    return sums / counts


def spectral_features(x: torch.Tensor, bins: int = 32, grid: int = 8) -> torch.Tensor:
    """[N, 3, H, W] -> [N, 3 * (bins + grid * grid)]: azimuthal profile + pooled 2D log spectrum per channel."""
    spec = log_spectrum(highpass(x))
    prof = azimuthal_average(spec, bins)
    coarse = F.adaptive_avg_pool2d(spec, grid)
    return torch.cat([prof.flatten(1), coarse.flatten(1)], dim=1)


class SpectrumNet(nn.Module):
    """spectral_features -> BatchNorm -> MLP: x [N, 3, H, W] -> [N, hidden, 1, 1] (a 1x1 "feature map")."""

    def __init__(self, hidden: int = 64, bins: int = 32, grid: int = 8):
        super().__init__()
        self.bins, self.grid = bins, grid
        n_in = 3 * (bins + grid * grid)
        self.layers = nn.Sequential(
            nn.BatchNorm1d(n_in),
            nn.Linear(n_in, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(True),
            nn.Linear(hidden, hidden),
            nn.ReLU(True),
        )
        self.out_channels = hidden

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(spectral_features(x, self.bins, self.grid))[:, :, None, None]
