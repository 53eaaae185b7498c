"""Where the words are: the user-written strings of a request body and the generated
strings of a response body, as (container, key) slots that can be read and replaced."""

from __future__ import annotations

from typing import Any

Slot = tuple[Any, Any]  # (dict or list, key or index) holding a str


def _parts(content: Any, out: list[Slot], owner: Any, key: Any) -> None:
    if isinstance(content, str):
        out.append((owner, key))
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                out.append((part, "text"))


def request_slots(api: str, body: dict[str, Any]) -> list[Slot]:
    """Strings the caller's users wrote: every non-system message, the prompt, the input.
    (The system prompt is the application's own text, not user input.)"""
    out: list[Slot] = []
    if api == "converse":  # Bedrock: content is always a list of blocks
        for message in body.get("messages") or ():
            if isinstance(message, dict):
                _parts(message.get("content"), out, message, "content")
    elif api == "generate_content":  # Gemini: contents of parts
        for content in body.get("contents") or ():
            if isinstance(content, dict):
                _parts(content.get("parts"), out, content, "parts")
    elif api in ("embed_content", "batch_embed_contents"):  # Gemini: a content (and title)
        requests = body.get("requests") if api == "batch_embed_contents" else [body]
        for request in requests if isinstance(requests, list) else ():
            if not isinstance(request, dict):
                continue
            content = request.get("content")
            if isinstance(content, dict):
                _parts(content.get("parts"), out, content, "parts")
            if isinstance(request.get("title"), str):
                out.append((request, "title"))
    elif api in ("chat", "messages"):
        for message in body.get("messages") or ():
            if isinstance(message, dict) and message.get("role") not in ("system",
                                                                          "developer"):
                _parts(message.get("content"), out, message, "content")
    elif api == "embeddings" and isinstance(body.get("inputText"), str):  # Bedrock's Titan
        out.append((body, "inputText"))
    elif api in ("completions", "embeddings", "responses", "moderations", "speech", "images",
                 "image_edits", "transcriptions"):
        field = "prompt" if api in ("completions", "images", "image_edits",
                                    "transcriptions") else "input"
        value = body.get(field)
        if isinstance(value, str):
            out.append((body, field))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                if isinstance(item, str):
                    out.append((value, index))
                elif isinstance(item, dict) and item.get("role") not in ("system",
                                                                          "developer"):
                    _parts(item.get("content"), out, item, "content")
    return out


def last_user_text(api: str, body: dict[str, Any]) -> str | None:
    """The message an auto-reply answers: the last user message, or the prompt."""
    if api == "completions":
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        return prompt if isinstance(prompt, str) else None
    if api == "generate_content":
        return _gemini_user_text(body.get("contents"))
    items: Any = body.get("messages") if api in ("chat", "messages") else body.get("input")
    if isinstance(items, str):
        return items
    if not isinstance(items, list):
        return None
    for item in reversed(items):
        if isinstance(item, dict) and item.get("role") == "user":
            content = item.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return "".join(p["text"] for p in content
                               if isinstance(p, dict) and isinstance(p.get("text"), str))
            return None
    return None


def _gemini_user_text(contents: Any) -> str | None:
    """The text of Gemini's last user content (a content without a role is the user's);
    None when it has no text (a function response)."""
    items: list[Any] = contents if isinstance(contents, list) else []
    for content in reversed(items):
        if isinstance(content, dict) and content.get("role", "user") == "user":
            parts: Any = content.get("parts")
            texts = [p["text"] for p in parts if isinstance(p, dict) and
                     isinstance(p.get("text"), str)] if isinstance(parts, list) else []
            return "".join(texts) if texts else None
    return None


def response_slots(api: str, payload: Any) -> list[tuple[Any, Any, Any]]:
    """Generated strings of a whole answer, each with the channel it belongs to (a choice
    index, or an output item and content part)."""
    out: list[tuple[Any, Any, Any]] = []
    if not isinstance(payload, dict):
        return out
    if api in ("chat", "completions"):
        for position, choice in enumerate(payload.get("choices") or ()):
            if not isinstance(choice, dict):
                continue
            channel = choice.get("index", position)
            message = choice.get("message")
            if isinstance(message, dict) and isinstance(message.get("content"), str):
                out.append((channel, message, "content"))
            elif isinstance(choice.get("text"), str):
                out.append((channel, choice, "text"))
    elif api == "responses":
        for i, item in enumerate(payload.get("output") or ()):
            if isinstance(item, dict) and isinstance(item.get("content"), list):
                for j, part in enumerate(item["content"]):
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        out.append(((i, j), part, "text"))
    elif api in ("messages", "converse"):
        content = payload.get("content")
        if api == "converse":
            output = payload.get("output")
            message = output.get("message") if isinstance(output, dict) else None
            content = message.get("content") if isinstance(message, dict) else None
        for j, block in enumerate(content if isinstance(content, list) else ()):
            if isinstance(block, dict) and isinstance(block.get("text"), str):
                out.append((j, block, "text"))
    elif api == "generate_content":
        for i, candidate in enumerate(payload.get("candidates") or ()):
            for j, part in enumerate(_candidate_parts(candidate)):
                if isinstance(part.get("text"), str) and part.get("thought") is not True:
                    out.append(((i, j), part, "text"))
    return out


def _candidate_parts(candidate: Any) -> list[dict[str, Any]]:
    """The parts of a Gemini candidate's content."""
    content = candidate.get("content") if isinstance(candidate, dict) else None
    parts = content.get("parts") if isinstance(content, dict) else None
    return [p for p in parts if isinstance(p, dict)] if isinstance(parts, list) else []


def tool_slots(api: str, payload: Any) -> list[tuple[Any, Any]]:
    """Tool-call arguments of a whole answer, as (container, key) slots: a string of JSON
    on OpenAI's APIs, an object in an Anthropic ``tool_use`` block or a Gemini
    ``functionCall`` (``args``)."""
    out: list[tuple[Any, Any]] = []
    if not isinstance(payload, dict):
        return out
    if api == "chat":
        for choice in payload.get("choices") or ():
            message = choice.get("message") if isinstance(choice, dict) else None
            if not isinstance(message, dict):
                continue
            for call in message.get("tool_calls") or ():
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                    out.append((function, "arguments"))
            legacy = message.get("function_call")
            if isinstance(legacy, dict) and isinstance(legacy.get("arguments"), str):
                out.append((legacy, "arguments"))
    elif api == "responses":
        for item in payload.get("output") or ():
            if isinstance(item, dict) and item.get("type") == "function_call" and \
                    isinstance(item.get("arguments"), str):
                out.append((item, "arguments"))
    elif api == "messages":
        for block in payload.get("content") or ():
            if isinstance(block, dict) and block.get("type") == "tool_use" and \
                    "input" in block:
                out.append((block, "input"))
    elif api == "generate_content":
        for candidate in payload.get("candidates") or ():
            for part in _candidate_parts(candidate):
                call = part.get("functionCall")
                if isinstance(call, dict) and "args" in call:
                    out.append((call, "args"))
    return out
