"""Detector throughput on CPU: inference images/s at batch 32, training images/s (frozen-body and unfrozen
phases), the cost of the preprocessing policy, and peak RSS; against a same-run fp32 matmul baseline.

Each case runs in a fresh process so its peak RSS is its own. Images are synthetic (the speed does not depend
on content). Usage: python benchmarks/detect.py [--quick] [--threads N] [--size 128]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from _common import matmul_gflops, peak_rss_gb, run_child


def run_case(case: str, arch: str, size: int, batch: int, reps: int, threads: int) -> dict:
    import numpy as np
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from machinegaze.detect.model import Detector, DetectorSpec, bce_loss, freeze_body

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = Detector(DetectorSpec(arch, size))
    x = torch.rand(batch, 3, size, size) * 2 - 1
    y = (torch.arange(batch) % 2).float()
    mm0 = matmul_gflops(n=1024)
    if case == "predict":  # the library path: uint8 images in, small channels-last batches (detect.evaluate)
        from machinegaze.detect.evaluate import predict_logits

        imgs = np.random.default_rng(0).integers(0, 255, (batch, size, size, 3), dtype=np.uint8)
        model.eval()
        with torch.inference_mode(), FlopCounterMode(display=False) as fc:
            model(x[:1])
        flops = fc.get_total_flops()
        predict_logits(model, imgs)
        t = time.perf_counter()
        for _ in range(reps):
            predict_logits(model, imgs)
        dt = (time.perf_counter() - t) / reps
    elif case == "inference":
        model.eval()
        with torch.inference_mode():
            with FlopCounterMode(display=False) as fc:
                model(x[:1])
            flops = fc.get_total_flops()
            model(x)
            t = time.perf_counter()
            for _ in range(reps):
                model(x)
            dt = (time.perf_counter() - t) / reps
    elif case == "preprocess":
        from PIL import Image

        from machinegaze.detect.sources import Preprocess

        rng = np.random.default_rng(0)
        imgs = [Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)) for _ in range(batch)]
        pre = Preprocess(size, 75)
        flops = 0
        t = time.perf_counter()
        for _ in range(reps):
            [pre(im) for im in imgs]
        dt = (time.perf_counter() - t) / reps
    else:  # train-frozen | train-unfrozen: one optimiser step per batch, as in detect.train.fit
        x = x.contiguous(memory_format=torch.channels_last)  # as fit() does
        frozen = case == "train-frozen"
        freeze_body(model, frozen)
        model.train()
        if frozen:
            model.body.eval()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], 1e-4)

        def step():
            if frozen:
                with torch.no_grad():
                    f = model.feature_map(x)
                logits = model.logit_from_map(f)
            else:
                logits = model(x)
            loss = bce_loss(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()

        model.eval()
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            model(x[:1])
        model.train()
        if frozen:
            model.body.eval()
        # The usual convention: a training step costs 3x the forward FLOPs (forward, grad wrt activations, grad
        # wrt weights); the frozen phase costs one forward (the head is negligible). torch's flop counter is not
        # used for the backward because it counts depthwise-convolution gradients as dense convolutions.
        flops = fc.get_total_flops() * (1 if frozen else 3)
        step()
        t = time.perf_counter()
        for _ in range(reps):
            step()
        dt = (time.perf_counter() - t) / reps
    mm = (mm0 + matmul_gflops(n=1024)) / 2
    img_s = batch / dt
    gflops = flops * img_s / 1e9
    return dict(
        case=case,
        arch=arch,
        size=size,
        batch=batch,
        threads=threads,
        img_s=img_s,
        gflop_per_img=flops / 1e9,
        gflop_s=gflops,
        matmul_gflop_s=mm,
        efficiency=gflops / mm if mm else 0.0,
        peak_rss_gb=peak_rss_gb(),
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts to measure")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--arch", default="effnet_lite0", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=32, help=argparse.SUPPRESS)
    ap.add_argument("--reps", type=int, default=5, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.case:  # child process: one case, JSON on stdout
        print(json.dumps(run_case(a.case, a.arch, a.size, a.batch, a.reps, int(a.threads))))
        return
    import os

    reps = 2 if a.quick else 5
    threads = [int(t) for t in str(a.threads).split(",")]
    cases = [
        ("inference", "effnet_lite0"),
        ("predict", "effnet_lite0"),
        ("train-frozen", "effnet_lite0"),
        ("train-unfrozen", "effnet_lite0"),
        ("inference", "smallcnn"),
        ("train-unfrozen", "smallcnn"),
        ("preprocess", "effnet_lite0"),
    ]
    print(
        f"detector benchmark: {a.size} px, batch 32, {reps} timed batches per case; "
        f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
    )
    print(
        f"{'case':16s} {'arch':13s} {'threads':>7s} {'img/s':>8s} {'GFLOP/img':>10s} {'GFLOP/s':>8s} "
        f"{'matmul GFLOP/s':>15s} {'eff.':>6s} {'peak RSS GB':>12s}"
    )
    for case, arch in cases:
        for t in threads:
            cmd = [
                sys.executable,
                __file__,
                "--case",
                case,
                "--arch",
                arch,
                "--size",
                str(a.size),
                "--batch",
                "32",
                "--reps",
                str(reps),
                "--threads",
                str(t),
            ]
            d, r = run_child(cmd)
            if d is None:
                err = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode
                print(f"{case:16s} {arch:13s} {t:7d} failed: {err}")
                continue
            print(
                f"{case:16s} {arch:13s} {t:7d} {d['img_s']:8.1f} {d['gflop_per_img']:10.3f} {d['gflop_s']:8.1f} "
                f"{d['matmul_gflop_s']:15.1f} {100 * d['efficiency']:5.1f}% {d['peak_rss_gb']:12.2f}"
            )
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(
        "inference: the raw model on one contiguous batch of 32 (the baseline); predict: the library path\n"
        "(detect.evaluate.predict_logits: uint8 in, batches of 8 in channels-last layout), same 32 images.\n"
        "img/s: images per second (training: optimiser steps over batches of 32; frozen = head only, one forward\n"
        "through the body; unfrozen = forward + backward through everything). GFLOP/img: forward FLOPs (x3 for\n"
        "a full training step). eff.: achieved GFLOP/s over a 1024x1024 fp32 matmul with the same threads, same\n"
        "process. On a shared machine, 2 threads can be far slower than 1: compare the rows."
    )


if __name__ == "__main__":
    main()
