"""Inceptionism: DeepDream and feature visualisation (Mordvintsev, Olah & Tyka 2015; Olah et al. 2017).

Gradient ascent on the input image to make a network's activations larger:

    objective  = a small composable object: layer / channel / class / guide terms, summed with weights
    one step   = roll the image by a random jitter, take d objective / d image (tile by tile for big images),
                 unroll, optionally blur the gradient, divide it by its mean |g|, add step_size * g, clamp
    octaves    = run the steps on a pyramid, smallest first; the "detail" the dream added at one scale is
                 upscaled and carried to the next (the familiar multi-scale DeepDream look)
    from noise = optimise a Fourier-parameterised, colour-decorrelated image with Adam under random
                 jitter/scale/rotation (clean class visualisations instead of high-frequency noise)
    zoom       = feed each dreamed frame, slightly zoomed in, back as the next start (a video)

Any nn.Module that takes [N, 3, H, W] images in [-1, 1] can be dreamed through (`DreamNet.wrap`); named
networks are listed in NETS. Layers are `named_modules()` names (see `gaze dream --list-layers`).
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from machinegaze import GazeError
from machinegaze.nets.features import OUTPUT, FeatureExtractor, LayerInfo, layer_names, list_layers
from machinegaze.progress import ProgressFn, report


# ================================================================ networks
@dataclass
class DreamNet:
    """A network to dream through: the module, how to call it on [-1, 1] images, and a few facts about it."""

    name: str
    module: nn.Module
    default_layer: str
    forward: Optional[Callable[[torch.Tensor], Any]] = None  # x in [-1, 1] -> output; default module(x)
    class_names: Optional[list[str]] = None  # names of OUTPUT's entries, if it has any
    min_size: int = 32  # smallest image side the network accepts
    probe_size: int = 224  # input size used to list layers and their shapes
    fixed_size: Optional[int] = None  # the forward resizes every input to this: never tile

    @classmethod
    def wrap(cls, module: nn.Module, default_layer: Optional[str] = None, name: str = "custom", **kw) -> DreamNet:
        """Any module taking [-1, 1] images. Put in eval mode (batch norm must not update while dreaming)."""
        module.eval()
        return cls(name=name, module=module, default_layer=default_layer or OUTPUT, **kw)

    def __call__(self, x: torch.Tensor) -> Any:
        return self.forward(x) if self.forward is not None else self.module(x)

    def layers(self) -> list[LayerInfo]:
        return list_layers(self.module, self.probe_size, forward=self)

    def layer_names(self) -> list[str]:
        return layer_names(self.module) + [OUTPUT]


def _efficientnet() -> DreamNet:
    from machinegaze import zoo

    net = zoo.load_efficientnet_lite0().requires_grad_(False)
    return DreamNet(
        "efficientnet",
        net,
        default_layer="_blocks.10._relu0",
        class_names=zoo.imagenet_classes(),
        min_size=32,
        probe_size=224,
    )


def _vgg16() -> DreamNet:
    from machinegaze import zoo
    from machinegaze.nets.lpips import imagenet_normalize

    feats = zoo.vgg16_features()
    return DreamNet(
        "vgg16",
        feats,
        default_layer="relu4_3",
        forward=lambda x: feats(imagenet_normalize(x)),
        min_size=32,
        probe_size=224,
    )


def discriminator_net(D: nn.Module, name: str = "discriminator") -> DreamNet:
    """A StyleGAN2 discriminator (any module with `img_resolution`, forward(img, c)) as a DreamNet: inputs are
    resized to its resolution inside the forward pass (so it never tiles), labels are zeros if it is conditional."""
    res = int(D.img_resolution)
    c_dim = int(getattr(D, "c_dim", 0))
    D.eval()

    def forward(x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (res, res):
            x = F.interpolate(
                x, size=(res, res), mode="bilinear", align_corners=False, antialias=min(x.shape[-2:]) > res
            )
        c = torch.zeros(x.shape[0], c_dim, device=x.device) if c_dim else None
        return D(x, c)

    blocks = [n for n, _ in D.named_children() if n.startswith("b") and n[1:].isdigit()]
    default = (
        f"b{max(8, res // 4)}" if f"b{max(8, res // 4)}" in blocks else (blocks[len(blocks) // 2] if blocks else OUTPUT)
    )
    return DreamNet(name, D, default_layer=default, forward=forward, min_size=8, probe_size=res, fixed_size=res)


def _discriminator(network: Optional[str] = None) -> DreamNet:
    from machinegaze import zoo

    nets = zoo.load_networks(network)
    if nets.D is None:
        raise GazeError(
            f"{network or 'the default network'} has no discriminator (an NVlabs snapshot or a "
            "machinegaze file saved with D is needed)"
        )
    return discriminator_net(nets.D.requires_grad_(False))


def _detector() -> DreamNet:
    from machinegaze import zoo

    det = zoo.load_detector(None).requires_grad_(False).eval()
    # Its one output is the fake logit, exposed as a one-entry "class" so that `-c fake` amplifies fakeness.
    return DreamNet(
        "detector",
        det,
        # a combined detector (detect.anyof.AnyOf) dreams through its first member's body
        default_layer=("members.0." if hasattr(det, "members") else "") + "body.net._blocks.10._relu0",
        forward=lambda x: det(x)[:, None],
        class_names=["fake"],
        min_size=32,
        probe_size=int(det.spec.size),
    )


# name -> (description, constructor). Every constructor returns a ready DreamNet in eval mode.
NETS: dict[str, tuple[str, Callable[..., DreamNet]]] = {
    "efficientnet": ("EfficientNet-Lite0, ImageNet classifier (default)", _efficientnet),
    "vgg16": ("VGG16 conv features (the ImageNet weights inside LPIPS-vgg)", _vgg16),
    "discriminator": ("a StyleGAN2 face discriminator (--network: a .pkl/.safetensors or model name)", _discriminator),
    "detector": ("the default fake-face detector (EfficientNet-Lite0s fine-tuned on faces); class 'fake'", _detector),
}


def load_net(
    net: str | nn.Module | DreamNet, network: Optional[str] = None, device: torch.device | str | None = None
) -> DreamNet:
    """A DreamNet by name (NETS), or any module taking [-1, 1] images, moved to `device` when one is given
    (dreaming runs where the net is). `network` is the StyleGAN2 file/name for the discriminator."""
    if isinstance(net, DreamNet):
        dnet = net
    elif isinstance(net, nn.Module):
        dnet = DreamNet.wrap(net)
    elif net not in NETS:
        raise GazeError(f"unknown network {net!r} (choose from: {', '.join(NETS)})")
    elif net == "discriminator":
        dnet = _discriminator(network)
    elif network is not None:
        raise GazeError(f"--network only applies to --net discriminator (got --net {net})")
    else:
        dnet = NETS[net][1]()
    if device is not None:
        dnet.module.to(device)
    return dnet


def net_device(dnet: DreamNet) -> torch.device:
    """Where the dream net's weights live (the CPU for a net without any)."""
    for t in dnet.module.parameters():
        return t.device
    for t in dnet.module.buffers():
        return t.device
    return torch.device("cpu")


# ================================================================ objectives
class Objective:
    """Something to maximise, computed from a dict of activations {layer name: tensor}.

    Objectives compose: `a + b`, `0.5 * a`, `a - b`. `layers()` says which activations they need."""

    def layers(self) -> tuple[str, ...]:
        raise NotImplementedError

    def __call__(self, acts: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def __add__(self, other: Objective) -> Objective:
        return Sum(_terms(self) + _terms(other))

    def __mul__(self, w: float) -> Objective:
        return Sum(tuple((float(w) * v, o) for v, o in _terms(self)))

    __rmul__ = __mul__

    def __neg__(self) -> Objective:
        return self * -1.0

    def __sub__(self, other: Objective) -> Objective:
        return self + (-other)


def _terms(o: Objective) -> tuple[tuple[float, Objective], ...]:
    return o.terms if isinstance(o, Sum) else ((1.0, o),)


@dataclass(frozen=True, eq=False)
class LayerObjective(Objective):
    """Mean of the squared activations of one layer (classic DeepDream: amplify whatever the layer sees)."""

    layer: str

    def layers(self):
        return (self.layer,)

    def __call__(self, acts):
        return acts[self.layer].pow(2).mean()

    def __repr__(self):
        return f"layer:{self.layer}"


@dataclass(frozen=True, eq=False)
class ChannelObjective(Objective):
    """Mean activation of one channel of a layer."""

    layer: str
    channel: int

    def layers(self):
        return (self.layer,)

    def __call__(self, acts):
        a = acts[self.layer]
        if a.ndim < 2 or not 0 <= self.channel < a.shape[1]:
            n = a.shape[1] if a.ndim >= 2 else 0
            raise GazeError(
                f"layer {self.layer!r} has {n} channels; channel {self.channel} is out of range (0..{n - 1})"
            )
        return a[:, self.channel].mean()

    def __repr__(self):
        return f"channel:{self.layer}:{self.channel}"


@dataclass(frozen=True, eq=False)
class ClassObjective(Objective):
    """One entry of the network's output (a class logit)."""

    index: int
    name: str = ""

    def layers(self):
        return (OUTPUT,)

    def __call__(self, acts):
        out = acts[OUTPUT]
        out = out.flatten(1) if out.ndim > 1 else out.view(1, -1)
        if not 0 <= self.index < out.shape[1]:
            raise GazeError(f"class index {self.index} is out of range: the network has {out.shape[1]} outputs")
        return out[:, self.index].mean()

    def __repr__(self):
        return f"class:{self.name or self.index}"


@dataclass(frozen=True, eq=False)
class GuideObjective(Objective):
    """Guided dream: at every position, the dot product of the activation vector with its best-matching
    activation vector from a guide image (precomputed `guide` features, [C, M])."""

    layer: str
    guide: torch.Tensor

    def layers(self):
        return (self.layer,)

    def __call__(self, acts):
        a = acts[self.layer]
        if a.ndim != 4 or a.shape[1] != self.guide.shape[0]:
            raise GazeError(f"guide features do not fit layer {self.layer!r}")
        x = a.flatten(2)  # [N, C, P]
        with torch.no_grad():
            best = torch.einsum("ncp,cm->npm", x, self.guide).argmax(dim=2)  # [N, P]
        matched = self.guide.t()[best].permute(0, 2, 1)  # [N, C, P]
        return (x * matched).sum(dim=1).mean()

    def __repr__(self):
        return f"guide:{self.layer}"


@dataclass(frozen=True, eq=False)
class Sum(Objective):
    """A weighted sum of objectives."""

    terms: tuple[tuple[float, Objective], ...]

    def layers(self):
        return tuple(dict.fromkeys(layer for _, o in self.terms for layer in o.layers()))

    def __call__(self, acts):
        return sum(w * o(acts) for w, o in self.terms)

    def __repr__(self):
        return " + ".join(f"{w:g}*{o!r}" if w != 1 else repr(o) for w, o in self.terms)


def _norm_name(s: str) -> str:
    return " ".join(s.replace("_", " ").split()).lower()


def class_index(
    name: str | int, class_names: Optional[Sequence[str]], n_outputs: Optional[int] = None
) -> tuple[int, str]:
    """A class given by index or (case-, space/underscore-insensitive) name -> (index, name)."""
    s = str(name).strip()
    if s.lstrip("-").isdigit():
        i = int(s)
        n = len(class_names) if class_names else n_outputs
        if i < 0 or (n is not None and i >= n):
            raise GazeError(f"class index {i} is out of range (valid: 0..{(n or 1) - 1})")
        return i, (class_names[i] if class_names else str(i))
    if not class_names:
        raise GazeError(f"this network has no class names; give the class as an index (got {s!r})")
    key = _norm_name(s)
    hits = [i for i, c in enumerate(class_names) if _norm_name(c) == key]
    if len(hits) == 1:
        return hits[0], class_names[hits[0]]
    if len(hits) > 1:
        raise GazeError(f"class name {s!r} is ambiguous: it is class {' and '.join(map(str, hits))}; give the index")
    normed = {_norm_name(c): c for c in class_names}
    close = difflib.get_close_matches(key, list(normed), n=5, cutoff=0.6)
    close += [c for c in normed if key in c and c not in close][:5]
    hint = f"did you mean: {', '.join(normed[c] for c in close[:6])}? " if close else ""
    raise GazeError(
        f"unknown class {s!r}; {hint}valid: an index 0..{len(class_names) - 1} or one of the "
        f"{len(class_names)} names from `gaze dream --list-classes` (e.g. {', '.join(class_names[:3])})"
    )


def _check_layer(dnet: DreamNet, layer: str) -> str:
    names = dnet.layer_names()
    if layer not in names:
        close = difflib.get_close_matches(layer, names, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise GazeError(f"unknown layer {layer!r}{hint}; valid layers: {', '.join(names)}")
    return layer


def guide_features(dnet: DreamNet, layer: str, guide: torch.Tensor, max_points: int = 4096) -> torch.Tensor:
    """[C, M] activation vectors of `guide` (an image in [-1, 1]) at `layer`, subsampled to at most max_points."""
    with torch.no_grad():
        a = FeatureExtractor(dnet.module, [layer], forward=dnet)(guide)[layer]
    if a.ndim != 4:
        raise GazeError(f"a guide needs a spatial layer; {layer!r} has output shape {tuple(a.shape)}")
    g = a[0].flatten(1)
    if g.shape[1] > max_points:
        g = g[:, torch.linspace(0, g.shape[1] - 1, max_points).long()]
    return g.contiguous()


def parse_objective(spec: str, dnet: DreamNet, guide: Optional[torch.Tensor] = None) -> Objective:
    """Build an objective from text, e.g. "layer:_blocks.9 + 0.5*channel:_blocks.12:7 + class:espresso".

    Terms: `layer:NAME`, `channel:NAME:IDX`, `class:NAME|IDX`, `guide:NAME` (needs a guide image); a bare
    `NAME` means layer:NAME and `NAME:IDX` channel. An optional `W*` prefix weights a term."""
    if not spec or not spec.strip():
        raise GazeError("empty objective")
    total: Optional[Objective] = None
    for raw in spec.split("+"):
        term = raw.strip()
        if not term:
            raise GazeError(f"objective {spec!r}: empty term")
        weight = 1.0
        head, star, rest = term.partition("*")
        if star:
            try:
                weight, term = float(head), rest.strip()
            except ValueError:
                raise GazeError(f"objective term {raw.strip()!r}: weight {head.strip()!r} is not a number") from None
        kind, colon, arg = term.partition(":")
        kind = kind.strip().lower() if colon else ""
        if kind == "layer":
            obj: Objective = LayerObjective(_check_layer(dnet, arg.strip()))
        elif kind == "channel":
            layer, _, idx = arg.strip().rpartition(":")
            obj = ChannelObjective(_check_layer(dnet, layer), _int(idx, f"channel in {term!r}"))
        elif kind == "class":
            i, name = class_index(arg, dnet.class_names)
            obj = ClassObjective(i, name)
        elif kind == "guide":
            if guide is None:
                raise GazeError(f"objective {term!r} needs a guide image (--guide)")
            layer = _check_layer(dnet, arg.strip())
            obj = GuideObjective(layer, guide_features(dnet, layer, guide))
        else:  # bare layer or layer:channel
            layer, _, idx = term.rpartition(":")
            if layer and idx.strip().isdigit() and layer in dnet.layer_names():
                obj = ChannelObjective(layer, int(idx))
            else:
                obj = LayerObjective(_check_layer(dnet, term))
        obj = obj if weight == 1.0 else weight * obj
        total = obj if total is None else total + obj
    return total  # type: ignore[return-value]


def _int(s: str, what: str) -> int:
    try:
        return int(s)
    except ValueError:
        raise GazeError(f"{what}: {s!r} is not an integer") from None


# ================================================================ gradients, tiled
def layer_strides(dnet: DreamNet, layers: Sequence[str], probe: int = 256) -> dict[str, Optional[int]]:
    """Spatial stride of each layer's output relative to the input (None for non-spatial outputs)."""
    with torch.no_grad():
        probe_img = torch.zeros(1, 3, probe, probe, device=net_device(dnet))
        acts = FeatureExtractor(dnet.module, list(layers), forward=dnet)(probe_img)
    out: dict[str, Optional[int]] = {}
    for name, a in acts.items():
        if a.ndim == 4 and a.shape[-1] > 0:
            out[name] = max(1, 2 ** round(math.log2(probe / a.shape[-1])))
        else:
            out[name] = None
    return out


def _spans(n: int, tile: int, offset: int) -> list[tuple[int, int]]:
    """Split [0, n) into pieces of `tile`, the grid shifted left by `offset`."""
    starts = list(range(-offset, n, tile))
    return [(max(0, s), min(n, s + tile)) for s in starts if min(n, s + tile) > max(0, s)]


def _crop_act(a: torch.Tensor, stride: Optional[int], core: tuple[int, int, int, int], crop: tuple[int, int, int, int]):
    """Keep the activation cells whose input area lies in `core` (image coords) of a tensor computed on `crop`."""
    if stride is None or a.ndim != 4:
        return a
    (y0, y1, x0, x1), (cy0, cy1, cx0, cx1) = core, crop
    h, w = a.shape[-2:]
    r0, c0 = (y0 - cy0) // stride, (x0 - cx0) // stride
    r1 = h if y1 == cy1 else (y1 - cy0) // stride
    c1 = w if x1 == cx1 else (x1 - cx0) // stride
    return a[:, :, r0 : max(r1, r0 + 1), c0 : max(c1, c0 + 1)]


def _layout(x: torch.Tensor) -> torch.memory_format:
    """Channels-last on CPU: depthwise/1x1 convolutions (EfficientNet) run about 1.6x faster that way."""
    return torch.channels_last if x.device.type == "cpu" else torch.contiguous_format


def objective_gradient(
    dnet: DreamNet,
    objective: Objective,
    x: torch.Tensor,
    tile: int = 0,
    margin: int = 64,
    generator: Optional[torch.Generator] = None,
    strides: Optional[dict[str, Optional[int]]] = None,
    precision: str = "fp32",
) -> tuple[torch.Tensor, float]:
    """d objective / d x and the objective's value.

    With tile > 0 and an image larger than one tile, the image is cut into tiles (grid origin shifted at
    random by the host `generator`, aligned to the largest layer stride); each tile is run with `margin`
    pixels of context on every side, only the activations over its core count (weighted by the core's share
    of the image), and the gradients are added up. For objectives that are means over positions and a network
    whose receptive field fits in the margin, this equals the untiled gradient. Memory is bounded by the crop
    size, about (tile + 2 * margin)^2 pixels. The forward passes run under autocast at `precision`."""
    grad, value = _gradient(dnet, objective, x, tile, margin, generator, strides, precision)
    return grad, float(value)


def _gradient(dnet, objective, x, tile, margin, generator, strides, precision) -> tuple[torch.Tensor, torch.Tensor]:
    """objective_gradient with the value left on the device (a float64 0-d tensor, float32 on MPS)."""
    from machinegaze.device import accumulate_dtype, autocast

    layers = list(objective.layers())
    fx = FeatureExtractor(dnet.module, layers, forward=dnet)
    acc = accumulate_dtype(x.device)
    h, w = x.shape[-2:]
    if tile <= 0 or (h <= tile and w <= tile) or dnet.fixed_size:
        xg = x.detach().contiguous(memory_format=_layout(x)).requires_grad_(True)
        with autocast(x.device, precision):
            loss = objective(fx(xg)).float()
        (g,) = torch.autograd.grad(loss, xg)
        return g.contiguous(), loss.detach().to(acc)

    strides = strides if strides is not None else layer_strides(dnet, layers)
    align = max([s for s in strides.values() if s] + [1])
    tile = max(align, tile // align * align)
    margin = math.ceil(margin / align) * align
    oy = int(torch.randint(0, tile // align, (1,), generator=generator)) * align
    ox = int(torch.randint(0, tile // align, (1,), generator=generator)) * align
    grad = torch.zeros_like(x)
    value = torch.zeros((), dtype=acc, device=x.device)
    size = tile + 2 * margin
    for y0, y1 in _spans(h, tile, oy):
        for x0, x1 in _spans(w, tile, ox):
            (cy0, cy1), (cx0, cx1) = _context(y0, y1, h, margin, size, align), _context(x0, x1, w, margin, size, align)
            xg = x[:, :, cy0:cy1, cx0:cx1].detach().contiguous(memory_format=_layout(x)).requires_grad_(True)
            core, crop = (y0, y1, x0, x1), (cy0, cy1, cx0, cx1)
            share = (y1 - y0) * (x1 - x0) / (h * w)
            with autocast(x.device, precision):
                acts = {k: _crop_act(a, strides.get(k), core, crop) for k, a in fx(xg).items()}
                loss = objective(acts).float() * share
            (g,) = torch.autograd.grad(loss, xg)
            grad[:, :, cy0:cy1, cx0:cx1] += g
            value = value + loss.detach().to(acc)
    return grad, value


def _context(a: int, b: int, n: int, margin: int, size: int, align: int) -> tuple[int, int]:
    """The span [a, b) with `margin` of context each side, grown inwards at the image edges to `size` (so every
    crop has nearly the same shape: the allocator then reuses its buffers instead of fragmenting), start aligned."""
    if n <= size:
        return 0, n
    lo, hi = max(0, a - margin), min(n, b + margin)
    if hi - lo < size:
        if lo == 0:
            hi = size
        else:  # hi == n
            lo = (n - size) // align * align
    return lo, hi


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (reflect padding) of an [N, C, H, W] tensor."""
    if sigma <= 0:
        return x
    r = max(1, int(math.ceil(3 * sigma)))
    r = min(r, x.shape[-1] - 1, x.shape[-2] - 1)
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


# ================================================================ DeepDream on a photo
@dataclass(frozen=True)
class DreamConfig:
    """Defaults match `gaze dream`."""

    net: str = "efficientnet"
    objective: Optional[str] = None  # None: the network's default layer
    octaves: int = 4
    octave_scale: float = 1.4
    steps: int = 10  # per octave
    step_size: float = 0.02  # in [-1, 1] units, per step, after dividing the gradient by its mean |g|
    jitter: int = 32  # random roll in pixels, each step
    smooth: float = 0.0  # Gaussian blur of the gradient (sigma, px); 0 = off
    tile: int = 512  # tile size for the gradient; 0 = never tile
    margin: int = 64  # context around each tile
    size: int = 512  # longest side the input photo is resized to; 0 = keep
    seed: int = 0
    # from noise (feature visualisation)
    from_noise: bool = False
    noise_size: int = 224
    noise_steps: int = 256
    noise_lr: float = 0.05
    # zoom video
    zoom_frames: int = 0
    zoom: float = 1.05
    fps: int = 12

    def check(self) -> None:
        if self.octaves < 1:
            raise GazeError("--octaves must be at least 1")
        if not self.octave_scale > 1.0:
            raise GazeError("--octave-scale must be greater than 1")
        if self.steps < 0 or self.noise_steps < 1:
            raise GazeError("--steps must be >= 0 and --noise-steps >= 1")
        if self.step_size <= 0 or self.noise_lr <= 0:
            raise GazeError("--step-size and --noise-lr must be positive")
        if self.jitter < 0 or self.smooth < 0 or self.tile < 0 or self.margin < 0 or self.size < 0:
            raise GazeError("--jitter, --smooth, --tile, --margin and --size must not be negative")
        if self.zoom_frames < 0 or not self.zoom >= 1.0 or self.fps < 1:
            raise GazeError("--zoom-frames must be >= 0, --zoom >= 1 and --fps >= 1")
        if self.from_noise and self.noise_size < 32:
            raise GazeError("--noise-size must be at least 32")


@dataclass
class DreamResult:
    image: torch.Tensor  # [1, 3, H, W] in [-1, 1]
    history: list[float] = field(default_factory=list)  # objective value at every step, in order
    objective: str = ""
    frames: list[torch.Tensor] = field(default_factory=list)  # zoom video frames (if any)


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    down = size[0] < x.shape[-2]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=down)


def octave_sizes(h: int, w: int, octaves: int, scale: float, min_size: int) -> list[tuple[int, int]]:
    """Pyramid sizes, largest first; stops early rather than go below the network's minimum size."""
    sizes = [(h, w)]
    for _ in range(octaves - 1):
        nh, nw = round(sizes[-1][0] / scale), round(sizes[-1][1] / scale)
        if min(nh, nw) < min_size:
            break
        sizes.append((nh, nw))
    return sizes


def build_objective(cfg: DreamConfig, dnet: DreamNet, guide: Optional[torch.Tensor]) -> Objective:
    if cfg.objective:
        return parse_objective(cfg.objective, dnet, guide)
    if guide is not None:
        return parse_objective(f"guide:{dnet.default_layer}", dnet, guide)
    return LayerObjective(_check_layer(dnet, dnet.default_layer))


class _Values:
    """Objective values kept on the device and read back to the host only every `every` steps (and at the end),
    so the dreaming loops never wait for the device in between."""

    def __init__(self, every: int = 10):
        self.pending: list[torch.Tensor] = []
        self.done: list[float] = []
        self.every = max(1, int(every))

    def add(self, value: torch.Tensor) -> Optional[float]:
        """Record one value; returns the latest value as a float when it is time to log, else None."""
        self.pending.append(value.detach())
        if len(self.pending) < self.every:
            return None
        return self.flush()[-1]

    def flush(self) -> list[float]:
        if self.pending:
            self.done += torch.stack(self.pending).double().tolist()
            self.pending = []
        return self.done


def _report_value(progress: ProgressFn, step: int, total: int, latest: Optional[float], **info) -> None:
    if latest is None:
        report(progress, step, total, **info)
    else:
        report(progress, step, total, objective=latest, **info)


def deepdream(
    image: torch.Tensor,
    dnet: DreamNet,
    objective: Objective,
    cfg: DreamConfig = DreamConfig(),
    generator: Optional[torch.Generator] = None,
    progress: ProgressFn = None,
    step_offset: int = 0,
    total: Optional[int] = None,
    precision: str = "fp32",
) -> DreamResult:
    """Classic multi-octave DeepDream of `image` ([1, 3, H, W] in [-1, 1]) on the dream net's device.

    `generator` (a CPU generator; default seeded with cfg.seed) draws the jitter and tile offsets: they are
    host integers that choose where to roll and cut, so drawing them needs no device round trip, and a seed
    rolls the same way on every device. The objective is read back every 10 steps (progress) and at the end."""
    cfg.check()
    if image.ndim != 4 or image.shape[:2] != (1, 3):
        raise GazeError(f"expected one RGB image [1, 3, H, W], got {tuple(image.shape)}")
    h, w = image.shape[-2:]
    if min(h, w) < dnet.min_size:
        raise GazeError(f"image is {w}x{h}; the {dnet.name} network needs at least {dnet.min_size} px a side")
    gen = generator or torch.Generator().manual_seed(cfg.seed)
    sizes = octave_sizes(h, w, cfg.octaves, cfg.octave_scale, dnet.min_size)
    total = total or len(sizes) * cfg.steps
    strides = layer_strides(dnet, objective.layers()) if cfg.tile and not dnet.fixed_size else None
    base = image.detach().float().to(net_device(dnet))
    detail = torch.zeros(1, 3, *sizes[-1], device=base.device)
    values = _Values()
    x = base
    step = step_offset
    for octave, size in enumerate(reversed(sizes)):
        small = _resize(base, size)
        x = (small + _resize(detail, size)).clamp(-1, 1)
        for _ in range(cfg.steps):
            dy, dx = (
                (int(v) for v in torch.randint(-cfg.jitter, cfg.jitter + 1, (2,), generator=gen))
                if cfg.jitter
                else (0, 0)
            )
            rolled = torch.roll(x, (dy, dx), (2, 3))
            g, value = _gradient(dnet, objective, rolled, cfg.tile, cfg.margin, gen, strides, precision)
            g = gaussian_blur(torch.roll(g, (-dy, -dx), (2, 3)), cfg.smooth)
            # normalised step: step_size / mean |g|, computed in float64 like a host scalar, without leaving the device
            scale = cfg.step_size / (g.abs().mean().to(value.dtype) + 1e-8)
            x = x.add_(g * scale.to(g.dtype)).clamp_(-1, 1)
            step += 1
            _report_value(progress, step, total, values.add(value), octave=octave + 1)
        detail = x - small
    return DreamResult(image=x, history=values.flush(), objective=repr(objective))


# ================================================================ from noise: Fourier-parameterised image
# Square root of ImageNet's RGB colour correlation (from lucid); images are optimised in this decorrelated space.
_COLOR_SQRT = ((0.26, 0.09, 0.02), (0.27, 0.00, -0.05), (0.27, -0.09, 0.03))


class FourierImage(nn.Module):
    """An image parameterised by its (scaled) 2D spectrum in a decorrelated colour space; output in [-1, 1].

    Scaling each frequency by 1/f makes gradient steps roughly equal in energy across frequencies, which is
    what keeps feature visualisations from drowning in high-frequency noise."""

    def __init__(
        self, h: int, w: int, sd: float = 0.01, decay: float = 1.0, generator: Optional[torch.Generator] = None
    ):
        super().__init__()
        self.h, self.w = h, w
        dev = generator.device if generator is not None else None  # made where its random draws are
        fy = torch.fft.fftfreq(h, device=dev).view(-1, 1)
        fx = torch.fft.rfftfreq(w, device=dev).view(1, -1)
        freq = torch.sqrt(fx**2 + fy**2)
        self.register_buffer("scale", 1.0 / freq.clamp(min=1.0 / max(h, w)) ** decay, persistent=False)
        self.spectrum = nn.Parameter(torch.randn(1, 3, h, w // 2 + 1, 2, generator=generator, device=dev) * sd)
        color = torch.tensor(_COLOR_SQRT, device=dev)
        color = color / color.norm(dim=0).max()
        self.register_buffer("color", color, persistent=False)

    def forward(self) -> torch.Tensor:
        spec = torch.view_as_complex(self.spectrum) * self.scale
        img = torch.fft.irfft2(spec, s=(self.h, self.w), norm="ortho") / 4.0
        img = torch.einsum("ij,njhw->nihw", self.color, img)
        return torch.sigmoid(img) * 2.0 - 1.0


def random_transform(
    x: torch.Tensor,
    generator: torch.Generator,
    pad: int = 16,
    jitter: int = 16,
    scale: float = 0.2,
    degrees: float = 15.0,
) -> torch.Tensor:
    """Pad, then one random affine warp (shift up to `jitter` px, scale 1 +- `scale`, rotation +- `degrees`).
    The four random numbers are drawn by `generator` on its device (x's) and the warp is built there, in
    float64 where the device has it: no host round trip."""
    from machinegaze.device import accumulate_dtype

    n, _, h, w = x.shape
    if pad:
        x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    hh, ww = x.shape[-2:]
    r = (torch.rand(4, generator=generator, device=generator.device) * 2 - 1).to(accumulate_dtype(x.device))
    s = 1.0 + scale * r[0]
    a = degrees * r[1] * (math.pi / 180.0)
    cos, sin = torch.cos(a) / s, torch.sin(a) / s
    tx, ty = jitter * r[2] * 2 / ww, jitter * r[3] * 2 / hh
    theta = torch.stack([torch.stack([cos, -sin, tx]), torch.stack([sin, cos, ty])])
    theta = theta.to(device=x.device, dtype=x.dtype).unsqueeze(0).expand(n, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def visualize(
    dnet: DreamNet,
    objective: Objective,
    cfg: DreamConfig = DreamConfig(from_noise=True),
    generator: Optional[torch.Generator] = None,
    progress: ProgressFn = None,
    precision: str = "fp32",
) -> DreamResult:
    """Feature visualisation from noise: maximise `objective` over a Fourier-parameterised image, on the dream
    net's device (`generator` on that device; default seeded with cfg.seed). The network runs under autocast
    at `precision`; the objective is read back every 10 steps (progress) and at the end."""
    from machinegaze.device import autocast

    cfg.check()
    dev = net_device(dnet)
    gen = generator or torch.Generator(device=dev).manual_seed(cfg.seed)
    img = FourierImage(cfg.noise_size, cfg.noise_size, generator=gen).to(dev)
    opt = torch.optim.Adam(img.parameters(), lr=cfg.noise_lr)
    fx = FeatureExtractor(dnet.module, list(objective.layers()), forward=dnet)
    values = _Values()
    for step in range(cfg.noise_steps):
        opt.zero_grad(set_to_none=True)
        x = random_transform(img(), gen)
        with autocast(dev, precision):
            loss = objective(fx(x)).float()
        (-loss).backward()
        opt.step()
        _report_value(progress, step + 1, cfg.noise_steps, values.add(loss))
    with torch.no_grad():
        final = img()
    return DreamResult(image=final, history=values.flush(), objective=repr(objective))


# ================================================================ zoom video
def zoom_in(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Crop the centre 1/factor of the image and scale it back up to the same size."""
    h, w = x.shape[-2:]
    ch, cw = max(1, round(h / factor)), max(1, round(w / factor))
    top, left = (h - ch) // 2, (w - cw) // 2
    return F.interpolate(x[:, :, top : top + ch, left : left + cw], size=(h, w), mode="bilinear", align_corners=False)


def dream_zoom(
    image: torch.Tensor,
    dnet: DreamNet,
    objective: Objective,
    cfg: DreamConfig,
    progress: ProgressFn = None,
    precision: str = "fp32",
) -> DreamResult:
    """Feedback zoom: dream, zoom in by cfg.zoom, dream again ... `cfg.zoom_frames` frames."""
    gen = torch.Generator().manual_seed(cfg.seed)
    n_oct = len(octave_sizes(*image.shape[-2:], cfg.octaves, cfg.octave_scale, dnet.min_size))
    total = cfg.zoom_frames * n_oct * cfg.steps
    frames, history = [], []
    x = image
    for i in range(cfg.zoom_frames):
        r = deepdream(
            x, dnet, objective, cfg, gen, progress, step_offset=i * n_oct * cfg.steps, total=total, precision=precision
        )
        frames.append(r.image)
        history += r.history
        x = zoom_in(r.image, cfg.zoom)
    return DreamResult(image=frames[-1], history=history, objective=repr(objective), frames=frames)


def save_video(frames: Sequence[torch.Tensor], path: str | os.PathLike, fps: int = 12) -> Path:
    """Frames ([1, 3, H, W] in [-1, 1]) to .mp4 (H.264 via imageio-ffmpeg) or .gif, written atomically."""
    import imageio.v2 as imageio

    from machinegaze.data import atomic_path, to_uint8

    path = Path(path)
    ext = path.suffix.lower()
    if ext not in (".mp4", ".gif"):
        raise GazeError(f"{path}: a zoom video must be .mp4 or .gif")
    arrays = [to_uint8(f)[0] for f in frames]
    if ext == ".mp4":
        h, w = arrays[0].shape[:2]
        arrays = [a[: h - h % 2, : w - w % 2] for a in arrays]  # H.264 (yuv420p) needs even sides
    with atomic_path(path) as tmp:
        try:
            if ext == ".mp4":
                with imageio.get_writer(
                    tmp, format="FFMPEG", fps=fps, codec="libx264", quality=7, macro_block_size=1, pixelformat="yuv420p"
                ) as wr:
                    for a in arrays:
                        wr.append_data(a)
            else:
                imageio.mimsave(tmp, arrays, format="GIF", duration=1000.0 / fps, loop=0)
        except (ImportError, RuntimeError, OSError) as e:
            raise GazeError(f"could not write {path}: {e} (for .mp4 install imageio-ffmpeg, or write a .gif)") from None
    return path


# ================================================================ one call for the CLI and the web app
def load_photo(path: str | os.PathLike, max_side: int = 0) -> torch.Tensor:
    """A photo as [1, 3, H, W] in [-1, 1], aspect kept, longest side scaled down to max_side (0 = keep)."""
    from PIL import Image

    from machinegaze.data import open_image, pil_to_tensor

    img = open_image(path)
    if max_side and max(img.size) > max_side:
        s = max_side / max(img.size)
        img = img.resize((max(1, round(img.size[0] * s)), max(1, round(img.size[1] * s))), Image.LANCZOS)
    return pil_to_tensor(img)


def run(
    cfg: DreamConfig,
    image: str | os.PathLike | torch.Tensor | None,
    out: str | os.PathLike,
    guide: str | os.PathLike | torch.Tensor | None = None,
    net: str | nn.Module | DreamNet | None = None,
    network: Optional[str] = None,
    progress: ProgressFn = None,
    device: torch.device | str | None = None,
    precision: str = "fp32",
) -> DreamResult:
    """Load inputs, dream (photo, noise, or zoom video) on `device` (default: where the net is; the CPU for
    named nets) at `precision` (autocast for the dream net), and write `out`. Returns the result (on the host)."""
    from machinegaze.data import save_image

    cfg.check()
    out = Path(out)
    video = cfg.zoom_frames > 0
    if video and out.suffix.lower() not in (".mp4", ".gif"):
        raise GazeError(f"--zoom-frames writes a video: --out must end in .mp4 or .gif (got {out.name})")
    if not video and out.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
        raise GazeError(f"--out must be a .png, .jpg or .webp image (got {out.name})")
    if image is None and not cfg.from_noise:
        raise GazeError("give an image to dream on, or --from-noise")
    dnet = load_net(net if net is not None else cfg.net, network, device)
    dev = net_device(dnet)
    g = None
    if guide is not None:
        g = guide if isinstance(guide, torch.Tensor) else load_photo(guide, max(dnet.probe_size, 224))
        g = g.to(dev)
    objective = build_objective(cfg, dnet, g)
    if cfg.from_noise:
        result = visualize(dnet, objective, cfg, progress=progress, precision=precision)
        if video:
            result = dream_zoom(result.image, dnet, objective, cfg, progress, precision)
    else:
        x = image if isinstance(image, torch.Tensor) else load_photo(image, cfg.size)
        result = (
            dream_zoom(x, dnet, objective, cfg, progress, precision)
            if video
            else deepdream(x, dnet, objective, cfg, progress=progress, precision=precision)
        )
    result.image = result.image.detach().cpu()
    result.frames = [f.detach().cpu() for f in result.frames]
    if video:
        save_video(result.frames, out, cfg.fps)
    else:
        save_image(result.image, out)
    return result
