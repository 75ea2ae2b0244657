"""StyleGAN2 building blocks in plain PyTorch: FIR resampling, resampling convs, bias + activation, and the
equalised-learning-rate layers. Semantics follow NVIDIA's stylegan2-ada-pytorch (reference paths, no CUDA ops),
so that weights from their pickles give the same numbers.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ACT_GAIN = {"linear": 1.0, "lrelu": math.sqrt(2.0), "relu": math.sqrt(2.0)}


# ---------------------------------------------------------------- bias + activation
def bias_act(x: torch.Tensor, b: torch.Tensor | None = None, act: str = "linear", gain: float | None = None,
             clamp: float | None = None, inplace: bool | None = None) -> torch.Tensor:
    """x + b (on dim 1), activation, times gain (default: the activation's own gain), then clamp to ±clamp.

    inplace=True overwrites x (only for tensors the caller owns, outside autograd)."""
    if inplace is None:
        inplace = False
    if b is not None:
        bb = b.reshape([1, -1] + [1] * (x.ndim - 2))
        x = x.add_(bb) if inplace else x + bb
    if act == "lrelu":
        x = F.leaky_relu(x, 0.2, inplace=inplace)
    elif act == "relu":
        x = F.relu(x, inplace=inplace)
    elif act != "linear":
        raise ValueError(f"unknown activation {act}")
    g = ACT_GAIN[act] if gain is None else gain
    if g != 1:
        x = x.mul_(g) if inplace else x * g
    if clamp is not None and clamp >= 0:
        x = x.clamp_(-clamp, clamp) if inplace else x.clamp(-clamp, clamp)
    return x


# ---------------------------------------------------------------- FIR filtering (upfirdn2d)
def setup_filter(f: Sequence[float] = (1, 3, 3, 1), normalize: bool = True) -> torch.Tensor:
    """[1,3,3,1] -> the normalised 4x4 outer-product filter that NVlabs stores as `resample_filter`."""
    t = torch.as_tensor(f, dtype=torch.float32)
    if t.ndim == 1:
        t = torch.outer(t, t)
    if normalize:
        t = t / t.sum()
    return t


def _pad4(padding) -> list[int]:
    if isinstance(padding, int):
        return [padding] * 4
    p = list(padding)
    return p * 2 if len(p) == 2 else p  # [x0, x1, y0, y1]


def upfirdn2d(x: torch.Tensor, f: torch.Tensor, up: int = 1, down: int = 1, padding=0, gain: float = 1.0) -> torch.Tensor:
    """Upsample (insert zeros), pad, convolve with the 2-D FIR filter f, downsample (drop pixels)."""
    b, c, h, w = x.shape
    px0, px1, py0, py1 = _pad4(padding)
    if up > 1:
        x = x.reshape(b, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(b, c, h * up, w * up)
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]
    f = (f * gain ** (f.ndim / 2)).to(x.dtype).flip([0, 1])
    x = F.conv2d(x, f[None, None].expand(c, 1, *f.shape), groups=c)
    if down > 1:
        x = x[:, :, ::down, ::down]
    return x


def upsample2d(x: torch.Tensor, f: torch.Tensor, up: int = 2) -> torch.Tensor:
    fw = f.shape[-1]
    p = [(fw + up - 1) // 2, (fw - up) // 2] * 2
    return upfirdn2d(x, f, up=up, padding=p, gain=up * up)


def downsample2d(x: torch.Tensor, f: torch.Tensor, down: int = 2) -> torch.Tensor:
    fw = f.shape[-1]
    p = [(fw - down + 1) // 2, (fw - down) // 2] * 2
    return upfirdn2d(x, f, down=down, padding=p)


# ---------------------------------------------------------------- convolution with resampling
def conv2d_resample(x: torch.Tensor, w: torch.Tensor, f: torch.Tensor | None = None, up: int = 1, down: int = 1,
                    padding: int = 0, groups: int = 1, flip_weight: bool = True) -> torch.Tensor:
    """Conv2d with optional 2x FIR up/downsampling, exactly as NVlabs' conv2d_resample (same fast paths).

    flip_weight=True means correlation (what F.conv2d does); False flips the kernel (true convolution).
    """
    out_ch, in_ch_per_group, kh, kw = w.shape
    fw = f.shape[-1] if f is not None else 1
    px0 = px1 = py0 = py1 = padding
    if up > 1:
        px0 += (fw + up - 1) // 2
        px1 += (fw - up) // 2
        py0, py1 = px0, px1
    if down > 1:
        px0 += (fw - down + 1) // 2
        px1 += (fw - down) // 2
        py0, py1 = px0, px1

    def conv(x, w, stride=1, pad=0, transpose=False, flip=flip_weight):
        if not flip:
            w = w.flip([2, 3])
        if transpose:
            return F.conv_transpose2d(x, w, stride=stride, padding=pad, groups=groups)
        return F.conv2d(x, w, stride=stride, padding=pad, groups=groups)

    if kw == 1 and kh == 1 and down > 1 and up == 1:
        x = upfirdn2d(x, f, down=down, padding=[px0, px1, py0, py1])
        return conv(x, w)
    if kw == 1 and kh == 1 and up > 1 and down == 1:
        x = conv(x, w)
        return upfirdn2d(x, f, up=up, padding=[px0, px1, py0, py1], gain=up ** 2)
    if down > 1 and up == 1:
        x = upfirdn2d(x, f, padding=[px0, px1, py0, py1])
        return conv(x, w, stride=down)
    if up > 1:
        if groups == 1:
            w = w.transpose(0, 1)
        else:
            w = w.reshape(groups, out_ch // groups, in_ch_per_group, kh, kw).transpose(1, 2)
            w = w.reshape(groups * in_ch_per_group, out_ch // groups, kh, kw)
        px0 -= kw - 1
        px1 -= kw - up
        py0 -= kh - 1
        py1 -= kh - up
        pxt = max(min(-px0, -px1), 0)
        pyt = max(min(-py0, -py1), 0)
        x = conv(x, w, stride=up, pad=[pyt, pxt], transpose=True, flip=not flip_weight)
        x = upfirdn2d(x, f, padding=[px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt], gain=up ** 2)
        if down > 1:
            x = upfirdn2d(x, f, down=down)
        return x
    if px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
        return conv(x, w, pad=[py0, px0])
    x = upfirdn2d(x, f if f is not None else torch.ones(1, 1), padding=[px0, px1, py0, py1])
    return conv(x, w)


# ---------------------------------------------------------------- equalised-lr layers
class FullyConnectedLayer(nn.Module):
    """y = act(x @ (W * lr/sqrt(in))^T + b * lr). Weights stored at 1/lr scale (equalised learning rate)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str = "linear",
                 lr_multiplier: float = 1.0, bias_init: float = 0.0):
        super().__init__()
        self.in_features, self.out_features, self.activation = in_features, out_features, activation
        self.weight = nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act(x.matmul(w.t()), b, act=self.activation)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, act={self.activation}"


class Conv2dLayer(nn.Module):
    """Equalised-lr conv with optional FIR up/down-sampling, bias, activation and clamping."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: str = "linear", up: int = 1, down: int = 1, resample_filter=(1, 3, 3, 1),
                 conv_clamp: float | None = None, channels_last: bool = False, trainable: bool = True):
        super().__init__()
        self.activation, self.up, self.down, self.conv_clamp = activation, up, down, conv_clamp
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.padding = kernel_size // 2
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size ** 2)
        self.act_gain = ACT_GAIN[activation]
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels])) if bias else None

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        w = self.weight * self.weight_gain
        x = conv2d_resample(x, w.to(x.dtype), self.resample_filter, up=self.up, down=self.down,
                            padding=self.padding, flip_weight=(self.up == 1))
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        b = self.bias.to(x.dtype) if self.bias is not None else None
        return bias_act(x, b, act=self.activation, gain=self.act_gain * gain, clamp=clamp)


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def as_filter_list(f) -> list[float]:
    """Filter taps as plain floats (for configs)."""
    return [float(v) for v in np.asarray(f, dtype=np.float64).ravel()]
