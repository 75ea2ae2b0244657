"""The page itself (index.html, its script and style) and the offline Swagger UI at /docs."""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response

from machinegaze.web.middleware import PAGE_CSP

STATIC_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}

router = APIRouter()


@cache
def static_files() -> dict[str, bytes]:
    return {name: resources.files("machinegaze.web").joinpath("static", name).read_bytes() for name in STATIC_FILES}


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def index():
    return Response(
        static_files()["index.html"],
        media_type=STATIC_FILES["index.html"],
        headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"},
    )


@router.get("/static/{name}", include_in_schema=False)
def static_file(name: str):
    static = static_files()
    if name not in static:
        raise HTTPException(404, "no such file")
    return Response(static[name], media_type=STATIC_FILES[name], headers={"Cache-Control": "no-cache"})


@cache
def swagger_assets() -> dict[str, tuple[Path, str]]:
    """Swagger UI's files from the swagger-ui-bundle package (name -> (file, media type)); {} when it is missing,
    and FastAPI's default /docs (which loads Swagger UI from a CDN) is used instead."""
    try:
        import swagger_ui_bundle
    except ImportError:
        return {}
    root = Path(str(swagger_ui_bundle.swagger_ui_path))
    files = {
        "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
        "swagger-ui.css": "text/css; charset=utf-8",
        "favicon-32x32.png": "image/png",
    }
    out = {name: (root / name, media) for name, media in files.items()}
    return out if all(p.is_file() for p, _ in out.values()) else {}


docs_router = APIRouter()  # included only when swagger_assets() found the files


@docs_router.get("/docs", include_in_schema=False)
def docs():
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="machinegaze API",
        swagger_js_url="/docs-assets/swagger-ui-bundle.js",
        swagger_css_url="/docs-assets/swagger-ui.css",
        swagger_favicon_url="/docs-assets/favicon-32x32.png",
    )


@docs_router.get("/docs-assets/{name}", include_in_schema=False)
def docs_asset(name: str):
    assets = swagger_assets()
    if name not in assets:
        raise HTTPException(404, "no such file")
    path, media = assets[name]
    return Response(path.read_bytes(), media_type=media, headers={"Cache-Control": "max-age=86400"})
