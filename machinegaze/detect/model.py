"""The detector: a convolutional body, global average pooling, and one logit for "fake".

Four bodies:
* `effnet_lite0`: EfficientNet-Lite0 pretrained on ImageNet (transfer learning; the default).
* `smallcnn`: a small CNN trained from scratch (the ablation: how much does ImageNet pretraining buy?).
* `npr`: the upsampling-artefact residual (nets/npr.py) read by a small CNN, from scratch.
* `spectrum`: log power spectrum features of the high-pass residual (nets/spectrum.py) read by an MLP.

With `spec.patch` set the detector classifies an image by its native-resolution patches (detect/native.py).

The detector also carries everything `predict` needs to reproduce its training conditions: the input size, the
JPEG quality of the preprocessing policy (None = off), and the calibration (temperature, threshold) fitted on
validation data. These go into the safetensors metadata when saved (see checkpoints.save_detector).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from machinegaze import GazeError
from machinegaze.detect import native
from machinegaze.nets.efficientnet import EfficientNetLite0
from machinegaze.nets.npr import NPRNet
from machinegaze.nets.spectrum import SpectrumNet

ARCHS = ("effnet_lite0", "smallcnn", "npr", "spectrum")


@dataclass(frozen=True)
class DetectorSpec:
    """What is needed to rebuild a detector and feed it like it was trained."""

    arch: str = "effnet_lite0"
    size: int = 128
    jpeg_quality: int | None = 75  # None: trained without the preprocessing policy
    width: int = 32  # smallcnn and npr only
    dropout: float = 0.2
    patch: int | None = None  # classify by the mean logit of patch x patch tiles at native pixels (None: whole)
    pool: int = 1  # average-pool the input by this factor first (a cheaper member that looks at coarser pixels)

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise GazeError(f"unknown detector architecture '{self.arch}' (use one of {', '.join(ARCHS)})")
        if self.patch is not None and not 16 <= self.patch <= self.size:
            raise GazeError(f"patch must be 16..size ({self.size}) px, got {self.patch}")
        if self.pool not in (1, 2, 4) or self.size % self.pool:
            raise GazeError(f"pool must be 1, 2 or 4 and divide the size ({self.size}), got {self.pool}")

    def to_meta(self) -> dict:
        return asdict(self)

    @classmethod
    def from_meta(cls, d: dict) -> DetectorSpec:
        keys = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in keys})


class SmallCNN(nn.Module):
    """Four conv-BN-ReLU stages, each halving the resolution: x -> [N, 8*width, H/16, W/16]."""

    def __init__(self, width: int = 32):
        super().__init__()
        chans = [3, width, 2 * width, 4 * width, 8 * width]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            layers += [
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
                nn.Conv2d(c_out, c_out, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
        self.layers = nn.Sequential(*layers)
        self.out_channels = chans[-1]

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class _EffNetBody(nn.Module):
    """EfficientNet-Lite0 without its ImageNet classifier: x -> [N, 1280, H/32, W/32]. Starts from `imagenet`
    (an ImageNet-trained EfficientNetLite0, e.g. zoo.load_efficientnet_lite0()) or, when None, random weights."""

    def __init__(self, imagenet: EfficientNetLite0 | None = None):
        super().__init__()
        net = imagenet if imagenet is not None else EfficientNetLite0(num_classes=1000).eval()
        for name in ("_dropout", "_fc"):  # the ImageNet head is not part of the detector
            delattr(net, name)
        self.net = net
        self.out_channels = 1280
        for m in net.modules():  # TF's BN momentum (0.01) adapts too slowly for a few hundred fine-tuning steps
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = 0.1

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.feature_map(x)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """Stem + first half of the blocks, second half + head conv: two groups for discriminative LRs."""
        n = self.net
        half = len(n._blocks) // 2
        early = [*n._conv_stem.parameters(), *n._bn0.parameters()]
        for b in n._blocks[:half]:
            early += list(b.parameters())
        late = [p for b in n._blocks[half:] for p in b.parameters()] + [
            *n._conv_head.parameters(),
            *n._bn1.parameters(),
        ]
        return [early, late]


class Detector(nn.Module):
    """body -> global average pool -> dropout -> Linear(C, 1): the logit of "this face is fake".

    `imagenet`: the ImageNet EfficientNet-Lite0 the effnet_lite0 body starts from (None: random weights, e.g.
    before loading a saved detector); ignored by smallcnn."""

    def __init__(self, spec: DetectorSpec = DetectorSpec(), imagenet: EfficientNetLite0 | None = None):
        super().__init__()
        self.spec = spec
        if spec.arch == "effnet_lite0":
            self.body: nn.Module = _EffNetBody(imagenet)
        elif spec.arch == "npr":
            self.body = NPRNet(spec.width)
        elif spec.arch == "spectrum":
            self.body = SpectrumNet()
        else:
            self.body = SmallCNN(spec.width)
        self.dropout = nn.Dropout(spec.dropout)
        self.head = nn.Linear(self.body.out_channels, 1)
        # Calibration fitted on validation data (temperature scaling + the balanced-accuracy threshold).
        self.register_buffer("temperature", torch.tensor(1.0))
        self.register_buffer("threshold", torch.tensor(0.5))

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise GazeError(f"detector expects [N, 3, H, W] images, got shape {tuple(x.shape)}")
        if self.spec.pool > 1:
            x = F.avg_pool2d(x, self.spec.pool, ceil_mode=True)
        return self.body.feature_map(x)

    def logit_from_map(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(fmap.mean(dim=(2, 3)))).squeeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw logits [N] (uncalibrated). P(fake) = sigmoid(logit / temperature). Images larger than
        `spec.patch` get the mean logit of their patches."""
        if self.spec.patch is not None and max(x.shape[-2:]) > self.spec.patch:
            return native.patch_logits(self._whole_logits, x, self.spec.patch)
        return self._whole_logits(x)

    def _whole_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.logit_from_map(self.feature_map(x))

    @torch.no_grad()
    def prob_fake(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self(x) / self.temperature)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """Parameter groups from input to output (body parts, then the head) for discriminative learning rates."""
        if isinstance(self.body, _EffNetBody):
            groups = self.body.layer_groups()
        else:
            layers = list(self.body.layers)
            half = len(layers) // 2
            groups = [
                [p for m in layers[:half] for p in m.parameters()],
                [p for m in layers[half:] for p in m.parameters()],
            ]
        return groups + [list(self.head.parameters())]

    def set_calibration(self, temperature: float, threshold: float) -> None:
        if not temperature > 0:
            raise GazeError(f"temperature must be > 0, got {temperature}")
        self.temperature.fill_(float(temperature))
        self.threshold.fill_(float(threshold))


def build_detector(spec: DetectorSpec = DetectorSpec(), imagenet: EfficientNetLite0 | None = None) -> Detector:
    """A fresh detector with a new head; an effnet_lite0 body starts from `imagenet` (None: random weights).
    zoo.new_detector(spec) passes the ImageNet weights."""
    return Detector(spec, imagenet=imagenet if spec.arch == "effnet_lite0" else None)


def detector_from_state(meta: dict, state: dict[str, torch.Tensor]) -> Detector:
    """Rebuild a detector from saved metadata and tensors (used by checkpoints.load_detector)."""
    det = Detector(DetectorSpec.from_meta(meta))
    state = {k: v.float() for k, v in state.items()}
    missing, unexpected = det.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise GazeError(
            f"detector weights do not match a {det.spec.arch} detector: "
            f"missing {list(missing)[:4]}, unexpected {list(unexpected)[:4]}"
        )
    return det.eval()


def freeze_body(det: Detector, frozen: bool = True) -> None:
    """Freeze every body weight (only the head trains) or unfreeze everything."""
    det.body.requires_grad_(not frozen)
    det.head.requires_grad_(True)


def bce_loss(logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy of the fake logit, optionally with per-image weights (mean 1; see train.sample_weights)."""
    return F.binary_cross_entropy_with_logits(logits, y.float(), weight=weight)
