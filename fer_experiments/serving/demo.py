"""The demo page of ``fer-exp serve`` (``GET /``): drop a photo or open the webcam and see each face's expression.

One static page shipped in the package (``serving/static/demo.html`` with its ``demo.js`` and ``demo.css``, served
under ``/demo-assets/``): nothing loads from elsewhere, so it works offline. The page calls only ``/health`` and
``/predict`` (the same upload limits hold), shows every server string with ``textContent``, and is served with a
Content-Security-Policy that lets it load nothing but its own two files and talk to nothing but this server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

STATIC_DIR = Path(__file__).parent / "static"
#: URL prefix of the page's script and style sheet.
DEMO_ASSETS = "/demo-assets"
#: The page's own files and their media types (any other name under DEMO_ASSETS is a 404).
ASSETS = {"demo.js": "text/javascript; charset=utf-8", "demo.css": "text/css; charset=utf-8"}
#: Scripts and styles from this server only, no inline script, no plugins, no framing; fetch() to this server only;
#: images from the page's own canvases (blob:/data:) and the webcam stream (mediastream:).
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
                           "media-src 'self' blob: mediastream:; connect-src 'self'; base-uri 'none'; "
                           "form-action 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Content-Type-Options": "nosniff",
           "Referrer-Policy": "no-referrer", "Permissions-Policy": "camera=(self), microphone=()",
           "Cache-Control": "no-cache"}


def add_demo_page(app: Any) -> None:
    """Register ``GET /`` (the page) and ``GET /demo-assets/{name}`` (its script and style sheet) on ``app``."""
    from fastapi.responses import HTMLResponse, Response
    from starlette.exceptions import HTTPException

    page = (STATIC_DIR / "demo.html").read_bytes()  # read once: a few kB, and a broken install fails at start
    assets = {name: (STATIC_DIR / name).read_bytes() for name in ASSETS}

    @app.get("/", include_in_schema=False)
    async def demo_page() -> HTMLResponse:
        return HTMLResponse(page, headers=HEADERS)

    @app.get(DEMO_ASSETS + "/{name}", include_in_schema=False)
    async def demo_asset(name: str) -> Response:
        if name not in assets:
            raise HTTPException(404)
        return Response(assets[name], media_type=ASSETS[name], headers=HEADERS)
