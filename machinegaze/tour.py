"""`gaze tour`: run every capability that is available on the bundled models and write tour/index.html.

Each stop is a small function that writes files into the tour folder and returns a `Stop` (title, one sentence
on what the picture shows, files). A stop whose parts are not available says so on the page; it is never faked.
"""

from __future__ import annotations

import dataclasses
import html
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

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
    network: Optional[str] = None  # default: the bundled face GAN
    faces: Optional[Path] = None
    quick: bool = False
    network_path: Optional[str] = None  # filled in by run_tour
    device: torch.device = torch.device("cpu")  # filled in by run_tour
    precision: str = "fp32"  # filled in by run_tour: autocast of LPIPS (project, uncanny) and the dream net


def _find_network(cfg: TourConfig) -> tuple[str, str]:
    """(network path, description)."""
    from machinegaze import zoo

    if cfg.network:
        return str(zoo.resolve_network(cfg.network)), str(cfg.network)
    return str(zoo.resolve_network("default")), "the bundled face GAN"


def stop_generate(cfg: TourConfig, G, desc: str) -> Stop:
    from machinegaze.data import make_grid, save_image
    from machinegaze.generate import GenerateConfig, generate_images, save_w

    seeds = list(range(16))
    imgs, ws = generate_images(G, seeds, GenerateConfig(trunc=0.7))
    save_image(make_grid(imgs.clamp(-1, 1), ncols=8), cfg.outdir / "generate_grid.png")
    save_w(cfg.outdir / "generate_ws.npz", ws)
    return Stop(
        "Generate",
        f"Seeds 0-15 from {desc} at truncation psi=0.7: each seed is NVlabs' "
        "RandomState(seed) latent, so the same seed gives the same face everywhere.",
        ["generate_grid.png", "generate_ws.npz"],
    )


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
    return Stop(
        "Style mixing",
        "Each inner picture keeps its row's face but takes the coarse styles "
        "(4-8 px layers: pose, face shape) from its column's face; the second grid swaps the middle layers.",
        files,
    )


def stop_interpolate(cfg: TourConfig, G, desc: str) -> Stop:
    from machinegaze.generate import frames_to_uint8, interpolate, write_video

    frames = 24 if cfg.quick else 48
    imgs = interpolate(G, [1, 5, 9], frames=frames, trunc=0.7)
    write_video(frames_to_uint8(imgs), cfg.outdir / "walk.mp4", fps=24)
    return Stop(
        "Interpolation", "A looping walk through the latents of seeds 1, 5 and 9, smooth in W space.", ["walk.mp4"]
    )


STOPS: list[Callable] = [stop_generate, stop_mix, stop_interpolate]


def _tour_image(name: str, outdir: Path) -> Path:
    """A bundled sample photo (scikit-image's coffee cup) written into the tour folder."""
    from PIL import Image

    if name != "coffee":
        raise GazeError(f"unknown sample {name}")
    try:
        from skimage import data as skdata
    except ImportError:
        raise GazeError("scikit-image is not installed (pip install scikit-image) for the coffee sample") from None
    p = outdir / "coffee.png"
    Image.fromarray(skdata.coffee()).save(p)
    return p


def stop_project(cfg: TourConfig, G, desc: str) -> Stop:
    from machinegaze import project as proj
    from machinegaze.data import make_grid, save_image
    from machinegaze.generate import GenerateConfig, generate_images, save_w, synthesize
    from machinegaze.mix import breed

    if cfg.network_path is None:
        raise GazeError("no network file")
    steps = 60 if cfg.quick else 150
    pcfg = proj.ProjectConfig(steps=steps, video=not cfg.quick, w_avg_samples=2000, reference_samples=16)
    face, _ = generate_images(G, [123], GenerateConfig(trunc=0.7))
    save_image(face, cfg.outdir / "project_face_target.png")
    on = {"device": cfg.device, "precision": cfg.precision}
    a = proj.run_project(
        cfg.network_path, cfg.outdir / "project_face_target.png", cfg.outdir / "project_face", pcfg, **on
    )
    b = proj.run_project(cfg.network_path, _tour_image("coffee", cfg.outdir), cfg.outdir / "project_coffee", pcfg, **on)
    wa, wb = a.projection.ws.to(cfg.device), b.projection.ws.to(cfg.device)
    child = breed(G, wa, wb, {"coarse": 0.0, "middle": 0.5, "fine": 1.0})
    save_w(cfg.outdir / "child.npz", child)
    imgs = synthesize(G, torch.cat([wa, child, wb]))
    save_image(make_grid(imgs.clamp(-1, 1), ncols=3), cfg.outdir / "breed.png")
    ra, rb = a.result, b.result
    files = [
        "project_face/target.png",
        "project_face/proj.png",
        "project_coffee/target.png",
        "project_coffee/proj.png",
        "breed.png",
        "child.npz",
    ]
    files += [f for f in ("project_face/proj.mp4", "project_coffee/proj.mp4") if (cfg.outdir / f).exists()]
    return Stop(
        "Project and breed",
        f"A face the model made, recovered by projection into W+ ({steps} steps; LPIPS "
        f"{ra.get('lpips', float('nan')):.3f}), and the coffee cup forced into face space (LPIPS "
        f"{rb.get('lpips', float('nan')):.3f}; the discriminator rates it {_realism(rb)} against {_realism(ra)} "
        "for the face). The bred child (middle) keeps the face's coarse layers, half of each parent's middle "
        "layers and the cup's fine layers (colour).",
        files,
    )


def _realism(r: dict) -> str:
    """The discriminator's 'real' logit of the projection and its percentile among the network's own images."""
    d = (r.get("realism") or {}).get("projection") or {}
    if "d_logit" not in d:
        return "n/a"
    return f"logit {d['d_logit']:.2f} ({d.get('percentile_among_generated', float('nan')):.0f}th percentile of its own faces)"


def stop_dream(cfg: TourConfig, G, desc: str) -> Stop:
    from machinegaze import dream

    size = 224 if cfg.quick else 512
    dcfg = dream.DreamConfig(size=size, octaves=3 if cfg.quick else 4, steps=6 if cfg.quick else 10)
    coffee = _tour_image("coffee", cfg.outdir)
    dream.run(dcfg, coffee, cfg.outdir / "dream_coffee.png", device=cfg.device, precision=cfg.precision)
    return Stop(
        "Dream",
        "DeepDream on the coffee photo with EfficientNet-Lite0 (ImageNet weights): each octave "
        "amplifies what a mid-level layer already half-sees, so textures turn into eyes, fur and "
        "dog-like shapes.",
        ["coffee.png", "dream_coffee.png"],
    )


def stop_uncanny(cfg: TourConfig, G, desc: str) -> Stop:
    from machinegaze import uncanny

    if cfg.network_path is None:
        raise GazeError("no network file")
    steps = 20 if cfg.quick else 60
    ucfg = uncanny.UncannyConfig(steps=steps, snapshot_every=steps // 4, batch=4, eval_seeds=tuple(range(8)))
    res = uncanny.run_uncanny(
        cfg.network_path, cfg.outdir / "uncanny", ucfg, device=cfg.device, precision=cfg.precision
    )
    files = [
        str(p.relative_to(cfg.outdir))
        for p in res.files.values()
        if p.suffix in (".png", ".mp4", ".html") and p.exists()
    ]
    m0, m1 = res.metrics[0], res.metrics[-1]
    return Stop(
        "Amplify the uncanny",
        f"The generator fine-tuned for {res.steps_done} steps towards what its frozen discriminator calls "
        f"fake: critic P(fake) went {m0['critic_fake']:.2f} -> {m1['critic_fake']:.2f}, diversity (mean "
        f"pairwise LPIPS) {m0['diversity']:.3f} -> {m1['diversity']:.3f}.",
        files,
    )


def stop_detect(cfg: TourConfig, G, desc: str) -> Stop:
    import numpy as np

    from machinegaze import zoo
    from machinegaze.data import make_grid, open_image, save_image
    from machinegaze.detect.evaluate import cam_overlay, grad_cam
    from machinegaze.detect.predict import PredictConfig, crop_face, predict_paths, write_predictions_csv
    from machinegaze.detect.sources import detector_input
    from machinegaze.generate import GenerateConfig, generate_images

    model = zoo.load_detector(None, device=cfg.device)
    fdir = cfg.outdir / "detect_faces"
    fdir.mkdir(parents=True, exist_ok=True)
    imgs, _ = generate_images(G, list(range(200, 208)), GenerateConfig(trunc=0.7))
    for i in range(imgs.shape[0]):
        save_image(imgs[i : i + 1], fdir / f"generated_{i}.png")
    paths = [fdir] + ([cfg.faces] if cfg.faces else [])
    pcfg = PredictConfig(workers=0)
    rows = predict_paths(model, paths, pcfg, mtcnn=zoo.load_mtcnn())
    write_predictions_csv(rows, cfg.outdir / "detect_predictions.csv")
    gen = [r for r in rows if Path(r.path).parent == fdir]
    mine = [r for r in rows if Path(r.path).parent != fdir]
    found = [r for r in gen if r.box is not None][:8]
    if found:
        x = detector_input(model, [crop_face(open_image(r.path), r.box, pcfg.margin) for r in found]).to(cfg.device)
        overlay = cam_overlay(x, grad_cam(model, x))
        save_image(make_grid(torch.cat([x, overlay]), ncols=x.shape[0]), cfg.outdir / "detect_gradcam.png")
    n_fake = sum(r.verdict == "fake" for r in gen)
    return Stop(
        "Detect",
        f"The bundled detector looked for faces in 8 images the bundled generator made, found {len(found)}, and "
        f"called {n_fake} fake (mean P(fake) {np.mean([r.prob_fake for r in found]) if found else float('nan'):.2f})"
        + (
            f"; plus {len(mine)} rows for your photos in {cfg.faces}: {sum(r.verdict == 'fake' for r in mine)} "
            f"faces called fake, {sum(r.verdict == 'no_face' for r in mine)} photos without a face "
            "(one row per face in detect_predictions.csv)"
            if cfg.faces
            else ""
        )
        + ". Bottom row: Grad-CAM on each face crop, red where the 'fake' score looked.",
        (["detect_gradcam.png"] if found else []) + ["detect_predictions.csv"],
    )


STOPS += [stop_project, stop_dream, stop_uncanny, stop_detect]


def render_index(stops: list[Stop], outdir: Path, header: str) -> Path:
    from machinegaze.data import atomic_path

    parts = [
        "<!doctype html><meta charset=utf-8><title>machinegaze tour</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;background:#111;color:#eee}"
        "img,video{max-width:100%;min-width:192px;image-rendering:pixelated;border:1px solid #333}"
        ".row{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start}section{margin:2em 0}"
        ".skip{color:#f90}small{color:#999}</style>",
        "<h1>machinegaze tour</h1>",
        f"<p>{html.escape(header)}</p>",
    ]
    for s in stops:
        parts.append(f"<section><h2>{html.escape(s.title)}</h2><p>{html.escape(s.sentence)}</p>")
        if s.skipped:
            parts.append(f"<p class=skip>Not shown: {html.escape(s.skipped)}</p>")
        media, links = [], []
        for f in s.files:
            if f.endswith((".png", ".jpg", ".gif")):
                media.append(f'<img src="{html.escape(f)}" alt="{html.escape(f)}" title="{html.escape(f)}">')
            elif f.endswith(".mp4"):
                media.append(f'<video src="{html.escape(f)}" controls loop autoplay muted></video>')
            else:
                links.append(f'<a href="{html.escape(f)}">{html.escape(f)}</a>')
        if media:
            parts.append("<div class=row>" + "".join(media) + "</div>")
        if links:
            parts.append("<p>" + " · ".join(links) + "</p>")
        parts.append(f"<small>{s.seconds:.1f} s</small></section>")
    with atomic_path(outdir / "index.html") as tmp:
        tmp.write_text("\n".join(parts), encoding="utf-8")
    return outdir / "index.html"


def run_tour(
    cfg: TourConfig,
    on_stop: Optional[Callable[[Stop], None]] = None,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
) -> tuple[Path, list[Stop]]:
    """Run every stop on `device` (`precision`: device.resolve_precision) and write the index page."""
    from machinegaze import zoo
    from machinegaze.detect.predict import expand_paths
    from machinegaze.device import describe

    if cfg.faces is not None:  # the user's own input: check it before minutes of work, not in the last stop
        expand_paths([cfg.faces])
    cfg.outdir.mkdir(parents=True, exist_ok=True)
    path, desc = _find_network(cfg)
    cfg = dataclasses.replace(cfg, network_path=path, device=torch.device(device), precision=precision)
    G = zoo.load_generator(path, device=cfg.device)
    stops = []
    t_all = time.perf_counter()
    for fn in STOPS:
        t0 = time.perf_counter()
        try:
            s = fn(cfg, G, desc)
        except (GazeError, ImportError) as e:
            s = Stop(fn.__name__.replace("stop_", "").title(), "", skipped=str(e))
        s.seconds = time.perf_counter() - t0
        stops.append(s)
        if on_stop:
            on_stop(s)
    header = (
        f"Network: {desc} ({os.path.basename(path)}). Total {time.perf_counter() - t_all:.1f} s "
        f"on {describe(cfg.device)}" + (f", {os.cpu_count()} CPU cores." if cfg.device.type == "cpu" else ".")
    )
    return render_index(stops, cfg.outdir, header), stops
