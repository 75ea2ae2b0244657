"""Low-level pieces of StyleGAN2 (Karras et al., "Analyzing and Improving the Image Quality of StyleGAN", 2020):
the separable [1,3,3,1] FIR used for 2x resampling, the equalised-learning-rate layers, and the modulated
convolution with its two evaluation strategies.

Conventions (needed so that published weights give published numbers):
  * FIR filters are 2-D, normalised to sum 1 (the `resample_filter` buffers); 2x upsampling multiplies by 4 so a
    flat image stays flat. Filtering is a true convolution (the [1,3,3,1] kernel is symmetric anyway).
  * The upsampling 3x3 conv is a stride-2 transposed convolution followed by the FIR; the downsampling conv is
    the FIR followed by a stride-2 convolution.
  * Equalised learning rate: weights are stored N(0,1) (divided by lr_multiplier) and scaled at run time by
    lr_multiplier / sqrt(fan_in); biases by lr_multiplier.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

LRELU_SLOPE = 0.2
ACT_GAIN = {"linear": 1.0, "lrelu": math.sqrt(2.0), "relu": math.sqrt(2.0)}


def check_activation(name: str) -> str:
    if name not in ACT_GAIN:
        raise ValueError(f"unknown activation {name!r} (known: {', '.join(ACT_GAIN)})")
    return name


def activate(x: torch.Tensor, name: str, inplace: bool = False) -> torch.Tensor:
    """The nonlinearity alone (no gain)."""
    if name == "lrelu":
        return F.leaky_relu_(x, LRELU_SLOPE) if inplace else F.leaky_relu(x, LRELU_SLOPE)
    if name == "relu":
        return x.relu_() if inplace else x.relu()
    return x


def bias_act(
    x: torch.Tensor,
    b: Optional[torch.Tensor] = None,
    act: str = "linear",
    gain: Optional[float] = None,
    clamp: Optional[float] = None,
) -> torch.Tensor:
    """(x + b[channel]) -> nonlinearity -> times gain (default: the activation's own) -> clipped to +-clamp."""
    if b is not None:
        x = x + b.view(1, -1, *([1] * (x.ndim - 2)))
    x = activate(x, check_activation(act))
    scale = ACT_GAIN[act] if gain is None else gain
    if scale != 1:
        x = x * scale
    return x.clamp(-clamp, clamp) if clamp is not None and clamp >= 0 else x


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Scale each vector to unit root-mean-square (the mapping network's input normalisation)."""
    return x * x.square().mean(dim=dim, keepdim=True).add(eps).rsqrt()


# ---------------------------------------------------------------- FIR resampling
def setup_filter(taps: Sequence[float] = (1, 3, 3, 1), normalize: bool = True) -> torch.Tensor:
    """1-D taps -> their 2-D outer product (a 2-D input is used as is), normalised to sum 1."""
    # Built on the CPU even inside a meta-device build: a meta op here imports torch._dynamo (about 1 s).
    k = torch.as_tensor(taps, dtype=torch.float32, device="cpu")
    k = torch.outer(k, k) if k.ndim == 1 else k
    return k / k.sum() if normalize else k


def _sides(padding) -> tuple[int, int, int, int]:
    """int | [x, y] | [left, right, top, bottom] -> (left, right, top, bottom)."""
    if isinstance(padding, int):
        return padding, padding, padding, padding
    p = [int(v) for v in padding]
    return (p[0], p[0], p[1], p[1]) if len(p) == 2 else (p[0], p[1], p[2], p[3])


def _depthwise(f: torch.Tensor, channels: int, like: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """The 2-D filter as a [channels, 1, kh, kw] depthwise kernel, flipped for true convolution."""
    return (f.flip([0, 1]) * gain).to(device=like.device, dtype=like.dtype).expand(channels, 1, *f.shape)


def upfirdn2d(
    x: torch.Tensor, f: torch.Tensor, up: int = 1, down: int = 1, padding=0, gain: float = 1.0
) -> torch.Tensor:
    """The general resampler: insert up-1 zeros after every pixel, pad (negative = crop), convolve with f * gain,
    keep every down-th pixel. The fast paths below compute special cases of this directly."""
    n, c, h, w = x.shape
    if up > 1:
        spread = x.new_zeros(n, c, h * up, w * up)
        spread[:, :, ::up, ::up] = x
        x = spread
    left, right, top, bottom = _sides(padding)
    x = F.pad(x, [left, right, top, bottom])
    return F.conv2d(x, _depthwise(f, c, x, gain), stride=down, groups=c)


def upsample2d(x: torch.Tensor, f: torch.Tensor, up: int = 2) -> torch.Tensor:
    """2x FIR upsampling (output exactly up * input size). Zero insertion followed by the 4-tap filter is a
    stride-2 transposed depthwise convolution with the filter as kernel; one pixel of its border is cropped."""
    if up != 2 or tuple(f.shape) != (4, 4):
        fw = f.shape[-1]
        lo, hi = (fw + up - 1) // 2, (fw - up) // 2
        return upfirdn2d(x, f, up=up, padding=[lo, hi, lo, hi], gain=up * up)
    c = x.shape[1]
    return F.conv_transpose2d(x, (f * 4).to(x).expand(c, 1, 4, 4), stride=2, padding=1, groups=c)


def downsample2d(x: torch.Tensor, f: torch.Tensor, down: int = 2) -> torch.Tensor:
    """FIR filtering then keeping every down-th pixel (output exactly input size / down)."""
    fw = f.shape[-1]
    lo, hi = (fw - down + 1) // 2, (fw - down) // 2
    if lo != hi:
        return upfirdn2d(x, f, down=down, padding=[lo, hi, lo, hi])
    return F.conv2d(x, _depthwise(f, x.shape[1], x), stride=down, padding=lo, groups=x.shape[1])


def blur(
    x: torch.Tensor, f: torch.Tensor, pad: int, gain: float = 1.0, bias: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Same-rate FIR filtering with symmetric zero padding, optionally adding a per-channel bias on the way."""
    c = x.shape[1]
    return F.conv2d(x, _depthwise(f, c, x, gain), bias=bias, padding=pad, groups=c)


def conv_up2(
    x: torch.Tensor,
    w: torch.Tensor,
    f: torch.Tensor,
    groups: int = 1,
    bias: Optional[torch.Tensor] = None,
    w_is_transposed: bool = False,
) -> torch.Tensor:
    """Upsampling k x k conv (odd k): stride-2 transposed convolution (true convolution of the zero-inserted input
    with w, output 2h + k - 2), then the FIR (gain 4) with the padding that lands on exactly 2h. w is [O, I/groups,
    k, k], or already [I, O/groups, k, k] (the transposed-conv layout) when w_is_transposed."""
    k = w.shape[-1]
    if k % 2 == 0:
        raise ValueError(f"upsampling convolutions take odd kernels (StyleGAN's are 1 and 3), got {k}")
    if not w_is_transposed:
        o, i_per_group = w.shape[:2]
        w = (
            w.reshape(groups, o // groups, i_per_group, k, k)
            .transpose(1, 2)
            .reshape(groups * i_per_group, o // groups, k, k)
        )
    pad = (f.shape[-1] - k + 1) // 2
    # An odd kernel gives an odd-sized transposed-conv output, which oneDNN computes 1.3-1.4x slower than an even
    # one (config-f, 128-512 px input). So one more row and column is asked for (no input reaches them: zeros),
    # and the FIR gets a leading zero tap (the last in correlation order), which lands on exactly 2h again.
    y = F.conv_transpose2d(x, w, stride=2, groups=groups, output_padding=1)
    return blur(y, F.pad(f, [1, 0, 1, 0]), pad=pad, gain=4.0, bias=bias)


def conv_down2(x: torch.Tensor, w: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Downsampling k x k conv: FIR over the input (padded so the strided conv lands on exactly h/2), then a
    stride-2 correlation with w. A 1x1 kernel resamples first, which is cheaper and the same."""
    k = w.shape[-1]
    if k == 1:
        return F.conv2d(downsample2d(x, f), w)
    return F.conv2d(blur(x, f, pad=(f.shape[-1] + k - 3) // 2), w, stride=2)


# ---------------------------------------------------------------- modulated convolution
def modulated_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    in_scale: torch.Tensor,
    out_scale: Optional[torch.Tensor],
    bias: Optional[torch.Tensor] = None,
    up: bool = False,
    f: Optional[torch.Tensor] = None,
    per_sample: Optional[bool] = None,
) -> torch.Tensor:
    """out[n, o] = out_scale[n, o] * conv(x[n], weight * in_scale[n, :]) [o] + bias[o]

    Two ways to evaluate the same sum (paper eq. 1-3: modulation by in_scale, demodulation in out_scale):
      per_sample=True: fold both scales into a weight per sample, one (grouped) conv with the bias built in.
          No extra passes over the activations; the inference path.
      per_sample=False: scale the input, one conv with the shared weight for the whole batch, scale and bias the
          output. Better for autograd (weights stay shared) and for small maps with large batches.
    """
    n, c, h, w = x.shape
    if per_sample is None:
        per_sample = not torch.is_grad_enabled()
    o, k = weight.shape[0], weight.shape[-1]
    if per_sample:
        scale = in_scale.view(n, 1, c) if out_scale is None else out_scale.view(n, o, 1) * in_scale.view(n, 1, c)
        # one pass over the weights, written straight in the activations' memory layout
        layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        xg = x.reshape(1, n * c, h, w) if n > 1 else x
        b = bias.to(x.dtype).repeat(n) if bias is not None else None
        if up:  # written directly in the transposed-conv layout [N * I, O, k, k]
            wk = torch.empty([n * c, o, k, k], dtype=weight.dtype, device=weight.device, memory_format=layout)
            torch.mul(
                weight.transpose(0, 1).unsqueeze(0),
                scale.transpose(1, 2).reshape(n, c, -1, 1, 1),
                out=wk.view(n, c, o, k, k),
            )
            return _ungroup(conv_up2(xg, wk.to(x.dtype), f, groups=n, bias=b, w_is_transposed=True), n)
        wk = torch.empty([n * o, c, k, k], dtype=weight.dtype, device=weight.device, memory_format=layout)
        torch.mul(weight.unsqueeze(0), scale.view(n, -1, c, 1, 1), out=wk.view(n, o, c, k, k))
        y = F.conv2d(xg, wk.to(x.dtype), bias=b, padding=k // 2, groups=n)
        return _ungroup(y, n)
    y = x * in_scale.view(n, c, 1, 1).to(x.dtype)
    wk = weight.to(x.dtype)
    y = conv_up2(y, wk, f) if up else F.conv2d(y, wk, padding=k // 2)
    if out_scale is not None:
        y = y * out_scale.view(n, o, 1, 1).to(y.dtype)
    if bias is not None:
        y = y + bias.view(1, o, 1, 1).to(y.dtype)
    return y


def _ungroup(y: torch.Tensor, n: int) -> torch.Tensor:
    return y.reshape(n, y.shape[1] // n, *y.shape[2:]) if n > 1 else y


def demodulation(
    weight: torch.Tensor, styles: torch.Tensor, eps: float = 1e-8, energy: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """1 / ||weight * style||_2 per sample and output channel: sum_i s_i^2 * sum_k w_oik^2, so the per-sample
    weights never need to exist. `energy` may pass a precomputed sum_k w_oik^2 [O, I]. Returns [N, O]."""
    if energy is None:
        energy = weight.square().sum(dim=[2, 3])
    return (styles.square() @ energy.t()).add_(eps).rsqrt()


# ---------------------------------------------------------------- equalised-learning-rate layers
class EqualLinear(nn.Module):
    """Dense layer with run-time weight scaling lr_multiplier / sqrt(in) and bias scaling lr_multiplier."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        activation: str = "linear",
        lr_multiplier: float = 1.0,
        bias_init: float = 0.0,
    ):
        super().__init__()
        self.activation = check_activation(activation)
        self.weight = nn.Parameter(
            torch.randn([out_features, in_features]).div_(lr_multiplier)
        )  # in place: no meta-op cost
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b = None if self.bias is None else self.bias.to(x.dtype)
        if b is not None and self.bias_gain != 1:
            b = b * self.bias_gain
        if self.activation != "linear":
            return bias_act(x.matmul(w.t()), b, self.activation)
        return x.matmul(w.t()) if b is None else torch.addmm(b.unsqueeze(0), x, w.t())

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]} -> {self.weight.shape[0]}, {self.activation}"


class EqualConv2d(nn.Module):
    """k x k conv with run-time weight scaling 1/sqrt(in * k^2), optional 2x FIR up/down resampling, then bias,
    activation (times its gain and an extra `gain`) and clipping to +-conv_clamp * gain."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        bias: bool = True,
        activation: str = "linear",
        up: int = 1,
        down: int = 1,
        resample_filter=(1, 3, 3, 1),
        conv_clamp: Optional[float] = None,
    ):
        super().__init__()
        if up not in (1, 2) or down not in (1, 2) or up * down == 4:
            raise ValueError("EqualConv2d resamples by 2 up or 2 down, or not at all")
        self.activation, self.up, self.down, self.conv_clamp = check_activation(activation), up, down, conv_clamp
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels])) if bias else None
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        w = (self.weight * self.weight_gain).to(x.dtype)
        f = self.resample_filter
        if self.down == 2:
            x = conv_down2(x, w, f)
        elif self.up == 2:  # only 1x1 here (the resnet generator's skip); the FIR then works on fewer channels
            x = upsample2d(F.conv2d(x, w), f) if w.shape[-1] == 1 else conv_up2(x, w, f)
        else:
            x = F.conv2d(x, w, padding=w.shape[-1] // 2)
        b = None if self.bias is None else self.bias.to(x.dtype)
        clamp = None if self.conv_clamp is None else self.conv_clamp * gain
        return bias_act(x, b, self.activation, ACT_GAIN[self.activation] * gain, clamp)
