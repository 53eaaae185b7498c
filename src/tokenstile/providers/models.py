"""Model listings in either provider's shape, so ``GET /v1/models`` can merge what every
upstream serves and answer each SDK (``openai`` or ``anthropic``) in its own format.

Entries are kept in OpenAI's shape (``id``, ``object``, ``created``, ``owned_by``) while
merging, since that is what most upstreams (OpenAI-compatible servers, Azure) answer.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from tokenstile.types import WireFormat

Entry = dict[str, Any]


def _epoch(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
        except ValueError:
            return 0
    return 0


def openai_entries(payload: Any, owner: str) -> list[Entry]:
    """The models of one upstream's listing (either shape), as OpenAI entries."""
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
        return []
    out: list[Entry] = []
    for item in payload["data"]:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            continue
        if item.get("type") == "model" and "object" not in item:  # Anthropic's shape
            out.append({"id": item["id"], "object": "model",
                        "created": _epoch(item.get("created_at")), "owned_by": owner})
        else:
            out.append(item)
    return out


def anthropic_entry(entry: Entry) -> Entry:
    created = entry.get("created")
    stamp = datetime.fromtimestamp(created if isinstance(created, int) and created > 0 else 0,
                                   UTC)
    name = entry.get("display_name")
    return {"type": "model", "id": entry["id"],
            "display_name": name if isinstance(name, str) else entry["id"],
            "created_at": stamp.isoformat().replace("+00:00", "Z")}


def model_list(wire: WireFormat, entries: list[Entry]) -> dict[str, Any]:
    """A whole listing in the client's shape (Anthropic's: one page holding everything)."""
    if wire == "openai":
        return {"object": "list", "data": entries}
    data = [anthropic_entry(e) for e in entries]
    return {"data": data, "has_more": False,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None}


def model_item(wire: WireFormat, entry: Entry) -> Entry:
    return entry if wire == "openai" else anthropic_entry(entry)
