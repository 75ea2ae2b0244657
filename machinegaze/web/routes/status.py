"""GET /api/status: which tabs work in this build, and why the others don't."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from machinegaze import __version__
from machinegaze.web import adapters
from machinegaze.web.lab import Lab, get_lab

router = APIRouter(tags=["status"])


class StatusOut(BaseModel):
    version: str
    network: dict
    detector: dict
    tabs: dict[str, dict]
    limits: dict
    queue: dict
    compute: dict


@router.get("/api/status", response_model=StatusOut)
def status(lab: Lab = Depends(get_lab)):
    """What works in this build: each tab's availability with the reason when it doesn't."""
    cfg = lab.cfg
    nets, det = lab.loaded("network"), lab.loaded("detector")
    netinfo: dict = {"path": lab.network_path.name if lab.network_path else None, "loaded": nets is not None}
    if nets is not None:
        netinfo.update(adapters.network_facts(nets[0]))
    detinfo: dict = {"path": lab.detector_path.name if lab.detector_path else None, "loaded": det is not None}
    if det is not None:
        detinfo.update(adapters.detector_facts(det[0]))
    return {
        "version": __version__,
        "network": netinfo,
        "detector": detinfo,
        "tabs": lab.tabs(),
        "limits": {
            "max_upload_mb": cfg.max_upload_mb,
            "workers": cfg.workers,
            "queue": cfg.queue,
            "max_pixels": cfg.max_pixels,
        },
        "queue": lab.jobs.counts(),
        "compute": {"device": str(lab.device), "precision": lab.precision},
    }
