"""An HTTPS client of the API for the access tests: a ticket session (with CSRF) or an
API-token session, and waiting for a task's end."""

from __future__ import annotations

import asyncio
from typing import Any

import requests

from binome.access import ops
from binome.access.model import AccessConfig
from binome.access.repository import AccessRepository
from tests.integration.harness import Cluster, wait_for


def base_url(cluster: Cluster) -> str:
    return f"https://{cluster['n1'].address}:8006/api2/json"


class Api:
    """A logged-in HTTPS session (ticket + CSRF) or a token session."""

    def __init__(self, cluster: Cluster, user: str, password: str | None = None,
                 token: str | None = None) -> None:
        self.base = base_url(cluster)
        self.s = requests.Session()
        self.s.verify = False
        self.s.trust_env = False
        if token is not None:
            self.s.headers["Authorization"] = f"PVEAPIToken={user}={token}"
            return
        r = self.s.post(self.base + "/access/ticket",
                        data={"username": user, "password": password}, timeout=10)
        assert r.status_code == 200, (r.status_code, r.text)
        data = r.json()["data"]
        self.cap = data["cap"]
        self.s.cookies.set("PVEAuthCookie", data["ticket"])
        self.s.headers["CSRFPreventionToken"] = data["CSRFPreventionToken"]

    def call(self, method: str, url: str, /, **params: Any) -> requests.Response:
        kw: dict[str, Any] = {"params": params} if method in ("GET", "DELETE") else \
            {"data": params}
        return self.s.request(method, self.base + url, timeout=30, **kw)

    def ok(self, method: str, url: str, /, **params: Any) -> Any:
        r = self.call(method, url, **params)
        assert r.status_code == 200, (method, url, r.status_code, r.text)
        return r.json()["data"]


def wait_task(api: Api, upid: str) -> None:
    node = upid.split(":")[1]

    def done() -> bool:
        status = api.ok("GET", f"/nodes/{node}/tasks/{upid}/status")
        if status["status"] == "stopped":
            assert status["exitstatus"] == "OK", status
            return True
        return False
    wait_for(done, 60, f"task {upid}")


def stored_access_config(cluster: Cluster) -> AccessConfig:
    """The access configuration as stored in etcd (read beside the API, to check it)."""
    async def go() -> AccessConfig:
        store = cluster.raw_store("n1")
        try:
            return (await AccessRepository(store).load()).config
        finally:
            await store.close()
    return asyncio.run(go())


def purge_realm(cluster: Cluster, realm_id: str) -> None:
    """Remove a realm and the users and groups a sync into it created (tests clean up)."""
    def op(cfg: AccessConfig) -> AccessConfig:
        for u in [u for u in cfg.users if u.endswith("@" + realm_id)]:
            cfg = ops.delete_user(cfg, u)
        for g in [g for g in cfg.groups if g.endswith("-" + realm_id)]:
            cfg = ops.delete_group(cfg, g)
        if realm_id in cfg.realms:
            cfg = ops.delete_realm(cfg, realm_id)
        return cfg

    async def go() -> None:
        store = cluster.raw_store("n1")
        try:
            await AccessRepository(store).change("test", "cleanup", op)
        finally:
            await store.close()
    asyncio.run(go())
