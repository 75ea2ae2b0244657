"""A projected discriminator (Sauer et al., "Projected GANs Converge Faster", NeurIPS 2021), our own code.

D does not learn its features: images pass through a frozen ImageNet EfficientNet-Lite0, and small trainable
heads judge its activations at four scales.

    f_1..f_4 = EfficientNet-Lite0 activations after stages 2, 3, 5 and 7      (24, 40, 112, 320 channels;
                                                                            strides 4, 8, 16, 32)
    c_l      = P_l f_l                      cross-channel mixing (CCM): a fixed random 1x1 projection
    p_4      = c_4,   p_l = c_l + Q_l up2(p_{l+1})    cross-scale mixing (CSM): a top-down pyramid, Q_l a
                                            fixed random 1x1 projection, up2 bilinear upsampling
    logits_l = H_l(p_l)                     a few strided 4x4 convs with spectral normalisation, a normalisation
                                            layer and leaky ReLU, then a 4x4 conv to one channel: a map of patch
                                            logits per scale

The projections P, Q are random and never trained (the paper finds fixed random mixing works as well as a learnt
one and keeps D from collapsing onto a few features); they are buffers, so a saved D is the same D. Only the
heads H_l are trained. `forward` returns the mean patch logit per image, [N, 1], like the StyleGAN2
discriminator, so the critic, realism score and dreams work unchanged; training uses `patch_logits` (hinge loss
on every patch).

The backbone is built here and filled by the caller (`fill_backbone`, e.g. from `zoo.load_efficientnet_lite0()`);
it stays in eval mode (batch norm on running statistics) and never requires gradients, whatever the caller sets.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from machinegaze import GazeError
from machinegaze.nets.efficientnet import EfficientNetLite0

TAP_BLOCKS = (2, 4, 10, 15)  # index of the last MBConv of stages 2, 3, 5, 7 in EfficientNetLite0._blocks
TAP_CHANNELS = (24, 40, 112, 320)
TAP_STRIDES = (4, 8, 16, 32)


class SNConv2d(nn.Module):
    """Conv2d whose weight is divided by its largest singular value (Miyato et al. 2018), estimated by one power
    iteration per training-mode call; `u` is a buffer, so a saved network resumes the same estimate."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int = 0):
        super().__init__()
        self.stride, self.padding = stride, padding
        self.weight = nn.Parameter(torch.randn(c_out, c_in, kernel, kernel) / math.sqrt(c_in * kernel * kernel))
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.register_buffer("u", F.normalize(torch.randn(c_out), dim=0))

    def normalised_weight(self) -> torch.Tensor:
        w = self.weight.flatten(1)
        u = self.u
        if self.training:
            with torch.no_grad():
                v = F.normalize(w.t() @ u, dim=0, eps=1e-12)
                u = F.normalize(w @ v, dim=0, eps=1e-12)
                self.u.copy_(u)
            u = u.clone()  # the buffer may change again before backward
        v = F.normalize(w.t() @ u, dim=0, eps=1e-12).detach()
        sigma = torch.dot(u, w @ v)
        return self.weight / sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.normalised_weight(), self.bias, self.stride, self.padding)


HEAD_NORMS = ("none", "group", "batch")


def _norm_layers(kind: str, channels: int) -> list[nn.Module]:
    """The normalisation after each strided head conv: batch norm as in the paper's down blocks, group norm
    (16 channels a group) when batches are small or split across processes, or none (no layer, so heads saved
    before norms existed keep their parameter names)."""
    if kind == "batch":
        return [nn.BatchNorm2d(channels)]
    if kind == "group":
        return [nn.GroupNorm(max(1, channels // 16), channels)]
    return []


class PatchHead(nn.Module):
    """Strided 4x4 SN convs (then `norm`, leaky ReLU 0.2) from `size` down to 8 px (or the input size if smaller),
    channels doubling up to `cmax`, then a 4x4 conv to one channel (zero-padded below 8 px, so every scale of 2 px
    or more gives 5x5 patches and weighs the same in the loss): [N, c_in, size, size] -> [N, P] patch logits."""

    def __init__(self, c_in: int, size: int, width: int, cmax: int, norm: str = "none"):
        super().__init__()
        layers: list[nn.Module] = []
        c = c_in
        ch = min(width, cmax)
        while size > 8:
            layers += [SNConv2d(c, ch, 4, stride=2, padding=1), *_norm_layers(norm, ch), nn.LeakyReLU(0.2)]
            c, size, ch = ch, size // 2, min(ch * 2, cmax)
        self.body = nn.Sequential(*layers)
        self.out = SNConv2d(c, 1, 4, stride=1, padding=max(0, (8 - size) // 2))  # 5x5 patches at every scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x)).flatten(1)


def _random_projection(c_in: int, c_out: int) -> torch.Tensor:
    """A fixed 1x1 projection [c_out, c_in, 1, 1] that keeps the activations' scale (std 1/sqrt(c_in))."""
    return torch.randn(c_out, c_in, 1, 1) / math.sqrt(c_in)


class ProjectedDiscriminator(nn.Module):
    """Frozen EfficientNet-Lite0 features -> fixed random CCM/CSM -> four trainable multi-scale patch heads.

    img_resolution: training resolution; backbone_res: resize images to this size before the backbone
    (0 = as given); proj_channels: CCM width at the finest scale (doubling per scale); head_width / head_cmax:
    the heads' first and largest channel counts; head_norm: none | group | batch, after each strided head conv."""

    def __init__(
        self,
        c_dim: int = 0,
        img_resolution: int = 128,
        img_channels: int = 3,
        backbone_res: int = 0,
        proj_channels: int = 64,
        head_width: int = 64,
        head_cmax: int = 256,
        head_norm: str = "none",
    ):
        super().__init__()
        if c_dim != 0 or img_channels != 3:
            raise GazeError("the projected discriminator is unconditional and takes RGB images (c_dim 0, 3 channels)")
        if head_norm not in HEAD_NORMS:
            raise GazeError(f"unknown head norm '{head_norm}' (choose from: {', '.join(HEAD_NORMS)})")
        size = backbone_res or img_resolution
        if size < 32:
            raise GazeError(f"the projected discriminator needs images of at least 32 px (got {size})")
        self.init_kwargs = dict(
            c_dim=c_dim,
            img_resolution=img_resolution,
            img_channels=img_channels,
            backbone_res=backbone_res,
            proj_channels=proj_channels,
            head_width=head_width,
            head_cmax=head_cmax,
            head_norm=head_norm,
        )
        self.c_dim, self.img_resolution, self.img_channels = c_dim, img_resolution, img_channels
        self.backbone_res = backbone_res
        self.backbone = EfficientNetLite0().eval().requires_grad_(False)
        widths = [proj_channels * 2**i for i in range(len(TAP_BLOCKS))]
        for i, (c_in, c_out) in enumerate(zip(TAP_CHANNELS, widths)):
            self.register_buffer(f"ccm{i}", _random_projection(c_in, c_out))
            if i + 1 < len(widths):
                self.register_buffer(f"csm{i}", _random_projection(widths[i + 1], c_out))
        sizes = [math.ceil(size / s) for s in TAP_STRIDES]
        self.heads = nn.ModuleList(PatchHead(c, s, head_width, head_cmax, head_norm) for c, s in zip(widths, sizes))

    # ---------------------------------------------------------------- frozen parts stay frozen
    def train(self, mode: bool = True) -> ProjectedDiscriminator:
        super().train(mode)
        self.backbone.eval()
        return self

    def requires_grad_(self, requires_grad: bool = True) -> ProjectedDiscriminator:
        super().requires_grad_(requires_grad)
        self.backbone.requires_grad_(False)
        return self

    def fill_backbone(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Copy ImageNet EfficientNet-Lite0 weights (the zoo's state dict) into the frozen backbone."""
        self.backbone.load_imagenet_state_dict(state_dict)
        self.backbone.requires_grad_(False)

    # ---------------------------------------------------------------- the forward pass
    def backbone_features(self, img: torch.Tensor) -> list[torch.Tensor]:
        """The four tapped activations of the frozen backbone for images in [-1, 1]."""
        if self.backbone_res and img.shape[-1] != self.backbone_res:
            img = F.interpolate(img, size=(self.backbone_res, self.backbone_res), mode="bilinear", align_corners=False)
        net = self.backbone
        h = net._relu_stem(net._bn0(net._conv_stem(net.preprocess(img))))
        taps = []
        for i, block in enumerate(net._blocks[: TAP_BLOCKS[-1] + 1]):
            h = block(h)
            if i in TAP_BLOCKS:
                taps.append(h)
        return taps

    def projected_features(self, img: torch.Tensor) -> list[torch.Tensor]:
        """CCM then CSM: the four pyramid levels p_1..p_4 the heads see (finest first)."""
        mixed = [F.conv2d(f, getattr(self, f"ccm{i}")) for i, f in enumerate(self.backbone_features(img))]
        out = [mixed[-1]]
        for i in range(len(mixed) - 2, -1, -1):
            up = F.interpolate(out[0], size=mixed[i].shape[-2:], mode="bilinear", align_corners=False)
            out.insert(0, mixed[i] + F.conv2d(up, getattr(self, f"csm{i}")))
        return out

    def patch_logits(self, img: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] in [-1, 1] -> [N, P]: every head's patch logits, concatenated."""
        return torch.cat([head(p) for head, p in zip(self.heads, self.projected_features(img))], dim=1)

    def forward(self, img: torch.Tensor, c: Optional[torch.Tensor] = None, **_unused) -> torch.Tensor:
        """[N, 3, H, W] in [-1, 1] -> [N, 1]: the mean patch logit ("real" > 0)."""
        return self.patch_logits(img).mean(dim=1, keepdim=True)
