"""An inference-only copy of a detector that runs the same function faster on a CPU.

Three rewrites, each exact up to float rounding, made on a copy (the original keeps training and Grad-CAM):

* **BatchNorm folded into the convolution before it.** In eval mode BN is a per-channel affine map, so
  y = gamma * (W*x + b - mean) / sqrt(var + eps) + beta is one convolution with rescaled W and a new bias.
* **TF 'SAME' convolutions as plain padded convolutions.** At a fixed input size the 'SAME' padding is a
  known (before, after) pair. Symmetric pairs are Conv2d's own `padding`. The stride-2 layers of
  EfficientNet pad one pixel more after than before; a kernel one larger with a leading row and column of
  zeros, padded `after` on both sides, reads exactly the same pixels. Either way no padded copy of the
  activations is made per call.
* **In-place activations and channels-last weights**, so the clamps write over their input and the
  convolutions take oneDNN's fast depthwise path.

The copy is checked against the original on a random batch at the detector's input size; if it disagrees
(a body these rewrites do not understand), the original is used instead. benchmarks/detect.py measures it.
"""

from __future__ import annotations

import contextlib
import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from machinegaze.nets.efficientnet import SameConv2d

CHECK_ATOL = 1e-3  # logits of the copy and the original may differ by float rounding only


def _trace_pairs(model: nn.Module, x: torch.Tensor) -> tuple[list[tuple[str, str]], dict[str, tuple[int, int]]]:
    """Run once with hooks: (conv name, BN name) pairs where a BN reads exactly a conv's output, and each
    conv's input (height, width)."""
    names = {m: n for n, m in model.named_modules()}
    last_out: dict[int, str] = {}
    sizes: dict[str, tuple[int, int]] = {}
    pairs: list[tuple[str, str]] = []
    alive: list[torch.Tensor] = []  # keeps every conv output alive, so no id is reused during the run

    def hook(mod, inp, out):
        name = names[mod]
        if isinstance(mod, nn.Conv2d):
            sizes[name] = tuple(inp[0].shape[-2:])
            last_out[id(out)] = name
            alive.append(out)
        elif isinstance(mod, nn.BatchNorm2d) and id(inp[0]) in last_out:
            pairs.append((last_out[id(inp[0])], name))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return pairs, sizes


def _same_pads(conv: nn.Conv2d, size: tuple[int, int]) -> list[tuple[int, int]]:
    """TF 'SAME' (before, after) padding per spatial axis for an input of `size`."""
    pads = []
    for n, k, s, d in zip(size, conv.kernel_size, conv.stride, conv.dilation):
        total = max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
        pads.append((total // 2, total - total // 2))
    return pads


def _plain_conv(conv: nn.Conv2d, size: tuple[int, int]) -> nn.Conv2d | None:
    """A Conv2d with built-in padding equal to a 'SAME' conv at this input size, or None if there is none."""
    pads = _same_pads(conv, size)
    if conv.dilation != (1, 1) or any(a - b not in (0, 1) for b, a in pads):
        return None
    grow = [a - b for b, a in pads]
    if len(set(grow)) != 1:
        return None
    k = [kk + grow[0] for kk in conv.kernel_size]
    new = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        tuple(k),
        conv.stride,
        tuple(a for _, a in pads),
        groups=conv.groups,
        bias=conv.bias is not None,
    ).to(conv.weight.device, conv.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(F.pad(conv.weight, (grow[0], 0, grow[0], 0)))  # leading zero column and row
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def _set(model: nn.Module, name: str, mod: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, mod)


def _rewrite(model: nn.Module, x: torch.Tensor) -> nn.Module:
    fast = copy.deepcopy(model).eval()
    pairs, sizes = _trace_pairs(fast, x)
    for conv_name, bn_name in pairs:
        conv, bn = fast.get_submodule(conv_name), fast.get_submodule(bn_name)
        fused = fuse_conv_bn_eval(conv, bn)  # a new module of conv's class with the folded weights
        _set(fast, conv_name, fused)
        _set(fast, bn_name, nn.Identity())
    for name, conv in list(fast.named_modules()):
        if isinstance(conv, SameConv2d) and name in sizes:
            plain = _plain_conv(conv, sizes[name])
            if plain is not None:
                _set(fast, name, plain)
    for m in fast.modules():
        if isinstance(m, (nn.ReLU, nn.ReLU6, nn.Hardtanh)):
            m.inplace = True
    return fast.to(memory_format=torch.channels_last)


def fast_detector(model: nn.Module, size: int | None = None) -> nn.Module:
    """An eval-mode copy of `model` for inference at `size` x `size` input (default: model.spec.size): BN
    folded, 'SAME' padding built in, in-place activations, channels-last. Falls back to the original (in
    eval mode) when the copy's logits differ from the original's on a random batch."""
    size = int(size or model.spec.size)
    model.eval()
    dev = next(model.parameters()).device
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(2, 3, size, size, generator=g) * 2 - 1).to(dev)
    no_amp = torch.autocast(dev.type, enabled=False) if dev.type in ("cpu", "cuda") else contextlib.nullcontext()
    with no_amp, torch.no_grad():  # the check compares float32 with float32, whatever the caller's autocast
        fast = _rewrite(model, x)
        ref = model(x)
        ok = torch.allclose(fast(x.contiguous(memory_format=torch.channels_last)), ref, atol=CHECK_ATOL, rtol=1e-4)
    return fast if ok else model
