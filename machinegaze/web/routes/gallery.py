"""The gallery: list, upload, an item with its family, and its picture / latent downloads."""

from __future__ import annotations

from typing import Optional

from fastapi import APIRouter, Depends, File, HTTPException, Query, UploadFile
from fastapi.responses import Response

from machinegaze.web.lab import Lab, get_lab

router = APIRouter(tags=["gallery"])


@router.get("/api/items")
def items(
    kind: Optional[str] = Query(None, max_length=32),
    limit: int = Query(60, ge=1, le=500),
    offset: int = Query(0, ge=0, le=10**9),
    lab: Lab = Depends(get_lab),
):
    """Gallery items, newest first."""
    found, total = lab.gallery.list(kind, limit, offset)
    return {"items": [i.to_dict() for i in found], "total": total, "limit": limit, "offset": offset}


@router.post("/api/items", status_code=201)
def upload(file: UploadFile = File(..., description="an image"), lab: Lab = Depends(get_lab)):
    """Upload a picture into the gallery (e.g. a face to project or dream on). The same file is stored once."""
    data = lab.read_upload(file)
    return lab.store_upload(data, lab.decode(data), file.filename or "upload").to_dict()


@router.get("/api/items/{item_id}")
def item(item_id: str, lab: Lab = Depends(get_lab)):
    """An item with its parameters, its parents and its children."""
    it = lab.item(item_id)
    return {**it.to_dict(), "children": lab.gallery.children(it.id)}


def attachment(name: str, download: bool) -> dict:
    return {"Content-Disposition": f'attachment; filename="{name}"'} if download else {}


@router.get("/api/items/{item_id}/image.png", response_class=Response, responses={200: {"content": {"image/png": {}}}})
def item_image(item_id: str, download: bool = False, lab: Lab = Depends(get_lab)):
    it = lab.item(item_id)
    if not it.has_image:
        raise HTTPException(404, f"item {item_id} has no picture")
    return Response(
        lab.gallery.image_path(it).read_bytes(),
        media_type="image/png",
        headers=attachment(f"{it.kind}-{it.id}.png", download),
    )


@router.get(
    "/api/items/{item_id}/latent.npz",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def item_latent(item_id: str, download: bool = True, lab: Lab = Depends(get_lab)):
    it = lab.item(item_id)
    if not it.has_latent:
        raise HTTPException(404, f"item {item_id} has no latent")
    return Response(
        lab.gallery.latent_path(it).read_bytes(),
        media_type="application/octet-stream",
        headers=attachment(f"{it.kind}-{it.id}.npz", download),
    )
