"""Where `gaze generate` spends its time and memory: load / mapping / synthesis / to-uint8 / PNG write / grid,
each timed on its own, with the process's peak RSS after each phase, in a fresh process.

The phases are the steps generate.generate_to_dir runs, called one after another here (the PNG writer is waited
for after every batch, so its time is its own; in `gaze generate` it overlaps the next batch's synthesis).
Without --network a random config-f generator at --res is written to a temporary .pkl-free safetensors file.

usage: python benchmarks/generate_phases.py [--network FILE | --res 1024] [--seeds 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def phases(network: str, n_seeds: int, threads: int, outdir: str) -> dict:
    import time

    t0 = time.perf_counter()
    import torch
    from _common import peak_rss_gb

    from machinegaze import data, zoo
    from machinegaze import generate as gen
    from machinegaze.perf import tune_allocator

    tune_allocator()  # as the CLI does
    torch.set_num_threads(threads)
    out = {"import": [time.perf_counter() - t0, peak_rss_gb()]}

    def mark(name: str, t: float) -> None:
        dt = time.perf_counter() - t
        prev = out.get(name, [0.0, 0.0])
        out[name] = [prev[0] + dt, peak_rss_gb()]

    t = time.perf_counter()
    G = zoo.load_generator(network, "cpu")
    mark("load", t)
    seeds, cfg = list(range(n_seeds)), gen.GenerateConfig()
    batch = max(1, min(cfg.batch_size, gen.images_per_chunk(G)))
    grid = gen.GridCanvas(len(seeds), G.img_resolution, G.img_resolution, G.img_channels)
    with torch.no_grad():
        for i in range(0, len(seeds), batch):
            chunk = seeds[i : i + batch]
            t = time.perf_counter()
            ws = gen.seeds_to_ws(G, chunk)
            mark("mapping", t)
            t = time.perf_counter()
            images = gen.synthesize_batch(G, ws, cfg.noise_mode)
            mark("synthesis", t)
            t = time.perf_counter()
            tiles = data.images_to_uint8(images)
            del images
            mark("to_uint8", t)
            t = time.perf_counter()
            with gen.PngWriter() as w:
                for j, (s, tile) in enumerate(zip(chunk, tiles)):
                    w.submit(tile, Path(outdir) / f"seed{s:04d}.png")
                    grid.put(i + j, tile)
            mark("png_write", t)
    t = time.perf_counter()
    with gen.PngWriter() as w:
        w.submit(grid.pixels, Path(outdir) / "grid.png")
    mark("grid", t)
    return dict(batch=batch, res=G.img_resolution, phases=out)


def make_network(res: int, path: str) -> None:
    import torch

    from machinegaze.checkpoints import save_networks
    from machinegaze.nets.stylegan2 import Generator

    torch.manual_seed(0)
    G = Generator(512, 0, 512, res, 3, dict(num_layers=8), dict(channel_base=32768, channel_max=512))
    save_networks(path, {"G_ema": G})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--network")
    ap.add_argument("--res", type=int, default=1024)
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", nargs=2, metavar=("NETWORK", "OUTDIR"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(phases(a.child[0], a.seeds, a.threads, a.child[1])))
        return
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads), PYTHONPATH=str(REPO))
    with tempfile.TemporaryDirectory() as tmp:
        network = a.network
        if network is None:
            network = os.path.join(tmp, f"configf_{a.res}.safetensors")
            code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import generate_phases as g; "
            code += f"g.make_network({a.res}, {network!r})"
            subprocess.run([sys.executable, "-c", code], check=True, env=env)
        cmd = [sys.executable, __file__, "--seeds", str(a.seeds), "--threads", str(a.threads), "--child", network, tmp]
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"child failed: {r.stderr.strip()[-2000:]}")
    x = json.loads(r.stdout.strip().splitlines()[-1])
    load = os.getloadavg()[0]
    print(f"{x['res']} px, {a.seeds} seeds in batches of {x['batch']}, {a.threads} threads (load average {load:.1f})")
    print("| phase | seconds | peak RSS after (GB) |\n|---|---|---|")
    for name, (sec, rss) in x["phases"].items():
        print(f"| {name} | {sec:.2f} | {rss:.2f} |")
    print(f"| total | {sum(v[0] for v in x['phases'].values()):.2f} | |")


if __name__ == "__main__":
    main()
