"""DeepDream speed and peak memory on EfficientNet-Lite0, with and without tiling.

Each case runs in a fresh process, so its peak RSS (getrusage ru_maxrss) is its own. Baselines measured in the
same run: 'load only' (python + torch + the network, no dreaming) and the untiled case at the same size.
The photo is scikit-image's coffee, resized to a square. Default layer (_blocks.10._relu0), jitter 32.

Usage: python benchmarks/dream.py [--quick] [--threads N] [--tune-allocator]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

# name -> (side, octaves, steps, tile); tile 0 = one untiled pass per step
CASES = {
    "load only": (0, 0, 0, 0),
    "512 untiled": (512, 4, 10, 0),
    "512 tiled 256": (512, 4, 10, 256),
    "1024 untiled": (1024, 1, 3, 0),
    "1024 tiled 512": (1024, 1, 3, 512),
    "2048 tiled 512": (2048, 1, 3, 512),
    "2048 tiled 512, 4x10": (2048, 4, 10, 512),
}
QUICK = ["load only", "512 untiled", "1024 untiled", "1024 tiled 512", "2048 tiled 512"]


def run_case(name: str, threads: int, tune: bool) -> dict:
    import torch
    from PIL import Image
    from skimage import data

    from machinegaze import dream
    from machinegaze.data import pil_to_tensor

    torch.set_num_threads(threads)
    if tune:
        from machinegaze.perf import tune_allocator

        tune_allocator()
    side, octaves, steps, tile = CASES[name]
    dnet = dream.load_net("efficientnet")
    out = {"case": name, "side": side, "octaves": octaves, "steps": steps, "tile": tile}
    if side:
        x = pil_to_tensor(Image.fromarray(data.coffee()).resize((side, side), Image.LANCZOS))
        cfg = dream.DreamConfig(octaves=octaves, steps=steps, tile=tile)
        obj = dream.build_objective(cfg, dnet, None)
        t = time.perf_counter()
        r = dream.deepdream(x, dnet, obj, cfg)
        out["seconds"] = time.perf_counter() - t
        out["objective"] = [r.history[0], r.history[-1]]
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="skip the long 4-octave cases at 512 tiled and 2048")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tune-allocator", action="store_true", help="keep freed buffers in the heap (machinegaze.perf)")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.threads, args.tune_allocator)))
        return
    names = QUICK if args.quick else list(CASES)
    rows = []
    for name in names:
        cmd = [sys.executable, __file__, "--case", name, "--threads", str(args.threads)]
        p = subprocess.run(cmd + (["--tune-allocator"] if args.tune_allocator else []), capture_output=True, text=True)
        if p.returncode != 0:
            print(f"{name}: failed\n{p.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
        print(f"done: {name}", file=sys.stderr, flush=True)
    base = next((r["peak_rss_mb"] for r in rows if r["case"] == "load only"), None)
    print(
        f"\nDeepDream on EfficientNet-Lite0, CPU, {args.threads} thread(s), allocator "
        f"{'tuned' if args.tune_allocator else 'default'}; peak RSS per process"
        + (f" (load-only baseline {base:.0f} MB)" if base else "")
    )
    print(
        f"| {'case':22s} | {'octaves x steps':15s} | {'seconds':>8s} | {'s/step':>7s} | {'peak RSS MB':>11s} | {'over baseline':>13s} |"
    )
    print(f"|{'-' * 24}|{'-' * 17}|{'-' * 10}|{'-' * 9}|{'-' * 13}|{'-' * 15}|")
    for r in rows:
        n = r["octaves"] * r["steps"]
        secs = f"{r['seconds']:.1f}" if "seconds" in r else "-"
        per = f"{r['seconds'] / n:.2f}" if n else "-"
        over = f"{r['peak_rss_mb'] - base:+.0f}" if base is not None and r["case"] != "load only" else "-"
        shape = f"{r['octaves']} x {r['steps']}" if n else "-"
        print(f"| {r['case']:22s} | {shape:15s} | {secs:>8s} | {per:>7s} | {r['peak_rss_mb']:11.0f} | {over:>13s} |")


if __name__ == "__main__":
    main()
