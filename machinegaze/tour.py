"""`gaze tour`: run every capability that is available on the bundled models and write tour/index.html.

Each stop is a small function that writes files into the tour folder and returns a `Stop` (title, one sentence
on what the picture shows, files). A stop whose parts are not available says so on the page; it is never faked.
"""
from __future__ import annotations

import html
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from machinegaze import GazeError


@dataclass
class Stop:
    title: str
    sentence: str
    files: list[str] = field(default_factory=list)
    seconds: float = 0.0
    skipped: Optional[str] = None


@dataclass(frozen=True)
class TourConfig:
    outdir: Path = Path("tour")
    network: Optional[str] = None  # default: the bundled face GAN, else a golden test network
    faces: Optional[Path] = None
    quick: bool = False


def _find_network(cfg: TourConfig) -> tuple[str, str]:
    """(network path, description)."""
    from machinegaze import zoo
    if cfg.network:
        return str(zoo.resolve_network(cfg.network)), str(cfg.network)
    try:
        return str(zoo.resolve_network("default")), "the bundled face GAN"
    except GazeError:
        pass
    here = Path(__file__).resolve().parents[1]
    for cand in (here.parent / "shared" / "golden" / "stylegan2" / "sg2_skip_32.pkl",):
        if cand.is_file():
            return str(cand), "a golden test network (random weights: no bundled face GAN in this build yet)"
    raise GazeError("no bundled face GAN in this build and no --network given")


def stop_generate(cfg: TourConfig, G, desc: str) -> Stop:
    from machinegaze.data import make_grid, save_image
    from machinegaze.generate import GenerateConfig, generate_images, save_w
    seeds = list(range(16))
    imgs, ws = generate_images(G, seeds, GenerateConfig(trunc=0.7))
    save_image(make_grid(imgs.clamp(-1, 1), ncols=8), cfg.outdir / "generate_grid.png")
    save_w(cfg.outdir / "generate_ws.npz", ws)
    return Stop("Generate", f"Seeds 0-15 from {desc} at truncation psi=0.7: each seed is NVlabs' "
                "RandomState(seed) latent, so the same seed gives the same face everywhere.",
                ["generate_grid.png", "generate_ws.npz"])


def stop_mix(cfg: TourConfig, G, desc: str) -> Stop:
    from machinegaze.data import save_image
    from machinegaze.mix import MixConfig, style_mixing_grid
    grid, _ = style_mixing_grid(G, [0, 1, 2], [3, 4, 5], MixConfig(styles="coarse", trunc=0.7))
    save_image(grid, cfg.outdir / "mix_coarse.png")
    files = ["mix_coarse.png"]
    try:
        grid, _ = style_mixing_grid(G, [0, 1, 2], [3, 4, 5], MixConfig(styles="middle", trunc=0.7))
        save_image(grid, cfg.outdir / "mix_middle.png")
        files.append("mix_middle.png")
    except GazeError:
        pass
    return Stop("Style mixing", "Each inner picture keeps its row's face but takes the coarse styles "
                "(4-8 px layers: pose, face shape) from its column's face; the second grid swaps the middle layers.", files)


def stop_interpolate(cfg: TourConfig, G, desc: str) -> Stop:
    from machinegaze.generate import frames_to_uint8, interpolate, write_video
    frames = 24 if cfg.quick else 48
    imgs = interpolate(G, [1, 5, 9], frames=frames, trunc=0.7)
    write_video(frames_to_uint8(imgs), cfg.outdir / "walk.mp4", fps=24)
    return Stop("Interpolation", "A looping walk through the latents of seeds 1, 5 and 9, smooth in W space.", ["walk.mp4"])


STOPS: list[Callable] = [stop_generate, stop_mix, stop_interpolate]


def render_index(stops: list[Stop], outdir: Path, header: str) -> Path:
    from machinegaze.data import atomic_path
    parts = [f"<!doctype html><meta charset=utf-8><title>machinegaze tour</title>",
             "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;background:#111;color:#eee}"
             "img,video{max-width:100%;image-rendering:pixelated;border:1px solid #333}section{margin:2em 0}"
             ".skip{color:#f90}small{color:#999}</style>",
             "<h1>machinegaze tour</h1>", f"<p>{html.escape(header)}</p>"]
    for s in stops:
        parts.append(f"<section><h2>{html.escape(s.title)}</h2><p>{html.escape(s.sentence)}</p>")
        if s.skipped:
            parts.append(f"<p class=skip>Not shown: {html.escape(s.skipped)}</p>")
        for f in s.files:
            if f.endswith((".png", ".jpg", ".gif")):
                parts.append(f'<p><img src="{html.escape(f)}" alt="{html.escape(f)}"></p>')
            elif f.endswith(".mp4"):
                parts.append(f'<p><video src="{html.escape(f)}" controls loop autoplay muted></video></p>')
            else:
                parts.append(f'<p><a href="{html.escape(f)}">{html.escape(f)}</a></p>')
        parts.append(f"<small>{s.seconds:.1f} s</small></section>")
    with atomic_path(outdir / "index.html") as tmp:
        tmp.write_text("\n".join(parts), encoding="utf-8")
    return outdir / "index.html"


def run_tour(cfg: TourConfig, on_stop: Optional[Callable[[Stop], None]] = None) -> tuple[Path, list[Stop]]:
    from machinegaze import checkpoints
    cfg.outdir.mkdir(parents=True, exist_ok=True)
    path, desc = _find_network(cfg)
    G = checkpoints.load_networks(path).generator
    stops = []
    t_all = time.perf_counter()
    for fn in STOPS:
        t0 = time.perf_counter()
        try:
            s = fn(cfg, G, desc)
        except GazeError as e:
            s = Stop(fn.__name__.replace("stop_", "").title(), "", skipped=str(e))
        s.seconds = time.perf_counter() - t0
        stops.append(s)
        if on_stop:
            on_stop(s)
    header = (f"Network: {desc} ({os.path.basename(path)}). Total {time.perf_counter() - t_all:.1f} s "
              f"on {os.cpu_count()} CPU cores.")
    return render_index(stops, cfg.outdir, header), stops
