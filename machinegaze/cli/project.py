"""gaze project / breed: GAN inversion of a photo, and breeding latents."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from machinegaze import GazeError, zoo
from machinegaze.cli._common import parse_float, progress_bar, set_threads
from machinegaze.cli._options import DeviceOpt, PrecisionOpt, resolve


def project_cmd(
    target: Path = typer.Option(..., "--target", help="photo to project (png/jpg/...)"),
    network: Optional[str] = typer.Option(
        None, "--network", help="Network .pkl/.safetensors or model name (default: bundled)"
    ),
    space: Optional[str] = typer.Option(None, "--space", help="w | w+ (default: the preset's; fast: w+, nvlabs: w)"),
    steps: Optional[int] = typer.Option(
        None, "--steps", help="optimisation steps (default: the preset's; fast 150, nvlabs 1000)"
    ),
    preset: str = typer.Option("fast", "--preset", help="fast (default) | nvlabs (NVlabs projector.py, 1000 steps)"),
    align: bool = typer.Option(False, "--align/--no-align", help="FFHQ-align the face first (else centre-crop)"),
    seed: int = typer.Option(0, "--seed", help="seed of the noise init and the candidate draw"),
    class_idx: Optional[int] = typer.Option(None, "--class", help="class label (conditional networks)"),
    video: bool = typer.Option(True, "--video/--no-video", help="write proj.mp4 (target | projection over the steps)"),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads"),
    outdir: Path = typer.Option(Path("out"), "--outdir"),
    device: Optional[str] = DeviceOpt,
    precision: str = PrecisionOpt,
):
    """Find the latent whose image matches a photo: target.png, proj.png, projected_w.npz, proj.mp4, result.json."""
    from machinegaze.perf import tune_allocator
    from machinegaze.project import ProjectConfig, run_project

    dev, prec = resolve(device, precision)
    set_threads(threads)
    tune_allocator()
    cfg = ProjectConfig(
        preset=preset, space=space, steps=steps, seed=seed, class_idx=class_idx, align=align, video=video
    )
    with progress_bar(f"project ({preset})") as cb:
        run = run_project(network, target, outdir, cfg, progress=cb, device=dev, precision=prec)
    r = run.result
    print(
        f"LPIPS {r['lpips']:.4f} after {r['recipe']['steps']} steps in {r['wall_s']:.1f} s ({preset}, {r['recipe']['space']})"
    )
    for who in ("target", "projection"):
        s = (r.get("realism") or {}).get(who)
        if s:
            print(
                f"  D on the {who}: logit {s['d_logit']:+.3f} (sigmoid {s['d_sigmoid']:.3f}), "
                f"more real than {s['percentile_among_generated']:.0f}% of the network's own images"
                + ("  -> out of domain" if s["out_of_domain"] else "")
            )
    print(f"wrote {', '.join(p.name for p in run.files.values())} to {outdir}")


def breed_cmd(
    w: Optional[list[Path]] = typer.Option(
        None, "--w", help="parent latent .npz (key 'w'); repeat; used before --seed parents"
    ),
    seed: Optional[list[int]] = typer.Option(None, "--seed", help="parent from a seed; repeat"),
    network: Optional[str] = typer.Option(None, "--network"),
    genes: Optional[str] = typer.Option(
        None, "--genes", help="fraction from the second parent per layer group, e.g. coarse=0.8,middle=0.3,fine=0"
    ),
    crossover: Optional[str] = typer.Option(
        None, "--crossover", help="uniform | grouped: whole layers/groups from either parent (instead of --genes)"
    ),
    crossover_seed: int = typer.Option(0, "--crossover-seed"),
    crossover_rate: str = typer.Option(
        "0.5", "--crossover-rate", help="chance that a layer/group comes from the second parent"
    ),
    mutate: str = typer.Option("0", "--mutate", help="mutation strength: a random step in W (0: none; try 0.1-0.3)"),
    mutation_seed: int = typer.Option(0, "--mutation-seed"),
    grid: bool = typer.Option(False, "--grid", help="parent x parent grid of children (needs 2+ parents)"),
    trunc: str = typer.Option("1.0", "--trunc", help="truncation psi for seed parents"),
    class_idx: Optional[int] = typer.Option(None, "--class"),
    noise_mode: str = typer.Option("const", "--noise-mode"),
    out: Path = typer.Option(
        Path("child.png"), "--out", help="child image (.png/.jpg); its latent goes to the same stem .npz"
    ),
    device: Optional[str] = DeviceOpt,
):
    """Breed two latents gene by gene (coarse/middle/fine), by crossover, with optional mutation."""
    from machinegaze import mix as mixmod

    if out.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
        raise GazeError(f"--out must be an image file (.png/.jpg/.webp), got {out.name}")
    G = zoo.load_generator(network, resolve(device)[0])
    psi = parse_float(trunc, "trunc")
    parents = mixmod.gather_parents(G, w or [], seed or [], trunc=psi, class_idx=class_idx)
    cfg = mixmod.BreedConfig(
        genes=genes,
        crossover=crossover,
        crossover_seed=crossover_seed,
        crossover_rate=parse_float(crossover_rate, "crossover-rate"),
        mutate=parse_float(mutate, "mutate"),
        mutation_seed=mutation_seed,
        trunc=psi,
        class_idx=class_idx,
        noise_mode=noise_mode,
    )
    out, npz, kids = mixmod.breed_to_file(G, parents, cfg, out, grid=grid)
    print(f"wrote {out} and {npz} ({kids.shape[0]} child{'ren' if kids.shape[0] > 1 else ''})")
