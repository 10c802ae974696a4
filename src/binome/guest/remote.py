"""Node-to-node API calls the guest service makes itself (the target side of a migration).

A live migration is driven by the source node's task, which needs the target
node to act in between its own steps (prepare an incoming QEMU, resume it,
or clean up). It calls the target's API over HTTPS, as the API's own proxy
does: the peer is verified against the cluster CA, and the request carries a
freshly minted `root@pam` ticket and CSRF token signed with the cluster
authkey (only cluster members hold it). Errors come back as GuestFailure
with the target's one-line reason.
"""

from __future__ import annotations

import contextlib
import ssl
from typing import TYPE_CHECKING, Any

import aiohttp

from binome import tickets
from binome.errors import BinomeError

if TYPE_CHECKING:
    from binome.cluster.cluster import ClusterService

API_PREFIX = "/api2/json"
USER = "root@pam"
KEEPALIVE = 60.0   # seconds an idle kept-alive connection stays open (client side)


class RemoteCallFailed(BinomeError):
    """A call to another node's API failed; the message is that node's reason."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


async def node_call(cluster: ClusterService, node: str, method: str, path: str,
                    params: dict[str, Any] | None = None, timeout: float = 60.0) -> Any:
    """`METHOD /api2/json<path>` on `node`, as root@pam; the answer's `data`."""
    async with NodeSession(cluster, node) as session:
        return await session.call(method, path, params, timeout=timeout)


class NodeSession:
    """Calls to one node over one kept-alive HTTPS connection.

    A call made from a latency-critical moment (a migration's switch-over, while the
    guest is paused on both sides) must not pay for a TCP and TLS handshake: `warm()`
    opens the connection beforehand with a cheap read, and the call then reuses it.
    """

    def __init__(self, cluster: ClusterService, node: str) -> None:
        self.cluster, self.node = cluster, node
        self._http: aiohttp.ClientSession | None = None
        self._ssl: ssl.SSLContext | None = None

    async def __aenter__(self) -> NodeSession:
        self._ssl = ssl.create_default_context(cafile=str(self.cluster.paths.ca_cert))
        self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(
            limit_per_host=2, keepalive_timeout=KEEPALIVE))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def warm(self) -> None:
        """Open (or keep open) the connection with a cheap read; failures are ignored
        (the next call opens its own)."""
        with contextlib.suppress(RemoteCallFailed):
            await self.call("GET", "/version", timeout=5.0)

    async def call(self, method: str, path: str, params: dict[str, Any] | None = None, *,
                   timeout: float = 60.0) -> Any:
        """`METHOD /api2/json<path>` on the node, as root@pam; the answer's `data`."""
        assert self._http is not None and self._ssl is not None, "use `async with`"
        node, cluster = self.node, self.cluster
        address = cluster.node_address(node)
        key = await cluster.authkey()
        if address is None or key is None:
            raise RemoteCallFailed(f"no such cluster node '{node}'")
        host, port = address
        host = f"[{host}]" if ":" in host else host
        headers = {"Authorization": "PVEAuthCookie=" + tickets.make_ticket(key, USER),
                   "CSRFPreventionToken": tickets.make_csrf_token(key, USER)}
        data = None if method in ("GET", "DELETE") else {k: str(v)
                                                          for k, v in (params or {}).items()}
        query = {k: str(v) for k, v in (params or {}).items()} if data is None else None
        try:
            async with self._http.request(
                    method, f"https://{host}:{port}{API_PREFIX}{path}", params=query,
                    data=data, headers=headers, ssl=self._ssl,
                    timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                try:
                    body = await resp.json(content_type=None)
                except ValueError:
                    body = None
                if resp.status != 200:
                    message = (body or {}).get("message") if isinstance(body, dict) else None
                    text = str(message or resp.reason or f"HTTP {resp.status}").strip()
                    raise RemoteCallFailed(f"{node}: {text}", resp.status)
                return (body or {}).get("data") if isinstance(body, dict) else None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RemoteCallFailed(f"call to node '{node}' failed: {exc or 'timeout'}") from exc
