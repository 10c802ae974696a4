"""An HTTPS client of the API for the access tests: a ticket session (with CSRF) or an
API-token session, and waiting for a task's end."""

from __future__ import annotations

from typing import Any

import requests

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
