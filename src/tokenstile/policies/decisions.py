"""What a policy decides about a request: block it, rewrite it, or flag it (allow is
saying nothing). A decision made under shadow mode is recorded and not carried out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Block:
    policy: str
    code: str
    message: str
    param: str | None = None
    shadow: bool = False
    status: int = 422


@dataclass(frozen=True, slots=True)
class Rewrite:
    """Replace top-level body fields (``patch``) and, when set, the output cap."""

    policy: str
    note: str
    patch: Mapping[str, Any] = field(default_factory=dict)
    output_cap: int | None = None
    shadow: bool = False


@dataclass(frozen=True, slots=True)
class Flag:
    policy: str
    note: str
    shadow: bool = False


Decision = Block | Rewrite | Flag


def where(source: str) -> str:
    """How an error message names the place a setting came from."""
    if source.startswith("x-"):
        return f"set by the {source} header"
    return f"for this {source}"
