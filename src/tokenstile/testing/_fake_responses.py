"""Stored responses of the fake Responses API: what ``previous_response_id`` carries, what
``GET /v1/responses/{id}`` shows, and background mode (``background: true``).

A background response is answered ``queued``, with no usage. Each ``GET`` of it is a
poll: it is ``in_progress`` until its ``background_polls``-th poll, which finds it
``completed`` (or ``incomplete``) with its usage; ``background_hold`` keeps it running until
``finish`` or ``cancel``. A streamed background response completes with its stream, or,
when the stream is cut or its reader leaves, on its own (the provider keeps generating).
When a background response ends, the fake bills it: one tally record (method
``BACKGROUND``) with the usage it charges; the request that created it records none.
A response cancelled while queued costs nothing; one cancelled while running is billed
its input and the half of its reply generated so far.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ._fake_wire import Turn, final_status, responses_state, responses_usage, responses_usage_of

__all__ = ["ResponseStore", "StoredResponse", "input_items"]

Json = dict[str, Any]
TERMINAL = frozenset({"completed", "incomplete", "cancelled", "failed"})


@dataclass(slots=True)
class StoredResponse:
    turn: Turn
    background: bool
    status: str
    stream: bool = False
    complete_after: int = 2
    hold: bool = False
    polls: int = 0
    usage: Json | None = None
    items: list[Json] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.turn.id

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def snapshot(self) -> Json:
        return responses_state(self.turn, self.status, self.usage)

    def carried_tokens(self) -> int:
        """What a follow-up with ``previous_response_id`` pays for this turn: its input
        (itself carrying earlier turns) and its visible output."""
        return self.turn.input_tokens + len(self.turn.reply.pieces) + self.turn.reply.name_tokens


def input_items(turn: Turn) -> list[Json]:
    """The request's input as ``input_items`` lists it: items with ids, text as parts."""
    raw = turn.request.get("input")
    listed = [{"role": "user", "content": raw}] if isinstance(raw, str) else raw
    items: list[Json] = []
    for index, item in enumerate(listed if isinstance(listed, list) else []):
        if not isinstance(item, dict):
            continue
        entry = dict(item)
        entry.setdefault("id", f"msg_{turn.id.removeprefix('resp_')}_{index}")
        if entry.get("type", "message") == "message":
            entry["type"] = "message"
            entry.setdefault("status", "completed")
            if isinstance(entry.get("content"), str):
                entry["content"] = [{"type": "input_text", "text": entry["content"]}]
        items.append(entry)
    return items


class ResponseStore:
    """The most recent ``max_entries`` responses by id; ``bill`` hears each background
    response once, when it ends."""

    def __init__(self, bill: Callable[[StoredResponse], None],
                 max_entries: int = 10_000) -> None:
        self._bill = bill
        self._max = max_entries
        self._items: OrderedDict[str, StoredResponse] = OrderedDict()

    def keep(self, turn: Turn, *, background: bool, stream: bool = False,
             complete_after: int = 2, hold: bool = False) -> StoredResponse:
        if background:
            stored = StoredResponse(turn, True, "queued", stream, max(1, complete_after), hold)
        else:
            stored = StoredResponse(turn, False, final_status(turn), stream,
                                    usage=None if turn.no_usage else responses_usage(turn))
        stored.items = input_items(turn)
        self._items[turn.id] = stored
        while len(self._items) > self._max:
            self._items.popitem(last=False)
        return stored

    def get(self, response_id: str) -> StoredResponse | None:
        return self._items.get(response_id)

    def delete(self, response_id: str) -> bool:
        return self._items.pop(response_id, None) is not None

    def clear(self) -> None:
        self._items.clear()

    def poll(self, stored: StoredResponse) -> None:
        """One ``GET`` of a running background response."""
        if stored.terminal or not stored.background:
            return
        stored.polls += 1
        if not stored.hold and stored.polls >= stored.complete_after:
            self.finish(stored)
        else:
            stored.status = "in_progress"

    def finish(self, stored: StoredResponse) -> None:
        """The generation ends now, whole: ``completed`` (``incomplete`` at the cap)."""
        if stored.terminal:
            return
        stored.status = final_status(stored.turn)
        stored.usage = responses_usage(stored.turn)
        if stored.background:
            self._bill(stored)

    def cancel(self, stored: StoredResponse) -> None:
        if stored.terminal or not stored.background:
            return
        turn = stored.turn
        if stored.status == "queued":
            stored.usage = responses_usage_of(0, 0)
        else:
            stored.usage = responses_usage_of(turn.input_tokens, len(turn.reply.pieces) // 2,
                                              turn.cached_tokens)
        stored.status = "cancelled"
        self._bill(stored)
