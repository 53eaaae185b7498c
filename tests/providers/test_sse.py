"""Reading one server-sent event: its name and data, and its data as a JSON object."""

from __future__ import annotations

import pytest

from tokenstile.providers.sse import EventSplitter, event_fields, json_object


def test_an_event_s_name_and_data() -> None:
    assert event_fields(b"event: message_start\ndata: {\"a\": 1}\n\n") == (
        "message_start", b'{"a": 1}')
    assert event_fields(b"data:[DONE]\n\n") == (None, b"[DONE]")


@pytest.mark.parametrize(("data", "expected"), [
    (b'{"type": "response.completed", "n": 2}', {"type": "response.completed", "n": 2}),
    (b"{}", {}),
])
def test_data_that_is_a_json_object(data: bytes, expected: dict[str, object]) -> None:
    assert json_object(data) == expected


@pytest.mark.parametrize("data", [
    b"", b"[DONE]", b"[1, 2]", b"42", b'"text"', b"{not json", b'{"a": 1', b' {"a": 1}',
])
def test_data_that_is_anything_else_is_none(data: bytes) -> None:
    assert json_object(data) is None


def test_split_events_read_as_objects() -> None:
    splitter = EventSplitter()
    events = splitter.feed(b'data: {"a": 1}\n\ndata: [DONE]\n\n')
    assert [json_object(event_fields(e)[1]) for e in events] == [{"a": 1}, None]
