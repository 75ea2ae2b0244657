"""The lab: everything the web routes share (config, models, gallery, job queue), in one small object.

Routes get it with `lab: Lab = Depends(get_lab)`; `create_app` puts it on `app.state.lab`.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import torch
from fastapi import HTTPException, Request, UploadFile
from fastapi.responses import Response

from machinegaze import GazeError, zoo
from machinegaze.data import sha256_file
from machinegaze.device import resolve_device, resolve_precision
from machinegaze.web import adapters
from machinegaze.web.adapters import Availability, Unavailable
from machinegaze.web.config import ServeConfig
from machinegaze.web.gallery import Gallery, Item
from machinegaze.web.jobs import Gate, JobQueue

log = logging.getLogger("machinegaze.web")

MAX_SEED = 2**32 - 1


def get_lab(request: Request) -> Lab:
    """FastAPI dependency: the app's Lab."""
    return request.app.state.lab


def _networks_on(nets, device: torch.device):
    """A network file's generator(s) and discriminator moved to `device` (in place; returns `nets`)."""
    for name in ("G_ema", "G", "D"):
        m = getattr(nets, name, None)
        if m is not None:
            m.to(device)
    return nets


class Lab:
    """Everything the routes share. Models load lazily, once, on first use (per-model locks), onto the lab's
    device; every tab computes there, at the lab's precision."""

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)  # a device that is not there: a GazeError before anything opens
        self.precision = resolve_precision(cfg.precision, self.device)
        self.gallery = Gallery(cfg.data_path)  # refuses a damaged or foreign database (GazeError)
        self.jobs = JobQueue(cfg.workers, cfg.queue)
        self.gate = Gate(cfg.workers, cfg.queue)
        self._cache: dict[str, Any] = {}
        self._failed: dict[str, str] = {}
        self._locks: dict[str, threading.Lock] = defaultdict(threading.Lock)
        self._locks_guard = threading.Lock()
        # An explicitly named network/detector must exist (a user error at startup); the bundled defaults may not.
        self.network_path, self.network_reason = self._resolve(
            zoo.resolve_network,
            cfg.network,
            "no bundled face GAN in this build yet; start with "
            "`gaze serve --network PATH` (a .pkl, .pt or .safetensors)",
            "network",
        )
        self.detector_path, self.detector_reason = self._resolve(
            zoo.resolve_detector,
            cfg.detector,
            "no bundled fake-face detector in this build yet; start with `gaze serve --detector PATH`",
            "fake-face detector",
        )
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

    def loaded(self, key: str) -> Any:
        """A model already loaded (e.g. 'network', 'detector'), or None; never loads."""
        return self._cache.get(key)

    # ---- models
    def networks(self):
        if self.network_path is None:
            raise Unavailable(self.network_reason)
        path = self.network_path
        return self.cached("network", lambda: (_networks_on(zoo.load_networks(path), self.device), sha256_file(path)))

    def generator(self):
        return self.networks()[0].generator

    def network_sha(self) -> str:
        return self.networks()[1]

    def detector(self):
        if self.detector_path is None:
            raise Unavailable(self.detector_reason)
        path = self.detector_path
        return self.cached("detector", lambda: (zoo.load_detector(path, device=self.device), sha256_file(path)))

    def fast_detector(self):
        """The detector's inference copy (detect.fast), made once."""
        from machinegaze.detect.fast import fast_detector

        return self.cached("detector_fast", lambda: fast_detector(self.detector()[0]))

    def mtcnn(self):
        """The face finder the Detect tab looks for faces with."""
        return self.cached("mtcnn", zoo.load_mtcnn)

    def lpips(self, net: str):
        av = adapters.lpips_availability(net)
        if not av.available:
            raise Unavailable(av.reason)
        return self.cached(f"lpips:{net}", lambda: zoo.load_lpips(net, device=self.device))

    def dream_net(self, name: str):
        path = self.network_path if name == "discriminator" else None
        if name == "discriminator" and path is None:
            raise Unavailable(self.network_reason)
        return self.cached(f"dream:{name}", lambda: adapters.dream_load_net(name, path, self.device))

    # ---- availability (cheap: never loads a model)
    def network_availability(self) -> Availability:
        if self.network_path is None:
            return Availability(False, self.network_reason)
        if "network" in self._failed:
            return Availability(False, self._failed["network"])
        return Availability(True)

    def tabs(self) -> dict[str, dict]:
        net = self.network_availability()
        det = (
            Availability(False, self.detector_reason)
            if self.detector_path is None
            else (Availability(False, self._failed["detector"]) if "detector" in self._failed else Availability(True))
        )
        proj = adapters.project_availability()
        proj = net if not net.available else proj
        try:
            nets = adapters.dream_nets(net.available)
            dream = (
                Availability(True)
                if any(n["available"] for n in nets)
                else Availability(False, "; ".join(f"{n['name']}: {n['reason']}" for n in nets))
            )
        except Unavailable as e:
            dream = Availability(False, str(e))
        unc = net
        if unc.available:
            try:
                adapters.uncanny_module()
                unc = adapters.lpips_availability("alex")
                if unc.available and "network" in self._cache and not self._cache["network"][0].D:
                    unc = Availability(
                        False,
                        "the network has no discriminator to fine-tune against "
                        "(an NVlabs snapshot or a file saved with D is needed)",
                    )
            except Unavailable as e:
                unc = Availability(False, str(e))
        return {
            "detect": det.to_dict(),
            "generate": net.to_dict(),
            "project": proj.to_dict(),
            "dream": dream.to_dict(),
            "uncanny": unc.to_dict(),
            "gallery": Availability(True).to_dict(),
        }

    def require(self, tab: str) -> None:
        """Unavailable (503) unless the tab works in this build."""
        av = self.tabs()[tab]
        if not av["available"]:
            raise Unavailable(av["reason"])

    # ---- uploads and gallery items
    def read_upload(self, file: UploadFile) -> bytes:
        data = file.file.read(self.cfg.max_upload_bytes + 1)
        if len(data) > self.cfg.max_upload_bytes:
            raise HTTPException(413, f"upload too large: the limit is {self.cfg.max_upload_mb:g} MB")
        if not data:
            raise HTTPException(422, "the uploaded file is empty")
        return data

    def decode(self, data: bytes):
        try:
            return adapters.decode_image(data, self.cfg.max_pixels)
        except GazeError as e:
            raise HTTPException(415 if adapters.is_not_an_image(e) else 422, str(e)) from None

    def store_upload(self, data: bytes, pil, filename: str) -> Item:
        sha = hashlib.sha256(data).hexdigest()
        name = "".join(ch for ch in (filename or "upload")[-80:] if ch.isprintable())
        return self.gallery.add(
            "upload",
            write_image=adapters.image_writer(pil),
            size=adapters.image_size(pil),
            params={"filename": name, "sha256": sha},
            title=name or "upload",
            dedupe=f"upload:{sha}",
        )

    def image_source(self, file: Optional[UploadFile], item_id: Optional[str], what: str) -> Item:
        """The gallery item of an upload (stored once) or a named item with a picture."""
        if file is not None and item_id:
            raise HTTPException(422, f"{what}: give a file or an item_id, not both")
        if file is not None:
            data = self.read_upload(file)
            return self.store_upload(data, self.decode(data), file.filename or "upload")
        if item_id:
            item = self.item(item_id)
            if not item.has_image:
                raise HTTPException(422, f"item {item_id} has no picture")
            return item
        raise HTTPException(422, f"{what}: upload a file (field 'file') or name a gallery item (item_id)")

    def item(self, item_id: str) -> Item:
        try:
            return self.gallery.get(item_id)
        except KeyError:
            raise HTTPException(404, f"no such item: {item_id}") from None

    def png_response(self, item: Item) -> Response:
        return Response(
            self.gallery.image_path(item).read_bytes(),
            media_type="image/png",
            headers={
                "X-Item-Id": item.id,
                "Location": f"/api/items/{item.id}",
                "Access-Control-Expose-Headers": "X-Item-Id",
            },
        )

    def seed_item(self, seed: int, psi: float, noise_mode: str = "const") -> tuple[Item, torch.Tensor]:
        """The gallery item (made once) for a seed at psi, and its latent."""
        G, sha = self.generator(), self.network_sha()
        key = f"generate:{sha[:20]}:{seed}:{psi:.4f}:{noise_mode}"
        found = self.gallery.find(key)
        if found is not None:
            return found, adapters.load_latent(self.gallery.latent_path(found), G)
        ws = adapters.seed_ws(G, seed, psi)
        img = adapters.render(G, ws, noise_mode, self.precision)
        item = self.gallery.add(
            "generate",
            write_image=adapters.image_writer(img),
            write_latent=adapters.latent_writer(ws),
            size=adapters.image_size(img),
            title=f"seed {seed}, psi {psi:g}",
            params={
                "seed": seed,
                "psi": psi,
                "noise_mode": noise_mode,
                "network": self.network_path.name,
                "network_sha256": sha,
            },
            dedupe=key,
        )
        return item, ws

    def item_latent(self, item_id: str) -> tuple[Item, torch.Tensor]:
        item = self.item(item_id)
        if not item.has_latent:
            raise GazeError(f"item {item_id} ({item.kind}) has no latent to mix; use a generated or projected face")
        return item, adapters.load_latent(self.gallery.latent_path(item), self.generator())

    def warm(self) -> None:
        """Load the network (and the detector) before the first request needs them; failures become 'unavailable'."""
        for load in (self.networks, self.detector):
            try:
                load()
            except Unavailable:
                pass
            except Exception:  # noqa: BLE001 - never let warm-up kill anything; the request path will report it
                log.exception("warm-up failed")
