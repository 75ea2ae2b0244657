"""StyleGAN2 (Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN"), generator and
discriminator, written from the paper.

The generator, in the order the data flows:
  z (N(0, I), z_dim)  -> normalised to unit RMS, optionally joined by an embedded class label
  -> MappingNetwork: a stack of dense lrelu layers with lr multiplier 0.01        -> w (w_dim)
  -> one copy of w per styled layer (num_ws); truncation pulls each towards the running mean w_avg
  -> SynthesisNetwork: from a learned 4x4 constant, one SynthesisBlock per resolution 4, 8, ..., R. Each block
     upsamples 2x in its first 3x3 conv, then a second 3x3 conv; every conv is *modulated* by an affine map of its
     w (per input channel), *demodulated* (per output channel, unit expected output variance), gets per-pixel
     noise times a learned strength, a bias and leaky ReLU. The image is the sum of every block's 1x1 "toRGB"
     output, each upsampled to the next resolution ('skip'), or only the last one ('orig', 'resnet').
The discriminator mirrors it: fromRGB, residual blocks that halve the resolution, minibatch standard deviation,
a 3x3 conv, two dense layers, and for conditional networks a projection onto the embedded label.

Parameter and buffer names are the ones stored in NVIDIA's stylegan2-ada-pytorch network pickles, and the
constructors take their init kwargs (recorded in `init_kwargs`), so those files load one-to-one.

Precision: float32 by default. With force_fp32=False on a CUDA device, blocks flagged use_fp16 (the
num_fp16_res highest resolutions) run in float16 and clip activations to +-conv_clamp.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn as nn

from machinegaze.nets.ops import (
    ACT_GAIN,
    EqualConv2d,
    EqualLinear,
    activate,
    demodulation,
    downsample2d,
    modulated_conv,
    normalize_2nd_moment,
    setup_filter,
    upsample2d,
)

NOISE_MODES = ("const", "random", "none")
HALF_GAIN = math.sqrt(0.5)  # residual sums are scaled so their variance stays that of one branch


def compute_dtype(use_fp16: bool, force_fp32: bool, device: torch.device) -> torch.dtype:
    """The reduced precision only where a block asks for it and the caller allows it: float16 on a GPU,
    bfloat16 on a CPU (float16 convolutions are slow there, bfloat16 ones run on AMX/AVX512-BF16 units);
    float32 elsewhere."""
    if not use_fp16 or force_fp32:
        return torch.float32
    return {"cuda": torch.float16, "cpu": torch.bfloat16}.get(device.type, torch.float32)


def _inference() -> bool:
    return not torch.is_grad_enabled()


# ================================================================ mapping
class MappingNetwork(nn.Module):
    """z (and label c) -> w. With num_ws=None it returns [N, w_dim] (the discriminator's label embedding);
    otherwise [N, num_ws, w_dim], optionally truncated towards the tracked average w_avg."""

    def __init__(
        self,
        z_dim: int,
        c_dim: int,
        w_dim: int,
        num_ws: Optional[int],
        num_layers: int = 8,
        embed_features: Optional[int] = None,
        layer_features: Optional[int] = None,
        activation: str = "lrelu",
        lr_multiplier: float = 0.01,
        w_avg_beta: Optional[float] = 0.995,
    ):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = z_dim, c_dim, w_dim, num_ws
        self.num_layers, self.w_avg_beta = num_layers, w_avg_beta
        label_dim = 0 if c_dim == 0 else (w_dim if embed_features is None else embed_features)
        hidden = w_dim if layer_features is None else layer_features
        if c_dim > 0:
            self.embed = EqualLinear(c_dim, label_dim)
        widths = [z_dim + label_dim] + [hidden] * (num_layers - 1) + [w_dim]
        for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
            self.add_module(f"fc{i}", EqualLinear(fan_in, fan_out, activation=activation, lr_multiplier=lr_multiplier))
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(
        self,
        z: Optional[torch.Tensor],
        c: Optional[torch.Tensor] = None,
        truncation_psi: float = 1.0,
        truncation_cutoff: Optional[int] = None,
        update_w_avg: bool = False,
    ) -> torch.Tensor:
        parts = []
        if self.z_dim > 0:
            parts.append(normalize_2nd_moment(z.float()))
        if self.c_dim > 0:
            parts.append(normalize_2nd_moment(self.embed(c.float())))
        h = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        for i in range(self.num_layers):
            h = getattr(self, f"fc{i}")(h)
        if update_w_avg and self.w_avg_beta is not None:
            self.w_avg.copy_(h.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        if self.num_ws is None:
            return h
        ws = h.unsqueeze(1).repeat(1, self.num_ws, 1)
        return ws if truncation_psi == 1 else truncate(ws, self.w_avg, truncation_psi, truncation_cutoff)


def truncate(ws: torch.Tensor, w_avg: torch.Tensor, psi: float, cutoff: Optional[int] = None) -> torch.Tensor:
    """w_avg + psi * (w - w_avg), on every layer or only on the first `cutoff` layers."""
    if cutoff is None:
        return w_avg.lerp(ws, psi)
    head = w_avg.lerp(ws[:, :cutoff], psi)
    return torch.cat([head, ws[:, cutoff:]], dim=1)


# ================================================================ synthesis
class SynthesisLayer(nn.Module):
    """Modulated, demodulated k x k conv (2x upsampling when up=2) + scaled noise + bias + leaky ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        kernel_size: int = 3,
        up: int = 1,
        use_noise: bool = True,
        activation: str = "lrelu",
        resample_filter=(1, 3, 3, 1),
        conv_clamp: Optional[float] = None,
        channels_last: bool = False,
    ):
        super().__init__()
        self.resolution, self.up, self.use_noise, self.activation = resolution, up, use_noise, activation
        self.conv_clamp, self.act_gain = conv_clamp, ACT_GAIN[activation]
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = nn.Parameter(torch.zeros([]))

    def noise(self, x: torch.Tensor, mode: str) -> Optional[torch.Tensor]:
        if not self.use_noise or mode == "none":
            return None
        if mode == "const":
            return self.noise_const.to(x.dtype) * self.noise_strength.to(x.dtype)
        r = self.resolution
        return torch.randn([x.shape[0], 1, r, r], device=x.device, dtype=x.dtype) * self.noise_strength.to(x.dtype)

    def weight_energy(self) -> torch.Tensor:
        """sum over the kernel window of weight^2, [O, I]; cached for inference while the weight is unchanged."""
        wt = self.weight
        if torch.is_grad_enabled():  # autograd: computed afresh (a cached inference tensor cannot enter a graph)
            return wt.float().square().sum(dim=[2, 3])
        key = (wt.data_ptr(), wt._version, wt.device)
        if getattr(self, "_energy_key", None) != key:
            self._energy = wt.detach().float().square().sum(dim=[2, 3])
            self._energy_key = key
        return self._energy

    def scaled_const_noise(self, g: float, dtype: torch.dtype) -> torch.Tensor:
        """noise_const * noise_strength * g [R, R] in `dtype`, cached for inference while neither tensor changes.
        A plain add of this map is about 3.5x faster than a broadcast multiply-add on channels-last maps."""
        n, s = self.noise_const, self.noise_strength
        key = (n.data_ptr(), n._version, s.data_ptr(), s._version, n.device, g, dtype)
        if getattr(self, "_noise_key", None) != key:
            self._noise = (n.detach() * (s.detach() * g)).to(dtype)
            self._noise_key = key
        return self._noise

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random", gain: float = 1.0) -> torch.Tensor:
        styles = self.affine(w).float()
        # lrelu(g * y) == g * lrelu(y) for g > 0: the activation gain rides on the demodulation scale and the bias
        g = self.act_gain * gain
        out_scale = demodulation(self.weight, styles, energy=self.weight_energy()) * g
        if x.dtype != torch.float32:  # fp16: keep x * style in range; the demodulation scale takes the factor back
            peak = styles.abs().amax(dim=1, keepdim=True)
            styles, out_scale = styles / peak, out_scale * peak
        y = modulated_conv(x, self.weight, styles, out_scale, self.bias * g, up=self.up == 2, f=self.resample_filter)
        in_place = _inference()
        if in_place and noise_mode == "const" and self.use_noise:  # one plain add of a cached map
            y = y.add_(self.scaled_const_noise(g, y.dtype))
        elif (noise := self.noise(y, noise_mode)) is not None:
            y = y.add_(noise * g) if in_place else y + noise * g
        y = activate(y, self.activation, inplace=in_place)
        if self.conv_clamp is not None:
            limit = self.conv_clamp * gain
            y = y.clamp_(-limit, limit) if in_place else y.clamp(-limit, limit)
        return y


class ToRGBLayer(nn.Module):
    """Modulated 1x1 conv to image channels, no demodulation, linear."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        kernel_size: int = 1,
        conv_clamp: Optional[float] = None,
        channels_last: bool = False,
    ):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w).float() * self.weight_gain
        y = modulated_conv(x, self.weight, styles, None, self.bias)
        if self.conv_clamp is None:
            return y
        return (
            y.clamp_(-self.conv_clamp, self.conv_clamp) if _inference() else y.clamp(-self.conv_clamp, self.conv_clamp)
        )


class SynthesisBlock(nn.Module):
    """One resolution of the generator: [const | up-conv0] -> conv1 -> toRGB, with the skip/resnet wiring."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        img_channels: int,
        is_last: bool,
        architecture: str = "skip",
        resample_filter=(1, 3, 3, 1),
        conv_clamp: Optional[float] = None,
        use_fp16: bool = False,
        fp16_channels_last: bool = False,
        **layer_kwargs,
    ):
        super().__init__()
        if architecture not in ("orig", "skip", "resnet"):
            raise ValueError(f"unknown synthesis architecture {architecture!r}")
        self.in_channels, self.resolution, self.is_last = in_channels, resolution, is_last
        self.architecture, self.use_fp16 = architecture, use_fp16
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        common = dict(
            w_dim=w_dim, resolution=resolution, resample_filter=resample_filter, conv_clamp=conv_clamp, **layer_kwargs
        )
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, up=2, **common)
        self.conv1 = SynthesisLayer(out_channels, out_channels, **common)
        self.num_conv = 1 if in_channels == 0 else 2
        self.num_torgb = 1 if (is_last or architecture == "skip") else 0
        if self.num_torgb:
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp)
        if in_channels != 0 and architecture == "resnet":
            self.skip = EqualConv2d(
                in_channels, out_channels, kernel_size=1, bias=False, up=2, resample_filter=resample_filter
            )

    def forward(self, x, img, ws: torch.Tensor, noise_mode: str = "random", force_fp32: bool = True):
        dtype = compute_dtype(self.use_fp16, force_fp32, ws.device)
        fast = _inference()
        layout = torch.channels_last if fast else torch.contiguous_format
        w_at = ws.unbind(dim=1)
        if self.in_channels == 0:
            x = self.const.to(dtype).unsqueeze(0).expand(ws.shape[0], -1, -1, -1).contiguous(memory_format=layout)
            x = self.conv1(x, w_at[0], noise_mode)
        else:
            x = x.to(dtype).contiguous(memory_format=layout)
            shortcut = self.skip(x, gain=HALF_GAIN) if self.architecture == "resnet" else None
            x = self.conv0(x, w_at[0], noise_mode)
            x = self.conv1(x, w_at[1], noise_mode, gain=HALF_GAIN if shortcut is not None else 1.0)
            if shortcut is not None:
                x = shortcut.add_(x) if fast else shortcut + x
        if img is not None:
            img = upsample2d(img, self.resample_filter)
        if self.num_torgb:
            rgb = self.torgb(x, w_at[self.num_conv]).float()
            img = rgb if img is None else (img.add_(rgb) if fast else img + rgb)
        return x, img


class SynthesisNetwork(nn.Module):
    """ws [N, num_ws, w_dim] -> image [N, img_channels, R, R]. Block b{res} has min(channel_base // res,
    channel_max) channels; the num_fp16_res highest resolutions (not below 8) are flagged for float16."""

    def __init__(
        self,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        channel_base: int = 32768,
        channel_max: int = 512,
        num_fp16_res: int = 0,
        **block_kwargs,
    ):
        super().__init__()
        depth = int(round(math.log2(img_resolution))) if img_resolution > 0 else 0
        if img_resolution < 4 or 2**depth != img_resolution:
            raise ValueError(f"img_resolution must be a power of two >= 4, got {img_resolution}")
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.block_resolutions = [2**k for k in range(2, depth + 1)]
        width = {r: min(channel_base // r, channel_max) for r in self.block_resolutions}
        lowest_fp16 = max(2 ** (depth + 1 - num_fp16_res), 8)
        self.num_ws = 0
        for res in self.block_resolutions:
            block = SynthesisBlock(
                width[res // 2] if res > 4 else 0,
                width[res],
                w_dim=w_dim,
                resolution=res,
                img_channels=img_channels,
                is_last=res == img_resolution,
                use_fp16=res >= lowest_fp16,
                **block_kwargs,
            )
            self.add_module(f"b{res}", block)
            self.num_ws += block.num_conv
        self.num_ws += 1  # the last block's toRGB has a w of its own

    def blocks(self) -> list[SynthesisBlock]:
        return [getattr(self, f"b{res}") for res in self.block_resolutions]

    def block_ws(self, ws: torch.Tensor) -> list[torch.Tensor]:
        """Each block's slice of ws: its convs' ws and then its toRGB's, which is the next block's first."""
        out, start = [], 0
        for block in self.blocks():
            out.append(ws.narrow(1, start, block.num_conv + block.num_torgb))
            start += block.num_conv
        return out

    def forward(self, ws: torch.Tensor, noise_mode: str = "random", force_fp32: bool = True) -> torch.Tensor:
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}")
        if _inference() and ws.shape[0] > 1 and self.img_resolution >= 128:
            # large maps: one image at a time keeps the activations of a single image alive and each conv a
            # plain (ungrouped) one. The output is allocated before the first image, so no result is left between
            # two images' activations to split the allocator's free space (which grows the heap at 1024 px)
            r = self.img_resolution
            out = torch.empty([ws.shape[0], self.img_channels, r, r], device=ws.device)  # images are float32
            for i in range(ws.shape[0]):
                out[i : i + 1] = self(ws[i : i + 1], noise_mode, force_fp32)
            return out
        x = img = None
        for block, block_ws in zip(self.blocks(), self.block_ws(ws.float())):
            x, img = block(x, img, block_ws, noise_mode=noise_mode, force_fp32=force_fp32)
            if block.is_last:
                del x
        return img.contiguous()

    def layer_resolutions(self) -> list[int]:
        """The output resolution that each of the num_ws w vectors styles (for coarse/middle/fine groups)."""
        out = [b.resolution for b in self.blocks() for _ in range(b.num_conv)]
        return (out + [self.img_resolution] * self.num_ws)[: self.num_ws]


class Generator(nn.Module):
    def __init__(
        self,
        z_dim: int,
        c_dim: int,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        mapping_kwargs: Optional[dict] = None,
        synthesis_kwargs: Optional[dict] = None,
    ):
        super().__init__()
        mapping_kwargs, synthesis_kwargs = dict(mapping_kwargs or {}), dict(synthesis_kwargs or {})
        self.init_kwargs = dict(
            z_dim=z_dim,
            c_dim=c_dim,
            w_dim=w_dim,
            img_resolution=img_resolution,
            img_channels=img_channels,
            mapping_kwargs=mapping_kwargs,
            synthesis_kwargs=synthesis_kwargs,
        )
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.synthesis = SynthesisNetwork(
            w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels, **synthesis_kwargs
        )
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws, **mapping_kwargs)

    def forward(
        self,
        z: torch.Tensor,
        c: Optional[torch.Tensor] = None,
        truncation_psi: float = 1.0,
        truncation_cutoff: Optional[int] = None,
        noise_mode: str = "random",
        force_fp32: bool = True,
    ) -> torch.Tensor:
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, noise_mode=noise_mode, force_fp32=force_fp32)


# ================================================================ discriminator
class DiscriminatorBlock(nn.Module):
    """Two 3x3 convs, the second halving the resolution; 'resnet' adds a 1x1 downsampling shortcut, 'skip'
    feeds a downsampled copy of the image into every block."""

    def __init__(
        self,
        in_channels: int,
        tmp_channels: int,
        out_channels: int,
        resolution: int,
        img_channels: int,
        first_layer_idx: int = 0,
        architecture: str = "resnet",
        activation: str = "lrelu",
        resample_filter=(1, 3, 3, 1),
        conv_clamp: Optional[float] = None,
        use_fp16: bool = False,
        fp16_channels_last: bool = False,
        freeze_layers: int = 0,
    ):
        super().__init__()
        if architecture not in ("orig", "skip", "resnet"):
            raise ValueError(f"unknown discriminator architecture {architecture!r}")
        self.in_channels, self.resolution, self.architecture = in_channels, resolution, architecture
        self.use_fp16 = use_fp16
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.reads_image = in_channels == 0 or architecture == "skip"
        if self.reads_image:
            self.fromrgb = EqualConv2d(img_channels, tmp_channels, 1, activation=activation, conv_clamp=conv_clamp)
        self.conv0 = EqualConv2d(tmp_channels, tmp_channels, 3, activation=activation, conv_clamp=conv_clamp)
        self.conv1 = EqualConv2d(
            tmp_channels,
            out_channels,
            3,
            activation=activation,
            down=2,
            resample_filter=resample_filter,
            conv_clamp=conv_clamp,
        )
        if architecture == "resnet":
            self.skip = EqualConv2d(tmp_channels, out_channels, 1, bias=False, down=2, resample_filter=resample_filter)

    def forward(self, x, img, force_fp32: bool = True):
        dtype = compute_dtype(self.use_fp16, force_fp32, img.device if img is not None else x.device)
        if x is not None:
            x = x.to(dtype)
        if self.reads_image:
            features = self.fromrgb(img.to(dtype))
            x = features if x is None else x + features
            img = downsample2d(img, self.resample_filter) if self.architecture == "skip" else None
        if self.architecture != "resnet":
            return self.conv1(self.conv0(x)), img
        shortcut = self.skip(x, gain=HALF_GAIN)
        x = self.conv1(self.conv0(x), gain=HALF_GAIN)
        return shortcut + x, img


class MinibatchStdLayer(nn.Module):
    """Appends, per group of samples, the average standard deviation of the features across the group (one value
    per channel split, broadcast over the map). Sample i belongs to group i mod (N / group size)."""

    def __init__(self, group_size: Optional[int], num_channels: int = 1):
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        size = n if self.group_size is None else min(self.group_size, n)
        if n % size:
            raise ValueError(f"minibatch-std: batch size {n} is not a multiple of the group size {size}")
        splits = self.num_channels
        grouped = x.reshape(size, n // size, splits, c // splits, h, w)
        spread = grouped.var(dim=0, unbiased=False).add(1e-8).sqrt()  # [n/size, splits, c/splits, h, w]
        stat = spread.mean(dim=[2, 3, 4])  # [n/size, splits]
        stat = stat.repeat(size, 1).reshape(n, splits, 1, 1).expand(n, splits, h, w)
        return torch.cat([x, stat], dim=1)


class DiscriminatorEpilogue(nn.Module):
    """The 4x4 head: [fromRGB for 'skip'], minibatch std, 3x3 conv, dense, dense -> logit or label projection."""

    def __init__(
        self,
        in_channels: int,
        cmap_dim: int,
        resolution: int,
        img_channels: int,
        architecture: str = "resnet",
        mbstd_group_size: Optional[int] = 4,
        mbstd_num_channels: int = 1,
        activation: str = "lrelu",
        conv_clamp: Optional[float] = None,
    ):
        super().__init__()
        self.cmap_dim, self.architecture = cmap_dim, architecture
        if architecture == "skip":
            self.fromrgb = EqualConv2d(img_channels, in_channels, 1, activation=activation)
        self.mbstd = MinibatchStdLayer(mbstd_group_size, mbstd_num_channels) if mbstd_num_channels > 0 else None
        self.conv = EqualConv2d(
            in_channels + mbstd_num_channels, in_channels, 3, activation=activation, conv_clamp=conv_clamp
        )
        self.fc = EqualLinear(in_channels * resolution**2, in_channels, activation=activation)
        self.out = EqualLinear(in_channels, cmap_dim if cmap_dim > 0 else 1)

    def forward(self, x, img, cmap=None):
        x = x.float()
        if self.architecture == "skip":
            x = x + self.fromrgb(img.float())
        if self.mbstd is not None:
            x = self.mbstd(x)
        logits = self.out(self.fc(self.conv(x).flatten(1)))
        if self.cmap_dim == 0:
            return logits
        return (logits * cmap).sum(dim=1, keepdim=True) / math.sqrt(self.cmap_dim)


class Discriminator(nn.Module):
    def __init__(
        self,
        c_dim: int,
        img_resolution: int,
        img_channels: int,
        architecture: str = "resnet",
        channel_base: int = 32768,
        channel_max: int = 512,
        num_fp16_res: int = 0,
        conv_clamp: Optional[float] = None,
        cmap_dim: Optional[int] = None,
        block_kwargs: Optional[dict] = None,
        mapping_kwargs: Optional[dict] = None,
        epilogue_kwargs: Optional[dict] = None,
    ):
        super().__init__()
        block_kwargs, mapping_kwargs = dict(block_kwargs or {}), dict(mapping_kwargs or {})
        epilogue_kwargs = dict(epilogue_kwargs or {})
        self.init_kwargs = dict(
            c_dim=c_dim,
            img_resolution=img_resolution,
            img_channels=img_channels,
            architecture=architecture,
            channel_base=channel_base,
            channel_max=channel_max,
            num_fp16_res=num_fp16_res,
            conv_clamp=conv_clamp,
            cmap_dim=cmap_dim,
            block_kwargs=block_kwargs,
            mapping_kwargs=mapping_kwargs,
            epilogue_kwargs=epilogue_kwargs,
        )
        self.c_dim, self.img_resolution, self.img_channels = c_dim, img_resolution, img_channels
        depth = int(np.log2(img_resolution))
        self.block_resolutions = [2**k for k in range(depth, 2, -1)]
        width = {r: min(channel_base // r, channel_max) for r in self.block_resolutions + [4]}
        lowest_fp16 = max(2 ** (depth + 1 - num_fp16_res), 8)
        cmap_dim = 0 if c_dim == 0 else (width[4] if cmap_dim is None else cmap_dim)
        shared = dict(img_channels=img_channels, architecture=architecture, conv_clamp=conv_clamp)
        for res in self.block_resolutions:
            block = DiscriminatorBlock(
                width[res] if res < img_resolution else 0,
                width[res],
                width[res // 2],
                resolution=res,
                use_fp16=res >= lowest_fp16,
                **block_kwargs,
                **shared,
            )
            self.add_module(f"b{res}", block)
        if c_dim > 0:
            self.mapping = MappingNetwork(
                z_dim=0, c_dim=c_dim, w_dim=cmap_dim, num_ws=None, w_avg_beta=None, **mapping_kwargs
            )
        self.b4 = DiscriminatorEpilogue(width[4], cmap_dim=cmap_dim, resolution=4, **epilogue_kwargs, **shared)

    def forward(self, img: torch.Tensor, c: Optional[torch.Tensor] = None, force_fp32: bool = True) -> torch.Tensor:
        x = None
        for res in self.block_resolutions:
            x, img = getattr(self, f"b{res}")(x, img, force_fp32=force_fp32)
        cmap = self.mapping(None, c) if self.c_dim > 0 else None
        return self.b4(x, img, cmap)
