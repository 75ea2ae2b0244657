"""End to end against NVIDIA's reference code, same machine, same run: load a config-f network pickle and write
the PNGs of 8 seeds, each side in a fresh child process (wall seconds and the child's own peak RSS).

NVIDIA's side runs the logic of their generate.py (legacy.load_network_pkl, G_ema(z, label, psi=1,
noise_mode='const'), uint8 conversion, PIL save) from a checkout given with --nvlabs-dir (obtained separately,
e.g. a clone of NVlabs/stylegan2-ada-pytorch; nothing is fetched here, nothing of it is copied into this repo).
On CPU their custom ops fall back to their reference PyTorch paths. Our side is `gaze generate`.
The pickle is written by their own classes (a real snapshot: G, D, G_ema with embedded source), random init.

With --fp16-res 4 the pickle flags the four highest resolutions for fp16 with conv_clamp 256, as NVIDIA's
config-f training does; their side still runs fp32 (force_fp32=True: fp16 is a GPU plan), ours once per
--precision (fp32, and mixed: those blocks in bfloat16 on this CPU).

usage: python benchmarks/vs_nvlabs.py --nvlabs-dir PATH [--res 1024] [--threads 2] [--seeds 8] [--repeats 3]
       [--fp16-res 0] [--precision fp32[,mixed]] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

# Child programs (run with `python -c`); each prints one JSON line at the end.
MAKE_PICKLE = r"""
import copy, json, pickle, sys, torch
sys.path.insert(0, sys.argv[1])
from training import networks
res, out, fp16_res = int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
clamp = 256 if fp16_res else None
torch.manual_seed(0)
common = dict(c_dim=0, img_resolution=res, img_channels=3)
G = networks.Generator(z_dim=512, w_dim=512, mapping_kwargs=dict(num_layers=8),
                       synthesis_kwargs=dict(channel_base=32768, channel_max=512, num_fp16_res=fp16_res,
                                             conv_clamp=clamp),
                       **common).eval().requires_grad_(False)
with torch.no_grad():
    for p in G.parameters():            # biases, noise strengths and w_avg away from 0, so every term matters
        p.add_(0.1 * torch.randn_like(p))
    G.mapping.w_avg.normal_()
D = networks.Discriminator(channel_base=32768, channel_max=512, num_fp16_res=fp16_res, conv_clamp=clamp,
                           epilogue_kwargs=dict(mbstd_group_size=4), **common).eval().requires_grad_(False)
snap = dict(training_set_kwargs=None, G=G, D=D, G_ema=copy.deepcopy(G), augment_pipe=None)
with open(out, 'wb') as f:
    pickle.dump(snap, f)
print(json.dumps(dict(params_G=sum(p.numel() for p in G.parameters()))))
"""

NVLABS_GENERATE = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import numpy as np, PIL.Image, torch
torch.set_num_threads(int(sys.argv[5]))
sys.path.insert(0, sys.argv[1])
import legacy
pkl, outdir, n = sys.argv[2], sys.argv[3], int(sys.argv[4])
with open(pkl, 'rb') as f:
    G = legacy.load_network_pkl(f)['G_ema']
t_load = time.perf_counter() - t0
label = torch.zeros([1, G.c_dim])
for seed in range(n):
    z = torch.from_numpy(np.random.RandomState(seed).randn(1, G.z_dim))
    img = G(z, label, truncation_psi=1, noise_mode='const', force_fp32=True)
    img = (img.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    PIL.Image.fromarray(img[0].numpy(), 'RGB').save(f'{outdir}/seed{seed:04d}.png')
print(json.dumps(dict(load_s=t_load, rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6)))
"""

GAZE_GENERATE = r"""
import json, resource, runpy, sys
pkl, outdir, n, precision = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
sys.argv = ['gaze', 'generate', '--network', pkl, '--seeds', f'0-{n - 1}', '--outdir', outdir, '--precision', precision]
code = 0
try:
    runpy.run_module('machinegaze.cli', run_name='__main__')
except SystemExit as e:
    code = e.code or 0
print(json.dumps(dict(rc=code, rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6)))
"""


def child(args: list[str], threads: int, cwd: Path) -> tuple[dict, float]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONPATH=str(REPO))
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", *args], capture_output=True, text=True, env=env, cwd=cwd)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"child failed: {r.stderr.strip()[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1]), dt


def png_diff(a: Path, b: Path, n: int) -> tuple[int, float]:
    """(largest |difference| of a uint8 value, PSNR in dB over all images; inf when identical)."""
    from PIL import Image

    worst, sq = 0, 0.0
    for s in range(n):
        x = np.asarray(Image.open(a / f"seed{s:04d}.png"), dtype=np.float64)
        y = np.asarray(Image.open(b / f"seed{s:04d}.png"), dtype=np.float64)
        d = np.abs(x - y)
        worst, sq = max(worst, int(d.max())), sq + float(np.square(d).mean()) / n
    return worst, (10 * np.log10(255**2 / sq) if sq > 0 else float("inf"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nvlabs-dir", required=True, type=Path)
    ap.add_argument("--res", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3, help="alternate the two sides this many times")
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--fp16-res", type=int, default=0, help="blocks the pickle flags for fp16 (config-f: 4)")
    ap.add_argument("--precision", default="fp32", help="our --precision values, comma-separated (e.g. fp32,mixed)")
    a = ap.parse_args()
    nv = a.nvlabs_dir.resolve()
    if not (nv / "legacy.py").is_file() or not (nv / "training" / "networks.py").is_file():
        raise SystemExit(f"{nv}: not a stylegan2-ada-pytorch checkout (no legacy.py / training/networks.py)")
    with tempfile.TemporaryDirectory(dir=a.workdir) as tmp:
        tmp = Path(tmp)
        pkl = tmp / f"configf_{a.res}.pkl"
        made, dt = child([MAKE_PICKLE, str(nv), str(a.res), str(pkl), str(a.fp16_res)], a.threads, tmp)
        print(
            f"config-f {a.res} px pickle (G, D, G_ema) by NVIDIA's classes: {pkl.stat().st_size / 1e6:.0f} MB, "
            f"G {made['params_G'] / 1e6:.1f} M params, written in {dt:.0f} s",
            flush=True,
        )
        precisions = [p.strip() for p in a.precision.split(",") if p.strip()]
        sides = ["nvlabs"] + [f"gaze-{p}" for p in precisions]
        rows: dict[str, list] = {side: [] for side in sides}
        for rep in range(a.repeats):
            for side in sides:
                out = tmp / f"{side}{rep}"
                out.mkdir()
                if side == "nvlabs":
                    r, dt = child(
                        [NVLABS_GENERATE, str(nv), str(pkl), str(out), str(a.seeds), str(a.threads)], a.threads, tmp
                    )
                else:
                    prec = side.split("-", 1)[1]
                    r, dt = child([GAZE_GENERATE, str(pkl), str(out), str(a.seeds), prec], a.threads, REPO)
                    if r["rc"]:
                        raise SystemExit(f"gaze generate exited with {r['rc']}")
                rows[side].append((dt, r["rss_gb"]))
                load = os.getloadavg()[0]
                print(f"  {side:11s} run {rep}: {dt:6.1f} s  peak RSS {r['rss_gb']:.2f} GB  (load average {load:.1f})")
            for side in sides[1:]:
                print(f"  pair {rep}: {side} {rows['nvlabs'][-1][0] / rows[side][-1][0]:.2f}x faster", flush=True)
        agree = {side: png_diff(tmp / "nvlabs0", tmp / f"{side}0", a.seeds) for side in sides[1:]}
    head = (
        f"{a.res} px config-f (num_fp16_res {a.fp16_res}), load + {a.seeds} seeds + PNGs, {a.threads} threads, "
        f"median of {a.repeats}"
    )
    print(f"\n| {head} | wall s | peak RSS GB | paired speed-up | RSS ratio | max diff | PSNR dB |")
    print("|---|---|---|---|---|---|---|")
    t_nv, m_nv = (float(np.median([v[i] for v in rows["nvlabs"]])) for i in (0, 1))
    print(f"| NVIDIA stylegan2-ada-pytorch (reference ops, fp32) | {t_nv:.1f} | {m_nv:.2f} | 1 | 1 | | |")
    for side in sides[1:]:
        t, m = (float(np.median([v[i] for v in rows[side]])) for i in (0, 1))
        ratios = [n[0] / g[0] for n, g in zip(rows["nvlabs"], rows[side])]
        rss = [g[1] / n[1] for n, g in zip(rows["nvlabs"], rows[side])]
        worst, psnr = agree[side]
        print(
            f"| gaze generate --precision {side.split('-', 1)[1]} | {t:.1f} | {m:.2f} | {np.median(ratios):.2f}x "
            f"({', '.join(f'{r:.2f}' for r in ratios)}) | {np.median(rss):.2f} | {worst} | {psnr:.1f} |"
        )


if __name__ == "__main__":
    main()
