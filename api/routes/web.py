"""The web page for people: `/` serves api/static/index.html, `/static/*` its modules and styles.

The page is plain JavaScript modules shipped in the package (nothing is built at install or run time) and talks
to the public REST API only, with the key the person enters. The Content-Security-Policy allows nothing but this
server: no CDN, no fonts or scripts from elsewhere, and page images only as blobs fetched with the key.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
       "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
       "form-action 'self'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "Cache-Control": "no-cache"}

router = APIRouter(include_in_schema=False)


@router.get("/")
def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=HEADERS)


def static_files() -> StaticFiles:
    return StaticFiles(directory=STATIC_DIR, check_dir=True)
