"""gaze dream: DeepDream, feature visualisation from noise, zoom videos."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from machinegaze.cli._common import parse_float, progress_bar
from machinegaze.cli._options import DeviceOpt, PrecisionOpt, resolve


def dream(
    image: Optional[Path] = typer.Argument(None, help="Photo to dream on (not needed with --from-noise)"),
    out: Path = typer.Option(Path("dream.png"), "--out", "-o", help=".png/.jpg, or .mp4/.gif with --zoom-frames"),
    net: str = typer.Option("efficientnet", "--net", help="efficientnet | vgg16 | discriminator | detector"),
    network: Optional[str] = typer.Option(None, "--network", help="StyleGAN2 file or model name (--net discriminator)"),
    layer: Optional[str] = typer.Option(None, "--layer", "-l", help="Layer to amplify (NAME, or NAME:CHANNEL)"),
    class_: Optional[str] = typer.Option(None, "--class", "-c", help="ImageNet class to amplify: name or index"),
    objective: Optional[str] = typer.Option(
        None, "--objective", help="e.g. 'layer:_blocks.10._relu0 + 0.5*class:espresso'"
    ),
    guide: Optional[Path] = typer.Option(None, "--guide", help="Guide image: dream towards its features"),
    octaves: int = typer.Option(4, "--octaves"),
    octave_scale: str = typer.Option("1.4", "--octave-scale"),
    steps: int = typer.Option(10, "--steps", help="Gradient steps per octave"),
    step_size: str = typer.Option("0.02", "--step-size"),
    jitter: int = typer.Option(32, "--jitter", help="Random roll per step, px"),
    smooth: str = typer.Option("0", "--smooth", help="Blur the gradient (sigma, px)"),
    tile: int = typer.Option(512, "--tile", help="Tile size for big images (0: never tile)"),
    size: int = typer.Option(512, "--size", help="Resize the photo's longest side to this (0: keep)"),
    seed: int = typer.Option(0, "--seed"),
    from_noise: bool = typer.Option(False, "--from-noise", help="Start from noise (feature visualisation)"),
    noise_size: int = typer.Option(224, "--noise-size"),
    noise_steps: int = typer.Option(256, "--noise-steps"),
    zoom_frames: int = typer.Option(0, "--zoom-frames", help="Feedback-zoom video with this many frames"),
    zoom: str = typer.Option("1.05", "--zoom", help="Zoom factor per frame"),
    fps: int = typer.Option(12, "--fps"),
    list_layers: bool = typer.Option(False, "--list-layers", help="Print the network's layers and shapes"),
    list_classes: bool = typer.Option(False, "--list-classes", help="Print the class names"),
    device: Optional[str] = DeviceOpt,
    precision: str = PrecisionOpt,
):
    """DeepDream a photo (or visualise a layer/class from noise, or make a zoom video)."""
    from machinegaze import dream as dm

    dev, prec = resolve(device, precision)
    if list_layers or list_classes:
        dnet = dm.load_net(net, network)
        if list_classes:
            for i, name in enumerate(dnet.class_names or []):
                print(f"{i}\t{name}")
            if not dnet.class_names:
                print(f"{net}: no class names (use output indices)")
            return
        print(
            f"layers of {dnet.name} (output shapes for a {dnet.probe_size}x{dnet.probe_size} input; default: {dnet.default_layer})"
        )
        for info in dnet.layers():
            print(f"{info.name:32s} {info.kind:20s} {'x'.join(map(str, info.shape[1:]))}")
        return
    terms = [
        t
        for t in (
            objective,
            f"layer:{layer}" if layer and ":" not in layer else layer,
            f"class:{class_}" if class_ is not None else None,
        )
        if t
    ]
    cfg = dm.DreamConfig(
        net=net,
        objective=" + ".join(terms) or None,
        octaves=octaves,
        octave_scale=parse_float(octave_scale, "octave-scale"),
        steps=steps,
        step_size=parse_float(step_size, "step-size"),
        jitter=jitter,
        smooth=parse_float(smooth, "smooth"),
        tile=tile,
        size=size,
        seed=seed,
        from_noise=from_noise,
        noise_size=noise_size,
        noise_steps=noise_steps,
        zoom_frames=zoom_frames,
        zoom=parse_float(zoom, "zoom"),
        fps=fps,
    )
    with progress_bar("dream") as cb:
        result = dm.run(cfg, image, out, guide=guide, network=network, progress=cb, device=dev, precision=prec)
    what = f"{len(result.frames)} frames" if result.frames else f"{result.image.shape[-1]}x{result.image.shape[-2]}"
    print(
        f"wrote {out} ({what}; objective {result.objective}: {result.history[0]:.4g} -> {result.history[-1]:.4g})"
        if result.history
        else f"wrote {out}"
    )
