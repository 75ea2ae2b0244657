"""The output path of `gaze generate`: uint8 conversion, per-seed PNGs and the grid, written by the background
PNG writer, must hold exactly the pixels of a straightforward reference computation (data.to_uint8 of the
synthesised images, data.make_grid for the grid)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from machinegaze.data import images_to_uint8, make_grid, to_uint8
from machinegaze.generate import (
    GenerateConfig,
    GridCanvas,
    PngWriter,
    generate_to_dir,
    seeds_to_ws,
    synthesize,
)
from machinegaze.nets.stylegan2 import Generator
from tests.helpers import single_thread, tiny_generator

one_thread = pytest.fixture(single_thread, scope="module", autouse=True)


@pytest.fixture(scope="module")
def G():
    g = tiny_generator(channel_base=64, channel_max=16)
    with torch.no_grad():  # a wide output range, so clamping at both ends is exercised
        g.synthesis.b16.torgb.weight.mul_(8)
    return g


def _png(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def test_images_to_uint8_matches_to_uint8_on_every_edge():
    x = torch.randn(2, 3, 5, 7) * 1.5
    edges = torch.tensor([-1.0, 1.0, -1.01, 1.01, 0.0, -1 / 255, 1 / 255, 127.5 / 127.5, -128 / 127.5, 127 / 127.5])
    x.view(-1)[: edges.numel()] = edges
    want = to_uint8(x)
    got = images_to_uint8(x.clone())
    assert got.dtype == np.uint8 and got.shape == want.shape and got.flags.c_contiguous
    assert np.array_equal(got, want)


@pytest.mark.parametrize("n", [2, 5, 9])
def test_grid_canvas_is_make_grid_in_uint8(n):
    images = torch.rand(n, 3, 4, 6) * 2.4 - 1.2
    tiles = to_uint8(images)
    canvas = GridCanvas(n, 4, 6, 3)
    for i, t in enumerate(tiles):
        canvas.put(i, t)
    assert np.array_equal(canvas.pixels, to_uint8(make_grid(images.clamp(-1, 1)))[0])


def test_grid_canvas_shrinks_large_tiles_by_box_means():
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 256, size=(3, 1024, 512, 3), dtype=np.uint8)
    canvas = GridCanvas(3, 1024, 512, 3)
    assert (canvas.f, canvas.h, canvas.w) == (4, 256, 128) and canvas.pixels.shape == (512, 256, 3)
    for i, t in enumerate(tiles):
        canvas.put(i, t)
    want = tiles[2].reshape(256, 4, 128, 4, 3).astype(float).mean(axis=(1, 3))
    assert np.abs(canvas.pixels[256:, :128].astype(float) - want).max() <= 0.5
    assert (canvas.pixels[256:, 128:] == 255).all()  # the empty cell stays white


@pytest.mark.parametrize("batch_size", [1, 3])
def test_generate_to_dir_pixels_equal_the_reference(G, tmp_path, batch_size):
    seeds = [7, 0, 3, 12, 5]
    cfg = GenerateConfig(trunc=0.8, batch_size=batch_size)
    assert generate_to_dir(G, seeds, tmp_path, cfg) == len(seeds)
    chunks = [seeds[i : i + batch_size] for i in range(0, len(seeds), batch_size)]  # generate_to_dir's batches
    ws = torch.cat([seeds_to_ws(G, c, trunc=0.8) for c in chunks])
    with torch.no_grad():
        images = synthesize(G, ws, batch_size=batch_size)
    ref = to_uint8(images)
    assert ref.min() == 0 and ref.max() == 255  # both clamps were hit
    for s, want in zip(seeds, ref):
        assert np.array_equal(_png(tmp_path / f"seed{s:04d}.png"), want)
    assert np.array_equal(_png(tmp_path / "grid.png"), to_uint8(make_grid(images.clamp(-1, 1)))[0])
    assert np.array_equal(np.load(tmp_path / "ws.npz")["w"], ws.numpy())
    assert not list(tmp_path.glob(".*.tmp*"))  # no temporary file left behind


def test_png_writer_is_lossless_and_reports_errors(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, size=(9, 11, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, size=(4, 4, 1), dtype=np.uint8)
    (tmp_path / "blocker").write_text("a file where a folder should be")
    with PngWriter() as w:
        w.submit(a, tmp_path / "a.png")
        w.submit(gray, tmp_path / "g.png")
    assert np.array_equal(_png(tmp_path / "a.png"), a)
    assert np.array_equal(_png(tmp_path / "g.png"), gray[..., 0])
    w = PngWriter()
    w.submit(a, tmp_path / "blocker" / "x.png")
    with pytest.raises(OSError):
        w.close()


def test_synthesize_batch_at_512_px_trims_without_changing_pixels():
    """At >= 512 px the CPU path hands free heap pages back before the last block (a forward pre-hook); the
    images are those of the plain synthesis network, and no hook is left behind."""
    from machinegaze.generate import synthesize_batch

    torch.manual_seed(1)
    g = Generator(8, 0, 8, 512, 3, dict(num_layers=1), dict(channel_base=512, channel_max=2)).eval()
    ws = seeds_to_ws(g, [0, 1])
    with torch.no_grad():
        want = g.synthesis(ws, noise_mode="const")
        got = synthesize_batch(g, ws)
    assert torch.equal(got, want)
    assert not g.synthesis.b512._forward_pre_hooks
