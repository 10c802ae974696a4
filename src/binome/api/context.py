"""What a method handler gets: who is calling, through which door, and the node's services."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiohttp import web

    from binome.api.registry import ApiMethod
    from binome.daemon.services import Services


@dataclass
class RequestContext:
    services: Services
    user: str | None
    request: web.Request | None
    method: ApiMethod
    via_socket: bool = False

    @property
    def node(self) -> str:
        return self.services.config.name

    @property
    def userid(self) -> str:
        assert self.user is not None
        return self.user
