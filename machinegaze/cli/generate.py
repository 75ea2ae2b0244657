"""gaze generate / mix / interpolate / convert: StyleGAN2 sampling and weight conversion."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from machinegaze import GazeError, zoo
from machinegaze.cli._common import parse_float, parse_range_list, progress_bar
from machinegaze.cli._options import DeviceOpt, PrecisionOpt, resolve


def generate(
    network: Optional[str] = typer.Option(
        None, "--network", help="Network .pkl/.pt/.safetensors or model name (default: bundled)"
    ),
    seeds: str = typer.Option("0-7", "--seeds", help="Seeds, e.g. 0-7,12"),
    trunc: str = typer.Option("1.0", "--trunc", help="Truncation psi"),
    class_idx: Optional[int] = typer.Option(None, "--class", help="Class label (conditional networks)"),
    noise_mode: str = typer.Option("const", "--noise-mode", help="const | random | none"),
    translate: Optional[str] = typer.Option(None, "--translate", help="StyleGAN3: translate x,y (e.g. 0.1,0.05)"),
    rotate: Optional[str] = typer.Option(None, "--rotate", help="StyleGAN3: rotate, degrees"),
    seed_convention: str = typer.Option("nvlabs", "--seed-convention", help="nvlabs | rosinality (z from seeds)"),
    outdir: Path = typer.Option(Path("out"), "--outdir"),
    device: Optional[str] = DeviceOpt,
    precision: str = PrecisionOpt,
):
    """Generate images from seeds (one PNG per seed + a grid of the first 64) and save their latents (ws.npz,
    key 'w'). Under torchrun every process writes its share of the seeds."""
    from contextlib import nullcontext

    from machinegaze import distributed
    from machinegaze import generate as gen

    seed_list = parse_range_list(seeds, "seeds")
    xy = None
    if translate is not None:
        parts = translate.split(",")
        if len(parts) != 2:
            raise GazeError(f"--translate must be two numbers x,y (e.g. 0.1,0.05), got {translate!r}")
        xy = (parse_float(parts[0], "translate"), parse_float(parts[1], "translate"))
    cfg = gen.GenerateConfig(
        trunc=parse_float(trunc, "trunc"),
        class_idx=class_idx,
        noise_mode=noise_mode,
        translate=xy,
        rotate=None if rotate is None else parse_float(rotate, "rotate"),
        seed_convention=seed_convention,
    )
    dev, prec = resolve(device, precision)
    world = distributed.init(dev)
    G = zoo.load_generator(network, dev)
    with progress_bar("generate") if world.main else nullcontext() as cb:
        gen.generate_to_dir(G, seed_list, outdir, cfg, precision=prec, world=world, progress=cb)
    distributed.finish()
    if world.main:
        print(
            f"wrote {len(seed_list)} images and ws.npz to {outdir}" + (f" ({world.size} processes)" if world.on else "")
        )


def mix(
    network: Optional[str] = typer.Option(None, "--network"),
    rows: str = typer.Option("0-3", "--rows", help="Row seeds (their non-mixed layers are kept)"),
    cols: str = typer.Option("4-7", "--cols", help="Column seeds (their --styles layers are copied in)"),
    styles: str = typer.Option("coarse", "--styles", help="coarse | middle | fine | layer list like 0-5"),
    trunc: str = typer.Option("1.0", "--trunc"),
    class_idx: Optional[int] = typer.Option(None, "--class"),
    noise_mode: str = typer.Option("const", "--noise-mode"),
    outdir: Path = typer.Option(Path("out"), "--outdir"),
    device: Optional[str] = DeviceOpt,
):
    """The style-mixing grid: sources on the top row and left column, mixes inside."""
    from machinegaze import mix as mixmod

    row_seeds, col_seeds = parse_range_list(rows, "rows"), parse_range_list(cols, "cols")
    G = zoo.load_generator(network, resolve(device)[0])
    cfg = mixmod.MixConfig(styles=styles, trunc=parse_float(trunc, "trunc"), noise_mode=noise_mode, class_idx=class_idx)
    grid, mixes = mixmod.style_mixing_grid(G, row_seeds, col_seeds, cfg)
    mixmod.write_mixing_grid(grid, mixes, outdir)
    print(
        f"wrote {len(mixes)} mixes and grid.png to {outdir} (layers {mixmod.parse_styles(G, styles)} from the columns)"
    )


def interpolate(
    network: Optional[str] = typer.Option(None, "--network"),
    seeds: str = typer.Option("1,5,9", "--seeds"),
    frames: int = typer.Option(60, "--frames"),
    fps: int = typer.Option(30, "--fps"),
    trunc: str = typer.Option("1.0", "--trunc"),
    class_idx: Optional[int] = typer.Option(None, "--class"),
    noise_mode: str = typer.Option("const", "--noise-mode"),
    out: Path = typer.Option(Path("walk.mp4"), "--out", help=".mp4 or .gif"),
    device: Optional[str] = DeviceOpt,
):
    """A looping latent walk through the seeds, smooth in W."""
    from machinegaze import generate as gen

    seed_list = parse_range_list(seeds, "seeds")
    if out.suffix.lower() not in (".mp4", ".gif"):
        raise GazeError(f"--out must end in .mp4 or .gif, got {out.name}")
    G = zoo.load_generator(network, resolve(device)[0])
    with progress_bar("interpolate") as cb:
        imgs = gen.interpolate(
            G,
            seed_list,
            frames=frames,
            trunc=parse_float(trunc, "trunc"),
            class_idx=class_idx,
            noise_mode=noise_mode,
            progress=cb,
        )
    gen.write_video(gen.frames_to_uint8(imgs), out, fps=fps)
    print(f"wrote {out} ({frames} frames)")


def convert(
    src: Path = typer.Argument(..., help="NVlabs StyleGAN2/3 .pkl, rosinality .pt (or our .safetensors)"),
    dst: Path = typer.Argument(..., help="Output .safetensors"),
    half: bool = typer.Option(False, "--half", help="Store float tensors as fp16"),
):
    """Convert an NVlabs StyleGAN2/StyleGAN3 pickle or a rosinality .pt to machinegaze .safetensors (never runs pickled code)."""
    from machinegaze import checkpoints

    if dst.suffix != ".safetensors":
        raise GazeError(f"output must end in .safetensors, got {dst.name}")
    checkpoints.convert(src, dst, half=half)
    print(f"wrote {dst}")
