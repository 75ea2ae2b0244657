"""Training throughput of the StyleGAN2 trainer (one G+D step: Gmain, Dmain, lazy R1 every 16 steps), at the
bundled faces64 config on CPU, against a same-process fp32 matmul baseline; peak RSS.

Each case runs in a fresh process on random uint8 'images' (data loading is not the bottleneck: the trainer
keeps the dataset in memory). img/s counts real images shown to D per second, as NVlabs' kimg does; R1
steps are included in proportion (the timed window is a multiple of r1_interval steps).
Usage: python benchmarks/train.py [--quick] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from _common import matmul_gflops, peak_rss_gb, run_child

# The bundled faces64 run: `gaze train --cfg small --res 64 --batch 16` (see machinegaze/assets/MODEL_CARD_faces64.md).
CASES = {
    "faces64": dict(cfg="small", res=64, batch=16),
    "medium64": dict(cfg="medium", res=64, batch=16),
    "tiny32": dict(cfg="tiny", res=32, batch=16),
}


def run_case(name: str, threads: int, steps: int, tune: bool) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from machinegaze.perf import tune_allocator
    from machinegaze.train import Dist, TrainConfig, Trainer, new_state

    if tune:
        tune_allocator()
    torch.set_num_threads(threads)
    c = CASES[name]
    cfg = TrainConfig(data="(random)", cfg=c["cfg"], res=c["res"], batch=c["batch"], threads=threads)
    state = new_state(cfg)
    images = torch.randint(0, 256, (1024, 3, c["res"], c["res"]), dtype=torch.uint8)
    trainer = Trainer(state, images, Dist())
    trainer.step()  # step 0 (with R1), warm-up
    with FlopCounterMode(display=False) as fc:  # step 1: no R1
        trainer.step()
    flops_step = fc.get_total_flops()
    mm0 = matmul_gflops(threads)
    torch.set_num_threads(threads)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        trainer.step()
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    mm = (mm0 + matmul_gflops(threads)) / 2
    img_s = steps * cfg.batch / dt
    gflop_s = flops_step * steps / dt / 1e9
    return dict(
        case=name,
        cfg=c["cfg"],
        res=c["res"],
        batch=c["batch"],
        threads=threads,
        tuned_alloc=tune,
        img_s=img_s,
        cpu_s_per_img=dc / (steps * cfg.batch),
        gflop_per_img=flops_step / cfg.batch / 1e9,
        gflop_s=gflop_s,
        matmul_gflop_s=mm,
        efficiency=gflop_s / mm,
        g_params_m=sum(p.numel() for p in state.G.parameters()) / 1e6,
        d_params_m=sum(p.numel() for p in state.D.parameters()) / 1e6,
        peak_rss_gb=peak_rss_gb(),
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--case")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=16, help="timed steps (a multiple of 16 includes one R1 step)")
    ap.add_argument("--no-tune", action="store_true")
    ap.add_argument("--quick", action="store_true", help="the bundled config only")
    a = ap.parse_args()
    if a.case:
        print(json.dumps(run_case(a.case, a.threads, a.steps, not a.no_tune)))
        return
    plan = [("faces64", a.threads, True), ("faces64", a.threads, False)]
    if not a.quick:
        plan += [("faces64", 1, True), ("tiny32", a.threads, True), ("medium64", a.threads, True)]
    for name, threads, tune in plan:
        cmd = [sys.executable, __file__, "--case", name, "--threads", str(threads), "--steps", str(a.steps)]
        cmd += [] if tune else ["--no-tune"]
        x, r = run_child(cmd)
        if x is None:
            print(f"case {name} failed: {r.stderr.strip().splitlines()[-1:]}")
            continue
        print(
            f"{x['case']:>9} ({x['cfg']}, {x['res']} px, batch {x['batch']}, G {x['g_params_m']:.2f}M D {x['d_params_m']:.2f}M)"
            f"  threads {x['threads']}  alloc {'tuned' if x['tuned_alloc'] else 'plain'}  {x['img_s']:6.1f} img/s"
            f"  {x['cpu_s_per_img'] * 1000:6.1f} CPU-ms/img  {x['gflop_per_img']:5.2f} GFLOP/img  {x['gflop_s']:5.1f} GFLOP/s"
            f"  matmul {x['matmul_gflop_s']:5.1f}  eff {100 * x['efficiency']:4.1f}%  peak RSS {x['peak_rss_gb']:.2f} GB",
            flush=True,
        )


if __name__ == "__main__":
    main()
