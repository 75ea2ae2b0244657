"""The FastAPI app behind `gaze serve`: the same library calls as the CLI, a bounded job queue, a gallery.

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
import json
import logging
import threading
import time
from collections import defaultdict
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field, model_validator
from starlette.types import ASGIApp, Receive, Scope, Send

from machinegaze import GazeError, __version__
from machinegaze.web import adapters
from machinegaze.web.adapters import Availability, Unavailable
from machinegaze.web.config import ServeConfig
from machinegaze.web.gallery import ID_PATTERN, Gallery, Item
from machinegaze.web.jobs import TERMINAL, Gate, JobQueue, QueueFull

log = logging.getLogger("machinegaze.web")

STATIC_FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
                "style.css": "text/css; charset=utf-8"}
SSE_MAX_SECONDS = 60.0  # one event stream lasts at most this long; EventSource reconnects by itself
MAX_SEED = 2 ** 32 - 1


# ================================================================ the lab: models, gallery, queue
class Lab:
    """Everything the routes share. Models load lazily, once, on first use (per-model locks)."""

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self.gallery = Gallery(cfg.data_path)  # refuses a damaged or foreign database (GazeError)
        self.jobs = JobQueue(cfg.workers, cfg.queue)
        self.gate = Gate(cfg.workers, cfg.queue)
        self._cache: dict[str, Any] = {}
        self._failed: dict[str, str] = {}
        self._locks: dict[str, threading.Lock] = defaultdict(threading.Lock)
        self._locks_guard = threading.Lock()
        # An explicitly named network/detector must exist (a user error at startup); the bundled defaults may not.
        self.network_path, self.network_reason = self._resolve(adapters.resolve_network, cfg.network,
                                                               "no bundled face GAN in this build yet; start with "
                                                               "`gaze serve --network PATH` (a .pkl, .pt or .safetensors)", "network")
        self.detector_path, self.detector_reason = self._resolve(adapters.resolve_detector, cfg.detector,
                                                                 "no bundled fake-face detector in this build yet; "
                                                                 "start with `gaze serve --detector PATH`", "fake-face detector")
        for d in cfg.uncanny_dirs:
            d = Path(d).expanduser()
            if not (d / "metrics.jsonl").is_file():
                raise GazeError(f"--uncanny-dir {d}: no metrics.jsonl there (not a `gaze uncanny` run folder)")
            self.gallery.add_run("uncanny", d, title=d.name, params={"registered": True})

    @staticmethod
    def _resolve(fn: Callable, name: Optional[str], missing: str, kind: str) -> tuple[Optional[Path], str]:
        if name == "none":  # switched off on purpose: the tab explains itself instead of loading a model
            return None, f"the {kind} is switched off for this server (started with --{kind.split()[-1]} none)"
        if name is not None:
            return fn(name), ""
        try:
            return fn(None), ""
        except GazeError as e:
            return None, f"{missing} ({e})"

    def lock(self, key: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks[key]

    def cached(self, key: str, load: Callable[[], Any]) -> Any:
        """load() once; a GazeError or Unavailable while loading makes the key unavailable with that reason."""
        if key in self._cache:
            return self._cache[key]
        if key in self._failed:
            raise Unavailable(self._failed[key])
        with self.lock(f"load:{key}"):
            if key in self._cache:
                return self._cache[key]
            if key in self._failed:
                raise Unavailable(self._failed[key])
            try:
                self._cache[key] = load()
            except (GazeError, Unavailable) as e:
                self._failed[key] = str(e)
                raise Unavailable(str(e)) from None
            return self._cache[key]

    # ---- models
    def networks(self):
        if self.network_path is None:
            raise Unavailable(self.network_reason)
        path = self.network_path
        return self.cached("network", lambda: (adapters.load_networks(path), adapters.sha256_file(path)))

    def generator(self):
        return self.networks()[0].generator

    def network_sha(self) -> str:
        return self.networks()[1]

    def detector(self):
        if self.detector_path is None:
            raise Unavailable(self.detector_reason)
        path = self.detector_path
        return self.cached("detector", lambda: (adapters.load_detector(path), adapters.sha256_file(path)))

    def lpips(self, net: str):
        av = adapters.lpips_availability(net)
        if not av.available:
            raise Unavailable(av.reason)
        return self.cached(f"lpips:{net}", lambda: adapters.load_lpips(net))

    def dream_net(self, name: str):
        path = self.network_path if name == "discriminator" else None
        if name == "discriminator" and path is None:
            raise Unavailable(self.network_reason)
        return self.cached(f"dream:{name}", lambda: adapters.dream_load_net(name, path))

    # ---- availability (cheap: never loads a model)
    def network_availability(self) -> Availability:
        if self.network_path is None:
            return Availability(False, self.network_reason)
        if "network" in self._failed:
            return Availability(False, self._failed["network"])
        return Availability(True)

    def tabs(self) -> dict[str, dict]:
        net = self.network_availability()
        det = Availability(False, self.detector_reason) if self.detector_path is None else (
            Availability(False, self._failed["detector"]) if "detector" in self._failed else Availability(True))
        proj = adapters.project_availability()
        proj = net if not net.available else proj
        try:
            nets = adapters.dream_nets(net.available)
            dream = Availability(True) if any(n["available"] for n in nets) else Availability(
                False, "; ".join(f"{n['name']}: {n['reason']}" for n in nets))
        except Unavailable as e:
            dream = Availability(False, str(e))
        unc = net
        if unc.available:
            try:
                adapters.uncanny_module()
                unc = adapters.lpips_availability("alex")
                if unc.available and "network" in self._cache and not self._cache["network"][0].D:
                    unc = Availability(False, "the network has no discriminator to fine-tune against "
                                              "(an NVlabs snapshot or a file saved with D is needed)")
            except Unavailable as e:
                unc = Availability(False, str(e))
        return {"detect": det.to_dict(), "generate": net.to_dict(), "project": proj.to_dict(),
                "dream": dream.to_dict(), "uncanny": unc.to_dict(),
                "gallery": Availability(True).to_dict()}

    # ---- gallery helpers
    def store_upload(self, data: bytes, pil, filename: str) -> Item:
        import hashlib
        sha = hashlib.sha256(data).hexdigest()
        name = "".join(ch for ch in (filename or "upload")[-80:] if ch.isprintable())
        return self.gallery.add("upload", write_image=adapters.image_writer(pil), size=adapters.image_size(pil),
                                params={"filename": name, "sha256": sha}, title=name or "upload",
                                dedupe=f"upload:{sha}")

    def item(self, item_id: str) -> Item:
        try:
            return self.gallery.get(item_id)
        except KeyError:
            raise HTTPException(404, f"no such item: {item_id}") from None

    def seed_item(self, seed: int, psi: float, noise_mode: str = "const") -> tuple[Item, torch.Tensor]:
        """The gallery item (made once) for a seed at psi, and its latent."""
        G, sha = self.generator(), self.network_sha()
        key = f"generate:{sha[:20]}:{seed}:{psi:.4f}:{noise_mode}"
        found = self.gallery.find(key)
        if found is not None:
            return found, adapters.load_latent(self.gallery.latent_path(found), G)
        ws = adapters.seed_ws(G, seed, psi)
        img = adapters.render(G, ws, noise_mode)
        item = self.gallery.add("generate", write_image=adapters.image_writer(img), write_latent=adapters.latent_writer(ws),
                                size=adapters.image_size(img), title=f"seed {seed}, psi {psi:g}",
                                params={"seed": seed, "psi": psi, "noise_mode": noise_mode,
                                        "network": self.network_path.name, "network_sha256": sha}, dedupe=key)
        return item, ws

    def item_latent(self, item_id: str) -> tuple[Item, torch.Tensor]:
        item = self.item(item_id)
        if not item.has_latent:
            raise GazeError(f"item {item_id} ({item.kind}) has no latent to mix; use a generated or projected face")
        return item, adapters.load_latent(self.gallery.latent_path(item), self.generator())


# ================================================================ request / response models
class StatusOut(BaseModel):
    version: str
    network: dict
    detector: dict
    tabs: dict[str, dict]
    limits: dict
    queue: dict


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


class DetectOut(BaseModel):
    prob_fake: float
    verdict: str
    threshold: float
    detector: str
    upload: dict
    item: dict


class UncannyIn(BaseModel):
    steps: int = Field(40, ge=1, le=2000)
    snapshot_every: int = Field(10, ge=1, le=500)
    batch: int = Field(4, ge=1, le=16)
    seed: int = Field(0, ge=0, le=MAX_SEED)


# ================================================================ middleware
class BodyLimit:
    """413 for request bodies over the limit: at once when Content-Length says so, else while reading."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        cl = headers.get(b"content-length")
        if cl is not None:
            try:
                n = int(cl)
            except ValueError:
                await JSONResponse({"detail": "bad Content-Length"}, status_code=400)(scope, receive, send)
                return
            if n > self.limit:
                await self._too_large(scope, receive, send)
                return
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    raise HTTPException(413, self._message())
            return msg

        await self.app(scope, limited, send)

    def _message(self) -> str:
        return f"upload too large: the limit is {self.limit / 2 ** 20:g} MB (gaze serve --max-upload-mb)"

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        await JSONResponse({"detail": self._message()}, status_code=413, headers={"Connection": "close"})(scope, receive, send)


class SecurityHeaders:
    """nosniff, no framing, no referrer on every response (pure ASGI: streams pass straight through)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(msg: dict) -> None:
            if msg["type"] == "http.response.start":
                have = {k.lower() for k, _ in msg.get("headers", [])}
                extra = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()
                         if k.lower().encode() not in have]
                msg = {**msg, "headers": list(msg.get("headers", [])) + extra}
            await send(msg)

        await self.app(scope, receive, send_with_headers)


SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
PAGE_CSP = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


# ================================================================ the app
def create_app(config: Optional[ServeConfig] = None) -> FastAPI:
    """Build the app (opens the gallery: a damaged or foreign database is refused here with a GazeError)."""
    cfg = config or ServeConfig()
    lab = Lab(cfg)
    static = {name: resources.files("machinegaze.web").joinpath("static", name).read_bytes() for name in STATIC_FILES}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        lab.jobs.start()
        if lab.network_path is not None:  # warm up in the background: the first request need not wait
            threading.Thread(target=_warm, args=(lab,), daemon=True, name="gaze-warmup").start()
        try:
            yield
        finally:
            await asyncio.to_thread(lab.jobs.shutdown, 10.0)
            lab.gallery.close()

    docs_assets = _swagger_assets()
    app = FastAPI(title="machinegaze", version=__version__, lifespan=lifespan,
                  docs_url=None if docs_assets else "/docs", redoc_url=None,
                  description="See what face GANs and face classifiers see. Every picture lands in the gallery "
                              "with its latent, parameters and parents.")
    app.state.lab = lab
    app.add_middleware(BodyLimit, limit=cfg.max_upload_bytes + 64 * 1024)  # + multipart framing

    app.add_middleware(SecurityHeaders)

    @app.exception_handler(GazeError)
    async def gaze_error(request: Request, exc: GazeError):
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(Unavailable)
    async def unavailable(request: Request, exc: Unavailable):
        return JSONResponse({"detail": f"not available in this build: {exc}"}, status_code=503)

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, exc: QueueFull):
        return JSONResponse({"detail": str(exc)}, status_code=429, headers={"Retry-After": "5"})

    # ---- helpers that close over cfg/lab
    def read_upload(file: UploadFile) -> bytes:
        data = file.file.read(cfg.max_upload_bytes + 1)
        if len(data) > cfg.max_upload_bytes:
            raise HTTPException(413, f"upload too large: the limit is {cfg.max_upload_mb:g} MB")
        if not data:
            raise HTTPException(422, "the uploaded file is empty")
        return data

    def decode(data: bytes):
        try:
            return adapters.decode_image(data, cfg.max_pixels)
        except GazeError as e:
            raise HTTPException(415 if adapters.is_not_an_image(e) else 422, str(e)) from None

    def image_source(file: Optional[UploadFile], item_id: Optional[str], what: str) -> Item:
        """The gallery item of an upload (stored once) or a named item with a picture."""
        if file is not None and item_id:
            raise HTTPException(422, f"{what}: give a file or an item_id, not both")
        if file is not None:
            data = read_upload(file)
            return lab.store_upload(data, decode(data), file.filename or "upload")
        if item_id:
            item = lab.item(item_id)
            if not item.has_image:
                raise HTTPException(422, f"item {item_id} has no picture")
            return item
        raise HTTPException(422, f"{what}: upload a file (field 'file') or name a gallery item (item_id)")

    def png_response(item: Item) -> Response:
        return Response(lab.gallery.image_path(item).read_bytes(), media_type="image/png",
                        headers={"X-Item-Id": item.id, "Location": f"/api/items/{item.id}",
                                 "Access-Control-Expose-Headers": "X-Item-Id"})

    # ---------------------------------------------------------------- page
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index():
        return Response(static["index.html"], media_type=STATIC_FILES["index.html"],
                        headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"})

    @app.get("/static/{name}", include_in_schema=False)
    def static_file(name: str):
        if name not in static:
            raise HTTPException(404, "no such file")
        return Response(static[name], media_type=STATIC_FILES[name], headers={"Cache-Control": "no-cache"})

    if docs_assets:  # Swagger UI from the swagger-ui-bundle package: /docs works offline
        @app.get("/docs", include_in_schema=False)
        def docs():
            return get_swagger_ui_html(openapi_url="/openapi.json", title="machinegaze API",
                                       swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                       swagger_css_url="/docs-assets/swagger-ui.css",
                                       swagger_favicon_url="/docs-assets/favicon-32x32.png")

        @app.get("/docs-assets/{name}", include_in_schema=False)
        def docs_asset(name: str):
            if name not in docs_assets:
                raise HTTPException(404, "no such file")
            path, media = docs_assets[name]
            return Response(path.read_bytes(), media_type=media, headers={"Cache-Control": "max-age=86400"})

    # ---------------------------------------------------------------- status
    @app.get("/api/status", response_model=StatusOut, tags=["status"])
    def status():
        """What works in this build: each tab's availability with the reason when it doesn't."""
        netinfo: dict = {"path": lab.network_path.name if lab.network_path else None,
                         "loaded": "network" in lab._cache}
        if "network" in lab._cache:
            netinfo.update(adapters.network_facts(lab._cache["network"][0]))
        detinfo: dict = {"path": lab.detector_path.name if lab.detector_path else None,
                         "loaded": "detector" in lab._cache}
        if "detector" in lab._cache:
            detinfo.update(adapters.detector_facts(lab._cache["detector"][0]))
        return {"version": __version__, "network": netinfo, "detector": detinfo, "tabs": lab.tabs(),
                "limits": {"max_upload_mb": cfg.max_upload_mb, "workers": cfg.workers, "queue": cfg.queue,
                           "max_pixels": cfg.max_pixels},
                "queue": lab.jobs.counts()}

    # ---------------------------------------------------------------- detect
    @app.post("/api/detect", response_model=DetectOut, tags=["detect"],
              responses={413: {"description": "upload too large"}, 415: {"description": "not an image"},
                         503: {"description": "no detector in this build"}})
    def detect(file: Optional[UploadFile] = File(None, description="a face photo"),
               item_id: Optional[str] = Form(None, pattern=ID_PATTERN, description="or a gallery item")):
        """Is this face real? Calibrated P(fake), the verdict by the detector's calibrated threshold, and a
        Grad-CAM overlay (stored in the gallery as a child of the upload)."""
        if file is not None and not item_id:  # refuse what is not an image before anything else
            data = read_upload(file)
            pil = decode(data)
            det, det_sha = lab.detector()
            src = lab.store_upload(data, pil, file.filename or "upload")
        else:
            det, det_sha = lab.detector()
            src = image_source(file, item_id, "detect")
            pil = adapters.open_stored_image(lab.gallery.image_path(src))
        with lab.gate, lab.lock("detector"):
            d = adapters.detect(det, pil)
        params = {"prob_fake": d.prob_fake, "verdict": d.verdict, "threshold": d.threshold,
                  "detector": lab.detector_path.name, "detector_sha256": det_sha}
        cam = lab.gallery.add("gradcam", write_image=adapters.image_writer(d.overlay), size=adapters.image_size(d.overlay),
                              params=params, parents=[(src.id, "input")],
                              title=f"{d.verdict} (P(fake) {d.prob_fake:.2f})", dedupe=f"gradcam:{det_sha[:20]}:{src.id}")
        return {"prob_fake": d.prob_fake, "verdict": d.verdict, "threshold": d.threshold,
                "detector": lab.detector_path.name, "upload": src.to_dict(), "item": cam.to_dict()}

    # ---------------------------------------------------------------- generate & mix
    png = {200: {"content": {"image/png": {}}, "description": "the picture (X-Item-Id names its gallery item)"}}

    @app.post("/api/generate", response_class=Response, responses=png, tags=["generate"])
    def generate(req: GenerateIn):
        """One face from a seed at truncation psi; stored in the gallery with its latent."""
        psi = round(req.psi, 4)
        lab.generator()
        with lab.gate:
            item, _ = lab.seed_item(req.seed, psi, req.noise_mode)
        return png_response(item)

    @app.post("/api/mix", response_class=Response, responses=png, tags=["generate"])
    def mix(req: MixIn):
        """Breed two latents by layer group: coarse/middle/fine say how much of B each group takes (0..1).
        A and B are seeds (at psi) or gallery items with a latent (e.g. a projection)."""
        psi = round(req.psi, 4)
        genes = {"coarse": round(req.coarse, 3), "middle": round(req.middle, 3), "fine": round(req.fine, 3)}
        G, sha = lab.generator(), lab.network_sha()
        with lab.gate:
            (ia, wa), (ib, wb) = [lab.seed_item(s.seed, psi, req.noise_mode) if s.seed is not None
                                  else lab.item_latent(s.item) for s in (req.a, req.b)]
            key = f"mix:{sha[:20]}:{ia.id}:{ib.id}:{json.dumps(genes, sort_keys=True)}:{req.noise_mode}"
            found = lab.gallery.find(key)
            if found is not None:
                return png_response(found)
            ws = adapters.breed(G, wa, wb, genes)
            img = adapters.render(G, ws, req.noise_mode)
            item = lab.gallery.add("mix", write_image=adapters.image_writer(img), write_latent=adapters.latent_writer(ws),
                                   size=adapters.image_size(img), parents=[(ia.id, "a"), (ib.id, "b")],
                                   params={**genes, "psi": psi, "noise_mode": req.noise_mode,
                                           "method": adapters.breed_source(), "network": lab.network_path.name,
                                           "network_sha256": sha},
                                   title=f"{ia.title} x {ib.title}", dedupe=key)
        return png_response(item)

    # ---------------------------------------------------------------- project
    @app.post("/api/project", status_code=202, tags=["project"])
    def project(file: Optional[UploadFile] = File(None, description="the photo to project"),
                item_id: Optional[str] = Form(None, pattern=ID_PATTERN, description="or a gallery item"),
                steps: int = Form(100, ge=1, le=1000), seed: int = Form(0, ge=0, le=MAX_SEED)):
        """Start a projection (GAN inversion) job; its result is a gallery item with the latent (breed it in Mix)."""
        av = lab.tabs()["project"]
        if not av["available"]:
            raise Unavailable(av["reason"])
        lab.generator()
        target = image_source(file, item_id, "project")

        def run(progress):
            G, sha = lab.generator(), lab.network_sha()
            pil = adapters.open_stored_image(lab.gallery.image_path(target))
            res = adapters.project(G, pil, steps, seed, lpips=lab.lpips("vgg"), progress=progress)
            item = lab.gallery.add("project", write_image=adapters.image_writer(res.image),
                                   write_latent=adapters.latent_writer(res.ws), size=adapters.image_size(res.image),
                                   parents=[(target.id, "target")], title=f"projection of {target.title}",
                                   params={"steps": steps, "seed": seed, "preset": res.preset, "lpips": res.lpips,
                                           "network": lab.network_path.name, "network_sha256": sha})
            return {"item": item.to_dict(), "lpips": res.lpips}

        return lab.jobs.submit("project", run, {"steps": steps, "seed": seed, "target": target.id}).to_dict()

    # ---------------------------------------------------------------- dream
    @app.get("/api/dream/nets", tags=["dream"])
    def dream_nets():
        """The networks to dream through, and whether each is available."""
        return adapters.dream_nets(lab.network_availability().available)

    @app.get("/api/dream/nets/{net}", tags=["dream"])
    def dream_net(net: str):
        """A network's layers (name, kind, output shape), its default layer and class names."""
        names = {n["name"]: n for n in adapters.dream_nets(lab.network_availability().available)}
        if net not in names:
            raise HTTPException(404, f"no such network: {net} (choose from {', '.join(names)})")
        if not names[net]["available"]:
            raise Unavailable(names[net]["reason"])
        dnet = lab.dream_net(net)
        with lab.lock(f"dream:{net}"):
            return lab.cached(f"dreamfacts:{net}", lambda: adapters.dream_net_facts(dnet))

    @app.post("/api/dream", status_code=202, tags=["dream"])
    def dream(file: Optional[UploadFile] = File(None, description="a photo to dream on"),
              item_id: Optional[str] = Form(None, pattern=ID_PATTERN, description="or a gallery item"),
              from_noise: bool = Form(False, description="visualise from noise instead of a photo"),
              net: str = Form("efficientnet", max_length=40), layer: Optional[str] = Form(None, max_length=200),
              class_name: Optional[str] = Form(None, max_length=200), octaves: int = Form(3, ge=1, le=8),
              steps: int = Form(10, ge=1, le=100), size: int = Form(256, ge=32, le=1024),
              noise_steps: int = Form(64, ge=1, le=1024), seed: int = Form(0, ge=0, le=MAX_SEED)):
        """Start a DeepDream job (or a feature visualisation from noise)."""
        names = {n["name"]: n for n in adapters.dream_nets(lab.network_availability().available)}
        if net not in names:
            raise HTTPException(422, f"unknown network {net!r} (choose from {', '.join(names)})")
        if not names[net]["available"]:
            raise Unavailable(names[net]["reason"])
        src = None if from_noise else image_source(file, item_id, "dream")
        dnet = lab.dream_net(net)
        layer, class_name = (layer or "").strip() or None, (class_name or "").strip() or None
        params = {"net": net, "layer": layer, "class": class_name, "octaves": octaves, "steps": steps, "size": size,
                  "from_noise": from_noise, "noise_steps": noise_steps, "seed": seed}

        def run(progress):
            path = lab.gallery.image_path(src) if src is not None else None
            with lab.lock(f"dream:{net}"):  # hooks on a shared module: one dream per network at a time
                img, objective = adapters.dream(dnet, path, layer, class_name, octaves, steps, size, seed,
                                                from_noise, noise_steps, progress)
            item = lab.gallery.add("dream", write_image=adapters.image_writer(img.clamp(-1, 1)),
                                   size=adapters.image_size(img), parents=[(src.id, "photo")] if src else [],
                                   params={**params, "objective": objective},
                                   title=f"dream: {objective}"[:120])
            return {"item": item.to_dict(), "objective": objective}

        return lab.jobs.submit("dream", run, {**params, "source": src.id if src else None}).to_dict()

    # ---------------------------------------------------------------- uncanny
    def run_summary(run) -> dict:
        metrics = adapters.uncanny_metrics(run.dir) if run.dir.is_dir() else []
        return {**run.to_dict(), "snapshots": len(metrics), "last": metrics[-1] if metrics else None,
                "url": f"/api/uncanny/runs/{run.id}"}

    @app.get("/api/uncanny/runs", tags=["uncanny"])
    def uncanny_runs():
        """Uncanny runs: started here, or registered with `gaze serve --uncanny-dir`."""
        try:
            adapters.uncanny_module()
        except Unavailable:
            return []
        return [run_summary(r) for r in lab.gallery.list_runs("uncanny")]

    def get_run(run_id: str):
        try:
            return lab.gallery.get_run(run_id)
        except KeyError:
            raise HTTPException(404, f"no such run: {run_id}") from None

    @app.get("/api/uncanny/runs/{run_id}", tags=["uncanny"])
    def uncanny_run(run_id: str):
        """A run's metrics per snapshot and the URLs of its face grids."""
        run = get_run(run_id)
        metrics = adapters.uncanny_metrics(run.dir) if run.dir.is_dir() else []
        return {**run_summary(run), "metrics": metrics,
                "grids": [{"step": m["step"], "url": f"/api/uncanny/runs/{run.id}/grids/{int(m['step'])}.png"}
                          for m in metrics]}

    @app.get("/api/uncanny/runs/{run_id}/grids/{step}.png", response_class=Response, tags=["uncanny"],
             responses={200: {"content": {"image/png": {}}}})
    def uncanny_grid(run_id: str, step: int):
        run = get_run(run_id)
        steps = {int(m["step"]) for m in (adapters.uncanny_metrics(run.dir) if run.dir.is_dir() else [])}
        if step not in steps:
            raise HTTPException(404, f"run {run_id} has no snapshot at step {step}")
        path = adapters.uncanny_grid_path(run.dir, step)
        if not path.is_file():
            raise HTTPException(404, f"run {run_id}: the grid of step {step} is missing")
        return Response(path.read_bytes(), media_type="image/png")

    @app.post("/api/uncanny", status_code=202, tags=["uncanny"])
    def uncanny_start(req: UncannyIn):
        """Start a short uncanny run (fine-tune the generator against its own discriminator)."""
        av = lab.tabs()["uncanny"]
        if not av["available"]:
            raise Unavailable(av["reason"])
        nets, _ = lab.networks()
        if nets.D is None:
            raise Unavailable("the network has no discriminator to fine-tune against")
        from machinegaze.web.gallery import new_id
        outdir = lab.gallery.run_root() / f"uncanny-{new_id()}"
        params = req.model_dump()

        def run(progress):
            r = lab.gallery.add_run("uncanny", outdir, title=f"{req.steps} steps from {lab.network_path.name}",
                                    params=params)
            res = adapters.uncanny_run(lab.network_path, outdir, req.steps, req.snapshot_every, req.batch, req.seed,
                                       lpips=lab.lpips("alex"), progress=progress)
            last = res.metrics[-1]
            grid = adapters.uncanny_grid_path(outdir, last["step"])
            pil = adapters.open_stored_image(grid)
            item = lab.gallery.add("uncanny", write_image=adapters.image_writer(pil), size=adapters.image_size(pil),
                                   params={**params, "run": r.id, "metrics": last},
                                   title=f"uncanny step {last['step']}: P(fake) {last['critic_fake']:.2f}")
            return {"run": run_summary(r), "item": item.to_dict()}

        return lab.jobs.submit("uncanny", run, params).to_dict()

    # ---------------------------------------------------------------- jobs
    def job_or_404(job_id: str):
        job = lab.jobs.get(job_id)
        if job is None:
            raise HTTPException(404, f"no such job: {job_id}")
        return job

    @app.get("/api/jobs/{job_id}", tags=["jobs"])
    def job_status(job_id: str):
        """Status, progress (step/total and the loop's numbers) and, when done, the result."""
        return job_or_404(job_id).to_dict()

    @app.post("/api/jobs/{job_id}/cancel", tags=["jobs"])
    def job_cancel(job_id: str):
        """Cancel a waiting job at once, or a running one at its next progress report."""
        job_or_404(job_id)
        return lab.jobs.cancel(job_id).to_dict()

    @app.delete("/api/jobs/{job_id}", tags=["jobs"])
    def job_delete(job_id: str):
        """Same as POST /api/jobs/{id}/cancel."""
        return job_cancel(job_id)

    @app.get("/api/jobs/{job_id}/events", tags=["jobs"], response_class=StreamingResponse,
             responses={200: {"content": {"text/event-stream": {}}}})
    async def job_events(job_id: str, request: Request):
        """Server-sent events: one `data:` JSON line (the job status) per change, until the job ends."""
        job = job_or_404(job_id)

        async def stream():
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

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # ---------------------------------------------------------------- gallery
    @app.get("/api/items", tags=["gallery"])
    def items(kind: Optional[str] = Query(None, max_length=32), limit: int = Query(60, ge=1, le=500),
              offset: int = Query(0, ge=0, le=10 ** 9)):
        """Gallery items, newest first."""
        found, total = lab.gallery.list(kind, limit, offset)
        return {"items": [i.to_dict() for i in found], "total": total, "limit": limit, "offset": offset}

    @app.post("/api/items", status_code=201, tags=["gallery"])
    def upload(file: UploadFile = File(..., description="an image")):
        """Upload a picture into the gallery (e.g. a face to project or dream on). The same file is stored once."""
        data = read_upload(file)
        return lab.store_upload(data, decode(data), file.filename or "upload").to_dict()

    @app.get("/api/items/{item_id}", tags=["gallery"])
    def item(item_id: str):
        """An item with its parameters, its parents and its children."""
        it = lab.item(item_id)
        return {**it.to_dict(), "children": lab.gallery.children(it.id)}

    def attachment(name: str, download: bool) -> dict:
        return {"Content-Disposition": f'attachment; filename="{name}"'} if download else {}

    @app.get("/api/items/{item_id}/image.png", response_class=Response, tags=["gallery"],
             responses={200: {"content": {"image/png": {}}}})
    def item_image(item_id: str, download: bool = False):
        it = lab.item(item_id)
        if not it.has_image:
            raise HTTPException(404, f"item {item_id} has no picture")
        return Response(lab.gallery.image_path(it).read_bytes(), media_type="image/png",
                        headers=attachment(f"{it.kind}-{it.id}.png", download))

    @app.get("/api/items/{item_id}/latent.npz", response_class=Response, tags=["gallery"],
             responses={200: {"content": {"application/octet-stream": {}}}})
    def item_latent(item_id: str, download: bool = True):
        it = lab.item(item_id)
        if not it.has_latent:
            raise HTTPException(404, f"item {item_id} has no latent")
        return Response(lab.gallery.latent_path(it).read_bytes(), media_type="application/octet-stream",
                        headers=attachment(f"{it.kind}-{it.id}.npz", download))

    return app


def _swagger_assets() -> dict[str, tuple[Path, str]]:
    """Swagger UI's files from the swagger-ui-bundle package (name -> (file, media type)); {} when it is missing,
    and FastAPI's default /docs (which loads Swagger UI from a CDN) is used instead."""
    try:
        import swagger_ui_bundle
    except ImportError:
        return {}
    root = Path(str(swagger_ui_bundle.swagger_ui_path))
    files = {"swagger-ui-bundle.js": "text/javascript; charset=utf-8", "swagger-ui.css": "text/css; charset=utf-8",
             "favicon-32x32.png": "image/png"}
    out = {name: (root / name, media) for name, media in files.items()}
    return out if all(p.is_file() for p, _ in out.values()) else {}


def _warm(lab: Lab) -> None:
    """Load the network (and the detector) before the first request needs them; failures become 'unavailable'."""
    for load in (lab.networks, lab.detector):
        try:
            load()
        except Unavailable:
            pass
        except Exception:  # noqa: BLE001 - never let warm-up kill anything; the request path will report it
            log.exception("warm-up failed")
