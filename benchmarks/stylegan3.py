"""StyleGAN3 synthesis speed and memory: machinegaze's nets/stylegan3.py against NVIDIA's reference code, same run.

    python benchmarks/stylegan3.py --nvlabs-dir /path/to/NVlabs-stylegan3-checkout [--cases t64,r32,t1024,r1024]

Cases: the golden T 64 px / R 32 px networks (weights from ../shared/golden/stylegan3, loaded by our safe loader;
NVIDIA's modules get the same tensors by name, so nothing is unpickled from their side) and 1024 px config-T / -R
with random weights (train.py's channel settings: T 32768/512, R 65536/1024). NVIDIA's code runs its reference
PyTorch ops (the custom CUDA plugins are switched off; on CPU they are never used anyway). Each (case, implementation)
runs in a fresh process, so peak RSS is its own. The NVlabs checkout is only imported here, never copied.
Prints img/s, the ratio ours / NVIDIA, peak RSS, and the same-run fp32 matmul baseline (GFLOP/s).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import matmul_gflops, peak_rss_gb, run_child  # noqa: E402

GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "golden" / "stylegan3"
CASES = {  # name -> (golden pickle or None, init kwargs for random weights, batch)
    "t64": ("sg3t_64.pkl", None, 8),
    "r32": ("sg3r_32.pkl", None, 8),
    "t1024": (
        None,
        dict(z_dim=512, c_dim=0, w_dim=512, img_resolution=1024, img_channels=3, channel_base=32768, channel_max=512),
        1,
    ),
    "r1024": (
        None,
        dict(
            z_dim=512,
            c_dim=0,
            w_dim=512,
            img_resolution=1024,
            img_channels=3,
            channel_base=65536,
            channel_max=1024,
            conv_kernel=1,
            use_radial_filters=True,
        ),
        1,
    ),
}


def _nvlabs_generator(nvlabs_dir: str, kwargs: dict, device):
    """NVIDIA's Generator from their checkout, with their custom-op plugins disabled (reference ops only)."""
    import types

    try:
        import pkg_resources  # noqa: F401  (their conv2d_gradfix imports it; newer setuptools lack it)
    except ImportError:
        from packaging.version import parse

        sys.modules["pkg_resources"] = types.SimpleNamespace(parse_version=parse)
    sys.path.insert(0, nvlabs_dir)
    from torch_utils.ops import bias_act, filtered_lrelu, upfirdn2d

    for mod in (bias_act, filtered_lrelu, upfirdn2d):
        mod._init = lambda: False
    from training.networks_stylegan3 import Generator

    return Generator(**kwargs).to(device).eval().requires_grad_(False)


def child(impl: str, case: str, nvlabs_dir: str, reps: int, threads: int, device: str) -> dict:
    import torch

    torch.set_num_threads(threads)
    from machinegaze import checkpoints
    from machinegaze.nets.stylegan3 import StyleGAN3Generator

    pkl, kwargs, batch = CASES[case]
    torch.manual_seed(0)
    if pkl:
        ours = checkpoints.load_networks(GOLDEN / pkl).G_ema
        kwargs = dict(ours.init_kwargs)
    else:
        ours = StyleGAN3Generator(**kwargs).eval().requires_grad_(False)
    if impl == "nvlabs":
        G = _nvlabs_generator(nvlabs_dir, kwargs, device)
        missing = G.load_state_dict(ours.state_dict(), strict=True)
        del ours
        assert not missing.missing_keys
        run = lambda ws: G.synthesis(ws, noise_mode="const", force_fp32=True)  # noqa: E731
    else:
        G = ours.to(device)
        run = lambda ws: G.synthesis(ws, noise_mode="const")  # noqa: E731
    z = torch.randn(batch, G.z_dim, generator=torch.Generator().manual_seed(1)).to(device)
    c = torch.eye(G.c_dim)[torch.arange(batch) % G.c_dim].to(device) if G.c_dim else None
    ws = G.mapping(z, c, truncation_psi=0.7)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with torch.no_grad():
        img = run(ws)  # warm-up
        sync()
        t0 = time.perf_counter()
        for _ in range(reps):
            img = run(ws)
        sync()
        dt = time.perf_counter() - t0
    return {
        "img_s": reps * batch / dt,
        "batch": batch,
        "peak_rss_gb": peak_rss_gb(),
        "checksum": float(img.double().abs().mean()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nvlabs-dir", required=True, help="a checkout of NVlabs/stylegan3 (imported, never copied)")
    ap.add_argument("--cases", default="t64,r32,t1024,r1024")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--child", nargs=2, metavar=("IMPL", "CASE"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child[0], a.child[1], a.nvlabs_dir, a.reps, a.threads, a.device)))
        return
    if not (Path(a.nvlabs_dir) / "training" / "networks_stylegan3.py").is_file():
        sys.exit(f"--nvlabs-dir {a.nvlabs_dir}: not a NVlabs/stylegan3 checkout")
    print(
        f"same-run baseline: fp32 matmul {matmul_gflops(a.threads):.1f} GFLOP/s ({a.threads} thread(s)), device {a.device}"
    )
    print(
        f"{'case':8} {'batch':>5} {'ours img/s':>11} {'NVlabs img/s':>13} {'ratio':>6} {'ours RSS GB':>12} "
        f"{'NVlabs RSS GB':>14} {'|out| ours/NV':>14}"
    )
    env_cmd = [
        sys.executable,
        __file__,
        "--nvlabs-dir",
        a.nvlabs_dir,
        "--reps",
        str(a.reps),
        "--threads",
        str(a.threads),
        "--device",
        a.device,
    ]
    for case in a.cases.split(","):
        res = {}
        for impl in ("ours", "nvlabs"):
            out, proc = run_child(env_cmd + ["--child", impl, case])
            if out is None:
                print(f"{case} {impl} failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else '?'}")
            res[impl] = out
        o, n = res["ours"], res["nvlabs"]
        if o and n:
            print(
                f"{case:8} {o['batch']:5d} {o['img_s']:11.3f} {n['img_s']:13.3f} {o['img_s'] / n['img_s']:6.2f} "
                f"{o['peak_rss_gb']:12.2f} {n['peak_rss_gb']:14.2f} {o['checksum'] / n['checksum']:14.6f}"
            )


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
