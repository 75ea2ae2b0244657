"""LPIPS speed: ms per image pair at 256 px (vgg, alex; batch 1 and 8), and efficiency against a same-run
fp32 matmul baseline (achieved GFLOP/s of the LPIPS forward, FLOPs counted by torch.utils.flop_counter, over
GFLOP/s of a 2048x2048 matmul in the same process).

Usage: python benchmarks/lpips.py [--size 256] [--batches 1,8] [--threads 1] [--reps 3] [--grad]
(--grad times forward + backward w.r.t. the first image, as a projector's loss would use it.)
"""

from __future__ import annotations

import argparse
import time

from _common import matmul_gflops


def time_case(model, size: int, batch: int, reps: int, grad: bool) -> tuple[float, float]:
    """(seconds per call, FLOPs per call) for one LPIPS call on `batch` pairs."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, size, size, generator=g) * 2 - 1
    y = torch.rand(batch, 3, size, size, generator=g) * 2 - 1

    def call():
        if grad:
            xg = x.clone().requires_grad_(True)
            model(xg, y).sum().backward()
        else:
            with torch.no_grad():
                model(x, y)

    with FlopCounterMode(display=False) as fc:
        call()  # also the warm-up
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - t)
    return best, float(fc.get_total_flops())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--nets", default="vgg,alex")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--grad", action="store_true")
    args = ap.parse_args()

    import torch

    from machinegaze import zoo

    torch.set_num_threads(args.threads)
    base = matmul_gflops(reps=5)
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), {args.size} px, "
        f"{'forward+backward' if args.grad else 'forward (no grad)'}, best of {args.reps}"
    )
    print(f"baseline: fp32 2048x2048 matmul {base:.1f} GFLOP/s")
    print(f"{'net':>5} {'batch':>5} {'ms/pair':>9} {'pairs/s':>8} {'GFLOP/pair':>10} {'GFLOP/s':>8} {'of matmul':>9}")
    for net in args.nets.split(","):
        model = zoo.load_lpips(net)
        for batch in (int(b) for b in args.batches.split(",")):
            sec, flops = time_case(model, args.size, batch, args.reps, args.grad)
            gfs = flops / sec / 1e9
            print(
                f"{net:>5} {batch:>5} {sec / batch * 1e3:>9.1f} {batch / sec:>8.2f} {flops / batch / 1e9:>10.2f} "
                f"{gfs:>8.1f} {gfs / base:>9.0%}"
            )


if __name__ == "__main__":
    main()
