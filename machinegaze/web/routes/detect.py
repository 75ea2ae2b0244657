"""POST /api/detect: is this face real? P(fake), the verdict and a Grad-CAM overlay (a gallery item)."""

from __future__ import annotations

from typing import Optional

from fastapi import APIRouter, Depends, File, Form, UploadFile
from pydantic import BaseModel

from machinegaze.web import adapters
from machinegaze.web.gallery import ID_PATTERN
from machinegaze.web.lab import Lab, get_lab

router = APIRouter(tags=["detect"])


class DetectOut(BaseModel):
    prob_fake: float
    verdict: str
    threshold: float
    detector: str
    upload: dict
    item: dict


@router.post(
    "/api/detect",
    response_model=DetectOut,
    responses={
        413: {"description": "upload too large"},
        415: {"description": "not an image"},
        503: {"description": "no detector in this build"},
    },
)
def detect(
    file: Optional[UploadFile] = File(None, description="a face photo"),
    item_id: Optional[str] = Form(None, pattern=ID_PATTERN, description="or a gallery item"),
    lab: Lab = Depends(get_lab),
):
    """Is this face real? Calibrated P(fake), the verdict by the detector's calibrated threshold, and a
    Grad-CAM overlay (stored in the gallery as a child of the upload)."""
    if file is not None and not item_id:  # refuse what is not an image before anything else
        data = lab.read_upload(file)
        pil = lab.decode(data)
        det, det_sha = lab.detector()
        src = lab.store_upload(data, pil, file.filename or "upload")
    else:
        det, det_sha = lab.detector()
        src = lab.image_source(file, item_id, "detect")
        pil = adapters.open_stored_image(lab.gallery.image_path(src))
    with lab.gate, lab.lock("detector"):
        d = adapters.detect(det, pil)
    params = {
        "prob_fake": d.prob_fake,
        "verdict": d.verdict,
        "threshold": d.threshold,
        "detector": lab.detector_path.name,
        "detector_sha256": det_sha,
    }
    cam = lab.gallery.add(
        "gradcam",
        write_image=adapters.image_writer(d.overlay),
        size=adapters.image_size(d.overlay),
        params=params,
        parents=[(src.id, "input")],
        title=f"{d.verdict} (P(fake) {d.prob_fake:.2f})",
        dedupe=f"gradcam:{det_sha[:20]}:{src.id}",
    )
    return {
        "prob_fake": d.prob_fake,
        "verdict": d.verdict,
        "threshold": d.threshold,
        "detector": lab.detector_path.name,
        "upload": src.to_dict(),
        "item": cam.to_dict(),
    }
