"""Wang et al. training augmentation, the NPR and spectrum representations and the native patch policy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from machinegaze import GazeError
from machinegaze.detect import native
from machinegaze.detect.model import Detector, DetectorSpec
from machinegaze.detect.sources import Augment, to_tensor
from machinegaze.detect.train import TrainConfig, training_images
from machinegaze.nets.npr import NPRNet, npr_residual
from machinegaze.nets.spectrum import SpectrumNet, azimuthal_average, spectral_features

torch.set_num_threads(1)


def _images(n: int = 4, size: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, size // 8, size // 8, 3)).astype(np.uint8)
    smooth = F.interpolate(torch.from_numpy(base).permute(0, 3, 1, 2).float(), size=size, mode="bilinear")
    return smooth.permute(0, 2, 3, 1).round().clamp(0, 255).byte().numpy()


def test_augment_is_deterministic_by_seed_and_changes_pixels():
    x = _images()
    aug = Augment()
    a = aug.batch(x, 48, np.random.default_rng(1))
    b = aug.batch(x, 48, np.random.default_rng(1))
    c = aug.batch(x, 48, np.random.default_rng(2))
    assert a.shape == (4, 48, 48, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    # Blur and JPEG always on, no resize: the crop's pixels differ from every same-size window of the input.
    sure = Augment(blur_p=1.0, jpeg_p=1.0, resize_p=0.0)
    out = sure(x[0], 64, np.random.default_rng(0))
    assert (
        np.abs(out.astype(int) - x[0].astype(int)).mean() > 0.5
        or np.abs(out.astype(int) - x[0, :, ::-1].astype(int)).mean() > 0.5
    )


def test_augment_pads_images_smaller_than_the_crop():
    x = _images(1, 32)
    out = Augment(resize_p=1.0, scale_min=0.5, scale_max=0.5, blur_p=0, jpeg_p=0)(x[0], 24, np.random.default_rng(0))
    assert out.shape == (24, 24, 3)


def test_training_images_augment_only_when_asked_and_are_seeded():
    x = _images()
    plain = TrainConfig(arch="npr", pretrained=False, size=64, patch=32, freeze_epochs=0, epochs=1)
    assert not plain.augment  # off by default: evaluation and predict never see it
    aug = TrainConfig(arch="npr", pretrained=False, size=64, patch=32, freeze_epochs=0, epochs=1, augment=True)
    xa = to_tensor(training_images(x, aug, torch.Generator().manual_seed(0)))
    xb = to_tensor(training_images(x, aug, torch.Generator().manual_seed(0)))
    xp = to_tensor(training_images(x, plain, torch.Generator().manual_seed(0)))
    assert xa.shape == xp.shape == (4, 3, 32, 32)
    assert torch.equal(xa, xb) and not torch.equal(xa, xp)
    # Without augmentation every crop is a window of the image, pixels untouched.
    full = torch.from_numpy(x).permute(0, 3, 1, 2).float().div(127.5).sub(1)
    for i in range(4):
        wins = full[i].unfold(1, 32, 1).unfold(2, 32, 1).permute(1, 2, 0, 3, 4).reshape(-1, 3, 32, 32)
        hit = (wins == xp[i]).flatten(1).all(1).any() or (wins == xp[i].flip(-1)).flatten(1).all(1).any()
        assert hit


def test_npr_residual_vanishes_on_upsampled_images_only():
    g = torch.Generator().manual_seed(0)
    low = torch.rand(2, 3, 8, 8, generator=g)
    up = F.interpolate(low, scale_factor=2, mode="nearest")
    assert npr_residual(up).abs().max() == 0
    x = torch.rand(2, 3, 17, 16, generator=g)
    r = npr_residual(x)
    assert r.shape == (2, 3, 16, 16)
    assert r[..., ::2, ::2].abs().max() == 0 and r.abs().max() > 0
    assert NPRNet(8).feature_map(x[..., :16, :16]).shape == (2, 64, 2, 2)


def test_spectrum_features_see_upsampling_and_any_size():
    assert torch.allclose(azimuthal_average(torch.ones(1, 3, 16, 16), 8), torch.ones(1, 3, 8))
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(4, 3, 64, 64, generator=g) * 2 - 1
    up = F.interpolate(noise[..., ::2, ::2], scale_factor=2, mode="nearest")
    f_noise, f_up = spectral_features(noise), spectral_features(up)
    assert f_noise.shape == (4, 3 * (32 + 64))
    # Nearest upsampling moves power out of the highest frequencies: the outer rings drop.
    assert (f_up[:, 28:32] < f_noise[:, 28:32]).all()
    net = SpectrumNet().eval()
    assert net.feature_map(noise).shape == (4, 64, 1, 1) and net.feature_map(noise[..., :48, :40]).shape[0] == 4


def test_patches_cover_the_image_and_logits_are_their_mean():
    assert native.patch_starts(100, 32) == [0, 32, 64, 68]
    assert native.patch_starts(20, 32) == [0]
    x = torch.arange(2 * 3 * 40 * 40, dtype=torch.float32).reshape(2, 3, 40, 40)
    tiles, p = native.tile(x, 16)
    assert p == 9 and tiles.shape == (18, 3, 16, 16)
    assert torch.equal(tiles[8], x[0, :, 24:40, 24:40]) and torch.equal(tiles[9], x[1, :, 0:16, 0:16])
    det = Detector(DetectorSpec("npr", size=64, width=8, patch=32)).eval()
    img = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        per_patch = det._whole_logits(native.tile(img, 32)[0]).reshape(3, 4).mean(1)
        assert torch.allclose(det(img), per_patch, atol=1e-5)
    with pytest.raises(GazeError):
        DetectorSpec("npr", size=64, patch=128)


@pytest.mark.parametrize("n, bs", [(33, 32), (65, 32), (32, 32), (1, 32), (40, 32)])
def test_batches_cover_every_image_once_and_never_leave_a_single_image(n, bs):
    from machinegaze.detect.train import _batches

    out = _batches(n, bs, torch.Generator().manual_seed(0))
    assert sorted(torch.cat(out).tolist()) == list(range(n))
    assert n == 1 or min(len(b) for b in out) >= 2  # BatchNorm cannot train on a batch of one
