"""Bedrock's Converse API: one request shape for every Bedrock model.

A request is ``messages`` (``role`` user/assistant, ``content`` a list of blocks, each a
one-key union: ``text``, ``image``, ``document``, ``video``, ``toolUse``, ``toolResult``,
``reasoningContent``, ``cachePoint``, ``guardContent``), ``system`` (blocks), and
``inferenceConfig`` (``maxTokens``: the output cap). The model is in the URL. An answer
carries ``output.message``, ``stopReason`` and ``usage``; a stream is a run of event
frames (``messageStart``, ``contentBlockStart``/``Delta``/``Stop``, ``messageStop``,
``metadata`` with the usage last).

Bedrock counts like Anthropic: ``inputTokens`` leaves out ``cacheReadInputTokens`` and
``cacheWriteInputTokens``; tokenstile's ``Usage`` counts them inside ``input_tokens``.

The input count made before a call is an estimate, as for Claude on Anthropic's API: the
request is read as the Messages request it amounts to and counted with
``tokens.count_anthropic`` (o200k text, × the Claude factor for Claude models); the
provider's usage replaces it once the call is answered.
"""

from __future__ import annotations

import binascii
from typing import Any

from tokenstile import tokens
from tokenstile.errors import bad_request
from tokenstile.providers.answers import AnswerText, dumps_text
from tokenstile.providers.base import checked_int, each_message, require_messages
from tokenstile.providers.counts import service_tier, token_count
from tokenstile.types import PriceTerms, Usage

CAP_FIELD = "inferenceConfig.maxTokens"
ROLES = ("user", "assistant")
# Document formats whose bytes are text the gateway can count.
TEXT_FORMATS = frozenset({"txt", "md", "csv", "html"})
_MAX_BLOCKS = 4096
_MAX_DEPTH = 16


# --- requests -----------------------------------------------------------------------------


def _check_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(content, list):
        raise bad_request(f"'{where}' must be an array of content blocks", param=where)
    for j, block in enumerate(content):
        if not isinstance(block, dict) or not block:
            raise bad_request(f"'{where}[{j}]' must be a content block object such as "
                              '{"text": "..."}', param=f"{where}[{j}]")
    return content


def parse_converse(body: dict[str, Any]) -> tuple[str, str, int | None]:
    """Check the request's shape; return its user-visible text, its system text and its
    output cap (``inferenceConfig.maxTokens``, None when it names none)."""
    texts: list[str] = []
    for where, message in each_message(require_messages(body)):
        if message.get("role") not in ROLES:
            raise bad_request(f"'{where}.role' must be 'user' or 'assistant', got "
                              f"{message.get('role')!r} (system prompts go in the top-level "
                              "'system' field)", param=f"{where}.role")
        blocks_text(_check_blocks(message.get("content"), f"{where}.content"), texts)
    system: list[str] = []
    if body.get("system") is not None:
        blocks_text(_check_blocks(body["system"], "system"), system)
    config = body.get("inferenceConfig")
    cap: int | None = None
    if config is not None:
        if not isinstance(config, dict):
            raise bad_request("'inferenceConfig' must be an object", param="inferenceConfig")
        cap = checked_int(config.get("maxTokens"), CAP_FIELD, 1)
    tool_config = body.get("toolConfig")
    if tool_config is not None and not (isinstance(tool_config, dict)
                                        and isinstance(tool_config.get("tools"), list)):
        raise bad_request("'toolConfig' must be an object with a 'tools' array",
                          param="toolConfig")
    return "\n".join(texts), "\n".join(system), cap


def blocks_text(blocks: Any, out: list[str], depth: int = 0) -> None:
    """Model-visible text of Converse blocks: text, tool inputs and results, reasoning,
    text documents. Images, video and binary documents are skipped."""
    if depth > _MAX_DEPTH or not isinstance(blocks, list):
        return
    for block in blocks[:_MAX_BLOCKS]:
        if not isinstance(block, dict):
            continue
        text = block.get("text")
        if isinstance(text, str):
            if text:
                out.append(text)
        elif "toolUse" in block:
            use = block["toolUse"]
            if isinstance(use, dict) and use.get("input") is not None:
                out.append(dumps_text(use["input"]))
        elif "toolResult" in block:
            result = block["toolResult"]
            if isinstance(result, dict):
                content = result.get("content")
                blocks_text(content, out, depth + 1)
                for part in content if isinstance(content, list) else ():
                    if isinstance(part, dict) and part.get("json") is not None:
                        out.append(dumps_text(part["json"]))
        elif "reasoningContent" in block:
            reasoning = block["reasoningContent"]
            inner = reasoning.get("reasoningText") if isinstance(reasoning, dict) else None
            if isinstance(inner, dict) and isinstance(inner.get("text"), str):
                out.append(inner["text"])
        elif "guardContent" in block:
            guarded = block["guardContent"]
            inner = guarded.get("text") if isinstance(guarded, dict) else None
            if isinstance(inner, dict) and isinstance(inner.get("text"), str):
                out.append(inner["text"])
        elif "document" in block:
            source = block["document"].get("source") if isinstance(block["document"],
                                                                    dict) else None
            if isinstance(source, dict):
                if isinstance(source.get("text"), str):
                    out.append(source["text"])
                blocks_text(source.get("content"), out, depth + 1)


def _decoded_text(data: Any) -> str | None:
    if not isinstance(data, str):
        return None
    try:
        return binascii.a2b_base64(data).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        return None


def _as_messages_blocks(blocks: Any, depth: int = 0) -> list[dict[str, Any]]:
    """Converse blocks as the Anthropic blocks they amount to, for counting and for finding
    input the gateway cannot see (``hidden_input``): an image or document in S3 has no
    bytes here, a binary document no text."""
    out: list[dict[str, Any]] = []
    if depth > _MAX_DEPTH or not isinstance(blocks, list):
        return out
    for block in blocks[:_MAX_BLOCKS]:
        if not isinstance(block, dict):
            continue
        if isinstance(block.get("text"), str):
            out.append({"type": "text", "text": block["text"]})
        elif isinstance(block.get("json"), dict | list):
            out.append({"type": "text", "text": dumps_text(block["json"])})
        elif isinstance(block.get("image"), dict):
            source = block["image"].get("source")
            data = source.get("bytes") if isinstance(source, dict) else None
            out.append({"type": "image", "source": {"type": "base64", "data": data}}
                       if isinstance(data, str) else {"type": "image"})
        elif isinstance(block.get("document"), dict):
            out.append(_document(block["document"], depth))
        elif isinstance(block.get("toolUse"), dict):
            use = block["toolUse"]
            out.append({"type": "tool_use", "name": use.get("name"), "input": use.get("input")})
        elif isinstance(block.get("toolResult"), dict):
            out.append({"type": "tool_result", "content": _as_messages_blocks(
                block["toolResult"].get("content"), depth + 1)})
        elif isinstance(block.get("reasoningContent"), dict):
            text: list[str] = []
            blocks_text([block], text)
            out.append({"type": "thinking", "thinking": "".join(text)})
        elif isinstance(block.get("guardContent"), dict):
            text = []
            blocks_text([block], text)
            out.append({"type": "text", "text": "".join(text)})
        elif "video" in block or "audio" in block:
            # Neither is counted offline: a document without readable pages stands for it.
            out.append({"type": "document", "source": {"type": "file"}})
    return out


def _document(document: dict[str, Any], depth: int) -> dict[str, Any]:
    source = document.get("source")
    source = source if isinstance(source, dict) else {}
    fmt = str(document.get("format") or "").lower()
    block: dict[str, Any] = {"type": "document", "title": document.get("name"),
                             "context": document.get("context")}
    if isinstance(source.get("text"), str):
        block["source"] = {"type": "text", "data": source["text"]}
    elif isinstance(source.get("content"), list):
        block["source"] = {"type": "content",
                           "content": _as_messages_blocks(source["content"], depth + 1)}
    elif fmt in TEXT_FORMATS and (text := _decoded_text(source.get("bytes"))) is not None:
        block["source"] = {"type": "text", "data": text}
    elif fmt == "pdf" and isinstance(source.get("bytes"), str):
        block["source"] = {"type": "base64", "data": source["bytes"]}
    else:  # in S3, or a format whose text cannot be read here
        block["source"] = {"type": "file"}
    return block


def as_messages(body: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]],
                                               list[dict[str, Any]]]:
    """(messages, system blocks, tools) of a Converse request in Anthropic's shape."""
    messages = [{"role": m.get("role"), "content": _as_messages_blocks(m.get("content"))}
                for m in body.get("messages") or () if isinstance(m, dict)]
    system = _as_messages_blocks(body.get("system"))
    tools: list[dict[str, Any]] = []
    config = body.get("toolConfig")
    for tool in config.get("tools") or () if isinstance(config, dict) else ():
        spec = tool.get("toolSpec") if isinstance(tool, dict) else None
        if isinstance(spec, dict):
            schema = spec.get("inputSchema")
            tools.append({"name": spec.get("name"), "description": spec.get("description"),
                          "input_schema": schema.get("json") if isinstance(schema, dict)
                          else None})
    return messages, system, tools


def count_converse(model: str, body: dict[str, Any]) -> int:
    """The estimated input tokens of a Converse request (see the module's notes)."""
    messages, system, tools = as_messages(body)
    return tokens.count_anthropic(model, messages, system or None, tools or None)


def converse_terms(body: dict[str, Any]) -> PriceTerms:
    """What a Converse request may be billed for beyond text: cache writes at every
    ``cachePoint`` (the longest TTL asked for), the service tier it asks for."""
    ttl: str | None = None
    parts: list[Any] = [body.get("system")]
    parts += [m.get("content") for m in body.get("messages") or () if isinstance(m, dict)]
    config = body.get("toolConfig")
    if isinstance(config, dict):
        parts.append(config.get("tools"))
    for blocks in parts:
        for block in blocks[:_MAX_BLOCKS] if isinstance(blocks, list) else ():
            point = block.get("cachePoint") if isinstance(block, dict) else None
            if isinstance(point, dict):
                ttl = "1h" if point.get("ttl") == "1h" or ttl == "1h" else "5m"
    tier = body.get("serviceTier")
    name = tier.get("type") if isinstance(tier, dict) else None
    return PriceTerms(service_tier=service_tier(name), cache_write=ttl)


# --- answers ------------------------------------------------------------------------------


def usage_from_converse(usage: Any, tier_field: Any = None) -> Usage | None:
    """A Converse ``usage`` block in tokenstile's (OpenAI's) convention: cache reads and
    writes counted inside ``input_tokens``, 1-hour writes apart (``cacheDetails``)."""
    if not isinstance(usage, dict):
        return None
    read = token_count(usage.get("cacheReadInputTokens"))
    written = token_count(usage.get("cacheWriteInputTokens"))
    long_lived = 0
    details = usage.get("cacheDetails")
    for detail in details if isinstance(details, list) else ():
        if isinstance(detail, dict) and detail.get("ttl") == "1h":
            long_lived += token_count(detail.get("inputTokens"))
    tier = tier_field.get("type") if isinstance(tier_field, dict) else None
    return Usage(
        input_tokens=token_count(usage.get("inputTokens")) + read + written,
        output_tokens=token_count(usage.get("outputTokens")),
        cached_input_tokens=read,
        cache_write_tokens=written,
        cache_write_1h_tokens=min(long_lived, written),
        service_tier=service_tier(tier),
    )


def usage_of_answer(payload: Any) -> Usage | None:
    if not isinstance(payload, dict):
        return None
    return usage_from_converse(payload.get("usage"), payload.get("serviceTier"))


class ConverseStreamState:
    """What a Converse stream said, event by event: its text, its stop reason and the
    usage of its final ``metadata`` event."""

    __slots__ = ("final_usage", "stop_reason", "text")

    def __init__(self) -> None:
        self.text = AnswerText()
        self.final_usage: Usage | None = None
        self.stop_reason: str | None = None

    def apply(self, name: str, payload: Any) -> None:
        if not isinstance(payload, dict):
            return
        if name == "contentBlockDelta":
            delta = payload.get("delta")
            if not isinstance(delta, dict):
                return
            self.text.see(delta.get("text"))
            use = delta.get("toolUse")
            if isinstance(use, dict):
                self.text.see(use.get("input"))
            reasoning = delta.get("reasoningContent")
            if isinstance(reasoning, dict):
                self.text.reason(reasoning.get("text"))
        elif name == "contentBlockStart":
            start = payload.get("start")
            use = start.get("toolUse") if isinstance(start, dict) else None
            if isinstance(use, dict):
                self.text.see(use.get("name"))
        elif name == "messageStop":
            reason = payload.get("stopReason")
            self.stop_reason = reason if isinstance(reason, str) else "end_turn"
        elif name == "metadata":
            self.final_usage = usage_from_converse(payload.get("usage"),
                                                   payload.get("serviceTier"))
