"""The native-resolution patch policy: classify a face by patches at its own pixels, not by a shrunk copy.

Shrinking a face to the classifier's input size averages away the one- and two-pixel traces a generator's
upsampling leaves. Instead the detector is trained on random `patch` x `patch` crops and, at test time, the
image is tiled into patches (a grid that covers every pixel; the last row and column are aligned to the
border and may overlap their neighbours) whose logits are averaged: the image's logit is the mean patch logit.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def patch_starts(length: int, patch: int) -> list[int]:
    """Offsets of patches covering 0..length: a stride of `patch`, the last one flush with the end."""
    if length <= patch:
        return [0]
    starts = list(range(0, length - patch + 1, patch))
    if starts[-1] != length - patch:
        starts.append(length - patch)
    return starts


def tile(x: torch.Tensor, patch: int) -> tuple[torch.Tensor, int]:
    """[N, C, H, W] -> ([N * P, C, patch, patch], P): the P covering patches of every image, image-major."""
    n, c, h, w = x.shape
    if h <= patch and w <= patch:
        return x, 1
    ys, xs = patch_starts(h, patch), patch_starts(w, patch)
    tiles = [x[:, :, y : y + patch, x0 : x0 + patch] for y in ys for x0 in xs]
    return torch.stack(tiles, dim=1).reshape(n * len(tiles), c, min(h, patch), min(w, patch)), len(tiles)


def patch_logits(logit_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, patch: int) -> torch.Tensor:
    """Mean over each image's patches of `logit_fn` (patches -> logits [N * P]): logits [N]."""
    tiles, p = tile(x, patch)
    return logit_fn(tiles).reshape(x.shape[0], p).mean(dim=1)
