"""PVE-style error envelopes built by binome.api.server.error_response (no server started)."""

import json

import pytest

from binome.api.errors import (
    ApiError,
    AuthError,
    NotImplementedMethod,
    ParamError,
    PermissionDenied,
    fail,
    param_error,
)
from binome.api.server import error_response


def body_of(response):
    assert response.content_type == "application/json"
    return json.loads(response.text)


def test_plain_error():
    r = error_response(ApiError(500, "storage 'local' does not exist"))
    assert r.status == 500
    assert r.reason == "storage 'local' does not exist"
    body = body_of(r)
    assert body == {"data": None, "message": "storage 'local' does not exist\n"}
    assert "errors" not in body


def test_data_is_json_null():
    r = error_response(ApiError(500, "x"))
    assert b'"data": null' in r.body or b'"data":null' in r.body


def test_no_errors_key_when_empty():
    # Telmate's terraform provider panics on "errors": null
    r = error_response(ApiError(403, "denied", errors={}))
    assert "errors" not in body_of(r)
    assert b"errors" not in r.body


def test_param_error_lists_errors():
    r = error_response(ParamError({"vmid": "value must have a minimum value of 100",
                                   "node": "property is missing and it is not optional"}))
    assert r.status == 400
    assert r.reason == "Parameter verification failed."
    body = body_of(r)
    assert body["data"] is None
    assert body["message"] == "Parameter verification failed.\n"
    assert body["errors"] == {"vmid": "value must have a minimum value of 100",
                              "node": "property is missing and it is not optional"}


def test_param_error_helper():
    assert body_of(error_response(param_error("a", "bad")))["errors"] == {"a": "bad"}


def test_message_gets_single_trailing_newline():
    body = body_of(error_response(ApiError(500, "  spaced out \n\n")))
    assert body["message"] == "spaced out\n"


def test_multiline_message_non_400_becomes_400():
    r = error_response(ApiError(500, "first line\nsecond line"))
    assert r.status == 400
    assert r.reason == "first line"
    assert body_of(r)["message"] == "first line\nsecond line\n"


def test_multiline_400_stays_400():
    r = error_response(ApiError(400, "line one\nline two"))
    assert r.status == 400
    assert r.reason == "line one"


@pytest.mark.parametrize("exc, status, reason", [
    (AuthError(), 401, "authentication failure"),
    (AuthError("No ticket"), 401, "No ticket"),
    (PermissionDenied("/nodes/n1, Sys.Audit"), 403,
     "Permission check failed (/nodes/n1, Sys.Audit)"),
    (NotImplementedMethod("GET", "/x"), 501, "Method 'GET /x' not implemented"),
    (fail("VM 100 not running"), 500, "VM 100 not running"),
])
def test_status_and_reason(exc, status, reason):
    r = error_response(exc)
    assert r.status == status
    assert r.reason == reason
    assert body_of(r)["message"] == reason + "\n"


def test_reason_is_latin1_safe_and_short():
    r = error_response(ApiError(500, "bad \u2603 snowman " + "x" * 300))
    r.reason.encode("latin-1")
    assert len(r.reason) <= 200
    assert r.reason.startswith("bad ? snowman")
    # the body keeps the full text
    assert body_of(r)["message"].startswith("bad \u2603 snowman")


def test_empty_message():
    r = error_response(ApiError(500, "  "))
    assert r.status == 500
    assert r.reason == "error"
    assert body_of(r) == {"data": None, "message": "\n"}
