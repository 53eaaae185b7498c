"""Admission: reserve the worst case on every applicable counter, then settle the actual."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tokenstile.config import Config

if TYPE_CHECKING:
    from tokenstile.gateway.context import RequestContext


class Admission:
    def __init__(self, config: Config) -> None:
        self.config = config

    async def reserve(self, ctx: RequestContext) -> Any:
        return None

    async def settle(self, ctx: RequestContext) -> None:
        return None
