"""POST /api/detect: are the faces in this photo real? One box, P(fake) and verdict per face, and a Grad-CAM
overlay of the most suspicious face (a gallery item)."""

from __future__ import annotations

from typing import Optional

from fastapi import APIRouter, Depends, File, Form, UploadFile
from pydantic import BaseModel, Field

from machinegaze.web import adapters
from machinegaze.web.gallery import ID_PATTERN
from machinegaze.web.lab import Lab, get_lab

router = APIRouter(tags=["detect"])


class FaceOut(BaseModel):
    box: list[int] = Field(description="x0, y0, x1, y1 in the photo's pixels (x1, y1 exclusive)")
    prob_fake: float
    verdict: str = Field(description="fake | real, by the detector's calibrated threshold")


class DetectOut(BaseModel):
    verdict: str = Field(description="fake if any face is fake, real if every face is real, no_face without a face")
    prob_fake: Optional[float] = Field(description="the most suspicious face's calibrated P(fake); null without a face")
    threshold: float
    detector: str
    faces: list[FaceOut] = Field(description="every face found, left to right")
    image_size: list[int] = Field(description="[width, height] of the photo the boxes are in")
    face_check: bool
    upload: dict
    item: Optional[dict] = Field(description="Grad-CAM of the most suspicious face (a gallery item); null without one")


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
    file: Optional[UploadFile] = File(None, description="a photo"),
    item_id: Optional[str] = Form(None, pattern=ID_PATTERN, description="or a gallery item"),
    face_check: bool = Form(True, description="find faces first; false: the whole image is one pre-cropped face"),
    lab: Lab = Depends(get_lab),
):
    """Are the faces in this photo real? Finds the faces (MTCNN) and gives each a box, a calibrated P(fake) and
    a verdict by the detector's calibrated threshold; a photo without a face says so (verdict no_face). The
    Grad-CAM overlay of the most suspicious face is stored in the gallery as a child of the upload."""
    if file is not None and not item_id:  # refuse what is not an image before anything else
        data = lab.read_upload(file)
        pil = lab.decode(data)
        det, det_sha = lab.detector()
        src = lab.store_upload(data, pil, file.filename or "upload")
    else:
        det, det_sha = lab.detector()
        src = lab.image_source(file, item_id, "detect")
        pil = adapters.open_stored_image(lab.gallery.image_path(src))
    fast, mtcnn = lab.fast_detector(), (lab.mtcnn() if face_check else None)
    with lab.gate, lab.lock("detector"):
        d = adapters.detect(det, fast, mtcnn, pil, face_check)
    out = {
        "verdict": d.verdict,
        "prob_fake": d.prob_fake,
        "threshold": d.threshold,
        "detector": lab.detector_path.name,
        "faces": d.faces,
        "image_size": list(d.image_size),
        "face_check": face_check,
    }
    cam = None
    if d.overlay is not None:
        cam = lab.gallery.add(
            "gradcam",
            write_image=adapters.image_writer(d.overlay),
            size=adapters.image_size(d.overlay),
            params={**out, "detector_sha256": det_sha},
            parents=[(src.id, "input")],
            title=f"{d.verdict}: {len(d.faces)} face(s), most suspicious P(fake) {d.prob_fake:.2f}",
            dedupe=f"gradcam:{det_sha[:20]}:{src.id}:{int(face_check)}",
        )
    return {**out, "upload": src.to_dict(), "item": cam.to_dict() if cam is not None else None}
