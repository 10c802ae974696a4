"""API errors in Proxmox style: HTTP status, one-line reason phrase, `errors` per parameter."""

from __future__ import annotations


class ApiError(Exception):
    """An error answered to the client: `status`, one-line `message`, optional `errors`."""

    def __init__(self, status: int, message: str, errors: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors or {}


class ParamError(ApiError):
    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__(400, "Parameter verification failed.", errors)


def param_error(name: str, text: str) -> ParamError:
    return ParamError({name: text})


class AuthError(ApiError):
    def __init__(self, message: str = "authentication failure") -> None:
        super().__init__(401, message)


class PermissionDenied(ApiError):
    """PVE's raise_perm_exc: "Permission check failed (detail)", or bare without one."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(403, f"Permission check failed ({detail})" if detail
                         else "Permission check failed")


class NotImplementedMethod(ApiError):
    def __init__(self, method: str, path: str) -> None:
        super().__init__(501, f"Method '{method} {path}' not implemented")


def fail(message: str) -> ApiError:
    """The generic 500 that PVE clients read their error text from."""
    return ApiError(500, message)
