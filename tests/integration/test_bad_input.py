"""Malformed requests against a live node: each gets a PVE-style 4xx, changes nothing,
and the keep-alive connection it came on still answers the next request.

Requests go on the wire byte for byte over one TLS connection (no HTTP client that
would normalise the path or encode the body), and every answer is read off the same
connection before the following request is sent.
"""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest
import requests

from tests.integration.harness import PASSWORD, Cluster

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
PARAMS = "Parameter verification failed."
NOT_UTF8 = "value is not valid UTF-8"
DUPLICATE = "duplicate parameter (not allowed)"
FULLWIDTH_100 = quote("\uff11\uff10\uff10")


@dataclass
class Answer:
    status: int
    reason: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Wire:
    """One keep-alive HTTPS connection to a node, authenticated by ticket and CSRF token."""

    def __init__(self, address: str, ticket: str, csrf: str) -> None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        raw = socket.create_connection((address, 8006), timeout=30)
        self.sock = ctx.wrap_socket(raw)
        self.reader = self.sock.makefile("rb")   # one reader: nothing read ahead is lost
        self.auth = (f"Cookie: PVEAuthCookie={quote(ticket, safe='')}\r\n"
                     f"CSRFPreventionToken: {csrf}\r\n").encode()

    def close(self) -> None:
        self.reader.close()
        self.sock.close()

    def send(self, method: str, target: bytes, body: bytes | None = None,
             ctype: str | None = None, headers: bytes = b"") -> Answer:
        head = f"{method} ".encode() + target + b" HTTP/1.1\r\nHost: binome\r\n" + self.auth
        if body is not None:
            if ctype is not None:
                head += f"Content-Type: {ctype}\r\n".encode()
            if b"chunked" not in headers:
                head += f"Content-Length: {len(body)}\r\n".encode()
        self.sock.sendall(head + headers + b"\r\n" + (body or b""))
        return self._answer()

    def _answer(self) -> Answer:
        line = self.reader.readline()
        if not line:
            raise AssertionError("the server closed the connection without an answer")
        version, status, reason = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
        assert version == "HTTP/1.1", line
        headers: dict[str, str] = {}
        while (h := self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = h.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while (size := int(self.reader.readline().strip(), 16)) > 0:
                body += self.reader.read(size)
                self.reader.readline()
            self.reader.readline()
        else:
            body = self.reader.read(int(headers.get("content-length", "0")))
        return Answer(int(status), reason, headers, body)

    def still_answers(self) -> None:
        """The same connection serves an ordinary request afterwards."""
        answer = self.send("GET", b"/api2/json/version")
        assert answer.status == 200, answer
        assert answer.json()["data"]["version"]


@pytest.fixture(scope="module")
def ticket(cluster: Cluster) -> tuple[str, str]:
    r = requests.post(f"https://{cluster['n1'].address}:8006/api2/json/access/ticket",
                      data={"username": "admin@pve", "password": PASSWORD}, verify=False,
                      timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["data"]["ticket"], r.json()["data"]["CSRFPreventionToken"]


@pytest.fixture
def wire(cluster: Cluster, ticket: tuple[str, str]) -> Iterator[Wire]:
    w = Wire(cluster["n1"].address, *ticket)
    try:
        yield w
    finally:
        w.close()


def refused(wire: Wire, status: int, message: str, method: str, target: bytes,
            body: bytes | None = None, ctype: str | None = None, headers: bytes = b"",
            errors: dict[str, str] | None = None) -> Answer:
    """Send a bad request: PVE's envelope, the message as reason phrase, `errors` only
    when named; then the connection must still answer."""
    answer = wire.send(method, target, body, ctype, headers)
    assert (answer.status, answer.reason) == (status, message), answer
    assert answer.headers["content-type"].startswith("application/json")
    payload = answer.json()
    assert payload["data"] is None and payload["message"] == message + "\n"
    assert payload.get("errors") == errors
    wire.still_answers()
    return answer


def group_names(wire: Wire) -> set[str]:
    answer = wire.send("GET", b"/api2/json/cluster/ha/groups")
    assert answer.status == 200
    return {g["group"] for g in answer.json()["data"]}


def assert_unchanged(wire: Wire, *groups: str) -> None:
    assert not set(groups) & group_names(wire)


GROUPS = b"/api2/json/cluster/ha/groups"


@pytest.mark.parametrize("target", [
    b"/api2/json/cluster/ha/groups/%12",          # a known route: the group parameter
    b"/api2/json/nosuch/%12",                     # no route: the 501 would echo it
    b"/api2/json/cluster/ha/groups/%00",
    b"/api2/json/cluster/ha/groups/%7F",
    b"/api2/json/cluster/ha/groups/%2512",        # decoded twice (the CLI quotes twice)
    b"/api2/openapi.json%0A",
])
def test_control_character_in_path_is_400(wire: Wire, target: bytes) -> None:
    """It used to drop the connection: aiohttp refused to write the 500's (or 501's)
    reason phrase, which echoed the control character."""
    refused(wire, 400, "invalid request path - control characters are not allowed",
            "GET", target)


def test_body_not_utf8_is_a_parameter_error(wire: Wire) -> None:
    """It was a 500 with Python's codec message."""
    refused(wire, 400, PARAMS, "POST", GROUPS, b"group=bi-utf8a&nodes=n1&comment=\xff\xfe",
            FORM, errors={"comment": NOT_UTF8})
    refused(wire, 400, PARAMS, "POST", GROUPS,
            b'{"group": "bi-utf8b", "nodes": "n1", "comment": "\xff"}', JSON,
            errors={"comment": NOT_UTF8})
    # percent-encoded latin-1 was silently turned into U+FFFD and stored
    refused(wire, 400, PARAMS, "POST", GROUPS, b"group=bi-utf8c&nodes=n1&comment=caf%E9",
            FORM, errors={"comment": NOT_UTF8})
    assert_unchanged(wire, "bi-utf8a", "bi-utf8b", "bi-utf8c")


def test_invalid_percent_encoding(wire: Wire) -> None:
    bad_percent = "invalid percent-encoding (% must be followed by two hex digits)"
    refused(wire, 400, f"invalid request path - {bad_percent}", "GET", GROUPS + b"/a%zz")
    refused(wire, 400, "invalid request path - not valid UTF-8", "GET", GROUPS + b"/a%ff")
    refused(wire, 400, PARAMS, "GET", b"/api2/json/cluster/log?max=%ff",
            errors={"max": NOT_UTF8})
    refused(wire, 400, PARAMS, "POST", GROUPS, b"group=bi-pct&nodes=n1&comment=50%zz", FORM,
            errors={"comment": bad_percent})
    assert_unchanged(wire, "bi-pct")


def test_nul_bytes(wire: Wire) -> None:
    refused(wire, 400, "invalid request path - control characters are not allowed",
            "DELETE", GROUPS + b"/g%00")
    refused(wire, 400, PARAMS, "POST", GROUPS, b"group=bi-nul&nodes=n1&comment=a%00b", FORM,
            errors={"comment": "value must not contain line breaks or NUL characters"})
    answer = refused(wire, 400, PARAMS, "GET", b"/api2/json/cluster/log?max=%00",
                     errors={"max": "type check ('integer') failed - got '\x00'"})
    assert b"\\u0000" in answer.body
    assert_unchanged(wire, "bi-nul")


def test_huge_body_is_413(wire: Wire) -> None:
    """It was a 500 'Request Entity Too Large' (and the limit was 16 MiB)."""
    message = "request body too large (more than 1048576 bytes)"
    body = b"group=bi-huge&nodes=n1&comment=" + b"x" * (2 * 1024 * 1024)
    refused(wire, 413, message, "POST", GROUPS, body, FORM)
    chunk = b"x" * (512 * 1024)
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(3)) + b"0\r\n\r\n"
    refused(wire, 413, message, "POST", GROUPS, chunked, FORM,
            headers=b"Transfer-Encoding: chunked\r\n")
    assert_unchanged(wire, "bi-huge")


@pytest.mark.parametrize("body, message", [
    (b'{"group": "bi-json1", ', "invalid JSON body - Expecting property name enclosed in "
                                 "double quotes at character 22"),
    (b'["bi-json2"]', "JSON body must be an object"),
    (b'"bi-json3"', "JSON body must be an object"),
    (b"null", "JSON body must be an object"),
    # Python's json read NaN: the group was created with the comment 'nan'
    (b'{"group": "bi-json4", "nodes": "n1", "comment": NaN}',
     "invalid JSON body - NaN is not a JSON number"),
    # these were 500s with Python's messages (recursion depth, int() digit limit)
    (b"[" * 100_000 + b"]" * 100_000, "invalid JSON body - nested too deeply"),
    (b'{"group": "bi-json5", "nodes": "n1", "restricted": ' + b"1" * 5000 + b"}",
     "invalid JSON body - number too long"),
])
def test_malformed_json_is_400(wire: Wire, body: bytes, message: str) -> None:
    refused(wire, 400, message, "POST", GROUPS, body, JSON)
    assert_unchanged(wire, "bi-json1", "bi-json2", "bi-json3", "bi-json4", "bi-json5")


@pytest.mark.parametrize("target, body, ctype", [
    (GROUPS, b"group=bi-dup1&group=bi-dup2&nodes=n1", FORM),
    (GROUPS, b'{"group": "bi-dup1", "group": "bi-dup2", "nodes": "n1"}', JSON),
    (GROUPS + b"?group=bi-dup1", b"group=bi-dup2&nodes=n1", FORM),
    (b"/api2/json/cluster/log?group=1&group=2", None, None),
])
def test_duplicate_parameters_are_refused(wire: Wire, target: bytes, body: bytes | None,
                                          ctype: str | None) -> None:
    """One of the values used to win silently (the first of a form, the last of JSON,
    the body's over the query's)."""
    refused(wire, 400, PARAMS, "POST" if body else "GET", target, body, ctype,
            errors={"group": DUPLICATE})
    assert_unchanged(wire, "bi-dup1", "bi-dup2")


def test_content_types(wire: Wire) -> None:
    refused(wire, 415, f"unsupported content type 'text/plain' (use {FORM} or {JSON})",
            "POST", GROUPS, b"group=bi-ct1&nodes=n1", "text/plain")
    # a multipart body without its boundary was a 500 with the parser's message
    refused(wire, 400, "invalid multipart/form-data body", "POST", GROUPS, b"garbage",
            "multipart/form-data; boundary=xyz")
    upload = (b'--xyz\r\nContent-Disposition: form-data; name="group"; filename="g"\r\n\r\n'
              b'bi-ct2\r\n--xyz\r\nContent-Disposition: form-data; name="nodes"\r\n\r\n'
              b"n1\r\n--xyz--\r\n")
    refused(wire, 400, PARAMS, "POST", GROUPS, upload, "multipart/form-data; boundary=xyz",
            errors={"group": "only text fields are accepted (no files)"})
    assert_unchanged(wire, "bi-ct1", "bi-ct2")
    # no Content-Type at all: a form, as before (curl and PVE read it so)
    answer = wire.send("POST", GROUPS, b"group=bi-ct3&nodes=n1")
    assert answer.status == 200, answer
    assert wire.send("DELETE", GROUPS + b"/bi-ct3").status == 200


def test_fullwidth_digits_are_no_vmid(wire: Wire) -> None:
    """Fullwidth '100' used to be read as 100 (int() and \\d take any script's digits)."""
    target = f"/api2/json/nodes/n1/qemu/{FULLWIDTH_100}/config".encode()
    answer = refused(wire, 400, PARAMS, "GET", target,
                     errors={"vmid": "type check ('integer') failed - got '\uff11\uff10\uff10'"})
    assert "100" not in answer.json()["errors"]["vmid"]
    answer = refused(wire, 400, PARAMS, "POST", b"/api2/json/cluster/ha/resources",
                     f"sid={FULLWIDTH_100}".encode(), FORM,
                     errors={"sid": "unable to parse service id '\uff11\uff10\uff10'"})
    resources = wire.send("GET", b"/api2/json/cluster/ha/resources").json()["data"]
    assert "vm:100" not in {r["sid"] for r in resources}


def test_over_long_value_is_refused(wire: Wire) -> None:
    """A value with no declared limit used to be taken whatever its length."""
    body = b"group=bi-long&nodes=" + b"n1," * 30_000
    refused(wire, 400, PARAMS, "POST", GROUPS, body, FORM,
            errors={"nodes": "value may only be 65536 characters long"})
    assert_unchanged(wire, "bi-long")


def test_long_urls(wire: Wire) -> None:
    """Past 8 KiB aiohttp's parser answered a bare 400 quoting Python's bytearray and
    closed the connection; now up to 16 KiB is read, beyond that is a 414."""
    refused(wire, 400, PARAMS, "GET", b"/api2/json/cluster/log?x=" + b"a" * 10_000,
            errors={"x": "property is not defined in schema and the schema does not "
                         "allow additional properties"})
    refused(wire, 414, "request URI too long (more than 16384 bytes)", "GET",
            b"/api2/json/cluster/log?x=" + b"a" * 20_000)


@pytest.mark.parametrize("segment", [b"NOT%3FA%23UPID", b"NOT%252FA"])
def test_proxied_path_goes_on_as_sent(cluster: Cluster, ticket: tuple[str, str],
                                      wire: Wire, segment: bytes) -> None:
    """A path for another node is forwarded as it came: re-encoded from its decoded form,
    '%3F' became a query ('?') and '%23' a fragment, and the CLI's twice-quoted '/' a
    segment separator, so the other node answered a different request."""
    target = b"/api2/json/nodes/n2/tasks/" + segment + b"/status"
    direct = Wire(cluster["n2"].address, *ticket)
    try:
        expected = direct.send("GET", target)
    finally:
        direct.close()
    assert expected.status == 400 and "upid" in expected.json()["errors"]
    answer = wire.send("GET", target)
    assert (answer.status, answer.reason, answer.json()) == (
        expected.status, expected.reason, expected.json())
    wire.still_answers()
