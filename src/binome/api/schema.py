"""Parameter validation at the API's door: the schema check with PVE's 400 answer.

The schema itself (`Param`, formats, property strings) lives in the neutral
`binome.schema`, shared with the config models; this module turns its errors
into `ParamError` (HTTP 400, "Parameter verification failed.", `errors` per
parameter) and re-exports `Param` for the method modules.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from binome.api.errors import ParamError
from binome.schema import Param, PropertyString, SchemaError, check, check_value

__all__ = ["Param", "PropertyString", "check_param", "validate"]


def validate(params: Mapping[str, Param], given: Mapping[str, Any]) -> dict[str, Any]:
    """Coerce and check `given` against `params`; raise ParamError listing every problem."""
    try:
        return check(params, given)
    except SchemaError as exc:
        raise ParamError(exc.errors) from None


def check_param(name: str, p: Param, raw: Any) -> Any:
    """One value checked against its parameter; ParamError naming it."""
    try:
        return check_value(name, p, raw)
    except SchemaError as exc:
        raise ParamError(exc.errors) from None
