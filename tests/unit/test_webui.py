"""Serving the web UI's build at `/`: index.html never cached, hashed assets cached for
a year, nothing outside assets/ reachable, and a clear page when the UI is not built."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from binome.api import webui


def _app(dist: Path) -> web.Application:
    async def index(request: web.Request) -> web.Response:
        return webui.index_response("n<1>", dist)

    async def asset(request: web.Request) -> web.StreamResponse:
        return webui.asset_response(request.match_info["name"], dist)

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get(webui.ASSETS_PATH, asset)
    return app


@pytest.fixture
def built(tmp_path: Path) -> Path:
    (tmp_path / "assets").mkdir()
    (tmp_path / "index.html").write_text("<!doctype html><script src=/assets/index-Ab1.js>")
    (tmp_path / "assets" / "index-Ab1.js").write_text("console.log(1)")
    (tmp_path / "assets" / "index-Cd2.css").write_text("body{}")
    (tmp_path / "secret.txt").write_text("not served")
    return tmp_path


async def test_index_and_assets(built: Path) -> None:
    async with TestClient(TestServer(_app(built))) as client:
        r = await client.get("/")
        assert r.status == 200 and "index-Ab1.js" in await r.text()
        assert r.headers["Cache-Control"] == "no-cache"
        assert r.headers["Content-Type"].startswith("text/html")
        r = await client.get("/assets/index-Ab1.js")
        assert r.status == 200 and await r.text() == "console.log(1)"
        assert r.headers["Content-Type"].startswith("text/javascript")
        assert "immutable" in r.headers["Cache-Control"]
        assert "max-age=31536000" in r.headers["Cache-Control"]
        r = await client.get("/assets/index-Cd2.css")
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/css")


@pytest.mark.parametrize("name", ["missing-X1.js", "..%2Fsecret.txt", "%2E%2E%2Findex.html",
                                  ".hidden.js", "index-Ab1.js.bak", "index-Ab1"])
async def test_only_build_assets_are_served(built: Path, name: str) -> None:
    async with TestClient(TestServer(_app(built))) as client:
        r = await client.get(f"/assets/{name}")
        assert r.status == 404
        assert "not served" not in await r.text()


async def test_not_built_says_how_to_build(tmp_path: Path) -> None:
    async with TestClient(TestServer(_app(tmp_path / "nothing"))) as client:
        r = await client.get("/")
        text = await r.text()
        assert r.status == 200 and "make setup" in text and "npm run build" in text
        assert "n&lt;1&gt;" in text and "n<1>" not in text
        assert r.headers["Cache-Control"] == "no-cache"
