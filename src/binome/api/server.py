"""The aiohttp HTTPS server on port 8006 (and the local unix socket the CLI uses).

Dispatch: match the path in the registry (501 if unknown), authenticate (ticket
cookie or header; on the unix socket, the peer's uid: root is root@pam), check
CSRF on writes, validate parameters, proxy to the node named in the path when
it is not this one, check permissions, run the handler, and answer in PVE's
envelope with the error text as the HTTP reason phrase.

Malformed requests (see `wire`) are answered the same way, never by a dropped
connection or a Python message: the path is checked before any route (400), the
URL's and body's sizes are limited (414, 413), the parameters are decoded strictly
(400 naming them) and a body of another content type is refused (415). An upload
method's body (`ApiMethod.upload`) has no size limit: its text fields are read (each
limited), its file part is left for the handler to stream to disk, and a request for
another node is relayed to it as it comes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import struct
from typing import Any
from urllib.parse import unquote

import aiohttp
from aiohttp import web
from yarl import URL

from binome.access import permission
from binome.access.model import ROOT_USER
from binome.access.permission import AnyUser, World
from binome.access.service import AuthRefused
from binome.api import auth, openapi, webui, wire
from binome.api.context import UPLOAD_PART, NodeServices, RequestContext
from binome.api.errors import ApiError, AuthError, PermissionDenied
from binome.api.registry import ApiMethod, WithTotal, privs, registry
from binome.api.schema import validate
from binome.api.wire import MAX_BODY, MAX_LINE, MAX_URL, MULTIPART
from binome.errors import BinomeError
from binome.metrics.exporter import CONTENT_TYPE, ROUTE_KEY, NodeMetrics

log = logging.getLogger("binome.api")

API_PREFIX = "/api2/json"
OPENAPI_PATH = "/api2/openapi.json"
METRICS_PATH = "/metrics"
MAX_UPLOAD_FIELDS = 32      # text fields before an upload's file part


async def _no_handler(ctx: RequestContext, params: dict[str, Any]) -> None:
    raise AssertionError("served by ApiServer.metrics")


# Prometheus' scrape: outside /api2 and the registry (no envelope, no CLI), authenticated
# and permission-checked like a method: PVE's Sys.Audit on / (PVEAuditor), token or ticket
METRICS_METHOD = ApiMethod("GET", METRICS_PATH, name="metrics",
                           description="Prometheus metrics of this node.",
                           handler=_no_handler, permission=privs("Sys.Audit"))


def _reason(message: str) -> str:
    line = message.strip().splitlines()[0] if message.strip() else "error"
    line = line.encode("latin-1", "replace").decode("latin-1")[:200]
    # aiohttp refuses to write a control character in the status line and drops the
    # connection instead: the message may echo anything the client sent
    return "".join(c if c.isprintable() else "?" for c in line)


def error_response(exc: ApiError) -> web.Response:
    message = exc.message.strip()
    status, reason = exc.status, _reason(message)
    if "\n" in message and status != 400:
        status, reason = 400, _reason(message)
    body: dict[str, Any] = {"data": None, "message": message + "\n"}
    if exc.errors:
        body["errors"] = exc.errors
    return web.json_response(body, status=status, reason=reason)


def _is_upload(request: web.Request) -> bool:
    """Whether the request is for an upload method (no body size limit)."""
    if not request.path.startswith(API_PREFIX + "/"):
        return False
    try:
        method, _ = registry.match(request.method, request.path[len(API_PREFIX):])
    except ApiError:
        return False
    return method.upload


def _peer_uid(request: web.Request) -> int | None:
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


def _ticket_from(request: web.Request) -> str | None:
    cookie = request.cookies.get("PVEAuthCookie")
    if cookie:
        return unquote(cookie)
    header = request.headers.get("Authorization", "")
    for scheme in ("PVEAuthCookie=", "PVEAuthCookie "):
        if header.startswith(scheme):
            return unquote(header[len(scheme):])
    return None


class ApiServer:
    def __init__(self, services: NodeServices, metrics: NodeMetrics | None = None) -> None:
        self.services = services
        self.metrics = metrics
        middlewares = [self.guard] if metrics is None else [metrics.middleware, self.guard]
        self.app = web.Application(client_max_size=MAX_BODY, middlewares=middlewares)
        self.app.router.add_route("*", API_PREFIX + "/{tail:.*}", self.dispatch)
        self.app.router.add_get(OPENAPI_PATH, self.openapi)
        if metrics is not None:
            self.app.router.add_get(METRICS_PATH, self.serve_metrics)
        self.app.router.add_get("/", self.index)
        self.app.router.add_get(webui.ASSETS_PATH, self.asset)
        self.runner: web.AppRunner | None = None
        self.ssl_context: ssl.SSLContext | None = None
        self._custom_context: ssl.SSLContext | None = None
        self._client: aiohttp.ClientSession | None = None

    def _make_ssl_context(self) -> ssl.SSLContext:
        """The node's certificate for clients that connect by address (the cluster's
        nodes); the custom one, if any, for clients that name the server (SNI)."""
        cert, key = self.services.certificates.served()
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        ctx.sni_callback = self._sni
        self._custom_context = self._make_custom_context()
        return ctx

    def _make_custom_context(self) -> ssl.SSLContext | None:
        pair = self.services.certificates.custom()
        if pair is None:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            ctx.load_cert_chain(*pair)
        except (OSError, ssl.SSLError) as exc:
            log.error("custom certificate %s not served: %s", pair[0], exc)
            return None
        return ctx

    def _sni(self, conn: ssl.SSLObject, server_name: str | None,
             ctx: ssl.SSLContext) -> None:
        custom = self._custom_context
        if server_name is not None and custom is not None:
            conn.context = custom

    def reload_tls(self) -> None:
        """Serve the current certificates on new connections (after create/join, after a
        custom or ACME certificate was set or removed)."""
        if self.ssl_context is not None:
            cert, key = self.services.certificates.served()
            self.ssl_context.load_cert_chain(cert, key)
            self._custom_context = self._make_custom_context()

    async def start(self) -> None:
        cfg = self.services.config
        self.runner = web.AppRunner(self.app, access_log=None, handle_signals=False,
                                    max_line_size=MAX_LINE)
        await self.runner.setup()
        self.ssl_context = self._make_ssl_context()
        await web.TCPSite(self.runner, cfg.api_bind, cfg.api_port,
                          ssl_context=self.ssl_context, reuse_address=True).start()
        sock_path = cfg.api_socket
        sock_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        sock_path.unlink(missing_ok=True)
        await web.UnixSite(self.runner, str(sock_path)).start()
        os.chmod(sock_path, 0o600)
        log.info("API listening on https://%s:%d%s and %s", cfg.api_bind, cfg.api_port,
                 API_PREFIX, sock_path)

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.close()
        if self.runner is not None:
            await self.runner.cleanup()
        self.services.config.api_socket.unlink(missing_ok=True)

    @web.middleware
    async def guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Refuse what no route may see: an over-long URL, a path that is not clean
        text, a body declared larger than the limit (before reading it)."""
        try:
            if len(request.raw_path) > MAX_URL:
                raise wire.url_too_long()
            wire.check_path(request.raw_path)
            if (request.content_length or 0) > MAX_BODY and not _is_upload(request):
                raise wire.body_too_large()
        except ApiError as exc:
            return error_response(exc)
        response: web.StreamResponse = await handler(request)
        return response

    async def index(self, request: web.Request) -> web.Response:
        """The web interface (webui): the single-page application's index.html."""
        return webui.index_response(self.services.config.name)

    async def asset(self, request: web.Request) -> web.StreamResponse:
        return webui.asset_response(request.match_info["name"])

    async def serve_metrics(self, request: web.Request) -> web.Response:
        """`GET /metrics`: the Prometheus exposition, for a caller with Sys.Audit on /."""
        request[ROUTE_KEY] = METRICS_PATH
        assert self.metrics is not None
        try:
            user, via_socket = await self._authenticate(request, METRICS_METHOD)
            ctx = RequestContext(self.services, user, request, METRICS_METHOD, via_socket)
            await self._check_permission(ctx, METRICS_METHOD, {})
        except ApiError as exc:
            return error_response(exc)
        return web.Response(body=await self.metrics.exposition(),
                            headers={"Content-Type": CONTENT_TYPE})

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi.document(registry))

    async def _params(self, request: web.Request) -> dict[str, Any]:
        """The query's and (POST, PUT) the body's parameters, decoded strictly (wire)."""
        query = request.rel_url.raw_query_string
        if request.method not in ("POST", "PUT") or not request.can_read_body:
            return wire.parameters(query, None, None)
        # no Content-Type: read as a form (PVE reads any body that is not JSON so); another
        # type is refused (415) rather than ignored as it was
        ctype = request.content_type if "Content-Type" in request.headers else None
        try:
            if ctype != MULTIPART:
                return wire.parameters(query, ctype, await request.read())
            try:
                fields = await request.post()
            except web.HTTPRequestEntityTooLarge:
                raise
            except Exception as exc:
                # aiohttp's multipart reader fails in many ways (ValueError, AssertionError,
                # LookupError for an unknown charset...): all of them are the client's error
                raise ApiError(400, f"invalid {MULTIPART} body") from exc
            return wire.merge_fields(wire.parameters(query, None, None), fields.items())
        except web.HTTPRequestEntityTooLarge:     # a chunked body past the limit
            raise wire.body_too_large() from None

    async def _upload_params(self, request: web.Request) -> dict[str, Any]:
        """An upload's parameters: the query's and the multipart text fields before the
        file part; the file part's file name is `filename`. The file part itself is left
        in the request (`UPLOAD_PART`) for the handler to stream: never read here."""
        query = wire.parameters(request.rel_url.raw_query_string, None, None)
        if request.content_type != MULTIPART:
            raise ApiError(415, f"an upload is a {MULTIPART} body")
        try:
            reader = await request.multipart()
            fields: list[tuple[str, Any]] = []
            while True:
                part = await reader.next()
                if part is None:
                    break
                if not isinstance(part, aiohttp.BodyPartReader):
                    raise ApiError(400, f"invalid {MULTIPART} body")
                if part.filename is not None:
                    request[UPLOAD_PART] = part
                    fields.append(("filename", part.filename))
                    break
                if len(fields) >= MAX_UPLOAD_FIELDS:
                    raise wire.body_too_large()
                value = bytearray()     # a text field: read up to the value limit only
                while chunk := await part.read_chunk(1 << 16):
                    value += chunk
                    if len(value) > wire.MAX_VALUE:
                        raise wire.body_too_large()
                fields.append((part.name or "", value.decode("utf-8", "replace")))
        except ApiError:
            raise
        except Exception as exc:
            raise ApiError(400, f"invalid {MULTIPART} body") from exc
        return wire.merge_fields(query, fields)

    async def _authenticate(self, request: web.Request, method: ApiMethod) -> tuple[str | None,
                                                                                    bool]:
        """Who calls: root@pam on the local socket (root only), a token (PVEAPIToken
        header, no CSRF: not a browser credential), or a ticket (cookie or header; CSRF
        token on writes). The user behind a ticket or token must still be active."""
        uid = _peer_uid(request)
        if uid is not None:
            if uid != 0:
                raise AuthError("only root may use the local socket")
            return "root@pam", True
        if isinstance(method.permission, World):
            return None, False
        access = self.services.access
        header = request.headers.get("Authorization", "")
        if header.startswith("PVEAPIToken"):
            try:
                tokenid = await access.authenticate_token(header)
            except AuthRefused as exc:
                raise AuthError(str(exc)) from None
            if tokenid is not None:
                if not method.allow_token:
                    raise PermissionDenied("API tokens may not call this method")
                return tokenid, False
        ticket = _ticket_from(request)
        if ticket is None:
            raise AuthError("No ticket")
        key = await self.services.authkey()
        user = auth.verify_ticket(key, ticket)
        if request.method != "GET":
            token = request.headers.get("CSRFPreventionToken", "")
            if not auth.verify_csrf_token(key, token, user):
                raise AuthError("Permission denied - invalid csrf token")
        try:
            await access.check_active(user)
        except AuthRefused as exc:
            raise AuthError(f"authentication failure ({exc})") from None
        return user, False

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["tail"]
        try:
            method, path_params = registry.match(request.method, path)
            request[ROUTE_KEY] = method.path    # the latency histogram's label
            if path_params.get("node") == "localhost":
                path_params["node"] = self.services.config.name
            user, via_socket = await self._authenticate(request, method)
            if method.upload and method.proxyto and path_params.get(method.proxyto) not in (
                    None, self.services.config.name):
                # the body is relayed as it comes, not read here
                return await self._proxy(request, path_params[method.proxyto], path, {},
                                         user, raw_body=True)
            raw = await (self._upload_params(request) if method.upload
                         else self._params(request))
            raw.update(path_params)
            params = validate(method.parameters, raw)
            if method.proxyto and params.get(method.proxyto) not in (
                    None, "localhost", self.services.config.name):
                return await self._proxy(request, params[method.proxyto], path, raw, user)
            ctx = RequestContext(self.services, user, request, method, via_socket)
            await self._check_permission(ctx, method, params)
            result = await method.handler(ctx, params)
        except ApiError as exc:
            if exc.status >= 500:
                log.warning("%s %s: %s", request.method, path, exc.message)
            return error_response(exc)
        except BinomeError as exc:
            log.warning("%s %s: %s", request.method, path, exc)
            return error_response(ApiError(500, str(exc)))
        except Exception as exc:
            log.exception("%s %s failed", request.method, path)
            return error_response(ApiError(500, str(exc) or type(exc).__name__))
        if isinstance(result, web.StreamResponse):
            return result
        if isinstance(result, WithTotal):
            return web.json_response({"data": result.data, "total": result.total})
        return web.json_response({"data": result})

    async def _check_permission(self, ctx: RequestContext, method: ApiMethod,
                                params: dict[str, Any]) -> None:
        """The method's declared permission, PVE's rules (access.permission.check)."""
        decl = method.permission
        if isinstance(decl, World | AnyUser) or ctx.userid == ROOT_USER:
            return
        evaluator = await self.services.access.evaluator()
        if not permission.check(decl, evaluator, ctx.userid, params):
            raise PermissionDenied(permission.denied_text(decl, params))

    async def _relay_stream(self, request: web.Request,
                            upstream: aiohttp.ClientResponse) -> web.StreamResponse:
        resp = web.StreamResponse(status=upstream.status,
                                  headers={"Content-Type": "application/x-ndjson",
                                           "Cache-Control": "no-cache"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        try:
            while True:
                try:
                    chunk = await asyncio.wait_for(upstream.content.readany(), 5.0)
                except TimeoutError:
                    # Quiet: end the relay once our client has gone.
                    if request.transport is None or request.transport.is_closing():
                        break
                    continue
                if not chunk:
                    break
                await resp.write(chunk)
            await resp.write_eof()
        except (ConnectionError, aiohttp.ClientError):
            pass                # either side hung up: the stream is over
        return resp

    async def _proxy(self, request: web.Request, node: str, path: str, raw: dict[str, Any],
                     user: str | None, raw_body: bool = False) -> web.StreamResponse:
        """Forward to the node named in the path, as the same user."""
        base = await self.services.node_api_url(node)
        if self._client is None:
            self._client = aiohttp.ClientSession()
        headers = {}
        forwarded = request.headers.get("Authorization", "")
        if user is not None and forwarded.startswith("PVEAPIToken"):
            headers["Authorization"] = forwarded   # the target node checks the token itself
        elif user is not None:
            key = await self.services.authkey()
            headers["Authorization"] = "PVEAuthCookie=" + auth.make_ticket(key, user)
            headers["CSRFPreventionToken"] = auth.make_csrf_token(key, user)
        data: Any = None if request.method in ("GET", "DELETE") else {
            k: str(v) for k, v in raw.items()}
        if raw_body:      # an upload: its multipart body relayed chunk by chunk
            data = request.content.iter_chunked(1 << 20)
            headers["Content-Type"] = request.headers.get("Content-Type", "")
        query = dict(request.query) if request.method in ("GET", "DELETE") else None
        # Event streams (volume events: application/x-ndjson) are relayed as they come,
        # without the 60 s limit of ordinary answers.
        streaming = request.method == "GET" and path.rstrip("/").endswith("events")
        timeout = (aiohttp.ClientTimeout(total=None, sock_connect=30) if streaming or raw_body
                   else aiohttp.ClientTimeout(total=60))
        # the path as it came (encoded; the guard checked it): re-encoded from its decoded
        # form, '%3F' would become a query, '%23' a fragment, a twice-quoted '/' a separator
        url = URL(base + request.rel_url.raw_path, encoded=True)
        try:
            async with self._client.request(
                request.method, url, params=query, data=data,
                headers=headers, ssl=self.services.cluster_ssl_context(),
                timeout=timeout,
            ) as upstream:
                if streaming and upstream.content_type == "application/x-ndjson":
                    return await self._relay_stream(request, upstream)
                body = await upstream.read()
                return web.Response(body=body, status=upstream.status, reason=upstream.reason,
                                    content_type="application/json")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ApiError(595, f"proxy to node '{node}' failed: {exc or 'timeout'}") from exc
