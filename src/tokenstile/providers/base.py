"""What every provider adapter offers the request path."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from tokenstile.errors import bad_request
from tokenstile.types import ApiKind, CanonicalRequest, Usage, WireFormat


class StreamObserver(Protocol):
    """Watches a relayed stream event by event: usage, generated text, what to pass on."""

    usage: Usage | None

    def on_event(self, event: bytes) -> bytes | None:
        """Return the bytes to relay for this event (None drops it)."""
        ...

    def output_text(self) -> str:
        """The visible text generated so far (text, refusals, tool names and arguments),
        for counting when the provider reports no usage."""
        ...

    def reasoning_text(self) -> str:
        """The reasoning (thinking) text streamed so far, billed as output too."""
        ...

    def answering(self) -> bool:
        """Whether any visible output has arrived (a reasoning model has stopped thinking)."""
        ...

    def usage_is_final(self) -> bool:
        """Whether ``usage`` is the provider's final count; if not, it is None or partly
        the gateway's own count of what was streamed."""
        ...


class ObserverWrapper:
    """A ``StreamObserver`` around another: passes everything on to ``inner``. Subclasses
    override what they watch (usually ``on_event``)."""

    __slots__ = ("_inner",)

    def __init__(self, inner: StreamObserver) -> None:
        self._inner = inner

    @property
    def usage(self) -> Usage | None:
        return self._inner.usage

    @usage.setter
    def usage(self, value: Usage | None) -> None:
        self._inner.usage = value

    def on_event(self, event: bytes) -> bytes | None:
        return self._inner.on_event(event)

    def output_text(self) -> str:
        return self._inner.output_text()

    def reasoning_text(self) -> str:
        return self._inner.reasoning_text()

    def answering(self) -> bool:
        return self._inner.answering()

    def usage_is_final(self) -> bool:
        return self._inner.usage_is_final()


class Adapter(Protocol):
    wire: WireFormat

    def parse(self, api: ApiKind, body: dict[str, Any]) -> CanonicalRequest: ...

    def count_input(self, req: CanonicalRequest) -> int: ...

    def upstream_body(self, req: CanonicalRequest) -> dict[str, Any]: ...

    def usage_from_body(self, api: ApiKind, payload: Any) -> Usage | None: ...

    def observer(self, req: CanonicalRequest) -> StreamObserver: ...


class Bridge(Protocol):
    """Serves a request in one wire format from an upstream that speaks another.

    Built once the target upstream is known (before admission, so a request that cannot be
    translated is refused before it reserves anything). The gateway then asks it for the
    body to forward and hands it every upstream answer to translate back.
    """

    upstream_api: ApiKind

    def count_input(self) -> int:
        """Input tokens of the translated request, to reserve against budgets."""
        ...

    def upstream_body(self, req: CanonicalRequest) -> dict[str, Any]:
        """The translated body, with the output cap admission settled on."""
        ...

    def usage_from_body(self, payload: Any) -> Usage | None: ...

    def response_body(self, payload: bytes, parsed: Any) -> tuple[bytes, Any]:
        """A whole upstream answer in the client's format: (bytes, parsed JSON)."""
        ...

    def error_body(self, status: int, payload: bytes) -> bytes: ...

    def observer(self, req: CanonicalRequest) -> StreamObserver: ...


def require_str(body: dict[str, Any], field: str) -> str:
    value = body.get(field)
    if value is None:
        raise bad_request(f"'{field}' is required", param=field, code="missing_required_parameter")
    if not isinstance(value, str) or not value:
        raise bad_request(f"'{field}' must be a non-empty string", param=field)
    return value


def require_messages(body: dict[str, Any]) -> list[Any]:
    """The request's ``messages``: present, and a non-empty array (chat completions,
    Messages and Converse ask the same of it)."""
    messages = body.get("messages")
    if messages is None:
        raise bad_request("'messages' is required", param="messages",
                          code="missing_required_parameter")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty array", param="messages")
    return messages


def each_message(messages: list[Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each message with where it stands (``messages[i]``, for error messages), checked to
    be an object as it is reached."""
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise bad_request(f"'{where}' must be an object", param=where)
        yield where, message


def each_tool(tools: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each entry of a request's ``tools`` (none when it has none) with where it stands
    (``tools[i]``); the array checked first, each entry checked to be an object as it is
    reached."""
    if tools is None:
        return
    if not isinstance(tools, list):
        raise bad_request("'tools' must be an array", param="tools")
    for i, tool in enumerate(tools):
        at = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise bad_request(f"'{at}' must be an object", param=at)
        yield at, tool


# Fields of the canonical body that a URL carries (Bedrock's and Gemini's routes name the
# model and whether the call streams): never forwarded in the body.
ROUTE_FIELDS = ("model", "stream")


def forwarded_body(body: dict[str, Any]) -> dict[str, Any]:
    """The body as an upstream whose URL names the model takes it: without the fields its
    URL carries (``body`` itself when it has none)."""
    if "model" not in body and "stream" not in body:
        return body
    return {k: v for k, v in body.items() if k not in ROUTE_FIELDS}


def checked_int(value: Any, where: str, minimum: int) -> int | None:
    """``value`` when it is an integer of at least ``minimum``, None when it is missing;
    anything else is refused with 400 naming ``where``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise bad_request(f"'{where}' must be an integer of at least {minimum}, got "
                          f"{value!r}", param=where)
    return value


def optional_int(body: dict[str, Any], field: str, minimum: int = 0) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"'{field}' must be an integer, got {type(value).__name__}", param=field)
    if value < minimum:
        raise bad_request(f"'{field}' must be at least {minimum}, got {value}", param=field)
    return value


def optional_bool(body: dict[str, Any], field: str) -> bool:
    value = body.get(field, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad_request(f"'{field}' must be a boolean, got {type(value).__name__}", param=field)
    return value


def optional_str(body: dict[str, Any], field: str) -> str | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise bad_request(f"'{field}' must be a string, got {type(value).__name__}", param=field)
    return value


def string_tags(value: Any) -> dict[str, str]:
    """``metadata`` as tags: string keys and values only, bounded in size."""
    if not isinstance(value, dict):
        return {}
    tags: dict[str, str] = {}
    for key, item in list(value.items())[:32]:
        if isinstance(key, str) and isinstance(item, str | int | float | bool):
            tags[key[:64]] = str(item)[:256]
    return tags


def text_field(body: dict[str, Any], field: str, *, required: bool) -> str:
    """A field that holds a string or an array of them (a prompt, an input): checked, and
    its text joined line by line (empty when an optional field is absent)."""
    value = body.get(field)
    if value is None and required:
        raise bad_request(f"'{field}' is required", param=field,
                          code="missing_required_parameter")
    if value is not None and not isinstance(value, str | list):
        raise bad_request(f"'{field}' must be a string or an array", param=field)
    pieces: list[str] = []
    collect_text(value, pieces)
    return "\n".join(pieces)


def collect_text(node: Any, out: list[str], depth: int = 0) -> None:
    """Every human-readable string in a content tree (text parts, tool arguments)."""
    if depth > 32:
        return
    if isinstance(node, str):
        out.append(node)
    elif isinstance(node, list):
        for item in node:
            collect_text(item, out, depth + 1)
    elif isinstance(node, dict):
        for key in ("text", "content", "arguments", "input", "output", "thinking"):
            if key in node:
                collect_text(node[key], out, depth + 1)
        function = node.get("function")
        if isinstance(function, dict):
            collect_text(function.get("arguments"), out, depth + 1)
        tool_calls = node.get("tool_calls")
        if tool_calls is not None:
            collect_text(tool_calls, out, depth + 1)
