"""gaze uncanny: fine-tune the generator against its critic (Broad et al. 2020)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from machinegaze.cli._common import parse_float, progress_bar, set_threads
from machinegaze.cli._options import DeviceOpt, PrecisionOpt, resolve


def uncanny_cmd(
    network: Optional[str] = typer.Option(
        None, "--network", help="network with a discriminator (.pkl/.safetensors or model name; default: bundled)"
    ),
    steps: int = typer.Option(500, "--steps", help="fine-tuning steps"),
    snapshot_every: int = typer.Option(
        50, "--snapshot-every", help="measure, write a grid and a resumable snapshot every K steps"
    ),
    outdir: Path = typer.Option(Path("uncanny"), "--outdir"),
    critic: str = typer.Option("d", "--critic", help="d (the network's discriminator) | detector:PATH_OR_NAME"),
    start_from: str = typer.Option("G_ema", "--start-from", help="G_ema | G | another network file or model name"),
    max_collapse: Optional[str] = typer.Option(
        None, "--max-collapse", help="stop when diversity (mean pairwise LPIPS) falls below T"
    ),
    keep_peak: bool = typer.Option(
        False, "--keep-peak", help="write peak.safetensors + peak.png: max P(fake) x diversity/diversity_0"
    ),
    batch: int = typer.Option(8, "--batch"),
    lr: str = typer.Option("0.0025", "--lr", help="Adam learning rate (betas 0, 0.99 as NVlabs' G)"),
    seed: int = typer.Option(0, "--seed", help="seed of the training z and noise"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --outdir from its last snapshot"),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads"),
    device: Optional[str] = DeviceOpt,
    precision: str = PrecisionOpt,
):
    """Fine-tune the generator against its frozen critic until its faces turn uncanny, then collapse."""
    from machinegaze import zoo
    from machinegaze.uncanny import UncannyConfig, run_uncanny

    dev, prec = resolve(device, precision)
    set_threads(threads)
    cfg = UncannyConfig(
        steps=steps,
        snapshot_every=snapshot_every,
        critic=critic,
        start_from=start_from,
        batch=batch,
        lr=parse_float(lr, "lr"),
        seed=seed,
        keep_peak=keep_peak,
        max_collapse=None if max_collapse is None else parse_float(max_collapse, "max-collapse"),
    )
    path = zoo.resolve_network(network)
    with progress_bar("uncanny") as cb:
        res = run_uncanny(path, outdir, cfg, resume=resume, progress=cb, device=dev, precision=prec)
    first, last = res.metrics[0], res.metrics[-1]
    if res.resumed_from is not None:
        print(f"resumed from step {res.resumed_from}")
    print(
        f"step {first['step']} -> {last['step']}: critic P(fake) {first['critic_fake']:.3f} -> {last['critic_fake']:.3f}, "
        f"diversity {first['diversity']:.4f} -> {last['diversity']:.4f}, redness {first['redness']:+.3f} -> "
        f"{last['redness']:+.3f}, distance {last['param_distance']:.4f}"
    )
    if res.collapse_step is not None:
        print(f"collapsed: diversity fell below {cfg.max_collapse} at step {res.collapse_step}; stopped")
    if "peak" in res.files:
        print(f"peak uncanniness at step {res.peak_step}: wrote {res.files['peak']} and {res.files['peak_grid']}")
    print(
        f"wrote {outdir}/metrics.jsonl, progression.mp4, summary.html ({len(res.metrics)} snapshots, {res.seconds:.0f} s)"
    )
