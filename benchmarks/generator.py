"""Generator throughput, efficiency against a same-run fp32 matmul baseline, and peak RSS.

Each case runs in a fresh process (so peak RSS is that case's own). Efficiency = achieved GFLOP/s of the
generator (FLOPs counted by torch.utils.flop_counter) / GFLOP/s of a 2048x2048 fp32 matmul measured in the
same process. Usage: python benchmarks/generator.py [--quick] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from _common import matmul_gflops, peak_rss_gb, run_child

CASES = {  # config-f channel rule (min(32768 / res, 512)) at every resolution
    "64": dict(res=64, z_dim=512, w_dim=512, mapping_layers=8, channel_base=32768, channel_max=512),
    "128": dict(res=128, z_dim=512, w_dim=512, mapping_layers=8, channel_base=16384, channel_max=512),
    "256": dict(res=256, z_dim=512, w_dim=512, mapping_layers=8, channel_base=32768, channel_max=512),
    "1024": dict(res=1024, z_dim=512, w_dim=512, mapping_layers=8, channel_base=32768, channel_max=512),
}


def run_case(name: str, batch: int, threads: int, reps: int, compiled: bool, tune: bool) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from machinegaze.generate import synthesize
    from machinegaze.nets.stylegan2 import Generator
    from machinegaze.perf import tune_allocator

    if tune:
        tune_allocator()
    torch.set_num_threads(threads)
    c = CASES[name]
    torch.manual_seed(0)
    G = Generator(
        z_dim=c["z_dim"],
        c_dim=0,
        w_dim=c["w_dim"],
        img_resolution=c["res"],
        img_channels=3,
        mapping_kwargs=dict(num_layers=c["mapping_layers"]),
        synthesis_kwargs=dict(channel_base=c["channel_base"], channel_max=c["channel_max"]),
    ).eval()
    z = torch.randn(batch, c["z_dim"])

    def fn(z, noise_mode="const"):  # what `gaze generate` runs: mapping, then synthesis in memory-bounded chunks
        return synthesize(G, G.mapping(z, None), noise_mode=noise_mode, batch_size=batch)

    t_compile = 0.0
    if compiled:
        fn = torch.compile(G)  # whole-generator compile, as a user of torch.compile would do
        t0 = time.perf_counter()
        with torch.inference_mode():
            fn(z, noise_mode="const")
        t_compile = time.perf_counter() - t0
    with torch.inference_mode():
        # FLOPs of one image. The inference path does the work of the direct formulation (folded per-sample
        # weights cost what shared ones do; upsampling is a transposed conv + FIR, not a 4x larger sub-pixel conv)
        with FlopCounterMode(display=False) as fc:
            G(z[:1], noise_mode="const")
        flops_per_img = fc.get_total_flops()
        mm0 = matmul_gflops(threads)
        fn(z, noise_mode="const")  # warm-up
        t0 = time.perf_counter()
        for _ in range(reps):
            fn(z, noise_mode="const")
        dt = (time.perf_counter() - t0) / reps
    mm = (mm0 + matmul_gflops(threads)) / 2  # baseline before and after, same process
    img_s = batch / dt
    gflops = flops_per_img * img_s / 1e9
    return dict(
        case=name,
        batch=batch,
        compiled=compiled,
        tuned_alloc=tune,
        img_s=img_s,
        gflop_per_img=flops_per_img / 1e9,
        gflop_s=gflops,
        matmul_gflop_s=mm,
        efficiency=gflops / mm,
        compile_s=t_compile,
        peak_rss_gb=peak_rss_gb(),
    )


def end_to_end(name: str, threads: int) -> dict:
    """What a user feels: `gaze generate` in a fresh process, load + 8 seeds + PNG writing, wall time."""
    import tempfile

    import torch

    from machinegaze.checkpoints import save_networks
    from machinegaze.nets.stylegan2 import Generator

    c = CASES[name]
    torch.manual_seed(0)
    G = Generator(
        z_dim=c["z_dim"],
        c_dim=0,
        w_dim=c["w_dim"],
        img_resolution=c["res"],
        img_channels=3,
        mapping_kwargs=dict(num_layers=c["mapping_layers"]),
        synthesis_kwargs=dict(channel_base=c["channel_base"], channel_max=c["channel_max"]),
    )
    with tempfile.TemporaryDirectory() as d:
        net = save_networks(os.path.join(d, "net.safetensors"), {"G_ema": G})
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        t0 = time.perf_counter()
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "machinegaze.cli",
                "generate",
                "--network",
                str(net),
                "--seeds",
                "0-7",
                "--outdir",
                os.path.join(d, "out"),
            ],
            capture_output=True,
            text=True,
            env=env,
        )
        dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(r.stderr)
    return dict(case=name, seconds=dt)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--case")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=0)
    ap.add_argument("--compiled", action="store_true")
    ap.add_argument("--no-tune", action="store_true")
    ap.add_argument("--quick", action="store_true", help="64 px only")
    ap.add_argument("--extra", action="store_true", help="also plain allocator and torch.compile rows (128 px)")
    ap.add_argument("--e2e", action="store_true", help="also time `gaze generate --seeds 0-7` end to end")
    a = ap.parse_args()
    if a.case:
        reps = a.reps or (1 if a.case == "1024" else 3)
        print(json.dumps(run_case(a.case, a.batch, a.threads, reps, a.compiled, not a.no_tune)))
        return
    rows = []
    plan = [("64", 1, False, True), ("64", 8, False, True)]
    if not a.quick:
        plan += [("256", 1, False, True), ("256", 8, False, True), ("1024", 1, False, True), ("1024", 8, False, True)]
    if a.extra:
        plan += [("128", 1, False, False), ("128", 1, True, True)]
    for name, batch, compiled, tune in plan:
        cmd = [sys.executable, __file__, "--case", name, "--batch", str(batch), "--threads", str(a.threads)]
        cmd += ["--compiled"] if compiled else []
        cmd += [] if tune else ["--no-tune"]
        x, r = run_child(cmd)
        if x is None:
            print(f"case {name} b{batch} failed: {r.stderr.strip().splitlines()[-1:]}")
            continue
        rows.append(x)
        print(
            f"{x['case']:>5} px  batch {x['batch']}  {'compiled' if x['compiled'] else 'eager   '}  "
            f"alloc {'tuned' if x['tuned_alloc'] else 'plain'}  {x['img_s']:7.3f} img/s  "
            f"{x['gflop_per_img']:6.1f} GFLOP/img  {x['gflop_s']:6.1f} GFLOP/s  matmul {x['matmul_gflop_s']:6.1f}  "
            f"eff {100 * x['efficiency']:5.1f}%  peak RSS {x['peak_rss_gb']:.2f} GB"
            + (f"  compile {x['compile_s']:.1f}s" if x["compiled"] else "")
            + f"  (load average {os.getloadavg()[0]:.1f})",
            flush=True,
        )
    if a.e2e:
        for name in ["64"] if a.quick else ["256", "1024"]:
            e = end_to_end(name, a.threads)
            print(
                f"{name:>5} px  end to end: gaze generate --seeds 0-7 (load + 8 images + PNGs) {e['seconds']:.1f} s",
                flush=True,
            )


if __name__ == "__main__":
    main()
