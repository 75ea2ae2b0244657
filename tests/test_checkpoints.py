"""Loading NVlabs pickles safely, our safetensors format, and refusing everything else."""

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from machinegaze import GazeError
from machinegaze.checkpoints import convert, load_networks, read_nvlabs_pickle, save_networks
from machinegaze.nets.stylegan2 import Discriminator, Generator
from tests.nvlabs_pickle import Persistent, _install_fake_modules, module_record, snapshot_bytes


def _tiny(res=16, arch="skip", c_dim=0, mapping_layers=2, fp16=0, clamp=None, seed=0):
    torch.manual_seed(seed)
    G = Generator(
        z_dim=16,
        c_dim=c_dim,
        w_dim=16,
        img_resolution=res,
        img_channels=3,
        mapping_kwargs=dict(num_layers=mapping_layers),
        synthesis_kwargs=dict(channel_base=128, channel_max=32, architecture=arch, num_fp16_res=fp16, conv_clamp=clamp),
    )
    with torch.no_grad():
        for p in G.parameters():
            p.add_(0.1 * torch.randn_like(p))
        G.mapping.w_avg.normal_()
    D = Discriminator(
        c_dim=c_dim,
        img_resolution=res,
        img_channels=3,
        architecture=arch,
        channel_base=128,
        channel_max=32,
        num_fp16_res=fp16,
        conv_clamp=clamp,
        epilogue_kwargs=dict(mbstd_group_size=2),
    )
    return G.eval(), D.eval()


@pytest.mark.parametrize(
    "cfg",
    [
        dict(res=8, arch="orig", mapping_layers=1),
        dict(res=16, arch="resnet", mapping_layers=4, fp16=2, clamp=256),
        dict(res=64, arch="skip", c_dim=3, mapping_layers=8, fp16=1),
    ],
)
def test_nvlabs_format_roundtrip_other_configs(tmp_path, cfg):
    """Configurations the golden files don't cover: rebuilt from the recorded init kwargs alone."""
    G, D = _tiny(**cfg)
    p = tmp_path / "snap.pkl"
    p.write_bytes(snapshot_bytes(G=G, D=D, G_ema=G))
    nets = load_networks(p)
    assert nets.G_ema.init_kwargs == G.init_kwargs
    z = torch.randn(2, 16)
    c = torch.eye(cfg.get("c_dim", 0))[:2] if cfg.get("c_dim") else None
    with torch.no_grad():
        assert torch.equal(
            nets.G_ema(z, c, truncation_psi=0.7, noise_mode="const"), G(z, c, truncation_psi=0.7, noise_mode="const")
        )
        img = G(z, c, noise_mode="const")
        assert torch.equal(nets.D(img, c), D(img, c))
    # and through our safetensors format, fp32 exactly and fp16 approximately
    st = convert(p, tmp_path / "snap.safetensors")
    again = load_networks(st)
    with torch.no_grad():
        assert torch.equal(again.G_ema(z, c, noise_mode="const"), G(z, c, noise_mode="const"))
    half = load_networks(save_networks(tmp_path / "h.safetensors", {"G_ema": G}, half=True))
    with torch.no_grad():
        assert (half.G_ema(z, c, noise_mode="const") - G(z, c, noise_mode="const")).abs().max() < 0.05


def test_strict_tensor_matching(tmp_path):
    G, D = _tiny()
    rec = module_record(G, G.init_kwargs)
    del rec.meta["state"]["_modules"]["mapping"].meta["state"]["_buffers"]["w_avg"]
    data = {"G_ema": rec}
    _install_fake_modules()
    p = tmp_path / "missing.pkl"
    p.write_bytes(pickle.dumps(data, protocol=4))
    with pytest.raises(GazeError, match="missing 1 .*w_avg"):
        load_networks(p)


# ------------------------------------------------------------------ malicious pickles: nothing executes
class _Reduce:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def test_refuses_os_system(tmp_path):
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.pkl"
    p.write_bytes(pickle.dumps({"G": _Reduce(os.system, (f"touch {marker}",))}, protocol=4))
    with pytest.raises(GazeError, match=r"refused global '(posix|os)\.system'"):
        load_networks(p)
    assert not marker.exists()


def test_refuses_eval_buried_in_state(tmp_path):
    marker = tmp_path / "pwned"
    G, _ = _tiny()
    rec = module_record(G, G.init_kwargs)
    rec.meta["state"]["_modules"]["synthesis"].meta["state"]["architecture"] = _Reduce(
        eval, (f"open({str(marker)!r}, 'w').close()",)
    )
    p = tmp_path / "evil.pkl"
    p.write_bytes(pickle.dumps({"G_ema": rec}, protocol=4))
    with pytest.raises(GazeError, match=r"refused global 'builtins\.eval'"):
        load_networks(p)
    assert not marker.exists()
    rec.meta["state"]["_modules"]["synthesis"].meta["state"]["architecture"] = _Reduce(exec, ("x=1",))
    p.write_bytes(pickle.dumps({"G_ema": rec}, protocol=4))
    with pytest.raises(GazeError, match=r"refused global 'builtins\.exec'"):
        load_networks(p)


def test_module_src_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    src = f"open({str(marker)!r}, 'w').close()\nclass Evil: pass\n"
    p = tmp_path / "evil.pkl"
    _install_fake_modules()
    p.write_bytes(pickle.dumps({"G": Persistent("Evil", {"_init_kwargs": {}}, module_src=src)}, protocol=4))
    with pytest.raises(GazeError, match="unsupported network class 'Evil'"):
        load_networks(p)
    assert not marker.exists()
    # a real Generator whose module_src is hostile: loads (the source is data), and still nothing ran
    G, _ = _tiny()
    rec = module_record(G, G.init_kwargs)
    rec.meta["module_src"] = src
    p.write_bytes(pickle.dumps({"G_ema": rec}, protocol=4))
    assert load_networks(p).G_ema is not None
    assert not marker.exists()


def test_refuses_malicious_inner_storage(tmp_path):
    """The legacy torch.save stream inside each tensor is unpickled with restrictions too."""
    marker = tmp_path / "pwned"
    inner = pickle.dumps(_Reduce(os.system, (f"touch {marker}",)), protocol=2)
    p = tmp_path / "evil.pkl"

    class Storage:
        def __reduce__(self):
            import torch.storage

            return torch.storage._load_from_bytes, (inner,)

    p.write_bytes(pickle.dumps({"G": Storage()}, protocol=4))
    with pytest.raises(GazeError, match="refused global"):
        load_networks(p)
    assert not marker.exists()


def test_golden_pickle_globals_all_admitted(golden_dir):
    data = read_nvlabs_pickle(golden_dir / "sg2_skip_32.pkl")
    assert set(data) == {"training_set_kwargs", "G", "D", "G_ema", "augment_pipe"}
    assert data["augment_pipe"].class_name == "AugmentPipe"


# ------------------------------------------------------------------ bad input, via the real CLI
def _gaze(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "machinegaze.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def _assert_one_line_error(r, *needles):
    assert r.returncode != 0
    assert "Traceback" not in r.stderr + r.stdout
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_cli_bad_inputs(tmp_path, golden_dir):
    net = str(golden_dir / "sg2_skip_32.pkl")
    out = str(tmp_path / "o")
    _assert_one_line_error(
        _gaze("generate", "--network", str(tmp_path / "nope.pkl"), "--outdir", out), "no such network"
    )
    trunc = tmp_path / "trunc.pkl"
    trunc.write_bytes((golden_dir / "sg2_skip_32.pkl").read_bytes()[:100_000])
    _assert_one_line_error(_gaze("generate", "--network", str(trunc), "--outdir", out), "truncated or corrupt")
    other = tmp_path / "model.pt"
    torch.save({"weight": torch.zeros(3)}, other)
    _assert_one_line_error(_gaze("generate", "--network", str(other), "--outdir", out), "torch.save")
    _assert_one_line_error(_gaze("generate", "--network", net, "--seeds", "5-2", "--outdir", out), "backwards")
    _assert_one_line_error(_gaze("generate", "--network", net, "--trunc", "abc", "--outdir", out), "not a number")
    _assert_one_line_error(_gaze("generate", "--network", net, "--seeds", "-3", "--outdir", out), "seeds")
    _assert_one_line_error(_gaze("mix", "--network", net, "--styles", "fine", "--outdir", out), "selects no layers")
    assert not os.path.exists(out) or not os.listdir(out)


def test_cli_generate_writes_nvlabs_pixels(tmp_path, golden_dir):
    r = _gaze(
        "generate",
        "--network",
        str(golden_dir / "sg2_skip_32.pkl"),
        "--seeds",
        "0-7",
        "--trunc",
        "0.7",
        "--outdir",
        str(tmp_path),
    )
    assert r.returncode == 0, r.stderr
    from PIL import Image

    g = np.load(golden_dir / "sg2_skip_32.npz")
    for s in range(8):
        ours = np.asarray(Image.open(tmp_path / f"seed{s:04d}.png")).astype(int)
        assert np.abs(ours - g["img_psi07_uint8"][s].astype(int)).max() <= 1
    w = np.load(tmp_path / "ws.npz")["w"]
    assert w.shape == (8, 8, 64) and np.abs(w - g["ws_psi07"]).max() < 1e-4
    assert (tmp_path / "grid.png").exists()


def test_cli_generate_mixed_precision_runs_flagged_blocks_in_bf16_on_cpu(tmp_path, golden_dir):
    """sg2_skip_32 flags blocks 16 and 32 (num_fp16_res=2): --precision mixed runs them in bfloat16 on a CPU,
    close to NVIDIA's fp32 pixels but not equal to them."""
    r = _gaze(
        "generate",
        *("--network", str(golden_dir / "sg2_skip_32.pkl"), "--seeds", "0-7", "--trunc", "0.7"),
        *("--precision", "mixed", "--device", "cpu", "--outdir", str(tmp_path)),
    )
    assert r.returncode == 0, r.stderr
    from PIL import Image

    g = np.load(golden_dir / "sg2_skip_32.npz")["img_psi07_uint8"].astype(int)
    ours = np.stack([np.asarray(Image.open(tmp_path / f"seed{s:04d}.png")) for s in range(8)]).astype(int)
    err = np.abs(ours - g)
    assert err.max() > 1  # bfloat16 was used
    assert err.mean() < 2.0 and np.percentile(err, 99) <= 12, (err.mean(), np.percentile(err, 99))


def test_convert_cli(tmp_path, golden_dir):
    dst = tmp_path / "a.safetensors"
    r = _gaze("convert", str(golden_dir / "sg2_cond_64.pkl"), str(dst))
    assert r.returncode == 0, r.stderr
    nets = load_networks(dst)
    g = np.load(golden_dir / "sg2_cond_64.npz")
    with torch.no_grad():
        img = nets.G_ema.synthesis(torch.from_numpy(g["ws_psi07"]), noise_mode="const")
    assert (img - torch.from_numpy(g["img_psi07"])).abs().max() < 1e-3
    # a safetensors file that is not ours is refused clearly
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(2)}, str(foreign))
    with pytest.raises(GazeError, match="not a machinegaze network file"):
        load_networks(foreign)


def test_loaded_tensors_are_owned_and_not_shared(tmp_path):
    """Tensors land in the parameters without a copy of the file alongside, yet a tensor the pickle shares
    between G and G_ema becomes two independent parameters (training must not update both)."""
    G, D = _tiny(res=16)
    p = tmp_path / "snap.pkl"
    p.write_bytes(snapshot_bytes(G=G, D=D, G_ema=G))  # G and G_ema: the very same tensors in the file
    nets = load_networks(p)
    for name, t in nets.G_ema.state_dict().items():
        assert t.untyped_storage().nbytes() == t.numel() * t.element_size(), name  # not a view of a big payload
        assert t.device.type == "cpu" and t.dtype == torch.float32
        assert torch.equal(t, G.state_dict()[name])
    w_ema, w_g = nets.G_ema.synthesis.b16.conv1.weight, nets.G.synthesis.b16.conv1.weight
    assert w_ema.data_ptr() != w_g.data_ptr()
    with torch.no_grad():
        w_g.add_(1.0)
    assert torch.equal(w_ema, G.synthesis.b16.conv1.weight)


def test_load_generator_builds_only_the_generator(tmp_path):
    G, D = _tiny(res=16)
    G_ema, _ = _tiny(res=16, seed=5)
    pkl, st = tmp_path / "snap.pkl", tmp_path / "snap.safetensors"
    pkl.write_bytes(snapshot_bytes(G=G, D=D, G_ema=G_ema))
    save_networks(st, {"G_ema": G_ema, "G": G, "D": D}, half=True)
    from machinegaze.checkpoints import load_generator

    z = torch.randn(2, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = G_ema(z, noise_mode="const")
        for path, tol in ((pkl, 0.0), (st, 0.05)):  # the .safetensors was written in fp16
            g = load_generator(path)
            assert all(t.dtype == torch.float32 for t in g.state_dict().values())
            assert (g(z, noise_mode="const") - ref).abs().max() <= tol
    only = load_networks(pkl, roles=("G_ema",))
    assert only.G is None and only.D is None and only.G_ema is not None
    save_networks(st, {"G": G})
    assert torch.equal(load_generator(st).synthesis.b4.const, G.synthesis.b4.const)  # falls back to G
