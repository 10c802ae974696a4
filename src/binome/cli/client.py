"""A small synchronous API client for the CLI.

Locally it talks to the node's unix socket (root is root@pam, no password);
with --host it logs in over HTTPS to a remote node, pinning its certificate
fingerprint when given one.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import ssl
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

from binome.tasks.upid import Upid


class ApiCallError(Exception):
    def __init__(self, status: int, reason: str, errors: dict[str, str] | None = None) -> None:
        super().__init__(f"{status} {reason}")
        self.status, self.reason, self.errors = status, reason, errors or {}


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class Client:
    def __init__(self, *, socket_path: str | None = None, host: str | None = None,
                 port: int = 8006, fingerprint: str | None = None, timeout: float = 120.0
                 ) -> None:
        self.socket_path, self.host, self.port = socket_path, host, port
        self.fingerprint = fingerprint.replace(":", "").lower() if fingerprint else None
        self.timeout = timeout
        self.ticket: str | None = None
        self.csrf: str | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self.host is None:
            assert self.socket_path
            return _UnixConnection(self.socket_path, self.timeout)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE   # we pin the fingerprint ourselves below
        conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout,
                                           context=ctx)
        if self.fingerprint:
            conn.connect()
            assert isinstance(conn.sock, ssl.SSLSocket)
            der = conn.sock.getpeercert(binary_form=True) or b""
            if hashlib.sha256(der).hexdigest() != self.fingerprint:
                conn.close()
                raise ApiCallError(0, f"certificate fingerprint mismatch for {self.host}")
        return conn

    def login(self, user: str, password: str) -> None:
        data = self.call("POST", "/access/ticket", {"username": user, "password": password})
        self.ticket, self.csrf = data["ticket"], data["CSRFPreventionToken"]

    def call(self, method: str, path: str, params: dict[str, Any] | None = None,
             *, with_total: bool = False) -> Any:
        params = {k: _form(v) for k, v in (params or {}).items() if v is not None}
        url = "/api2/json" + quote(path)
        body = None
        headers = {"Accept": "application/json"}
        if method in ("GET", "DELETE"):
            if params:
                url += "?" + urlencode(params, doseq=True)
        else:
            body = urlencode(params, doseq=True)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        payload = self._send(method, url, body, headers)
        if with_total:
            return payload.get("data"), payload.get("total")
        return payload.get("data")

    def _send(self, method: str, url: str, body: Any, headers: dict[str, str]
              ) -> dict[str, Any]:
        """One request with the session's ticket (and CSRF token unless GET); the
        answer's JSON object, ApiCallError when it is not a 200."""
        if self.ticket:
            headers["Cookie"] = f"PVEAuthCookie={quote(self.ticket, safe='')}"
            if method != "GET":
                headers["CSRFPreventionToken"] = self.csrf or ""
        conn = self._connection()
        try:
            conn.request(method, url, body=body, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        finally:
            conn.close()
        try:
            payload = json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            payload = {}
        if not isinstance(payload, dict):
            payload = {}
        if response.status != 200:
            raise ApiCallError(response.status, response.reason, payload.get("errors"))
        return payload

    def upload(self, path: str, params: dict[str, Any], file_path: str) -> Any:
        """POST a multipart upload (PVE's `.../upload`): the text fields, then the file
        under the part name `filename`, sent from disk in chunks (never read whole)."""
        import os
        import uuid

        boundary = "binome-" + uuid.uuid4().hex
        head = b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
            .encode() for k, v in params.items() if v is not None)
        name = os.path.basename(file_path).replace('"', "_")
        head += (f'--{boundary}\r\nContent-Disposition: form-data; name="filename"; '
                 f'filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
                 ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        size = os.path.getsize(file_path)

        def body() -> Iterator[bytes]:
            yield head
            with open(file_path, "rb") as f:
                while chunk := f.read(1 << 20):
                    yield chunk
            yield tail

        headers = {"Accept": "application/json",
                   "Content-Type": f"multipart/form-data; boundary={boundary}",
                   "Content-Length": str(len(head) + size + len(tail))}
        return self._send("POST", "/api2/json" + quote(path), body(), headers).get("data")

    def stream(self, path: str, params: dict[str, Any] | None = None) -> Iterator[Any]:
        """GET a streaming path (application/x-ndjson): yield one object per line until
        the server ends the stream (no read timeout once it started)."""
        params = {k: _form(v) for k, v in (params or {}).items() if v is not None}
        url = "/api2/json" + quote(path) + ("?" + urlencode(params, doseq=True) if params else "")
        headers = {"Accept": "application/x-ndjson"}
        if self.ticket:
            headers["Cookie"] = f"PVEAuthCookie={quote(self.ticket, safe='')}"
        conn = self._connection()
        try:
            conn.request("GET", url, headers=headers)
            response = conn.getresponse()
            if response.status != 200:
                raw = response.read()
                try:
                    payload = json.loads(raw) if raw else {}
                except json.JSONDecodeError:
                    payload = {}
                raise ApiCallError(response.status, response.reason, payload.get("errors"))
            if conn.sock is not None:
                conn.sock.settimeout(None)        # events may be minutes apart
            for line in response:
                if line.strip():
                    yield json.loads(line)
        finally:
            conn.close()

    def wait_task(self, upid: str, on_line=None, poll: float = 0.3) -> dict[str, Any]:
        """Poll a task until it stops, feeding new log lines to `on_line`."""
        node = Upid.parse(upid).node
        base = f"/nodes/{node}/tasks/{upid}"
        seen = 0
        while True:
            status = self.call("GET", base + "/status")
            lines, _total = self.call("GET", base + "/log", {"start": seen, "limit": 0},
                                      with_total=True)
            for line in lines or []:
                seen = line["n"]
                if on_line:
                    on_line(line["t"])
            if status["status"] == "stopped":
                lines, _ = self.call("GET", base + "/log", {"start": seen, "limit": 0},
                                     with_total=True)
                for line in lines or []:
                    if on_line:
                        on_line(line["t"])
                return status
            time.sleep(poll)


def _form(value: Any) -> str | list[str]:
    if isinstance(value, list | tuple):     # an array parameter: its items, repeated
        return [_form_one(v) for v in value]
    return _form_one(value)


def _form_one(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)
