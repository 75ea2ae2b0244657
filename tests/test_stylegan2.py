"""StyleGAN2 nets: golden parity against NVIDIA's own outputs, plus checks that do not rely on the golden data."""

import numpy as np
import pytest
import scipy.signal
import torch
import torch.nn.functional as F

from machinegaze.checkpoints import load_networks
from machinegaze.data import to_uint8
from machinegaze.generate import seeds_to_ws, synthesize, z_from_seed
from machinegaze.mix import group_layers, parse_styles, style_mix
from machinegaze.nets import ops
from machinegaze.nets.stylegan2 import Discriminator, Generator

GOLDEN = ["sg2_skip_32", "sg2_cond_64"]


@pytest.fixture(scope="module", params=GOLDEN)
def golden(request, golden_dir):
    nets = load_networks(golden_dir / f"{request.param}.pkl")
    return request.param, nets, dict(np.load(golden_dir / f"{request.param}.npz"))


def _t(a):
    return torch.from_numpy(np.asarray(a))


def test_golden_mapping_and_synthesis(golden):
    name, nets, g = golden
    G = nets.G_ema
    assert G.num_ws == int(g["num_ws"]) and G.z_dim == int(g["z_dim"]) and G.c_dim == int(g["c_dim"])
    z = torch.cat([z_from_seed(s, G.z_dim) for s in g["seeds"]])
    assert torch.equal(z, _t(g["z"]))  # NVlabs seed semantics
    c = _t(g["c"]).float() if G.c_dim else None
    with torch.no_grad():
        ws1 = G.mapping(z, c)
        ws7 = G.mapping(z, c, truncation_psi=0.7)
        assert (ws1 - _t(g["ws_psi1"])).abs().max() < 1e-4
        assert (ws7 - _t(g["ws_psi07"])).abs().max() < 1e-4
        assert (G.mapping.w_avg - _t(g["w_avg"])).abs().max() == 0
        img1 = G.synthesis(ws1, noise_mode="const")
        img7 = G.synthesis(ws7, noise_mode="const")
    assert (img1 - _t(g["img_psi1"])).abs().max() < 1e-3
    assert (img7 - _t(g["img_psi07"])).abs().max() < 1e-3
    u8 = to_uint8(img7)
    diff = np.abs(u8.astype(int) - g["img_psi07_uint8"].astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_golden_batch_of_one_matches(golden):
    _, nets, g = golden
    G = nets.G_ema
    with torch.no_grad():
        one = G.synthesis(_t(g["ws_psi07"][3:4]), noise_mode="const")
    assert (one - _t(g["img_psi07"][3:4])).abs().max() < 1e-3


def test_golden_style_mixing(golden):
    _, nets, g = golden
    G = nets.G_ema
    styles = list(g["mix_col_styles"])
    assert styles == list(range(G.num_ws // 2))
    seeds = [0, 1, 2, 3]
    c_all = None
    if G.c_dim:
        c_all = torch.zeros(4, G.c_dim)
        c_all[range(4), [s % G.c_dim for s in seeds]] = 1
    z = torch.cat([z_from_seed(s, G.z_dim) for s in seeds])
    with torch.no_grad():
        w = G.mapping(z, c_all, truncation_psi=float(g["mix_psi"]))
    w_of = {s: w[i : i + 1] for i, s in enumerate(seeds)}
    for k, (r, col) in enumerate(g["mix_pairs"]):
        mixed = style_mix(w_of[int(r)], w_of[int(col)], styles)
        assert (mixed - _t(g["mix_ws"][k : k + 1])).abs().max() < 1e-4
        img = synthesize(G, mixed, noise_mode="const")
        assert (img - _t(g["mix_img"][k : k + 1])).abs().max() < 1e-3


def test_golden_discriminator(golden):
    _, nets, g = golden
    D = nets.D
    c = _t(g["c"]).float() if D.c_dim else None
    with torch.no_grad():
        for key in ("psi1", "psi07"):
            logits = D(_t(g[f"img_{key}"]), c)
            assert (logits - _t(g[f"d_logits_{key}"])).abs().max() < 1e-3


def test_g_and_g_ema_differ_and_unconditional_seeds_api(golden_dir):
    nets = load_networks(golden_dir / "sg2_skip_32.pkl")
    g = np.load(golden_dir / "sg2_skip_32.npz")
    ws = seeds_to_ws(nets.G_ema, list(range(8)), trunc=0.7)
    assert (ws - _t(g["ws_psi07"])).abs().max() < 1e-4
    with torch.no_grad():
        wrong = nets.G.synthesis(_t(g["ws_psi07"]), noise_mode="const")
    assert (wrong - _t(g["img_psi07"])).abs().max() > 0.1  # the mix-up G vs G_ema would be caught


# ------------------------------------------------------------------ checks independent of the golden data
def _ref_fused_modconv(x, weight, styles, up, demod=True):
    """NVIDIA's 'fused' formulation written directly: per-sample weights, grouped conv (the paper's eq. 1-3)."""
    b = x.shape[0]
    w = weight.unsqueeze(0) * styles.reshape(b, 1, -1, 1, 1)
    if demod:
        w = w * (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt().reshape(b, -1, 1, 1, 1)
    out = []
    f = ops.setup_filter([1, 3, 3, 1])
    for i in range(b):
        if up == 1:
            out.append(F.conv2d(x[i : i + 1], w[i], padding=weight.shape[-1] // 2))
        else:  # transposed conv = zero-insert + true convolution, then the [1,3,3,1] blur (gain 4)
            h = x.shape[2]
            y = torch.zeros(1, x.shape[1], 2 * h - 1, 2 * h - 1)
            y[..., ::2, ::2] = x[i : i + 1]
            y = F.conv2d(F.pad(y, [2, 2, 2, 2]), w[i].flip([2, 3]))  # 2h+1 px
            out.append(ops.upfirdn2d(y, f, padding=[1, 1, 1, 1], gain=4))  # blur -> 2h px
    return torch.cat(out)


@pytest.mark.parametrize("up", [1, 2])
def test_modulated_conv_matches_per_sample_weights(up):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 8, 8, generator=g)
    weight = torch.randn(7, 5, 3, 3, generator=g)
    styles = torch.randn(3, 5, generator=g)
    f = ops.setup_filter([1, 3, 3, 1])
    ref = _ref_fused_modconv(x, weight, styles, up)
    demod = ops.demodulation(weight, styles)
    for per_sample in (True, False):  # folded per-sample weights (inference) and shared weight (autograd)
        ours = ops.modulated_conv(x, weight, styles, demod, up=up == 2, f=f, per_sample=per_sample)
        assert ours.shape == (3, 7, 8 * up, 8 * up)
        assert (ours - ref).abs().max() < 1e-4


def test_upfirdn_against_scipy():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 1, 9, 9, generator=g)
    f = ops.setup_filter([1, 3, 3, 1])
    ours = ops.upfirdn2d(x, f, padding=[2, 1, 2, 1])
    ref = scipy.signal.convolve2d(np.pad(x[0, 0].numpy(), ((2, 1), (2, 1))), f.numpy(), mode="valid")
    assert np.abs(ours[0, 0].numpy() - ref).max() < 1e-5
    # a constant image stays constant under 2x up/down-sampling (away from the borders)
    ones = torch.ones(1, 2, 8, 8)
    assert torch.allclose(ops.upsample2d(ones, f)[..., 2:-2, 2:-2], torch.ones(1, 2, 12, 12), atol=1e-6)
    assert torch.allclose(ops.downsample2d(ones, f)[..., 1:-1, 1:-1], torch.ones(1, 2, 2, 2), atol=1e-6)


@pytest.mark.parametrize("res", [8, 16, 64, 128])
@pytest.mark.parametrize("arch", ["orig", "skip", "resnet"])
def test_architecture_rules(res, arch):
    G = Generator(
        z_dim=16,
        c_dim=0,
        w_dim=16,
        img_resolution=res,
        img_channels=3,
        mapping_kwargs=dict(num_layers=3),
        synthesis_kwargs=dict(channel_base=256, channel_max=32, architecture=arch),
    )
    log2 = int(np.log2(res))
    assert G.num_ws == 2 * log2 - 2
    blocks = [getattr(G.synthesis, f"b{r}") for r in G.synthesis.block_resolutions]
    assert [b.num_conv for b in blocks] == [1] + [2] * (log2 - 2)
    assert sum(hasattr(b, "torgb") for b in blocks) == (len(blocks) if arch == "skip" else 1)
    assert sum(hasattr(b, "skip") for b in blocks) == (len(blocks) - 1 if arch == "resnet" else 0)
    # channel rule: min(channel_base // res, channel_max)
    assert blocks[-1].conv1.weight.shape[0] == min(256 // res, 32)
    with torch.no_grad():
        img = G(torch.randn(2, 16), None, noise_mode="random")
    assert img.shape == (2, 3, res, res) and torch.isfinite(img).all()
    D = Discriminator(
        c_dim=0,
        img_resolution=res,
        img_channels=3,
        architecture=arch,
        channel_base=256,
        channel_max=32,
        epilogue_kwargs=dict(mbstd_group_size=2),
    )
    with torch.no_grad():
        assert D(img).shape == (2, 1)


def test_fp16_flags_and_clamp():
    G = Generator(
        z_dim=8,
        c_dim=0,
        w_dim=8,
        img_resolution=32,
        img_channels=3,
        synthesis_kwargs=dict(channel_base=128, channel_max=16, num_fp16_res=2, conv_clamp=0.01),
    )
    assert [getattr(G.synthesis, f"b{r}").use_fp16 for r in (4, 8, 16, 32)] == [False, False, True, True]
    with torch.no_grad():
        img = G(torch.randn(1, 8), noise_mode="none")
    # toRGB clamps to ±conv_clamp; a skip sum of 4 clamped toRGBs (upsampled, gain-preserving) stays near that range
    assert img.abs().max() < 0.01 * 4 * 1.6


def test_truncation_cutoff_and_noise_modes():
    torch.manual_seed(0)
    G = Generator(
        z_dim=8,
        c_dim=0,
        w_dim=8,
        img_resolution=16,
        img_channels=3,
        synthesis_kwargs=dict(channel_base=128, channel_max=16),
    )
    G.mapping.w_avg.normal_()
    for b in G.synthesis.modules():
        if hasattr(b, "noise_strength"):
            b.noise_strength.data.fill_(0.5)
    z = torch.randn(2, 8)
    with torch.no_grad():
        w1, wc = G.mapping(z, None), G.mapping(z, None, truncation_psi=0.5, truncation_cutoff=2)
        assert torch.allclose(wc[:, :2], G.mapping.w_avg + 0.5 * (w1[:, :2] - G.mapping.w_avg))
        assert torch.equal(wc[:, 2:], w1[:, 2:])
        a, b = G.synthesis(w1, noise_mode="const"), G.synthesis(w1, noise_mode="const")
        assert torch.equal(a, b)
        assert not torch.equal(G.synthesis(w1, noise_mode="random"), G.synthesis(w1, noise_mode="random"))
        assert not torch.equal(a, G.synthesis(w1, noise_mode="none"))


def test_layer_groups():
    G = Generator(
        z_dim=8,
        c_dim=0,
        w_dim=8,
        img_resolution=128,
        img_channels=3,
        synthesis_kwargs=dict(channel_base=256, channel_max=16),
    )
    assert G.num_ws == 12
    assert group_layers(G, "coarse") == [0, 1, 2, 3]
    assert group_layers(G, "middle") == [4, 5, 6, 7]
    assert group_layers(G, "fine") == [8, 9, 10, 11]
    assert parse_styles(G, "coarse,fine") == [0, 1, 2, 3, 8, 9, 10, 11]
    assert parse_styles(G, "0-5") == [0, 1, 2, 3, 4, 5]


def test_cached_inference_tensors_follow_in_place_weight_changes():
    """The inference path caches the weight energy and the scaled constant noise: an in-place change of the
    weight or the noise strength (a state-dict load, an uncanny step) must reach the next image."""
    torch.manual_seed(0)
    G = Generator(8, 0, 8, 16, 3, synthesis_kwargs=dict(channel_base=64, channel_max=16))
    ws = torch.randn(1, G.num_ws, 8)
    layer = G.synthesis.b16.conv1
    with torch.no_grad():
        layer.noise_strength.fill_(0.5)
        a = G.synthesis(ws, noise_mode="const")
        layer.noise_strength.fill_(-0.5)
        b = G.synthesis(ws, noise_mode="const")
        layer.weight.add_(torch.randn_like(layer.weight))  # (a pure rescale would be undone by demodulation)
        c = G.synthesis(ws, noise_mode="const")
    with torch.enable_grad():  # the autograd path computes everything afresh: the reference
        ref = G.synthesis(ws, noise_mode="const").detach()
    assert not torch.equal(a, b) and not torch.equal(b, c)
    assert torch.allclose(c, ref, atol=1e-5)


@pytest.mark.parametrize("k, groups", [(1, 1), (3, 1), (3, 2)])
def test_upsampling_conv_matches_its_definition(k, groups):
    """conv_up2 = insert zeros after every pixel, true convolution with w (padding k - 1), then the FIR with gain 4
    and the padding that lands on exactly twice the input size, computed literally with upfirdn2d."""
    torch.manual_seed(0)
    n, i, o, h = 2, 4, 6, 7
    x = torch.randn(n, i, h, h)
    w = torch.randn(o, i // groups, k, k)
    f = ops.setup_filter()
    got = ops.conv_up2(x, w, f, groups=groups)
    z = ops.upfirdn2d(x, ops.setup_filter([1.0], normalize=False), up=2, padding=[0, 1, 0, 1])  # zeros inserted
    full = F.conv2d(F.pad(z, [k - 1] * 4), w.flip([2, 3]), groups=groups)  # true convolution, full output
    fw = f.shape[-1]
    lo = (fw - k + 1) // 2
    crop = full.shape[-1] + 2 * lo - fw + 1 - 2 * h  # what the FIR's output has beyond 2h, at the end
    want = ops.blur(full, f, pad=lo, gain=4.0)[..., : 2 * h, : 2 * h]
    assert crop >= 0 and got.shape == (n, o, 2 * h, 2 * h)
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    with pytest.raises(ValueError, match="odd kernels"):
        ops.conv_up2(x, torch.randn(o, i, 4, 4), f)
