"""The FastAPI app behind `gaze serve`: the same library calls as the CLI, a bounded job queue, a gallery.

create_app assembles the pieces: a `Lab` (web/lab.py: config, models, gallery, job queue), one APIRouter per
tab (web/routes/), the middleware (web/middleware.py) and the error handlers.

Routes (OpenAPI at /docs):
    GET  /                         the page (static/index.html); /static/{name} its script and style
    GET  /api/status               which tabs work in this build, and why the others don't
    POST /api/detect               multipart `file` (or `item_id`) -> prob_fake, verdict, Grad-CAM overlay item
    POST /api/generate             JSON {seed, psi} -> PNG (header X-Item-Id)
    POST /api/mix                  JSON {a, b, psi, coarse, middle, fine} -> PNG (header X-Item-Id)
    POST /api/project              multipart `file` (or `item_id`), steps, seed -> job (202)
    GET  /api/dream/nets[/{net}]   networks, their layers and classes
    POST /api/dream                multipart `file` (or `item_id`, or from_noise), net, layer, class, octaves -> job
    POST /api/uncanny              JSON {steps, snapshot_every, batch, seed} -> job; GET /api/uncanny/runs[/{id}]
    GET  /api/jobs/{id}            job status; /events streams it (SSE); POST /cancel or DELETE cancels it
    GET  /api/items[/{id}]         the gallery; /image.png, /latent.npz download; POST /api/items uploads

Safety: requests name ids that are looked up in the database, never paths; bodies over --max-upload-mb get 413;
uploads must decode as images (415/422); long jobs wait in a bounded queue (429 when full) and run on worker
threads, where a crash fails the job, not the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from machinegaze import GazeError, __version__
from machinegaze.web.adapters import Unavailable
from machinegaze.web.config import ServeConfig
from machinegaze.web.jobs import QueueFull
from machinegaze.web.lab import Lab
from machinegaze.web.middleware import BodyLimit, SecurityHeaders
from machinegaze.web.routes import ROUTERS
from machinegaze.web.routes.page import docs_router, swagger_assets


def create_app(config: Optional[ServeConfig] = None) -> FastAPI:
    """Build the app (opens the gallery: a damaged or foreign database is refused here with a GazeError)."""
    cfg = config or ServeConfig()
    lab = Lab(cfg)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        lab.jobs.start()
        if lab.network_path is not None:  # warm up in the background: the first request need not wait
            threading.Thread(target=lab.warm, daemon=True, name="gaze-warmup").start()
        try:
            yield
        finally:
            await asyncio.to_thread(lab.jobs.shutdown, 10.0)
            lab.gallery.close()

    offline_docs = bool(swagger_assets())
    app = FastAPI(
        title="machinegaze",
        version=__version__,
        lifespan=lifespan,
        docs_url=None if offline_docs else "/docs",
        redoc_url=None,
        description="See what face GANs and face classifiers see. Every picture lands in the gallery "
        "with its latent, parameters and parents.",
    )
    app.state.lab = lab
    app.add_middleware(BodyLimit, limit=cfg.max_upload_bytes + 64 * 1024)  # + multipart framing
    app.add_middleware(SecurityHeaders)
    app.add_exception_handler(GazeError, _gaze_error)
    app.add_exception_handler(Unavailable, _unavailable)
    app.add_exception_handler(QueueFull, _queue_full)
    for router in ROUTERS[:1] + ([docs_router] if offline_docs else []) + ROUTERS[1:]:
        app.include_router(router)
    return app


async def _gaze_error(request: Request, exc: GazeError):
    return JSONResponse({"detail": str(exc)}, status_code=422)


async def _unavailable(request: Request, exc: Unavailable):
    return JSONResponse({"detail": f"not available in this build: {exc}"}, status_code=503)


async def _queue_full(request: Request, exc: QueueFull):
    return JSONResponse({"detail": str(exc)}, status_code=429, headers={"Retry-After": "5"})
