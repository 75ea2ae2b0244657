"""The Uncanny tab: start a short fine-tuning run, browse runs, their metrics and face grids."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import Response
from pydantic import BaseModel, Field

from machinegaze.web import adapters
from machinegaze.web.adapters import Unavailable
from machinegaze.web.gallery import new_id
from machinegaze.web.lab import MAX_SEED, Lab, get_lab

router = APIRouter(tags=["uncanny"])


class UncannyIn(BaseModel):
    steps: int = Field(40, ge=1, le=2000)
    snapshot_every: int = Field(10, ge=1, le=500)
    batch: int = Field(4, ge=1, le=16)
    seed: int = Field(0, ge=0, le=MAX_SEED)


def _metrics(run) -> list[dict]:
    return adapters.uncanny_metrics(run.dir) if run.dir.is_dir() else []


def run_summary(run) -> dict:
    metrics = _metrics(run)
    return {
        **run.to_dict(),
        "snapshots": len(metrics),
        "last": metrics[-1] if metrics else None,
        "url": f"/api/uncanny/runs/{run.id}",
    }


def get_run(lab: Lab, run_id: str):
    try:
        return lab.gallery.get_run(run_id)
    except KeyError:
        raise HTTPException(404, f"no such run: {run_id}") from None


@router.get("/api/uncanny/runs")
def uncanny_runs(lab: Lab = Depends(get_lab)):
    """Uncanny runs: started here, or registered with `gaze serve --uncanny-dir`."""
    try:
        adapters.uncanny_module()
    except Unavailable:
        return []
    return [run_summary(r) for r in lab.gallery.list_runs("uncanny")]


@router.get("/api/uncanny/runs/{run_id}")
def uncanny_run(run_id: str, lab: Lab = Depends(get_lab)):
    """A run's metrics per snapshot and the URLs of its face grids."""
    run = get_run(lab, run_id)
    metrics = _metrics(run)
    return {
        **run_summary(run),
        "metrics": metrics,
        "grids": [
            {"step": m["step"], "url": f"/api/uncanny/runs/{run.id}/grids/{int(m['step'])}.png"} for m in metrics
        ],
    }


@router.get(
    "/api/uncanny/runs/{run_id}/grids/{step}.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
def uncanny_grid(run_id: str, step: int, lab: Lab = Depends(get_lab)):
    run = get_run(lab, run_id)
    if step not in {int(m["step"]) for m in _metrics(run)}:
        raise HTTPException(404, f"run {run_id} has no snapshot at step {step}")
    path = adapters.uncanny_grid_path(run.dir, step)
    if not path.is_file():
        raise HTTPException(404, f"run {run_id}: the grid of step {step} is missing")
    return Response(path.read_bytes(), media_type="image/png")


@router.post("/api/uncanny", status_code=202)
def uncanny_start(req: UncannyIn, lab: Lab = Depends(get_lab)):
    """Start a short uncanny run (fine-tune the generator against its own discriminator)."""
    lab.require("uncanny")
    nets, _ = lab.networks()
    if nets.D is None:
        raise Unavailable("the network has no discriminator to fine-tune against")
    outdir = lab.gallery.run_root() / f"uncanny-{new_id()}"
    params = req.model_dump()

    def run(progress):
        r = lab.gallery.add_run(
            "uncanny", outdir, title=f"{req.steps} steps from {lab.network_path.name}", params=params
        )
        res = adapters.uncanny_run(
            lab.network_path,
            outdir,
            req.steps,
            req.snapshot_every,
            req.batch,
            req.seed,
            lpips=lab.lpips("alex"),
            progress=progress,
            device=lab.device,
            precision=lab.precision,
        )
        last = res.metrics[-1]
        pil = adapters.open_stored_image(adapters.uncanny_grid_path(outdir, last["step"]))
        item = lab.gallery.add(
            "uncanny",
            write_image=adapters.image_writer(pil),
            size=adapters.image_size(pil),
            params={**params, "run": r.id, "metrics": last},
            title=f"uncanny step {last['step']}: P(fake) {last['critic_fake']:.2f}",
        )
        return {"run": run_summary(r), "item": item.to_dict()}

    return lab.jobs.submit("uncanny", run, params).to_dict()
