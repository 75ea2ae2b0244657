"""The Dream tab: the networks to dream through, their layers, and DeepDream jobs."""

from __future__ import annotations

from typing import Optional

from fastapi import APIRouter, Depends, File, Form, HTTPException, UploadFile

from machinegaze.web import adapters
from machinegaze.web.adapters import Unavailable
from machinegaze.web.gallery import ID_PATTERN
from machinegaze.web.lab import MAX_SEED, Lab, get_lab

router = APIRouter(tags=["dream"])


def _net_entry(lab: Lab, net: str, missing_status: int) -> dict:
    """The dream_nets entry of an available network, else an HTTP error (unknown) or Unavailable (503)."""
    names = {n["name"]: n for n in adapters.dream_nets(lab.network_availability().available)}
    if net not in names:
        what = "no such network: " if missing_status == 404 else "unknown network "
        shown = net if missing_status == 404 else repr(net)
        raise HTTPException(missing_status, f"{what}{shown} (choose from {', '.join(names)})")
    if not names[net]["available"]:
        raise Unavailable(names[net]["reason"])
    return names[net]


@router.get("/api/dream/nets")
def dream_nets(lab: Lab = Depends(get_lab)):
    """The networks to dream through, and whether each is available."""
    return adapters.dream_nets(lab.network_availability().available)


@router.get("/api/dream/nets/{net}")
def dream_net(net: str, lab: Lab = Depends(get_lab)):
    """A network's layers (name, kind, output shape), its default layer and class names."""
    _net_entry(lab, net, 404)
    dnet = lab.dream_net(net)
    with lab.lock(f"dream:{net}"):
        return lab.cached(f"dreamfacts:{net}", lambda: adapters.dream_net_facts(dnet))


@router.post("/api/dream", status_code=202)
def dream(
    file: Optional[UploadFile] = File(None, description="a photo to dream on"),
    item_id: Optional[str] = Form(None, pattern=ID_PATTERN, description="or a gallery item"),
    from_noise: bool = Form(False, description="visualise from noise instead of a photo"),
    net: str = Form("efficientnet", max_length=40),
    layer: Optional[str] = Form(None, max_length=200),
    class_name: Optional[str] = Form(None, max_length=200),
    octaves: int = Form(3, ge=1, le=8),
    steps: int = Form(10, ge=1, le=100),
    size: int = Form(256, ge=32, le=1024),
    noise_steps: int = Form(64, ge=1, le=1024),
    seed: int = Form(0, ge=0, le=MAX_SEED),
    lab: Lab = Depends(get_lab),
):
    """Start a DeepDream job (or a feature visualisation from noise)."""
    _net_entry(lab, net, 422)
    src = None if from_noise else lab.image_source(file, item_id, "dream")
    dnet = lab.dream_net(net)
    layer, class_name = (layer or "").strip() or None, (class_name or "").strip() or None
    params = {
        "net": net,
        "layer": layer,
        "class": class_name,
        "octaves": octaves,
        "steps": steps,
        "size": size,
        "from_noise": from_noise,
        "noise_steps": noise_steps,
        "seed": seed,
    }

    def run(progress):
        path = lab.gallery.image_path(src) if src is not None else None
        with lab.lock(f"dream:{net}"):  # hooks on a shared module: one dream per network at a time
            img, objective = adapters.dream(
                dnet,
                path,
                layer,
                class_name,
                octaves,
                steps,
                size,
                seed,
                from_noise,
                noise_steps,
                progress,
                lab.precision,
            )
        item = lab.gallery.add(
            "dream",
            write_image=adapters.image_writer(img.clamp(-1, 1)),
            size=adapters.image_size(img),
            parents=[(src.id, "photo")] if src else [],
            params={**params, "objective": objective},
            title=f"dream: {objective}"[:120],
        )
        return {"item": item.to_dict(), "objective": objective}

    return lab.jobs.submit("dream", run, {**params, "source": src.id if src else None}).to_dict()
