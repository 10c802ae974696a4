"""A small, safe subset of Handlebars for webhook url/header/body templates (PVE's variables).

Pure. Supports `{{ path.to.value }}` and the helpers `url-encode`, `escape` (JSON string
content) and `json`. No code runs, no attribute access: only dict lookups on the context
(title, message, severity, timestamp, fields, secrets). An unknown variable renders empty,
as Handlebars does.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from typing import Any

_TAG = re.compile(r"\{\{\s*(?:([a-z-]+)\s+)?([A-Za-z0-9_.\-]+)\s*\}\}")


class TemplateError(ValueError):
    pass


def _lookup(context: dict[str, Any], path: str) -> Any:
    value: Any = context
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return ""
        value = value[part]
    return value


def _text(value: Any) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def render(template: str, context: dict[str, Any]) -> str:
    def replace(match: re.Match[str]) -> str:
        helper, path = match.group(1), match.group(2)
        value = _lookup(context, path)
        if helper is None:
            return _text(value)
        if helper == "url-encode":
            return urllib.parse.quote(_text(value), safe="")
        if helper == "escape":
            return json.dumps(_text(value))[1:-1]
        if helper == "json":
            return json.dumps(value)
        raise TemplateError(f"unknown template helper '{helper}'")

    return _TAG.sub(replace, template)
