"""Jobs: status, cancel, and a server-sent event stream of a job's progress."""

from __future__ import annotations

import asyncio
import json
import time

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import StreamingResponse

from machinegaze.web.jobs import TERMINAL
from machinegaze.web.lab import Lab, get_lab

router = APIRouter(tags=["jobs"])
SSE_MAX_SECONDS = 60.0  # one event stream lasts at most this long; EventSource reconnects by itself


def job_or_404(lab: Lab, job_id: str):
    job = lab.jobs.get(job_id)
    if job is None:
        raise HTTPException(404, f"no such job: {job_id}")
    return job


@router.get("/api/jobs/{job_id}")
def job_status(job_id: str, lab: Lab = Depends(get_lab)):
    """Status, progress (step/total and the loop's numbers) and, when done, the result."""
    return job_or_404(lab, job_id).to_dict()


@router.post("/api/jobs/{job_id}/cancel")
def job_cancel(job_id: str, lab: Lab = Depends(get_lab)):
    """Cancel a waiting job at once, or a running one at its next progress report."""
    job_or_404(lab, job_id)
    return lab.jobs.cancel(job_id).to_dict()


@router.delete("/api/jobs/{job_id}")
def job_delete(job_id: str, lab: Lab = Depends(get_lab)):
    """Same as POST /api/jobs/{id}/cancel."""
    return job_cancel(job_id, lab)


async def _events(job, request: Request):
    last, t0 = -1, time.monotonic()
    yield "retry: 1000\n\n"
    while time.monotonic() - t0 < SSE_MAX_SECONDS:
        if job.version != last:
            last = job.version
            snap = job.to_dict()
            yield f"data: {json.dumps(snap)}\n\n"
            if snap["status"] in TERMINAL:
                return
        if await request.is_disconnected():
            return
        await asyncio.sleep(0.2)


@router.get(
    "/api/jobs/{job_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def job_events(job_id: str, request: Request, lab: Lab = Depends(get_lab)):
    """Server-sent events: one `data:` JSON line (the job status) per change, until the job ends."""
    job = job_or_404(lab, job_id)
    return StreamingResponse(
        _events(job, request),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
