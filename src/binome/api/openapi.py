"""The OpenAPI 3 document, generated from the method registry (served at /api2/openapi.json)."""

from __future__ import annotations

from typing import Any

from binome import __version__
from binome.access.permission import World, describe
from binome.api.registry import Registry
from binome.schema import Param


def _schema(p: Param) -> dict[str, Any]:
    schema = p.json_schema()
    schema.pop("optional", None)
    schema.pop("description", None)
    if schema.get("format") and schema["format"] not in ("ip",):
        # PVE's named formats and property strings (a dict of typed keys)
        schema["x-pve-format"] = schema.pop("format")
    if "typetext" in schema:
        schema["x-pve-typetext"] = schema.pop("typetext")
    return schema


def document(registry: Registry) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for m in registry.methods:
        path_params = set(m.path_params)
        op: dict[str, Any] = {
            "operationId": m.name,
            "summary": m.description,
            "x-permission": describe(m.permission),
            "parameters": [],
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {"schema": {
                    "type": "object", "properties": {"data": m.returns}}}}},
                "400": {"description": "Parameter verification failed."},
                "401": {"description": "authentication failure"},
                "403": {"description": "Permission check failed"},
                "500": {"description": "error; the reason phrase carries the message"},
            },
        }
        if isinstance(m.permission, World):
            op["security"] = []
        if not m.allow_token:
            op["x-allow-token"] = False
        body_props: dict[str, Any] = {}
        required: list[str] = []
        for name, p in m.parameters.items():
            if name in path_params:
                op["parameters"].append({"name": name, "in": "path", "required": True,
                                         "description": p.description, "schema": _schema(p)})
            elif m.method in ("GET", "DELETE"):
                op["parameters"].append({"name": name, "in": "query",
                                         "required": not p.optional,
                                         "description": p.description, "schema": _schema(p)})
            else:
                body_props[name] = {**_schema(p), "description": p.description}
                if not p.optional:
                    required.append(name)
        if body_props:
            schema: dict[str, Any] = {"type": "object", "properties": body_props}
            if required:
                schema["required"] = required
            op["requestBody"] = {"required": bool(required), "content": {
                "application/x-www-form-urlencoded": {"schema": schema},
                "application/json": {"schema": schema}}}
        paths.setdefault("/api2/json" + m.path, {})[m.method.lower()] = op
    return {
        "openapi": "3.0.3",
        "info": {"title": "binome API (Proxmox VE compatible subset)", "version": __version__},
        "components": {"securitySchemes": {
            "ticket": {"type": "apiKey", "in": "cookie", "name": "PVEAuthCookie"},
            "csrf": {"type": "apiKey", "in": "header", "name": "CSRFPreventionToken"}}},
        "security": [{"ticket": [], "csrf": []}],
        "paths": paths,
    }
