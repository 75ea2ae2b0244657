"""Seconds per uncanny fine-tuning step at the bundled config, against a same-run inference baseline; peak RSS.

A step = G forward (batch 8, random noise) + frozen D forward + backward through both + Adam on G.
Baseline, same process and batch: G + D forward under inference_mode (what one step must at least cost).
Wall seconds and process CPU seconds per step are both printed: on a shared machine CPU seconds (1 thread) are
the better estimate of the uncontended time. Also the cost of one snapshot evaluation (16 faces rendered and judged, 120 LPIPS-alex pairs, colour stats).

Networks: the bundled model when `zoo.resolve_network('default')` finds it (case `bundled`), else a fresh
G/D of train.py's "small" preset at 64 px (what the bundled model is trained with); plus a 64 px
channel_base 8192 / channel_max 256 net (`c8192`). Each case runs in a fresh process, so peak RSS is its own.
Usage: python benchmarks/uncanny.py [--threads 1] [--reps 5] [--case NAME]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from _common import peak_rss_gb, run_child


def networks(case: str):
    import torch

    from machinegaze import GazeError, checkpoints, zoo
    from machinegaze.nets.stylegan2 import Discriminator, Generator

    torch.manual_seed(0)
    if case == "bundled":
        try:
            nets = checkpoints.load_networks(zoo.resolve_network("default"))
            if nets.D is not None:
                return nets.generator, nets.D, "bundled faces64"
        except GazeError:
            pass
        from machinegaze.train import TrainConfig, build_networks

        G, D = build_networks(TrainConfig(cfg="small", res=64))
        return G, D, "train.py 'small' preset, 64 px (bundled model not found)"
    if case == "c8192":
        G = Generator(
            z_dim=256,
            c_dim=0,
            w_dim=256,
            img_resolution=64,
            img_channels=3,
            mapping_kwargs=dict(num_layers=4),
            synthesis_kwargs=dict(channel_base=8192, channel_max=256),
        )
        D = Discriminator(c_dim=0, img_resolution=64, img_channels=3, channel_base=8192, channel_max=256)
        return G, D, "64 px, channel_base 8192 / channel_max 256, z=w=256, 4 mapping layers"
    raise SystemExit(f"unknown case {case}")


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def run_case(case: str, batch: int, threads: int, reps: int) -> dict:
    import copy

    import torch

    from machinegaze import uncanny as U
    from machinegaze import zoo
    from machinegaze.perf import tune_allocator

    tune_allocator()
    torch.set_num_threads(threads)
    G0, D, what = networks(case)
    critic = U.freeze(U.DiscriminatorCritic(D.float()))
    G = copy.deepcopy(G0).float().train().requires_grad_(True)
    opt = U.make_optimizer(G, U.UncannyConfig())
    n_params = sum(p.numel() for p in G.parameters())
    torch.manual_seed(1)
    z = torch.randn(batch, G.z_dim)

    fwd = []
    with torch.inference_mode():
        for _ in range(reps + 1):
            t = time.perf_counter()
            critic(G(z, noise_mode="random"))
            fwd.append(time.perf_counter() - t)
    steps, cpu = [], []
    for _ in range(reps + 2):
        t, c = time.perf_counter(), time.process_time()
        U.finetune_step(G, critic, opt, batch)
        steps.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    lp = zoo.load_lpips("alex")
    theta0 = {k: v.detach().clone() for k, v in G0.named_parameters()}
    ze, ce = U.eval_inputs(G, range(16))
    t = time.perf_counter()
    imgs = U.render(G, ze, ce, batch=batch)
    U.critic_logits(critic, imgs, ce, batch)
    U.mean_pairwise_lpips(lp, imgs)
    U.face_colour(imgs)
    U.param_distance(G, theta0)
    eval_s = time.perf_counter() - t
    step_s, fwd_s = median(steps[2:]), median(fwd[1:])
    return dict(
        case=case,
        what=what,
        batch=batch,
        threads=threads,
        g_params=n_params,
        step_s=step_s,
        step_cpu_s=median(cpu[2:]),
        fwd_s=fwd_s,
        ratio=step_s / fwd_s,
        eval_s=eval_s,
        peak_rss_gb=peak_rss_gb(),
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--case")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    if a.case:
        print(json.dumps(run_case(a.case, a.batch, a.threads, a.reps)))
        return
    print(f"uncanny fine-tuning, batch {a.batch}, {a.threads} thread(s), median of {a.reps} steps")
    print(
        f"{'case':8s} {'G params':>9s} {'s/step':>8s} {'cpu s':>7s} {'fwd s':>7s} {'step/fwd':>8s} {'eval s':>7s} {'peak RSS':>9s}  network"
    )
    for case in ("bundled", "c8192"):
        cmd = [
            sys.executable,
            __file__,
            "--case",
            case,
            "--batch",
            str(a.batch),
            "--threads",
            str(a.threads),
            "--reps",
            str(a.reps),
        ]
        x, r = run_child(cmd)
        if x is None:
            print(f"{case}: failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
            continue
        print(
            f"{x['case']:8s} {x['g_params'] / 1e6:8.2f}M {x['step_s']:8.3f} {x['step_cpu_s']:7.3f} {x['fwd_s']:7.3f} {x['ratio']:8.2f} "
            f"{x['eval_s']:7.2f} {x['peak_rss_gb']:7.2f} GB  {x['what']}",
            flush=True,
        )


if __name__ == "__main__":
    main()
