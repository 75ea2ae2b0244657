"""POST /api/project: a projection (GAN inversion) job; its result is a gallery item with the latent."""

from __future__ import annotations

from typing import Optional

from fastapi import APIRouter, Depends, File, Form, UploadFile

from machinegaze.web import adapters
from machinegaze.web.gallery import ID_PATTERN
from machinegaze.web.lab import MAX_SEED, Lab, get_lab

router = APIRouter(tags=["project"])


@router.post("/api/project", status_code=202)
def project(
    file: Optional[UploadFile] = File(None, description="the photo to project"),
    item_id: Optional[str] = Form(None, pattern=ID_PATTERN, description="or a gallery item"),
    steps: int = Form(100, ge=1, le=1000),
    seed: int = Form(0, ge=0, le=MAX_SEED),
    lab: Lab = Depends(get_lab),
):
    """Start a projection (GAN inversion) job; its result is a gallery item with the latent (breed it in Mix)."""
    lab.require("project")
    lab.generator()
    target = lab.image_source(file, item_id, "project")

    def run(progress):
        G, sha = lab.generator(), lab.network_sha()
        pil = adapters.open_stored_image(lab.gallery.image_path(target))
        res = adapters.project(G, pil, steps, seed, lpips=lab.lpips("vgg"), progress=progress, precision=lab.precision)
        item = lab.gallery.add(
            "project",
            write_image=adapters.image_writer(res.image),
            write_latent=adapters.latent_writer(res.ws),
            size=adapters.image_size(res.image),
            parents=[(target.id, "target")],
            title=f"projection of {target.title}",
            params={
                "steps": steps,
                "seed": seed,
                "preset": res.preset,
                "lpips": res.lpips,
                "network": lab.network_path.name,
                "network_sha256": sha,
            },
        )
        return {"item": item.to_dict(), "lpips": res.lpips}

    return lab.jobs.submit("project", run, {"steps": steps, "seed": seed, "target": target.id}).to_dict()
