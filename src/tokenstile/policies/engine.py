"""Runs request and response policies in their fixed order (see tokenstile.policies)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tokenstile.config import Config

if TYPE_CHECKING:
    from tokenstile.gateway.context import RequestContext


class PolicyEngine:
    """Evaluates the configured policies against one request."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def before(self, ctx: RequestContext) -> None:
        """Apply request policies: may raise a block, rewrite the body, or add flags."""
        return None
