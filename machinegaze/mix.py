"""Style mixing by layer groups, and breeding latents gene by gene (ArtBreeder-style).

The num_ws style vectors of a StyleGAN2 generator pair up by resolution: ws[2k] and ws[2k+1] style the
4*2^k px layers (ws[2k+1] also feeds the toRGB of that block). The paper's groups:
  coarse = 4-8 px (pose, face shape), middle = 16-32 px (features, hair style), fine = 64 px and up (colour, texture).

StyleGAN3 has no per-resolution blocks: ws[0] drives the Fourier-feature input, ws[i+1] layer L{i}, and every layer
works on the same canvas with a cutoff frequency that rises geometrically from layer to layer. We give each w the
resolution whose Nyquist limit is its layer's cutoff (2 x cutoff: 4 for the input, up to the image size) and use
the same thresholds: coarse <= 8, middle <= 32, fine above. For a 1024 px StyleGAN3 that is ws 0-2 / 3-5 / 6-15
(input + L0-L1, L2-L4, L5-L14); 256 px: 0-3 / 4-7 / 8-15; 64 px: 0-4 / 5-10 / 11-15.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from machinegaze import GazeError
from machinegaze.data import make_grid, save_image
from machinegaze.generate import load_w, save_w, seeds_to_ws, synthesize
from machinegaze.nets.stylegan2 import Generator

GROUPS = {"coarse": (0, 8), "middle": (8, 32), "fine": (32, 1 << 30)}  # (lo, hi]: resolution of the styled band


def layer_resolution(G: Generator, i: int) -> float:
    """The resolution that ws[i] styles: its block's for StyleGAN2, 2 x its layer's cutoff for StyleGAN3."""
    per_ws = getattr(G.synthesis, "ws_resolutions", None)
    if per_ws is not None:
        return float(per_ws()[i])
    return min(4 * 2 ** (i // 2), G.img_resolution)


def group_layers(G: Generator, group: str) -> list[int]:
    """ws indices of a layer group ('coarse', 'middle', 'fine') for this generator (may be empty)."""
    if group not in GROUPS:
        raise GazeError(f"unknown layer group {group!r} (choose from {', '.join(GROUPS)})")
    lo, hi = GROUPS[group]
    return [i for i in range(G.num_ws) if lo + 1e-6 < layer_resolution(G, i) <= hi + 1e-6]


def parse_styles(G: Generator, spec: str) -> list[int]:
    """'coarse' | 'middle' | 'fine' | '0-5' | '0,2,4' | combinations like 'coarse,fine' -> sorted ws indices."""
    out: set[int] = set()
    for part in str(spec).split(","):
        part = part.strip()
        if not part:
            continue
        if part in GROUPS:
            out.update(group_layers(G, part))
            continue
        try:
            if "-" in part:
                a, b = (int(v) for v in part.split("-", 1))
                if b < a:
                    raise GazeError(f"--styles: range '{part}' goes backwards")
                out.update(range(a, b + 1))
            else:
                out.add(int(part))
        except ValueError:
            raise GazeError(
                f"--styles: '{part}' is not a layer group ({', '.join(GROUPS)}) or a layer index/range"
            ) from None
    bad = sorted(i for i in out if not 0 <= i < G.num_ws)
    if bad:
        raise GazeError(
            f"--styles: layer {bad[0]} out of range (this network has {G.num_ws} style layers, 0..{G.num_ws - 1})"
        )
    if not out:
        raise GazeError(f"--styles {spec!r} selects no layers on this {G.img_resolution} px network")
    return sorted(out)


def style_mix(row_ws: torch.Tensor, col_ws: torch.Tensor, styles: Sequence[int]) -> torch.Tensor:
    """Copy the `styles` layers of col_ws into row_ws (NVlabs style_mixing.py semantics)."""
    w = row_ws.clone()
    w[:, list(styles)] = col_ws[:, list(styles)]
    return w


@dataclass(frozen=True)
class MixConfig:
    styles: str = "coarse"
    trunc: float = 1.0
    noise_mode: str = "const"
    class_idx: Optional[int] = None


def style_mixing_grid(
    G: Generator, row_seeds: Sequence[int], col_seeds: Sequence[int], cfg: MixConfig = MixConfig()
) -> tuple[torch.Tensor, dict[tuple[int, int], torch.Tensor]]:
    """The paper's figure: blank corner, column sources on top, row sources on the left, mixes inside.

    Returns (grid image [1, C, H, W], {(row_seed, col_seed): image [1, C, R, R]}).
    """
    styles = parse_styles(G, cfg.styles)
    all_seeds = list(dict.fromkeys(list(row_seeds) + list(col_seeds)))
    ws = seeds_to_ws(G, all_seeds, trunc=cfg.trunc, class_idx=cfg.class_idx)
    w_of = {s: ws[i : i + 1] for i, s in enumerate(all_seeds)}
    src = synthesize(G, ws, noise_mode=cfg.noise_mode)
    img_of = {s: src[i : i + 1] for i, s in enumerate(all_seeds)}
    pairs = [(r, c) for r in row_seeds for c in col_seeds]
    mixed_ws = torch.cat([style_mix(w_of[r], w_of[c], styles) for r, c in pairs])
    mixed = synthesize(G, mixed_ws, noise_mode=cfg.noise_mode)
    mixes = {p: mixed[i : i + 1] for i, p in enumerate(pairs)}
    blank = torch.ones_like(src[:1])
    tiles = [blank] + [img_of[c] for c in col_seeds]
    for r in row_seeds:
        tiles += [img_of[r]] + [mixes[(r, c)] for c in col_seeds]
    grid = make_grid(torch.cat(tiles).clamp(-1, 1), ncols=len(col_seeds) + 1)
    return grid, mixes


# ================================================================ breeding (ArtBreeder-style)
# A child's "genes" are the three layer groups. Interpolation: gene weight g = the fraction taken from the second
# parent, child = A + g * (B - A) on that group's layers (g = 0 is A's layers exactly, g = 1 B's). Crossover: every
# W+ layer (uniform) or every group (grouped) comes whole from A or B, drawn with a seed. Mutation: a small step
# in W along a direction the mapping network itself produces (mapping(z_seed) - w_avg), scaled by a strength.
CROSSOVER_MODES = ("uniform", "grouped")


def parse_genes(spec: str | dict) -> dict[str, float]:
    """'coarse=0.8,middle=0.3,fine=0' -> {'coarse': 0.8, 'middle': 0.3, 'fine': 0.0}; groups not named are 0.
    'all=0.5' sets every group."""
    if isinstance(spec, dict):
        items = list(spec.items())
    else:
        items = []
        for part in str(spec).split(","):
            part = part.strip()
            if not part:
                continue
            name, sep, val = part.partition("=")
            if not sep:
                raise GazeError(f"--genes: '{part}' is not group=weight (e.g. coarse=0.8,middle=0.3,fine=0)")
            items.append((name.strip(), val.strip()))
    if not items:
        raise GazeError("--genes: empty (e.g. coarse=0.8,middle=0.3,fine=0)")
    out = dict.fromkeys(GROUPS, 0.0)
    for name, val in items:
        try:
            v = float(val)
        except (TypeError, ValueError):
            raise GazeError(f"--genes: weight '{val}' for {name} is not a number") from None
        if not 0.0 <= v <= 1.0:
            raise GazeError(
                f"--genes: weight {v} for {name} is outside 0..1 (the fraction taken from the second parent)"
            )
        if name == "all":
            out = dict.fromkeys(GROUPS, v)
        elif name in GROUPS:
            out[name] = v
        else:
            raise GazeError(f"--genes: unknown layer group {name!r} (choose from {', '.join(GROUPS)}, all)")
    return out


def layer_weights(G: Generator, genes: dict[str, float]) -> torch.Tensor:
    """[num_ws] fraction of parent B per style layer."""
    genes = parse_genes(genes)
    t = torch.zeros(G.num_ws, device=G.mapping.w_avg.device)
    for g, v in genes.items():
        t[group_layers(G, g)] = float(v)
    return t


def _check_ws(G: Generator, w: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(w, torch.Tensor):
        raise GazeError(f"{what}: expected a tensor, got {type(w).__name__}")
    if w.ndim == 2:
        w = w.unsqueeze(0)
    if w.ndim != 3 or w.shape[1:] != (G.num_ws, G.w_dim):
        raise GazeError(f"{what}: latent has shape {tuple(w.shape)}, this network needs [N, {G.num_ws}, {G.w_dim}]")
    return w.float()


def breed(G: Generator, w_a: torch.Tensor, w_b: torch.Tensor, genes: dict[str, float] | str) -> torch.Tensor:
    """Per-layer-group interpolation between parents ws [N|1, num_ws, w_dim]: gene g = fraction from w_b.
    Genes 0 give w_a exactly, genes 1 on every group give w_b exactly."""
    w_a, w_b = _check_ws(G, w_a, "parent A"), _check_ws(G, w_b, "parent B")
    t = layer_weights(G, genes).view(1, -1, 1)
    mixed = w_a + (w_b - w_a) * t
    return torch.where(t == 0, w_a, torch.where(t == 1, w_b, mixed)).expand_as(mixed).clone()


def crossover(
    G: Generator, w_a: torch.Tensor, w_b: torch.Tensor, mode: str = "uniform", seed: int = 0, rate: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """(child, mask): each W+ layer ('uniform') or each layer group ('grouped') taken whole from w_b with
    probability `rate`, else from w_a. Deterministic for a seed; mask [num_ws] bool is True where B was used."""
    if mode not in CROSSOVER_MODES:
        raise GazeError(f"--crossover must be one of {', '.join(CROSSOVER_MODES)}, got {mode!r}")
    if not 0.0 <= rate <= 1.0:
        raise GazeError(f"crossover rate {rate} is outside 0..1")
    w_a, w_b = _check_ws(G, w_a, "parent A"), _check_ws(G, w_b, "parent B")
    gen = torch.Generator().manual_seed(int(seed))
    if mode == "uniform":
        mask = torch.rand(G.num_ws, generator=gen) < rate
    else:
        mask = torch.zeros(G.num_ws, dtype=torch.bool)
        draws = torch.rand(len(GROUPS), generator=gen) < rate  # one draw per group, in GROUPS order
        for take, g in zip(draws.tolist(), GROUPS):
            if take:
                mask[group_layers(G, g)] = True
    child = (
        torch.where(mask.to(w_a.device).view(1, -1, 1), w_b, w_a)
        .expand(max(w_a.shape[0], w_b.shape[0]), -1, -1)
        .clone()
    )
    return child, mask


@torch.no_grad()
def mutate(
    G: Generator, w: torch.Tensor, strength: float = 0.1, seed: int = 0, class_idx: Optional[int] = None
) -> torch.Tensor:
    """w + strength * (mapping(z_seed) - w_avg) on every layer: a step towards (strength 1: by) a random face's
    offset from the average, so the step has the size and direction of real variation in W."""
    w = _check_ws(G, w, "latent")
    if strength == 0:
        return w.clone()
    if not (abs(strength) <= 10 and strength == strength):
        raise GazeError(f"--mutate strength {strength} is out of range (-10 .. 10)")
    d = seeds_to_ws(G, [seed], class_idx=class_idx)[:, :1] - G.mapping.w_avg.view(1, 1, -1)
    return w + float(strength) * d


@dataclass(frozen=True)
class BreedConfig:
    genes: Optional[str] = None  # 'coarse=0.8,middle=0.3,fine=0' (fraction from the second parent)
    crossover: Optional[str] = None  # 'uniform' | 'grouped' (instead of genes)
    crossover_seed: int = 0
    crossover_rate: float = 0.5
    mutate: float = 0.0  # strength of the random step in W (0: none)
    mutation_seed: int = 0
    trunc: float = 1.0  # for seed parents
    class_idx: Optional[int] = None
    noise_mode: str = "const"


def make_child(G: Generator, w_a: torch.Tensor, w_b: torch.Tensor, cfg: BreedConfig = BreedConfig()) -> torch.Tensor:
    """One child of two parents: genes (interpolation) or crossover, then optional mutation."""
    if (cfg.genes is None) == (cfg.crossover is None):
        raise GazeError("give either --genes (interpolate by layer group) or --crossover uniform|grouped")
    if cfg.genes is not None:
        child = breed(G, w_a, w_b, cfg.genes)
    else:
        child, _ = crossover(G, w_a, w_b, cfg.crossover, cfg.crossover_seed, cfg.crossover_rate)
    if cfg.mutate:
        child = mutate(G, child, cfg.mutate, cfg.mutation_seed, cfg.class_idx)
    return child


def breed_grid(
    G: Generator, parents: torch.Tensor, cfg: BreedConfig = BreedConfig()
) -> tuple[torch.Tensor, torch.Tensor]:
    """Parent x parent grid: cell (i, j) is the child of parents i (A) and j (B). Returns (grid image with the
    parents on the top row and left column [1, C, H, W], children ws [P*P, num_ws, w_dim] row-major)."""
    parents = _check_ws(G, parents, "parents")
    n = parents.shape[0]
    if n < 2:
        raise GazeError("--grid needs at least two parents")
    kids = torch.cat([make_child(G, parents[i : i + 1], parents[j : j + 1], cfg) for i in range(n) for j in range(n)])
    src = synthesize(G, parents, noise_mode=cfg.noise_mode)
    imgs = synthesize(G, kids, noise_mode=cfg.noise_mode)
    tiles = [torch.ones_like(src[:1])] + [src[j : j + 1] for j in range(n)]
    for i in range(n):
        tiles += [src[i : i + 1]] + [imgs[i * n + j : i * n + j + 1] for j in range(n)]
    return make_grid(torch.cat(tiles).clamp(-1, 1), ncols=n + 1), kids


def write_mixing_grid(
    grid: torch.Tensor, mixes: dict[tuple[int, int], torch.Tensor], outdir: str | os.PathLike
) -> list[Path]:
    """Write style_mixing_grid's output: one `<row>-<col>.png` per mix and `grid.png`; returns the paths."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    paths = [save_image(img, outdir / f"{r}-{c}.png") for (r, c), img in mixes.items()]
    return paths + [save_image(grid, outdir / "grid.png")]


def gather_parents(
    G: Generator,
    w_files: Sequence[str | os.PathLike] = (),
    seeds: Sequence[int] = (),
    trunc: float = 1.0,
    class_idx: Optional[int] = None,
) -> torch.Tensor:
    """Parents [P, num_ws, w_dim]: one latent from each .npz file (in order), then one per seed (at trunc)."""
    parents = []
    for p in w_files:
        lw = load_w(p, G).to(next(G.parameters()).device)
        if lw.shape[0] != 1:
            raise GazeError(f"{p}: holds {lw.shape[0]} latents; a parent file must hold one")
        parents.append(lw)
    for s in seeds:
        parents.append(seeds_to_ws(G, [s], trunc=trunc, class_idx=class_idx))
    return torch.cat(parents) if parents else torch.empty(0, G.num_ws, G.w_dim, device=next(G.parameters()).device)


def breed_to_file(
    G: Generator, parents: torch.Tensor, cfg: BreedConfig, out: str | os.PathLike, grid: bool = False
) -> tuple[Path, Path, torch.Tensor]:
    """One child of exactly two parents (or, with grid, breed_grid's parent x parent grid), written as the image
    `out` and its latents beside it (same stem, .npz). Returns (image path, latent path, children ws)."""
    out = Path(out)
    if grid:
        image, kids = breed_grid(G, parents, cfg)
    else:
        if parents.shape[0] != 2:
            raise GazeError(
                f"breeding needs exactly two parents (--w and/or --seed), got {parents.shape[0]} (or use --grid)"
            )
        kids = make_child(G, parents[:1], parents[1:], cfg)
        image = synthesize(G, kids, noise_mode=cfg.noise_mode).clamp(-1, 1)
    save_image(image, out)
    return out, save_w(out.with_suffix(".npz"), kids), kids
