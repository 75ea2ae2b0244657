"""StyleGAN3 generator ("Alias-Free Generative Adversarial Networks", Karras et al. 2021), configs T and R.

The picture from the paper, top to bottom:
  z --mapping--> w (the StyleGAN2 mapping network; one w per layer, truncated towards w_avg)
  ws[0] --> input layer: a bank of band-limited Fourier features sin(2 pi (f . x + phi)), whose orientation and
      offset come from an affine map of ws[0] (rotation + translation) composed with a user transform buffer.
  ws[1..] --> 14 synthesis layers + a ToRGB layer. Each layer is a modulated conv (weights demodulated, input
      scaled by 1/sqrt of a running mean square, `magnitude_ema`) followed by the *filtered* leaky ReLU: the
      signal is upsampled (zero-insertion + a low-pass filter), the nonlinearity is applied at the higher rate,
      then it is low-pass filtered again and decimated to the layer's own sampling rate. Cutoffs rise
      geometrically from layer to layer; the last two layers are critically sampled. Config R uses 1x1 convs
      and rotation-invariant (radial, jinc-based) down filters in its non-critical layers.
The output is scaled by `output_scale` and cropped to the image size by the last layers' sizes.

Parameter and buffer names follow NVIDIA's pickles (`synthesis.input.freqs`, `synthesis.L3_36_128.affine.weight`,
...), so their tensors load by name. Filters are designed here from the recorded hyper-parameters (Kaiser-windowed
sinc, or jinc for radial filters), and replaced by the file's stored buffers when one is loaded.
Everything runs in float32; fp16 flags of the original are metadata only.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from machinegaze.nets.ops import EqualLinear
from machinegaze.nets.stylegan2 import NOISE_MODES, MappingNetwork


# ================================================================ filter design (numpy, float64)
def kaiser_beta_for(numtaps: int, width: float) -> float:
    """Kaiser window beta for a transition band of `width` (fraction of Nyquist), Kaiser's empirical formulas."""
    atten = 2.285 * (numtaps - 1) * math.pi * width + 7.95
    if atten > 50:
        return 0.1102 * (atten - 8.7)
    if atten > 21:
        return 0.5842 * (atten - 21) ** 0.4 + 0.07886 * (atten - 21)
    return 0.0


def lowpass_taps(numtaps: int, cutoff: float, width: float, fs: float, radial: bool = False) -> Optional[np.ndarray]:
    """A unit-DC-gain low-pass FIR filter: 1-D windowed sinc (separable use) or 2-D windowed jinc (radial).

    cutoff and width (transition band) are in the same units as the sampling rate fs. One tap means no filter."""
    if numtaps == 1:
        return None
    nyq = fs / 2
    window = np.kaiser(numtaps, kaiser_beta_for(numtaps, width / nyq))
    t = np.arange(numtaps) - (numtaps - 1) / 2  # tap positions in samples
    if not radial:
        h = np.sinc(2 * cutoff / fs * t) * window
        return h / h.sum()
    from scipy.special import j1  # Bessel J1 for the jinc; scipy is a dependency of the face aligner anyway

    r = np.hypot(*np.meshgrid(t / fs, t / fs))
    h = j1(2 * math.pi * cutoff * r) / (math.pi * r)  # jinc: ideal circular low-pass (r > 0 here)
    h = h * np.outer(window, window)
    return h / h.sum()


# ================================================================ filtered leaky ReLU
def _upsample_axis(x: torch.Tensor, f: torch.Tensor, up: int, pad: tuple[int, int], dim: int) -> torch.Tensor:
    """Along dim (2 = H, 3 = W): insert up-1 zeros after every sample, pad by pad=(lo, hi), convolve with f
    (valid part). Computed as a strided transposed convolution (never touches the inserted zeros)."""
    c, k = x.shape[1], f.numel()
    shape = (c, 1, k, 1) if dim == 2 else (c, 1, 1, k)
    stride = (up, 1) if dim == 2 else (1, up)
    full = F.conv_transpose2d(x, f.reshape(1, 1, *shape[2:]).expand(shape), stride=stride, groups=c)
    n_in, n_full = x.shape[dim], full.shape[dim]
    n_out = n_in * up + pad[0] + pad[1] - k + 1
    lo = pad[0] - (k - 1)  # the valid window starts k-1-pad_lo samples into the full result
    hi = n_out - n_full - lo
    return F.pad(full, [0, 0, lo, hi] if dim == 2 else [lo, hi])


def _filter_down(x: torch.Tensor, f: torch.Tensor, down: int) -> torch.Tensor:
    """Convolve with f (1-D: separable along W then H; 2-D: radial) and keep every down-th sample (valid part)."""
    c = x.shape[1]
    f = f.flip(list(range(f.ndim)))  # true convolution (the designed filters are symmetric anyway)
    if f.ndim == 2:
        return F.conv2d(x, f[None, None].expand(c, 1, *f.shape), stride=down, groups=c)
    k = f.numel()
    x = F.conv2d(x, f.reshape(1, 1, 1, k).expand(c, 1, 1, k), stride=(1, down), groups=c)
    return F.conv2d(x, f.reshape(1, 1, k, 1).expand(c, 1, k, 1), stride=(down, 1), groups=c)


def filtered_lrelu(
    x: torch.Tensor,
    up_filter: Optional[torch.Tensor],
    down_filter: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    up: int = 1,
    down: int = 1,
    padding=(0, 0, 0, 0),
    gain: float = math.sqrt(2),
    slope: float = 0.2,
    clamp: Optional[float] = None,
) -> torch.Tensor:
    """Alias-free nonlinearity: + bias, upsample by `up` with up_filter (gain up^2), leaky ReLU * gain, clamp,
    low-pass with down_filter and decimate by `down`. padding = (x_lo, x_hi, y_lo, y_hi) of the upsampled signal.
    Filters are 1-D (applied separably) or 2-D; None means no filtering (a 1-tap identity)."""
    if bias is not None:
        x = x + bias.to(x.dtype).reshape(1, -1, 1, 1)
    px0, px1, py0, py1 = (int(p) for p in padding)
    fu = up_filter.to(x.dtype) if up_filter is not None else torch.ones(1, dtype=x.dtype, device=x.device)
    if fu.ndim == 2:
        raise ValueError("2-D up filters are not used by StyleGAN3")
    fu = fu * up  # per axis; total gain up^2 keeps the DC level after zero-insertion
    x = _upsample_axis(x, fu.flip(0), up, (px0, px1), dim=3)
    x = _upsample_axis(x, fu.flip(0), up, (py0, py1), dim=2)
    x = F.leaky_relu(x, slope) if slope != 1 else x
    if gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    if down_filter is None:
        return x[:, :, ::down, ::down] if down > 1 else x
    return _filter_down(x, down_filter.to(x.dtype), down)


# ================================================================ layers
class SynthesisInput(nn.Module):
    """Fourier features on a grid of `size` pixels at `sampling_rate`, band-limited to `bandwidth`, rotated and
    translated per sample by an affine map of w, then through a learned channel-mixing matrix."""

    def __init__(self, w_dim: int, channels: int, size: int, sampling_rate: float, bandwidth: float):
        super().__init__()
        self.w_dim, self.channels = w_dim, channels
        self.size = (int(size), int(size))
        self.sampling_rate, self.bandwidth = float(sampling_rate), float(bandwidth)
        # Random frequencies inside a disc of radius `bandwidth` (density falling off with radius), random phases.
        f = torch.randn([channels, 2])
        radius = f.norm(dim=1, keepdim=True)
        f = f / (radius * radius.square().exp().pow(0.25)) * bandwidth
        self.weight = nn.Parameter(torch.randn([channels, channels]))
        self.affine = EqualLinear(w_dim, 4)
        with torch.no_grad():  # start as the identity rotation without translation
            self.affine.weight.zero_()
            self.affine.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
        self.register_buffer("transform", torch.eye(3))
        self.register_buffer("freqs", f)
        self.register_buffer("phases", torch.rand([channels]) - 0.5)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        b = w.shape[0]
        t = self.affine(w)  # (cos-like, sin-like, tx, ty)
        t = t / t[:, :2].norm(dim=1, keepdim=True)
        rot = torch.zeros(b, 3, 3, device=w.device)
        rot[:, 0, 0], rot[:, 0, 1], rot[:, 1, 0], rot[:, 1, 1], rot[:, 2, 2] = t[:, 0], -t[:, 1], t[:, 1], t[:, 0], 1
        shift = torch.eye(3, device=w.device).repeat(b, 1, 1)
        shift[:, 0, 2], shift[:, 1, 2] = -t[:, 2], -t[:, 3]
        m = rot @ shift @ self.transform.unsqueeze(0)  # [B, 3, 3] maps image coords to feature coords
        phases = self.phases.unsqueeze(0) + (self.freqs.unsqueeze(0) @ m[:, :2, 2:]).squeeze(2)  # [B, C]
        freqs = self.freqs.unsqueeze(0) @ m[:, :2, :2]  # [B, C, 2]
        # Damp frequencies that the transform pushed past the band (only scaling transforms can do that).
        amp = (1 - (freqs.norm(dim=2) - self.bandwidth) / (self.sampling_rate / 2 - self.bandwidth)).clamp(0, 1)
        # Pixel centres in units of 1/sampling_rate, centred on the image: (j + 1/2 - W/2) / fs.
        gx = (torch.arange(self.size[0], device=w.device) + 0.5 - self.size[0] / 2) / self.sampling_rate
        gy = (torch.arange(self.size[1], device=w.device) + 0.5 - self.size[1] / 2) / self.sampling_rate
        arg = (
            gx.view(1, 1, -1, 1) * freqs[:, None, None, :, 0]
            + gy.view(1, -1, 1, 1) * freqs[:, None, None, :, 1]
            + phases[:, None, None, :]
        )  # [B, H, W, C]
        x = torch.sin(2 * math.pi * arg) * amp[:, None, None, :]
        x = x @ (self.weight / math.sqrt(self.channels)).t()
        return x.permute(0, 3, 1, 2).contiguous()


class SynthesisLayer(nn.Module):
    """Modulated conv (input gain from magnitude_ema) + filtered leaky ReLU between two sampling grids."""

    def __init__(
        self,
        w_dim: int,
        is_torgb: bool,
        is_critically_sampled: bool,
        in_channels: int,
        out_channels: int,
        in_size: int,
        out_size: int,
        in_sampling_rate: float,
        out_sampling_rate: float,
        in_cutoff: float,
        out_cutoff: float,
        in_half_width: float,
        out_half_width: float,
        conv_kernel: int = 3,
        filter_size: int = 6,
        lrelu_upsampling: int = 2,
        use_radial_filters: bool = False,
        conv_clamp: Optional[float] = 256,
        magnitude_ema_beta: float = 0.999,
    ):
        super().__init__()
        self.is_torgb, self.is_critically_sampled = is_torgb, is_critically_sampled
        self.in_channels, self.out_channels = in_channels, out_channels
        self.in_size, self.out_size = int(in_size), int(out_size)
        self.in_sampling_rate, self.out_sampling_rate = float(in_sampling_rate), float(out_sampling_rate)
        self.in_cutoff, self.out_cutoff = float(in_cutoff), float(out_cutoff)
        self.conv_kernel = 1 if is_torgb else conv_kernel
        self.conv_clamp, self.magnitude_ema_beta = conv_clamp, magnitude_ema_beta
        self.gain, self.slope = (1.0, 1.0) if is_torgb else (math.sqrt(2), 0.2)
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, self.conv_kernel, self.conv_kernel]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.register_buffer("magnitude_ema", torch.ones([]))
        # The nonlinearity runs at a higher rate (x lrelu_upsampling); ToRGB is linear and needs no resampling.
        tmp_rate = max(self.in_sampling_rate, self.out_sampling_rate) * (1 if is_torgb else lrelu_upsampling)
        self.up_factor = int(round(tmp_rate / self.in_sampling_rate))
        self.down_factor = int(round(tmp_rate / self.out_sampling_rate))
        up_taps = filter_size * self.up_factor if self.up_factor > 1 and not is_torgb else 1
        down_taps = filter_size * self.down_factor if self.down_factor > 1 and not is_torgb else 1
        self.down_radial = use_radial_filters and not is_critically_sampled
        for name, taps, cutoff, half_width, radial in (
            ("up_filter", up_taps, in_cutoff, in_half_width, False),
            ("down_filter", down_taps, out_cutoff, out_half_width, self.down_radial),
        ):
            h = lowpass_taps(taps, cutoff, half_width * 2, tmp_rate, radial)
            self.register_buffer(name, None if h is None else torch.as_tensor(h, dtype=torch.float32))
        # Padding of the upsampled signal so that the output is exactly out_size after filtering and decimation.
        total = (
            (self.out_size - 1) * self.down_factor
            + 1
            - (self.in_size + self.conv_kernel - 1) * self.up_factor
            + up_taps
            + down_taps
            - 2
        )
        lo = (total + self.up_factor) // 2
        self.padding = [lo, total - lo, lo, total - lo]

    def forward(self, x: torch.Tensor, w: torch.Tensor, update_emas: bool = False) -> torch.Tensor:
        if update_emas:
            with torch.no_grad():
                self.magnitude_ema.copy_(
                    x.detach().float().square().mean().lerp(self.magnitude_ema, self.magnitude_ema_beta)
                )
        styles = self.affine(w)
        weight = self.weight
        if self.is_torgb:
            styles = styles / math.sqrt(self.in_channels * self.conv_kernel**2)
        else:
            # Pre-normalise (as NVIDIA does, for fp16 headroom): each filter and the whole style batch to unit RMS.
            weight = weight * weight.square().mean(dim=[1, 2, 3], keepdim=True).rsqrt()
            styles = styles * styles.square().mean().rsqrt()
        # Modulate inputs by style and input gain 1/sqrt(E[x^2]), one shared conv ("full" padding k-1), then
        # demodulate: per sample and output channel, 1/||W[o] * s|| = 1/sqrt(s^2 @ sum_k W[o]^2).
        x = x * (styles * self.magnitude_ema.rsqrt()).unsqueeze(2).unsqueeze(3)
        x = F.conv2d(x, weight, padding=self.conv_kernel - 1)
        if not self.is_torgb:
            d = (styles.square() @ weight.square().sum(dim=[2, 3]).t() + 1e-8).rsqrt()  # [B, O]
            x = x * d.unsqueeze(2).unsqueeze(3)
        return filtered_lrelu(
            x,
            self.up_filter,
            self.down_filter,
            self.bias,
            self.up_factor,
            self.down_factor,
            self.padding,
            gain=self.gain,
            slope=self.slope,
            clamp=self.conv_clamp,
        )


def layer_design(
    img_resolution: int,
    channel_base: int,
    channel_max: int,
    num_layers: int = 14,
    num_critical: int = 2,
    first_cutoff: float = 2,
    first_stopband: float = 2**2.1,
    last_stopband_rel: float = 2**0.3,
    margin_size: int = 10,
    img_channels: int = 3,
) -> dict:
    """Per-layer cutoffs, stopbands, sampling rates, half-widths, sizes and channels (StyleGAN3 paper, App. F):
    cutoffs and stopbands grow geometrically from the first layer to the last non-critical one, then stay."""
    i = np.arange(num_layers + 1)
    e = np.minimum(i / (num_layers - num_critical), 1)
    last_cutoff = img_resolution / 2
    cutoffs = first_cutoff * (last_cutoff / first_cutoff) ** e
    stopbands = first_stopband * (last_cutoff * last_stopband_rel / first_stopband) ** e
    rates = np.exp2(np.ceil(np.log2(np.minimum(stopbands * 2, img_resolution))))
    half_widths = np.maximum(stopbands, rates / 2) - cutoffs
    sizes = rates + margin_size * 2
    sizes[-2:] = img_resolution
    channels = np.rint(np.minimum((channel_base / 2) / cutoffs, channel_max))
    channels[-1] = img_channels
    return dict(
        cutoffs=cutoffs, rates=rates, half_widths=half_widths, sizes=sizes.astype(int), channels=channels.astype(int)
    )


# ================================================================ networks
class SynthesisNetwork(nn.Module):
    def __init__(
        self,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        channel_base: int = 32768,
        channel_max: int = 512,
        num_layers: int = 14,
        num_critical: int = 2,
        first_cutoff: float = 2,
        first_stopband: float = 2**2.1,
        last_stopband_rel: float = 2**0.3,
        margin_size: int = 10,
        output_scale: float = 0.25,
        num_fp16_res: int = 4,
        **layer_kwargs,
    ):
        super().__init__()
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.num_layers, self.output_scale = num_layers, output_scale
        self.num_ws = num_layers + 2  # input + layers + ToRGB
        d = layer_design(
            img_resolution,
            channel_base,
            channel_max,
            num_layers,
            num_critical,
            first_cutoff,
            first_stopband,
            last_stopband_rel,
            margin_size,
            img_channels,
        )
        self.design = d
        self.input = SynthesisInput(
            w_dim, int(d["channels"][0]), int(d["sizes"][0]), float(d["rates"][0]), float(d["cutoffs"][0])
        )
        self.layer_names = []
        for idx in range(num_layers + 1):
            prev = max(idx - 1, 0)
            layer = SynthesisLayer(
                w_dim,
                is_torgb=idx == num_layers,
                is_critically_sampled=idx >= num_layers - num_critical,
                in_channels=int(d["channels"][prev]),
                out_channels=int(d["channels"][idx]),
                in_size=int(d["sizes"][prev]),
                out_size=int(d["sizes"][idx]),
                in_sampling_rate=float(d["rates"][prev]),
                out_sampling_rate=float(d["rates"][idx]),
                in_cutoff=float(d["cutoffs"][prev]),
                out_cutoff=float(d["cutoffs"][idx]),
                in_half_width=float(d["half_widths"][prev]),
                out_half_width=float(d["half_widths"][idx]),
                **layer_kwargs,
            )
            name = f"L{idx}_{layer.out_size}_{layer.out_channels}"
            setattr(self, name, layer)
            self.layer_names.append(name)

    def layers(self) -> list[SynthesisLayer]:
        return [getattr(self, n) for n in self.layer_names]

    def forward(self, ws: torch.Tensor, noise_mode: str = "const", update_emas: bool = False) -> torch.Tensor:
        """ws [N, num_ws, w_dim] -> images [N, C, R, R]. StyleGAN3 has no noise inputs: noise_mode is checked
        and otherwise ignored (so callers written for StyleGAN2 work unchanged)."""
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}")
        ws = ws.to(torch.float32).unbind(dim=1)
        x = self.input(ws[0])
        for layer, w in zip(self.layers(), ws[1:]):
            x = layer(x, w, update_emas=update_emas)
        return x * self.output_scale if self.output_scale != 1 else x

    def ws_resolutions(self) -> list[float]:
        """For each of the num_ws w vectors, the resolution whose Nyquist limit equals the band it styles
        (2 x cutoff): 4 for the input, rising geometrically to img_resolution. Used for coarse/middle/fine groups."""
        return [2 * self.input.bandwidth] + [2 * layer.out_cutoff for layer in self.layers()]

    def max_activation_elements(self) -> int:
        """Largest per-image activation (channels x pixels) at any layer's upsampled (nonlinearity) rate."""
        return max(
            layer.out_channels * ((layer.in_size + layer.conv_kernel) * layer.up_factor + sum(layer.padding[:2])) ** 2
            for layer in self.layers()
        )


class StyleGAN3Generator(nn.Module):
    """z (+ one-hot class c) -> image. Same interface as our StyleGAN2 Generator: .mapping, .synthesis, .num_ws,
    .w_dim, .z_dim, .c_dim, .img_resolution, forward(z, c, truncation_psi, truncation_cutoff, noise_mode)."""

    def __init__(
        self,
        z_dim: int,
        c_dim: int,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        mapping_kwargs: Optional[dict] = None,
        **synthesis_kwargs,
    ):
        super().__init__()
        mapping_kwargs = dict(mapping_kwargs or {})
        self.init_kwargs = dict(
            z_dim=z_dim,
            c_dim=c_dim,
            w_dim=w_dim,
            img_resolution=img_resolution,
            img_channels=img_channels,
            mapping_kwargs=mapping_kwargs,
            **synthesis_kwargs,
        )
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.synthesis = SynthesisNetwork(
            w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels, **synthesis_kwargs
        )
        self.num_ws = self.synthesis.num_ws
        mk = dict(num_layers=2, lr_multiplier=0.01, w_avg_beta=0.998)  # StyleGAN3's mapping defaults
        mk.update(mapping_kwargs)
        self.mapping = MappingNetwork(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws, **mk)

    def forward(
        self,
        z: torch.Tensor,
        c: Optional[torch.Tensor] = None,
        truncation_psi: float = 1.0,
        truncation_cutoff: Optional[int] = None,
        noise_mode: str = "const",
    ) -> torch.Tensor:
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, noise_mode=noise_mode)


def image_transform(translate: tuple[float, float] = (0.0, 0.0), rotate_deg: float = 0.0) -> torch.Tensor:
    """The `synthesis.input.transform` buffer that moves the image content by `translate` (fractions of the
    image width/height; the image spans [-0.5, 0.5] in feature coordinates) and rotates it by rotate_deg, as
    NVIDIA's gen_images.py --translate/--rotate. The buffer maps image to feature coordinates, so it holds the
    inverse of that motion."""
    a = math.radians(float(rotate_deg))
    m = np.array(
        [
            [math.cos(a), math.sin(a), float(translate[0])],
            [-math.sin(a), math.cos(a), float(translate[1])],
            [0.0, 0.0, 1.0],
        ]
    )
    return torch.from_numpy(np.linalg.inv(m)).float()
