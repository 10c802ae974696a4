"""The upload route of the real API server (its aiohttp app on a unix socket, as the CLI
reaches it: root@pam), with a real storage manager and task manager over a temp dir: a
body larger than the global limit is streamed into the storage (the limit still holds
for every other route), verified, renamed; a checksum mismatch fails the task and leaves
nothing; bad input is PVE's 400 with nothing written."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from binome.api import methods  # noqa: F401  (registers every method)
from binome.api.server import ApiServer
from binome.api.wire import MAX_BODY
from binome.storage.manager import StorageManager
from binome.tasks.manager import TaskManager

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the local socket is root@pam")


@pytest.fixture
async def api(tmp_path: Path):
    cluster = SimpleNamespace(store=None, node_records={}, is_member=False)
    services: Any = SimpleNamespace(
        config=SimpleNamespace(name="n1"), cluster=cluster,
        storages=StorageManager("n1", tmp_path / "state", cluster),   # type: ignore[arg-type]
        tasks=TaskManager("n1", tmp_path / "tasks"))
    server = ApiServer(services)
    runner = web.AppRunner(server.app, handle_signals=False)
    await runner.setup()
    sock = tmp_path / "api.sock"
    await web.UnixSite(runner, str(sock)).start()
    http = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock)))
    try:
        yield http, services, tmp_path / "state" / "storage" / "local"
    finally:
        await http.close()
        await runner.cleanup()


URL = "http://localhost/api2/json/nodes/n1/storage/local/upload"


def form(fields: dict[str, str], name: str, data: bytes) -> aiohttp.FormData:
    body = aiohttp.FormData(quote_fields=False)   # the file name as browsers send it
    for k, v in fields.items():
        body.add_field(k, v)
    body.add_field("filename", data, filename=name, content_type="application/octet-stream")
    return body


async def finished(services: Any, upid: str) -> Any:
    for _ in range(200):
        record = services.tasks.records[upid]
        if record.status == "stopped":
            return record
        await asyncio.sleep(0.05)
    raise AssertionError(f"task {upid} did not end")


async def test_large_upload_streamed_verified_renamed(api):
    http, services, local = api
    data = os.urandom(MAX_BODY * 3 + 17)
    digest = hashlib.sha256(data).hexdigest()
    async with http.post(URL, data=form({"content": "iso", "checksum": digest,
                                         "checksum-algorithm": "sha256"},
                                        "my disc.iso", data)) as r:
        assert r.status == 200, await r.text()
        upid = (await r.json())["data"]
    record = await finished(services, upid)
    assert record.exitstatus == "OK"
    iso = local / "template" / "iso"
    assert (iso / "my_disc.iso").read_bytes() == data
    assert [p.name for p in iso.iterdir()] == ["my_disc.iso"]
    log, _ = services.tasks.read_log(upid, 0, 50)
    assert "OK, checksum verified" in [line["t"] for line in log]

    # the global limit still holds for the other routes
    async with http.post("http://localhost/api2/json/storage",
                         data={"storage": "x", "type": "dir", "path": "/" + "a" * MAX_BODY}
                         ) as r:
        assert r.status == 413


async def test_checksum_mismatch_leaves_nothing(api):
    http, services, local = api
    data = b"not what was announced" * 1000
    async with http.post(URL, data=form({"content": "iso", "checksum": "0" * 32,
                                         "checksum-algorithm": "md5"}, "a.iso", data)) as r:
        assert r.status == 200, await r.text()
        upid = (await r.json())["data"]
    record = await finished(services, upid)
    assert record.exitstatus == (f"checksum mismatch: got '{hashlib.md5(data).hexdigest()}' "
                                 f"!= expect '{'0' * 32}'")
    assert list((local / "template" / "iso").iterdir()) == []


@pytest.mark.parametrize("fields,name,errors", [
    ({"content": "iso"}, "a.exe", {"filename": "wrong file extension"}),
    ({"content": "images"}, "a.raw", {"content": "value 'images' does not have a value in "
                                                 "the enumeration 'iso, vztmpl, snippets'"}),
    ({"content": "iso", "checksum": "ab"}, "a.iso",
     {"checksum": "parameter 'checksum' requires 'checksum-algorithm'"}),
])
async def test_bad_input_is_400_and_writes_nothing(api, fields, name, errors):
    http, services, local = api
    async with http.post(URL, data=form(fields, name, b"x" * 1000)) as r:
        assert r.status == 400
        body = await r.json()
    assert body["errors"] == errors
    assert not (local / "template").exists() or \
        list((local / "template" / "iso").iterdir()) == []
    assert services.tasks.records == {}


async def test_upload_needs_a_multipart_body(api):
    http, _, _ = api
    async with http.post(URL, data={"content": "iso", "filename": "a.iso"}) as r:
        assert r.status == 415
    async with http.post(URL, data=aiohttp.FormData({"content": "iso"},
                                                     default_to_multipart=True)) as r:
        assert r.status == 400 and "filename" in (await r.json())["errors"]


async def test_text_fields_are_limited(api):
    from binome.api.wire import MAX_VALUE

    http, services, _ = api
    async with http.post(URL, data=form({"content": "i" * (MAX_VALUE + 1)}, "a.iso",
                                        b"x")) as r:
        assert r.status == 413
    assert services.tasks.records == {}
