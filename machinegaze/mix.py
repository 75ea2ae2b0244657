"""Style mixing by layer groups, and breeding latents gene by gene (ArtBreeder-style).

The num_ws style vectors of a StyleGAN2 generator pair up by resolution: ws[2k] and ws[2k+1] style the
4*2^k px layers (ws[2k+1] also feeds the toRGB of that block). The paper's groups:
  coarse = 4-8 px (pose, face shape), middle = 16-32 px (features, hair style), fine = 64 px and up (colour, texture).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from machinegaze import GazeError
from machinegaze.data import make_grid
from machinegaze.generate import seeds_to_ws, synthesize
from machinegaze.nets.stylegan2 import Generator

GROUPS = {"coarse": (4, 8), "middle": (16, 32), "fine": (64, 1 << 30)}


def layer_resolution(G: Generator, i: int) -> int:
    return min(4 * 2 ** (i // 2), G.img_resolution)


def group_layers(G: Generator, group: str) -> list[int]:
    """ws indices of a layer group ('coarse', 'middle', 'fine') for this generator (may be empty)."""
    if group not in GROUPS:
        raise GazeError(f"unknown layer group {group!r} (choose from {', '.join(GROUPS)})")
    lo, hi = GROUPS[group]
    return [i for i in range(G.num_ws) if lo <= layer_resolution(G, i) <= hi]


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
            raise GazeError(f"--styles: '{part}' is not a layer group ({', '.join(GROUPS)}) or a layer index/range") from None
    bad = sorted(i for i in out if not 0 <= i < G.num_ws)
    if bad:
        raise GazeError(f"--styles: layer {bad[0]} out of range (this network has {G.num_ws} style layers, 0..{G.num_ws - 1})")
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


def style_mixing_grid(G: Generator, row_seeds: Sequence[int], col_seeds: Sequence[int],
                      cfg: MixConfig = MixConfig()) -> tuple[torch.Tensor, dict[tuple[int, int], torch.Tensor]]:
    """The paper's figure: blank corner, column sources on top, row sources on the left, mixes inside.

    Returns (grid image [1, C, H, W], {(row_seed, col_seed): image [1, C, R, R]}).
    """
    styles = parse_styles(G, cfg.styles)
    all_seeds = list(dict.fromkeys(list(row_seeds) + list(col_seeds)))
    ws = seeds_to_ws(G, all_seeds, trunc=cfg.trunc, class_idx=cfg.class_idx)
    w_of = {s: ws[i:i + 1] for i, s in enumerate(all_seeds)}
    src = synthesize(G, ws, noise_mode=cfg.noise_mode)
    img_of = {s: src[i:i + 1] for i, s in enumerate(all_seeds)}
    pairs = [(r, c) for r in row_seeds for c in col_seeds]
    mixed_ws = torch.cat([style_mix(w_of[r], w_of[c], styles) for r, c in pairs])
    mixed = synthesize(G, mixed_ws, noise_mode=cfg.noise_mode)
    mixes = {p: mixed[i:i + 1] for i, p in enumerate(pairs)}
    blank = torch.ones_like(src[:1])
    tiles = [blank] + [img_of[c] for c in col_seeds]
    for r in row_seeds:
        tiles += [img_of[r]] + [mixes[(r, c)] for c in col_seeds]
    grid = make_grid(torch.cat(tiles).clamp(-1, 1), ncols=len(col_seeds) + 1)
    return grid, mixes
