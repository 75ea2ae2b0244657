"""rosinality/stylegan2-pytorch checkpoints: golden parity with rosinality's own model.py outputs (../shared/golden/
rosinality), config inference from the tensors (including the unmodified 256 and 1024 px layouts), seed conventions,
every capability on the golden checkpoint, and hostile or damaged .pt files (nothing in them is ever run)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from machinegaze import GazeError, checkpoints, mix
from machinegaze import generate as gen
from machinegaze.nets.stylegan2 import Discriminator, Generator
from tests.helpers import single_thread

one_thread = pytest.fixture(single_thread, scope="module", autouse=True)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def ros_dir(shared):
    return shared / "golden" / "rosinality"


@pytest.fixture(scope="module")
def ros(ros_dir):
    return checkpoints.load_networks(ros_dir / "ros_64.pt"), dict(np.load(ros_dir / "ros_64.npz"))


def _max(a, b) -> float:
    return float((a - torch.as_tensor(b)).abs().max())


# ================================================================ golden parity
def test_loads_config_and_meta(ros):
    nets, g = ros
    G, D = nets.G_ema, nets.D
    assert isinstance(G, Generator) and isinstance(D, Discriminator) and isinstance(nets.G, Generator)
    assert (G.img_resolution, G.z_dim, G.w_dim, G.mapping.num_layers, G.num_ws) == (64, 64, 64, 2, 10)
    assert G.init_kwargs["synthesis_kwargs"]["channel_base"] // 64 == 32  # the 64 px block narrows to 32 channels
    assert nets.meta["source_format"] == "rosinality-pt" and nets.meta["args"]["channel_multiplier"] == 1
    assert _max(G.mapping.w_avg, g["mean_latent"][0]) < 1e-5  # mean_latent(4096) of the seed-1234 z set
    # g and g_ema differ (weights and their own noise buffers), as in every real checkpoint
    assert not torch.equal(nets.G.synthesis.b8.conv0.noise_const, G.synthesis.b8.conv0.noise_const)


@pytest.mark.parametrize("zc", ["torch", "rs"])
def test_golden_latents_images_and_logits(ros, zc):
    nets, g = ros
    G, D = nets.G_ema, nets.D
    z = torch.from_numpy(g[f"z_{zc}"])
    with torch.no_grad():
        assert _max(G.mapping(z, None)[:, 0], g[f"w_{zc}"]) < 1e-4
        for psi in ("psi1", "psi07"):
            ws = G.mapping(z, None, truncation_psi=1.0 if psi == "psi1" else 0.7)
            assert _max(ws, g[f"latent_{zc}_{psi}"]) < 1e-4
            img = G.synthesis(ws, noise_mode="const")  # the stored noises.noise_i buffers
            assert _max(img, g[f"img_{zc}_{psi}"]) < 1e-3
            assert _max(D(torch.from_numpy(g[f"img_{zc}_{psi}"])), g[f"d_logits_{zc}_{psi}"]) < 1e-3
    from machinegaze.data import to_uint8  # NVlabs' x*127.5+128 truncation == rosinality's rounding of (x+1)/2*255

    diff = np.abs(to_uint8(img).astype(int) - g[f"img_{zc}_psi07_uint8"].astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_golden_mix_with_inject_index(ros):
    nets, g = ros
    G = nets.G_ema
    z = torch.from_numpy(g["z_torch"])
    with torch.no_grad():
        ws = G.mapping(z, None, truncation_psi=0.7)
    styles = list(range(int(g["mix_inject_index"]), G.num_ws))  # rows >= inject_index come from the second list
    mixed = mix.style_mix(ws[0:4], ws[4:8], styles)
    assert _max(mixed, g["mix_latent"]) < 1e-4
    with torch.no_grad():
        assert _max(G.synthesis(mixed, noise_mode="const"), g["mix_img"]) < 1e-3


def test_seed_conventions(ros):
    G, g = ros[0].G_ema, ros[1]
    assert torch.equal(gen.z_from_seed(0, 64, "rosinality")[0], torch.from_numpy(g["z_torch"][0]))
    assert torch.equal(torch.cat([gen.z_from_seed(s, 64) for s in range(8)]), torch.from_numpy(g["z_rs"]))
    with pytest.raises(GazeError, match="seed-convention"):
        gen.z_from_seed(0, 64, "tf")
    ws = gen.seeds_to_ws(G, [0], trunc=0.7, seed_convention="rosinality")
    assert _max(ws, g["latent_torch_psi07"][:1]) < 1e-4


def _cli(*args):
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "machinegaze.cli", *map(str, args)], capture_output=True, text=True, env=env
    )


def test_cli_generate_writes_the_golden_pngs(ros_dir, tmp_path):
    g = np.load(ros_dir / "ros_64.npz")
    r = _cli(
        "generate", "--network", ros_dir / "ros_64.pt", "--seeds", "0-7", "--trunc", "0.7", "--outdir", tmp_path / "a"
    )
    assert r.returncode == 0, r.stderr
    r2 = _cli(
        "generate",
        "--network",
        ros_dir / "ros_64.pt",
        "--seeds",
        "0",
        "--trunc",
        "0.7",
        "--seed-convention",
        "rosinality",
        "--outdir",
        tmp_path / "b",
    )
    assert r2.returncode == 0, r2.stderr
    for out, key, seeds in (
        (tmp_path / "a", "img_rs_psi07_uint8", range(8)),
        (tmp_path / "b", "img_torch_psi07_uint8", [0]),
    ):
        for s in seeds:
            diff = np.abs(np.asarray(Image.open(out / f"seed{s:04d}.png")).astype(int) - g[key][s].astype(int))
            assert diff.max() <= 1 and (diff > 0).mean() < 1e-2, (key, s)


# ================================================================ configs the golden file does not cover
def _listing_tensors(listing):
    """A state dict with the listed names/shapes: meta tensors, except real [1,3,3,1] blur kernels."""
    k = torch.tensor([1.0, 3, 3, 1])
    blur = torch.outer(k, k) / 64
    return {
        e["name"]: (blur * 4 if e["name"].endswith("kernel") else torch.empty(e["shape"], device="meta"))
        for e in listing
    }


@pytest.mark.parametrize("which,size,style_dim,n_mlp", [("size256_cm2", 256, 512, 8), ("size1024_cm2", 1024, 512, 8)])
def test_config_inference_on_unmodified_layouts(ros_dir, which, size, style_dim, n_mlp):
    """The real (un-narrowed) rosinality layouts: size, style_dim, n_mlp and channel widths inferred from shapes,
    and every renamed tensor has exactly the shape our module expects."""
    ref = json.loads((ros_dir / "ros_64.keys.json").read_text())["unmodified_model_py_reference_listings"][which]
    kw, sd = checkpoints.rosinality_generator(_listing_tensors(ref["g_ema"]), which)
    assert (kw["img_resolution"], kw["z_dim"], kw["mapping_kwargs"]["num_layers"]) == (size, style_dim, n_mlp)
    with torch.device("meta"):
        G = Generator(**kw)
    own = G.state_dict()
    assert G.num_ws == ref["n_latent"]
    assert set(own) - set(sd) == {k for k in own if k.endswith("resample_filter")} | {"mapping.w_avg"}
    assert all(tuple(own[k].shape) == tuple(v.shape) for k, v in sd.items())
    assert sum(v.numel() for k, v in sd.items() if "noise_const" not in k) == ref["g_num_params"]
    kw, sd = checkpoints.rosinality_discriminator(
        {k: (v / 4 if k.endswith("kernel") else v) for k, v in _listing_tensors(ref["d"]).items()}, which
    )
    with torch.device("meta"):
        D = Discriminator(**kw)
    own = D.state_dict()
    assert set(own) - set(sd) == {k for k in own if k.endswith("resample_filter")}
    assert all(tuple(own[k].shape) == tuple(v.shape) for k, v in sd.items())
    assert sum(v.numel() for v in sd.values()) == ref["d_num_params"]


def test_unsupported_channel_table_is_a_clear_error():
    with pytest.raises(GazeError, match="channel_multiplier is not supported"):
        checkpoints._fit_channels({4: 512, 8: 512, 16: 512, 32: 512, 64: 1024}, "x.pt")  # cm=4: wider at 64 px


# ================================================================ capabilities
def test_convert_weight_format_and_safetensors_roundtrip(ros, ros_dir, tmp_path):
    """convert_weight.py's {g_ema, latent_avg} layout: latent_avg becomes w_avg. Then gaze convert -> identical images."""
    arc = checkpoints.TorchZip(ros_dir / "ros_64.pt")
    sd = arc.state_dict(arc.root["g_ema"], "g_ema")
    avg = torch.randn(64)
    torch.save({"g_ema": sd, "latent_avg": avg}, tmp_path / "cw.pt")
    cw = checkpoints.load_networks(tmp_path / "cw.pt")
    assert torch.equal(cw.G_ema.mapping.w_avg, avg) and cw.D is None and cw.G is None
    dst = checkpoints.convert(ros_dir / "ros_64.pt", tmp_path / "r.safetensors")
    back = checkpoints.load_networks(dst)
    G = ros[0].G_ema
    ws = gen.seeds_to_ws(G, [3, 4], trunc=0.7)
    with torch.no_grad():
        assert torch.equal(back.G_ema.synthesis(ws, noise_mode="const"), G.synthesis(ws, noise_mode="const"))
        assert torch.equal(back.D(torch.zeros(4, 3, 64, 64)), ros[0].D(torch.zeros(4, 3, 64, 64)))


def test_projection_breed_and_uncanny_step(ros):
    import copy

    from machinegaze import project as P
    from machinegaze import uncanny as U

    nets = ros[0]
    G = nets.G_ema
    target = gen.synthesize(G, gen.seeds_to_ws(G, [3], trunc=0.7))
    w_avg, _, _ = P.w_stats(G, 200)
    ws = w_avg.repeat(1, G.num_ws, 1).requires_grad_(True)
    opt = torch.optim.Adam([ws], lr=0.05)
    losses = []
    for _ in range(3):
        loss = (G.synthesis(ws, noise_mode="const") - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] and len(P.noise_layers(G)) == 9
    child = mix.make_child(G, ws.detach(), target.new_zeros(1, G.num_ws, G.w_dim), mix.BreedConfig(genes="fine=1"))
    assert torch.equal(child[0, 8:], torch.zeros(2, 64))
    G2 = copy.deepcopy(G).train().requires_grad_(True)
    critic = U.freeze(U.DiscriminatorCritic(nets.D))
    before = U.fingerprint(critic)
    opt = U.make_optimizer(G2, U.UncannyConfig())
    torch.manual_seed(0)
    assert torch.isfinite(U.finetune_step(G2, critic, opt, 4)) and U.same_state(critic, before)


# ================================================================ hostile and damaged files
class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def ros_sd(ros_dir):
    arc = checkpoints.TorchZip(ros_dir / "ros_64.pt")
    return arc.state_dict(arc.root["g_ema"], "g_ema")


@pytest.mark.parametrize("where", ["extra", "args"])
def test_code_in_a_checkpoint_is_refused_and_never_run(tmp_path, ros_sd, where):
    marker = tmp_path / "pwned"
    obj = {"g_ema": ros_sd}
    if where == "extra":
        obj["evil"] = _Evil(marker)
    else:
        obj["args"] = argparse.Namespace(size=64, latent=64, hook=_Evil(marker))
    torch.save(obj, tmp_path / "bad.pt")
    with pytest.raises(GazeError, match="refused global '(posix|os|nt).system'"):
        checkpoints.load_networks(tmp_path / "bad.pt")
    r = _cli("generate", "--network", tmp_path / "bad.pt", "--seeds", "0", "--outdir", tmp_path / "o")
    assert r.returncode != 0 and "refused global" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not marker.exists()


def test_benign_namespace_args_are_inert_data(tmp_path, ros_sd):
    torch.save({"g_ema": ros_sd, "args": argparse.Namespace(size=64, n_mlp=2)}, tmp_path / "ok.pt")
    nets = checkpoints.load_networks(tmp_path / "ok.pt")
    assert nets.meta["args"] == {"size": 64, "n_mlp": 2}


def test_truncated_and_damaged_files_are_one_line_errors(ros_dir, tmp_path):
    raw = (ros_dir / "ros_64.pt").read_bytes()
    for frac in (0.5, 0.999):
        p = tmp_path / f"cut{frac}.pt"
        p.write_bytes(raw[: int(len(raw) * frac)])
        with pytest.raises(GazeError, match="truncated or corrupt"):
            checkpoints.load_networks(p)
    # a storage member shorter than its tensor
    src, dst = zipfile.ZipFile(ros_dir / "ros_64.pt"), tmp_path / "short.pt"
    with zipfile.ZipFile(dst, "w") as out:
        victim = next(n for n in src.namelist() if "/data/" in n and src.getinfo(n).file_size > 64)
        for n in src.namelist():
            out.writestr(n, src.read(n)[:16] if n == victim else src.read(n))
    with pytest.raises(GazeError, match="bytes, expected|not a state dict"):
        checkpoints.load_networks(dst)
    # a zip that is not a torch archive, and a torch archive that is not a rosinality checkpoint
    with zipfile.ZipFile(tmp_path / "other.pt", "w") as out:
        out.writestr("hello.txt", "hi")
    with pytest.raises(GazeError, match="not a torch.save archive"):
        checkpoints.load_networks(tmp_path / "other.pt")
    torch.save({"model": torch.zeros(3)}, tmp_path / "plain.pt")
    with pytest.raises(GazeError, match="not a rosinality StyleGAN2 checkpoint"):
        checkpoints.load_networks(tmp_path / "plain.pt")
    r = _cli("generate", "--network", tmp_path / "cut0.5.pt", "--seeds", "0", "--outdir", tmp_path / "o")
    assert r.returncode != 0 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


# ================================================================ the web lab on both new formats
@pytest.mark.parametrize("which", ["rosinality/ros_64.pt", "stylegan3/sg3t_64.pkl"])
def test_web_lab_generates_and_mixes(shared, tmp_path, which):
    import io
    import warnings

    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    from machinegaze.web import ServeConfig, create_app

    path = shared / "golden" / which
    app = create_app(ServeConfig(network=str(path), detector="none", data_dir=tmp_path, workers=1, queue=2))
    with TestClient(app) as c:
        r = c.post("/api/generate", json={"seed": 3, "psi": 0.7})
        assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (64, 64)
        G = checkpoints.load_networks(path).G_ema
        want = gen.generate_images(G, [3], gen.GenerateConfig(trunc=0.7))[0]
        from machinegaze.data import to_uint8

        got = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB")).astype(int)
        assert np.abs(got - to_uint8(want)[0].astype(int)).max() <= 1
        m = c.post("/api/mix", json={"a": {"seed": 3}, "b": {"seed": 5}, "psi": 0.7, "coarse": 1})
        assert m.status_code == 200 and m.content != r.content
