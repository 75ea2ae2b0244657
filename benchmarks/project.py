"""Projector speed: the default preset (`fast`) against NVlabs' projector (`nvlabs`), same run, same weights.

For each target (an image the network generated itself, a real held-out FFHQ face, skimage's coffee cup) both
presets run in their own subprocess (so peak RSS is per run), one after the other. After every few steps a
monitor scores the current latent the way the result is scored (LPIPS-VGG of the output image, rendered with the
network's own noise, against the target); monitoring time is excluded from the clocks. Reported:
  - baseline: the nvlabs preset's final LPIPS and its wall / CPU time (setup included)
  - fast: its final LPIPS, and the wall / CPU time at which its curve first reaches the baseline LPIPS
  - ratio = fast time-to-baseline / nvlabs total time (goal <= 0.2), by wall clock and by CPU time
    (CPU time is the steadier number on a shared machine)
  - peak RSS of each run
Curves are plotted to docs/img/project_curves.png, numbers saved as JSON.

Usage: python benchmarks/project.py [--network PATH|NAME] [--targets generated,real,coffee] [--real-id 890]
                                   [--threads 1] [--fast-override '{"steps": 120}'] [--out-json runs/bench_project.json]
Network default: the bundled face GAN if present, else ../shared/golden/stylegan2/sg2_cond_64.pkl (class 0).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GAZE_SHARED", ROOT.parent / "shared"))
REAL_DIR = SHARED / "data" / "faces" / "real" / "ffhq256"


def default_network() -> str:
    sys.path.insert(0, str(ROOT))
    from machinegaze import GazeError, zoo

    try:
        return str(zoo.resolve_network("default"))
    except GazeError:
        return str(SHARED / "golden" / "stylegan2" / "sg2_cond_64.pkl")


def make_target(kind: str, G, class_idx, real_id: int):
    """[1, 3, R, R] in [-1, 1], and a description."""
    import numpy as np
    import torch
    from PIL import Image

    from machinegaze.data import to_uint8
    from machinegaze.generate import seeds_to_ws, synthesize
    from machinegaze.project import prepare_target

    R = G.img_resolution
    if kind == "generated":
        img = synthesize(G, seeds_to_ws(G, [7], trunc=0.7, class_idx=class_idx))
        a = to_uint8(img.clamp(-1, 1))[0]  # as if saved to PNG and read back
        return torch.from_numpy(a.astype(np.float32)).permute(2, 0, 1)[None] / 127.5 - 1, "seed 7, psi 0.7, 8-bit"
    if kind == "real":
        path = REAL_DIR / f"{real_id:05d}.jpg"
        return prepare_target(path, R), f"ffhq256/{path.name} (held out)"
    if kind == "coffee":
        from skimage import data as skdata

        return prepare_target(Image.fromarray(skdata.coffee()), R), "skimage.data.coffee()"
    raise SystemExit(f"unknown target {kind}")


def worker(args) -> None:
    """One projection; prints one JSON line."""
    import resource
    from dataclasses import asdict, replace

    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT))
    from machinegaze import checkpoints, zoo
    from machinegaze.generate import class_vector
    from machinegaze.perf import tune_allocator
    from machinegaze.project import PRESETS, final_lpips, project

    tune_allocator()
    nets = checkpoints.load_networks(args.network)
    G = nets.generator
    class_idx = 0 if G.c_dim else None
    c = class_vector(G, class_idx, 1)
    target, desc = make_target(args.target, G, class_idx, args.real_id)
    recipe = PRESETS[args.preset]
    if args.override:
        recipe = replace(recipe, **json.loads(args.override))
    lpips = zoo.load_lpips("vgg")
    every = max(1, recipe.steps // args.points)
    curve = []

    def monitor(step, ws, wall, cpu):
        if step % every == 0 or step == recipe.steps or step == 1:
            curve.append({"step": step, "wall_s": wall, "cpu_s": cpu, "lpips": final_lpips(G, lpips, ws, target)[0]})

    proj = project(G, target, recipe, lpips=lpips, seed=args.seed, c=c, monitor=monitor)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    real = None
    if nets.D is not None:  # after the clocks stopped: how real the result looks to D, among 64 of G's own images
        from machinegaze.project import realism, reference_logits

        ref = reference_logits(G, nets.D, 64, class_idx)
        real = {"projection": realism(nets.D, proj.image, c, ref), "target": realism(nets.D, target, c, ref)}
    print(
        json.dumps(
            {
                "target": args.target,
                "target_desc": desc,
                "preset": args.preset,
                "recipe": asdict(recipe),
                "lpips": proj.lpips,
                "wall_s": proj.wall_s,
                "cpu_s": proj.cpu_s,
                "setup": proj.setup,
                "curve": curve,
                "peak_rss_mb": rss_mb,
                "realism": real,
            }
        )
    )


def pct(run: dict, who: str) -> str:
    """D's realism of the target or the projection: percentile among the network's own images."""
    r = (run.get("realism") or {}).get(who)
    return "-" if r is None else f"{r['percentile_among_generated']:.0f}"


def time_to(curve: list[dict], level: float, key: str):
    for p in curve:
        if p["lpips"] <= level + 1e-9:
            return p[key]
    return None


def plot(results: dict, out: Path, network: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = list(results)
    fig, axes = plt.subplots(1, len(targets), figsize=(5 * len(targets), 4), squeeze=False)
    for ax, t in zip(axes[0], targets):
        base = results[t]["nvlabs"]
        for preset, style in (("nvlabs", "-"), ("fast", "-")):
            r = results[t].get(preset)
            if r:
                ax.plot(
                    [p["wall_s"] for p in r["curve"]],
                    [p["lpips"] for p in r["curve"]],
                    style,
                    label=f"{preset} (final {r['lpips']:.3f}, {r['wall_s']:.0f} s)",
                )
        ax.axhline(base["lpips"], color="grey", ls=":", lw=1)
        ax.axvline(base["wall_s"] * 0.2, color="grey", ls="--", lw=1, label="1/5 of nvlabs' time")
        ax.set_xscale("log")
        ax.set_title(f"{t}: {results[t]['nvlabs']['target_desc']}", fontsize=9)
        ax.set_xlabel("wall time (s, log)")
        ax.set_ylabel("LPIPS-VGG of the output")
        ax.legend(fontsize=8)
    fig.suptitle(f"projection: LPIPS vs wall time ({Path(network).name})", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--network", default=None)
    ap.add_argument("--targets", default="generated,real,coffee")
    ap.add_argument("--real-id", type=int, default=890, help="ffhq256 image id (890-899 are held out)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--points", type=int, default=100, help="monitor points per run")
    ap.add_argument("--presets", default="nvlabs,fast")
    ap.add_argument("--fast-override", default=None, help="JSON dict of Recipe fields for the fast preset")
    ap.add_argument("--baseline-json", default=None, help="reuse the nvlabs runs from an earlier --out-json")
    ap.add_argument("--out-json", default=str(ROOT / "runs" / "bench_project.json"))
    ap.add_argument("--plot", default=str(ROOT / "docs" / "img" / "project_curves.png"))
    # worker mode
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--target", help=argparse.SUPPRESS)
    ap.add_argument("--preset", help=argparse.SUPPRESS)
    ap.add_argument("--override", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    network = args.network or default_network()
    old = json.loads(Path(args.baseline_json).read_text())["results"] if args.baseline_json else {}
    results: dict = {}
    t0 = time.time()
    for target in args.targets.split(","):
        results[target] = {}
        for preset in args.presets.split(","):
            if preset == "nvlabs" and target in old and "nvlabs" in old[target]:
                results[target]["nvlabs"] = old[target]["nvlabs"]
                continue
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                "--network",
                network,
                "--target",
                target,
                "--preset",
                preset,
                "--threads",
                str(args.threads),
                "--seed",
                str(args.seed),
                "--real-id",
                str(args.real_id),
                "--points",
                str(args.points),
            ]
            if preset == "fast" and args.fast_override:
                cmd += ["--override", args.fast_override]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"{target}/{preset} failed:\n{out.stderr[-3000:]}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            results[target][preset] = r
            print(
                f"[{time.time() - t0:6.0f} s] {target:9s} {preset:6s} LPIPS {r['lpips']:.4f}  wall {r['wall_s']:6.1f} s"
                f"  cpu {r['cpu_s']:6.1f} s  rss {r['peak_rss_mb']:.0f} MB",
                flush=True,
            )

    print(f"\nnetwork: {network}; {args.threads} thread(s); seed {args.seed}")
    print(
        "| target | nvlabs LPIPS | nvlabs wall s (cpu s) | fast final LPIPS | fast wall s to baseline (cpu s) "
        "| ratio wall | ratio cpu | peak RSS nvlabs / fast MB | D percentile target / nvlabs / fast |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    summary = {}
    for target, rr in results.items():
        b, f = rr.get("nvlabs"), rr.get("fast")
        if not (b and f):
            continue
        tw, tc = time_to(f["curve"], b["lpips"], "wall_s"), time_to(f["curve"], b["lpips"], "cpu_s")
        rw = tw / b["wall_s"] if tw is not None else None
        rc = tc / b["cpu_s"] if tc is not None else None
        summary[target] = {"baseline_lpips": b["lpips"], "fast_lpips": f["lpips"], "ratio_wall": rw, "ratio_cpu": rc}
        fmt = lambda v, p=2: "not reached" if v is None else f"{v:.{p}f}"  # noqa: E731
        print(
            f"| {target} | {b['lpips']:.4f} | {b['wall_s']:.1f} ({b['cpu_s']:.1f}) | {f['lpips']:.4f} | "
            f"{fmt(tw, 1)} ({fmt(tc, 1)}) | {fmt(rw)} | {fmt(rc)} | {b['peak_rss_mb']:.0f} / {f['peak_rss_mb']:.0f} | "
            f"{pct(b, 'target')} / {pct(b, 'projection')} / {pct(f, 'projection')} |"
        )
    Path(args.out_json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out_json).write_text(
        json.dumps({"network": network, "threads": args.threads, "results": results, "summary": summary}, indent=1)
    )
    if all("nvlabs" in r for r in results.values()):
        plot(results, Path(args.plot), network)
        print(f"wrote {args.out_json} and {args.plot}")


if __name__ == "__main__":
    main()
