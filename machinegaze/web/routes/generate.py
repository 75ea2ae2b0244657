"""POST /api/generate (a face from a seed) and POST /api/mix (breed two latents by layer group)."""

from __future__ import annotations

import json
from typing import Optional

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from pydantic import BaseModel, Field, model_validator

from machinegaze.web import adapters
from machinegaze.web.gallery import ID_PATTERN
from machinegaze.web.lab import MAX_SEED, Lab, get_lab

router = APIRouter(tags=["generate"])
PNG = {200: {"content": {"image/png": {}}, "description": "the picture (X-Item-Id names its gallery item)"}}


class GenerateIn(BaseModel):
    seed: int = Field(0, ge=0, le=MAX_SEED, description="NVlabs seed")
    psi: float = Field(0.7, ge=-2.0, le=2.0, description="truncation psi")
    noise_mode: str = Field("const", pattern="^(const|random|none)$")


class Source(BaseModel):
    """A latent: a seed (rendered at the request's psi) or a gallery item that has a latent."""

    seed: Optional[int] = Field(None, ge=0, le=MAX_SEED)
    item: Optional[str] = Field(None, pattern=ID_PATTERN)

    @model_validator(mode="after")
    def one_of(self):
        if (self.seed is None) == (self.item is None):
            raise ValueError("give exactly one of seed or item")
        return self


class MixIn(BaseModel):
    a: Source = Field(default_factory=lambda: Source(seed=0))
    b: Source = Field(default_factory=lambda: Source(seed=1))
    psi: float = Field(0.7, ge=-2.0, le=2.0)
    coarse: float = Field(0.0, ge=0.0, le=1.0, description="how much of B's coarse styles (pose, face shape)")
    middle: float = Field(0.0, ge=0.0, le=1.0, description="how much of B's middle styles (features, hair)")
    fine: float = Field(0.0, ge=0.0, le=1.0, description="how much of B's fine styles (colour, texture)")
    noise_mode: str = Field("const", pattern="^(const|random|none)$")


@router.post("/api/generate", response_class=Response, responses=PNG)
def generate(req: GenerateIn, lab: Lab = Depends(get_lab)):
    """One face from a seed at truncation psi; stored in the gallery with its latent."""
    psi = round(req.psi, 4)
    lab.generator()
    with lab.gate:
        item, _ = lab.seed_item(req.seed, psi, req.noise_mode)
    return lab.png_response(item)


@router.post("/api/mix", response_class=Response, responses=PNG)
def mix(req: MixIn, lab: Lab = Depends(get_lab)):
    """Breed two latents by layer group: coarse/middle/fine say how much of B each group takes (0..1).
    A and B are seeds (at psi) or gallery items with a latent (e.g. a projection)."""
    psi = round(req.psi, 4)
    genes = {"coarse": round(req.coarse, 3), "middle": round(req.middle, 3), "fine": round(req.fine, 3)}
    G, sha = lab.generator(), lab.network_sha()
    with lab.gate:
        (ia, wa), (ib, wb) = [
            lab.seed_item(s.seed, psi, req.noise_mode) if s.seed is not None else lab.item_latent(s.item)
            for s in (req.a, req.b)
        ]
        key = f"mix:{sha[:20]}:{ia.id}:{ib.id}:{json.dumps(genes, sort_keys=True)}:{req.noise_mode}"
        found = lab.gallery.find(key)
        if found is not None:
            return lab.png_response(found)
        ws = adapters.breed(G, wa, wb, genes)
        img = adapters.render(G, ws, req.noise_mode, lab.precision)
        item = lab.gallery.add(
            "mix",
            write_image=adapters.image_writer(img),
            write_latent=adapters.latent_writer(ws),
            size=adapters.image_size(img),
            parents=[(ia.id, "a"), (ib.id, "b")],
            params={
                **genes,
                "psi": psi,
                "noise_mode": req.noise_mode,
                "method": "mix.breed",
                "network": lab.network_path.name,
                "network_sha256": sha,
            },
            title=f"{ia.title} x {ib.title}",
            dedupe=key,
        )
    return lab.png_response(item)
