"""Serving the web interface's built files at `/` (owns nothing but that).

The single-page application lives in `ui/` and is built (`make setup`, or
`cd ui && npm ci && npm run build`) into the package directory `binome/ui_dist/`,
which `pip install` ships: a node needs no npm. The UI talks only to /api2/json like
any client; nothing here is UI logic. Hashed files under /assets/ never change and
are cached for a year; index.html is revalidated on every load, so a new build is
picked up at once. Without a build, `/` says how to make one.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from aiohttp import web

DIST = Path(__file__).resolve().parent.parent / "ui_dist"
ASSETS_PATH = "/assets/{name}"
# only the bundler's own names: no path separators, no dot files, nothing else to serve
_ASSET_NAME = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.(js|css|svg|png|woff2?|map)$")
_TYPES = {"js": "text/javascript", "css": "text/css", "svg": "image/svg+xml",
          "png": "image/png", "woff": "font/woff", "woff2": "font/woff2",
          "map": "application/json"}
_SECURITY = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "SAMEORIGIN",
             "Referrer-Policy": "same-origin"}

NOT_BUILT = """<!doctype html><meta charset="utf-8"><title>binome {node}</title>
<h1>binome node {node}</h1>
<p>The web interface is not built in this installation.
Build it from the source tree with <code>make setup</code>
(or <code>cd ui &amp;&amp; npm ci &amp;&amp; npm run build</code>) and reload.</p>
<p>The API works without it: <a href="/api2/json/version">/api2/json</a>,
schema: <a href="/api2/openapi.json">/api2/openapi.json</a>.</p>
"""


def index_response(node: str, dist: Path = DIST) -> web.Response:
    """index.html, never cached (it names the current build's hashed assets)."""
    page = dist / "index.html"
    headers = {"Cache-Control": "no-cache", **_SECURITY}
    if not page.is_file():
        return web.Response(text=NOT_BUILT.format(node=html.escape(node)), content_type="text/html",
                            headers=headers)
    return web.Response(body=page.read_bytes(), content_type="text/html", charset="utf-8",
                        headers=headers)


def asset_response(name: str, dist: Path = DIST) -> web.StreamResponse:
    """A hashed build file: immutable, cached for a year; 404 for anything else."""
    if not _ASSET_NAME.match(name):
        raise web.HTTPNotFound()
    path = dist / "assets" / name
    if not path.is_file():
        raise web.HTTPNotFound()
    ext = name.rsplit(".", 1)[1]
    return web.FileResponse(path, headers={
        "Content-Type": _TYPES[ext],
        "Cache-Control": "public, max-age=31536000, immutable", **_SECURITY})
