"""Gemini's ``generateContent`` request and answer, as plain values: checking and counting
a request, its hidden input, its output worst case (thinking included) and the caps written
into its ``generationConfig``, the price terms it asks for, and the usage and text of an
answer or a stream's chunks.

A request is ``contents`` (``role`` user/model, ``parts``: ``text``, ``inlineData``,
``fileData``, ``functionCall``, ``functionResponse``, ``executableCode``,
``codeExecutionResult``, ``thought``), ``systemInstruction`` (a content), ``tools``,
``generationConfig`` (``maxOutputTokens``: the output cap; ``thinkingConfig``;
``candidateCount``) and ``cachedContent`` (a cache of earlier input, by name). Google reads
each field by its JSON name or its proto name (``maxOutputTokens`` or ``max_output_tokens``),
and so does ``get``.

Usage is ``usageMetadata``: ``promptTokenCount`` (the cached content included),
``cachedContentTokenCount``, ``toolUsePromptTokenCount`` (results of server-side tools fed
back to the model: input), ``candidatesTokenCount`` and ``thoughtsTokenCount`` (thinking,
billed as output). A stream's chunks may each carry ``usageMetadata``; the final count is the
one in or after the chunk whose candidate has a ``finishReason``.

Worst cases, for admission: the input is counted from the text of ``contents``,
``systemInstruction`` and ``tools`` (o200k × ``GEMINI_FACTOR``, Gemini's tokenizer being
unpublished); inline and file data and ``cachedContent`` are hidden input
(``hidden_input``). The output is ``maxOutputTokens`` (else the model's most) plus what it
may think: ``thinkingBudget`` when one is set, else the model's largest thinking budget;
times ``candidateCount``.
"""

from __future__ import annotations

import math
from typing import Any

from tokenstile import tokens
from tokenstile.errors import GatewayError, bad_request
from tokenstile.providers.answers import AnswerText, dumps_text, gemini_candidate_text
from tokenstile.providers.base import checked_int
from tokenstile.providers.counts import token_count
from tokenstile.providers.gemini_fields import MAX_PARTS, get, snake
from tokenstile.types import ApiKind, CanonicalRequest, PriceTerms, Usage

CAP_FIELD = "generationConfig.maxOutputTokens"
ROLES = ("user", "model")
GEMINI_FACTOR = 1.15
"""Gemini tokens per o200k token, rounded up: its tokenizer is not public, so the o200k
count is scaled up to keep reservations on the safe side (usage settles the real count)."""
TOKENS_PER_CONTENT = 3
TOKENS_PER_TOOL = 7
# Most output tokens per model family (Google's model cards), longest prefix first.
_MAX_OUTPUT: tuple[tuple[str, int], ...] = (
    ("gemini-3", 65_536), ("gemini-2.5", 65_536), ("gemini-2.0", 8_192),
    ("gemini-1.5", 8_192), ("gemma-3", 8_192),
)
# Largest thinking budget per model family: what a call that leaves thinking to the model
# may think at most.
_MAX_THINKING: tuple[tuple[str, int], ...] = (
    ("gemini-3", 32_768), ("gemini-2.5-pro", 32_768), ("gemini-2.5-flash", 24_576),
    ("gemini-2.5", 32_768),
)
# Least thinking budget per model family when thinking is on (Google refuses less), and the
# families whose thinking cannot be turned off.
_MIN_THINKING: tuple[tuple[str, int], ...] = (
    ("gemini-2.5-pro", 128), ("gemini-2.5-flash-lite", 512),
)
_ALWAYS_THINKS = ("gemini-2.5-pro",)
_AUDIO = "AUDIO"


def without(node: dict[str, Any], *names: str) -> dict[str, Any]:
    """``node`` without ``names`` in either spelling."""
    drop = {*names, *(snake(n) for n in names)}
    return {k: v for k, v in node.items() if k not in drop}


def _family(model: str, table: tuple[tuple[str, int], ...]) -> int | None:
    name = model.strip().lower().removeprefix("models/")
    return next((value for prefix, value in table if name.startswith(prefix)), None)


def max_output(model: str) -> int | None:
    """The most tokens ``model`` writes in one answer, when its family is known."""
    return _family(model, _MAX_OUTPUT)


def max_thinking(model: str) -> int:
    """The largest thinking budget of ``model`` (0 for a model that does not think)."""
    return _family(model, _MAX_THINKING) or 0


# --- requests -----------------------------------------------------------------------------


def _object(body: dict[str, Any], name: str) -> dict[str, Any] | None:
    value = get(body, name)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise bad_request(f"'{name}' must be an object, got {type(value).__name__}",
                          param=name)
    return value


def check_content(content: Any, where: str, *, role: bool) -> list[dict[str, Any]]:
    if not isinstance(content, dict):
        raise bad_request(f"'{where}' must be an object with 'parts'", param=where)
    if role and content.get("role") is not None and content.get("role") not in ROLES:
        raise bad_request(f"'{where}.role' must be 'user' or 'model', got "
                          f"{content.get('role')!r} (system instructions go in "
                          "'systemInstruction')", param=f"{where}.role")
    parts = content.get("parts")
    if parts is None:
        parts = []
    if not isinstance(parts, list):
        raise bad_request(f"'{where}.parts' must be an array of parts", param=f"{where}.parts")
    for j, part in enumerate(parts):
        if not isinstance(part, dict):
            raise bad_request(f"'{where}.parts[{j}]' must be a part object such as "
                              '{"text": "..."}', param=f"{where}.parts[{j}]")
        if "text" in part and not isinstance(part["text"], str):
            raise bad_request(f"'{where}.parts[{j}].text' must be a string",
                              param=f"{where}.parts[{j}].text")
    return parts


def request_of(body: dict[str, Any]) -> dict[str, Any]:
    """The generate request a body amounts to (``countTokens`` may wrap one in
    ``generateContentRequest``)."""
    inner = get(body, "generateContentRequest")
    return inner if isinstance(inner, dict) else body


def parse_gemini(api: ApiKind, body: dict[str, Any]) -> tuple[str, str]:
    """Check the request's shape (a 400 for what Google would refuse); return its
    user-visible text and its system text."""
    request = request_of(body)
    if "generateContentRequest" in body and request is body:
        raise bad_request("'generateContentRequest' must be an object",
                          param="generateContentRequest")
    contents = get(request, "contents")
    if contents is None:
        if api == "generate_content":
            raise bad_request("'contents' is required", param="contents",
                              code="missing_required_parameter")
        contents = []
    if not isinstance(contents, list) or (api == "generate_content" and not contents):
        raise bad_request("'contents' must be a non-empty array of contents", param="contents")
    texts: list[str] = []
    for i, content in enumerate(contents):
        parts_text(check_content(content, f"contents[{i}]", role=True), texts)
    system: list[str] = []
    instruction = get(request, "systemInstruction")
    if instruction is not None:
        parts_text(check_content(instruction, "systemInstruction", role=False), system)
    tools = get(request, "tools")
    if tools is not None and not (isinstance(tools, list)
                                  and all(isinstance(t, dict) for t in tools)):
        raise bad_request("'tools' must be an array of tool objects", param="tools")
    config = _object(request, "generationConfig")
    if config is not None:
        checked_int(get(config, "maxOutputTokens"), CAP_FIELD, 1)
        checked_int(get(config, "candidateCount"), "generationConfig.candidateCount", 1)
        thinking = get(config, "thinkingConfig")
        if thinking is not None:
            if not isinstance(thinking, dict):
                raise bad_request("'generationConfig.thinkingConfig' must be an object",
                                  param="generationConfig.thinkingConfig")
            checked_int(get(thinking, "thinkingBudget"),
                       "generationConfig.thinkingConfig.thinkingBudget", -1)
    cached = get(request, "cachedContent")
    if cached is not None and not isinstance(cached, str):
        raise bad_request("'cachedContent' must be the name of a cached content",
                          param="cachedContent")
    return "\n".join(texts), "\n".join(system)


def parts_text(parts: Any, out: list[str]) -> None:
    """Model-visible text of parts: text, function calls and responses, code and its
    results. Inline and file data are not text."""
    for part in parts[:MAX_PARTS] if isinstance(parts, list) else ():
        if not isinstance(part, dict):
            continue
        text = part.get("text")
        if isinstance(text, str):
            if text:
                out.append(text)
            continue
        call = get(part, "functionCall")
        if isinstance(call, dict):
            out.append(str(call.get("name") or ""))
            if call.get("args") is not None:
                out.append(dumps_text(call["args"]))
        response = get(part, "functionResponse")
        if isinstance(response, dict):
            out.append(str(response.get("name") or ""))
            if response.get("response") is not None:
                out.append(dumps_text(response["response"]))
        code = get(part, "executableCode")
        if isinstance(code, dict) and isinstance(code.get("code"), str):
            out.append(code["code"])
        result = get(part, "codeExecutionResult")
        if isinstance(result, dict) and isinstance(result.get("output"), str):
            out.append(result["output"])


def count_gemini(model: str, body: dict[str, Any]) -> int:
    """Input tokens of a request (an estimate, see the module's notes)."""
    request = request_of(body)
    text = 0
    framing = 0
    for content in get(request, "contents") or ():
        if not isinstance(content, dict):
            continue
        pieces: list[str] = []
        parts_text(content.get("parts"), pieces)
        framing += TOKENS_PER_CONTENT
        text += sum(tokens.count_text(model, piece) for piece in pieces)
    instruction = get(request, "systemInstruction")
    if isinstance(instruction, dict):
        pieces = []
        parts_text(instruction.get("parts"), pieces)
        framing += TOKENS_PER_CONTENT
        text += sum(tokens.count_text(model, piece) for piece in pieces)
    for tool in get(request, "tools") or ():
        if isinstance(tool, dict):
            declarations = get(tool, "functionDeclarations")
            for declaration in declarations if isinstance(declarations, list) else (tool,):
                framing += TOKENS_PER_TOOL
                text += tokens.count_text(model, dumps_text(declaration))
    return math.ceil(text * GEMINI_FACTOR - 1e-9) + framing


def hidden_gemini(body: dict[str, Any]) -> tuple[str, ...]:
    """Input the gateway cannot count: inline data (images, audio, video, documents as
    bytes), files by URI, and ``cachedContent``."""
    request = request_of(body)
    found: set[str] = set()
    if get(request, "cachedContent"):
        found.add("cached_content")
    contents = get(request, "contents")
    instruction = get(request, "systemInstruction")
    groups = [*(contents if isinstance(contents, list) else ()), instruction]
    for content in groups:
        hidden_parts(content, found)
    return tuple(sorted(found))


def hidden_parts(content: Any, found: set[str]) -> None:
    """Add to ``found`` what of a content's parts cannot be counted: inline data, files."""
    parts = content.get("parts") if isinstance(content, dict) else None
    for part in parts[:MAX_PARTS] if isinstance(parts, list) else ():
        if isinstance(part, dict):
            if get(part, "inlineData") is not None:
                found.add("inline_data")
            if get(part, "fileData") is not None:
                found.add("file_data")


def candidate_count(body: dict[str, Any]) -> int:
    config = get(request_of(body), "generationConfig")
    value = get(config, "candidateCount") if isinstance(config, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 1 else 1


def _thinking(body: dict[str, Any]) -> dict[str, Any]:
    config = get(body, "generationConfig")
    thinking = get(config, "thinkingConfig") if isinstance(config, dict) else None
    return thinking if isinstance(thinking, dict) else {}


def thinking_allowance(model: str, body: dict[str, Any]) -> int:
    """What one answer may think: its ``thinkingBudget``, else (dynamic thinking, a
    ``thinkingLevel``, or nothing said) the model's largest budget."""
    budget = get(_thinking(body), "thinkingBudget")
    if isinstance(budget, int) and not isinstance(budget, bool) and budget >= 0:
        return budget
    return max_thinking(model)


def thinking_off(body: dict[str, Any]) -> bool:
    """The request turns thinking off (``thinkingBudget: 0``)."""
    return bool(get(_thinking(body), "thinkingBudget") == 0)


def output_worst_case(model: str, body: dict[str, Any]) -> int | None:
    """The most output (thinking included) a request may be billed for; None when it sets
    no ``maxOutputTokens`` and the model's most is not known."""
    config = get(body, "generationConfig")
    cap = get(config, "maxOutputTokens") if isinstance(config, dict) else None
    if not isinstance(cap, int) or isinstance(cap, bool):
        cap = max_output(model)
    if cap is None:
        return None
    return (cap + thinking_allowance(model, body)) * candidate_count(body)


def spelled(node: Any, name: str) -> str:
    """The spelling of ``name`` a request object uses: its proto name when only that is
    given, or when neither is and the object's other fields are proto names; else its JSON
    name (what ``get`` reads first)."""
    if not isinstance(node, dict) or node.get(name) is not None:
        return name
    if node.get(snake(name)) is not None or (node and all("_" in k for k in node)):
        return snake(name)
    return name


def _given_int(node: Any, name: str) -> int | None:
    value = get(node, name)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def requested_cap(model: str, body: dict[str, Any]) -> tuple[str, int | None, int]:
    """The output cap a request sets for one answer, as the max_tokens policy reads it: the
    field as the client spelled it (``generationConfig.maxOutputTokens`` or
    ``generation_config.max_output_tokens``), the cap with what the answer may think added
    (None when no cap is set), and that thinking (``thinking_allowance``)."""
    config = get(body, "generationConfig")
    field = f"{spelled(body, 'generationConfig')}.{spelled(config, 'maxOutputTokens')}"
    cap = _given_int(config, "maxOutputTokens")
    thinking = thinking_allowance(model, body)
    return field, None if cap is None else cap + thinking, thinking


def thinking_floor(model: str) -> tuple[int, bool]:
    """The least a thinking budget may be for ``model`` (Google refuses less), and whether
    its thinking can be turned off (``thinkingBudget: 0``)."""
    name = model.strip().lower().removeprefix("models/")
    floor = next((value for prefix, value in _MIN_THINKING if name.startswith(prefix)), 1)
    return floor, not name.startswith(_ALWAYS_THINKS)


def _thinking_within(model: str, cap: int, asked: int | None) -> int:
    """The thinking budget that leaves room for an answer in ``cap`` tokens: what the
    client's answer cap leaves, else half, never under the model's least; 0 (thinking off)
    when even that would not fit, or a refusal for a model that must think."""
    thinking = cap - asked if asked is not None and asked < cap // 2 else cap // 2
    floor, can_stop = thinking_floor(model)
    thinking = max(thinking, floor)
    if thinking < cap:
        return thinking
    if can_stop:
        return 0
    raise GatewayError(
        422, f"{model} always thinks, at least {floor:,} tokens (thinkingBudget), and the "
        f"output cap this gateway applies is {cap:,} tokens per answer: no room for an "
        f"answer. Use a model that can answer without thinking, or ask the operator for an "
        f"output limit above {floor:,}", code="output_cap_below_thinking_floor",
        param="generationConfig.thinkingConfig.thinkingBudget")


def thinking_for(model: str, body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with its ``thinkingBudget`` fitted to ``model`` (after a switch of model): a
    budget past the model's largest is lowered to it, one under its least is 0 (thinking
    off) where the model can stop thinking; otherwise the body as it was."""
    budget = get(_thinking(body), "thinkingBudget")
    most = max_thinking(model)
    if not isinstance(budget, int) or isinstance(budget, bool) or budget <= 0 or not most:
        return body
    floor, can_stop = thinking_floor(model)
    fitted = most if budget > most else 0 if budget < floor and can_stop else budget
    if fitted == budget:
        return body
    config = get(body, "generationConfig")
    thinking = get(config, "thinkingConfig")
    config_name, thinking_name = spelled(body, "generationConfig"), \
        spelled(config, "thinkingConfig")
    budget_name = spelled(thinking, "thinkingBudget")
    return {**without(body, "generationConfig"), config_name: {
        **without(config, "thinkingConfig"),
        thinking_name: {**without(thinking, "thinkingBudget"), budget_name: fitted}}}


def capped_config(model: str, body: dict[str, Any], cap: int) -> dict[str, Any]:
    """``body``'s ``generationConfig`` fitted to ``cap`` tokens of output per answer:
    ``maxOutputTokens`` for what thinking leaves (never above the client's own), and a
    ``thinkingBudget`` (``_thinking_within``) when the thinking allowed would not fit. Each
    field keeps the spelling the client gave it, and its other spelling is dropped."""
    given = get(body, "generationConfig")
    asked = _given_int(given, "maxOutputTokens")
    cap_name = spelled(given, "maxOutputTokens")
    config = without(given, "maxOutputTokens") if isinstance(given, dict) else {}
    thinking = thinking_allowance(model, body)
    if thinking and thinking >= cap:
        thinking = _thinking_within(model, cap, asked)
        current = get(config, "thinkingConfig")
        budget_name = spelled(current, "thinkingBudget")
        rewritten = without(current, "thinkingBudget", "thinkingLevel") \
            if isinstance(current, dict) else {}
        rewritten[budget_name] = thinking
        config_name = spelled(config, "thinkingConfig")
        config = without(config, "thinkingConfig")
        config[config_name] = rewritten
    answer = cap - thinking
    config[cap_name] = answer if asked is None else min(asked, answer)
    return config


def set_gemini_cap(req: CanonicalRequest, cap: int) -> None:
    """Make the request's worst case (every candidate, thinking included) fit ``cap``
    tokens of output (``capped_config``), in the ``generationConfig`` the client spelled.
    The client's body is untouched."""
    answers = candidate_count(req.body)
    per = max(cap // answers, 1)
    name = spelled(req.body, "generationConfig")
    config = capped_config(req.model, req.body, per)
    req.body = {**without(req.body, "generationConfig"), name: config}
    req.output_cap = per * answers
    req.output_cap_field = f"{name}.{spelled(config, 'maxOutputTokens')}"


def gemini_terms(body: dict[str, Any]) -> PriceTerms:
    """Audio in (inline audio or video parts), and Google Search grounding (billed per
    grounded prompt)."""
    request = request_of(body)
    audio = False
    for content in get(request, "contents") or ():
        parts = content.get("parts") if isinstance(content, dict) else None
        for part in parts[:MAX_PARTS] if isinstance(parts, list) else ():
            data = get(part, "inlineData") or get(part, "fileData") \
                if isinstance(part, dict) else None
            mime = get(data, "mimeType") if isinstance(data, dict) else None
            if isinstance(mime, str) and mime.startswith(("audio/", "video/")):
                audio = True
    searches = 0
    for tool in get(request, "tools") or ():
        if get(tool, "googleSearch") is not None or \
                get(tool, "googleSearchRetrieval") is not None:
            searches = 1
    return PriceTerms(audio_input=audio, web_searches=searches)


# --- answers ------------------------------------------------------------------------------


def _modality(details: Any, modality: str) -> int:
    total = 0
    for item in details if isinstance(details, list) else ():
        if isinstance(item, dict) and item.get("modality") == modality:
            total += token_count(item.get("tokenCount"))
    return total


def usage_of_metadata(meta: Any) -> Usage | None:
    """A ``usageMetadata`` object in tokenstile's convention: tool-use prompts are input,
    thoughts are output (and reasoning), cached content is part of the input."""
    if not isinstance(meta, dict):
        return None
    tool_prompt = token_count(meta.get("toolUsePromptTokenCount"))
    cached = token_count(meta.get("cachedContentTokenCount"))
    thoughts = token_count(meta.get("thoughtsTokenCount"))
    audio_in = _modality(meta.get("promptTokensDetails"), _AUDIO) + \
        _modality(meta.get("toolUsePromptTokensDetails"), _AUDIO)
    return Usage(
        input_tokens=token_count(meta.get("promptTokenCount")) + tool_prompt,
        output_tokens=token_count(meta.get("candidatesTokenCount")) + thoughts,
        cached_input_tokens=cached, reasoning_tokens=thoughts,
        input_audio_tokens=audio_in,
        cached_audio_tokens=_modality(meta.get("cacheTokensDetails"), _AUDIO),
        output_audio_tokens=_modality(meta.get("candidatesTokensDetails"), _AUDIO))


def _grounded(payload: dict[str, Any]) -> bool:
    for candidate in payload.get("candidates") or ():
        grounding = candidate.get("groundingMetadata") if isinstance(candidate, dict) \
            else None
        if isinstance(grounding, dict) and grounding.get("webSearchQueries"):
            return True
    return False


def usage_of_answer(payload: Any) -> Usage | None:
    """The usage of a whole answer (None when it carries none)."""
    if not isinstance(payload, dict):
        return None
    usage = usage_of_metadata(payload.get("usageMetadata"))
    if usage is not None and _grounded(payload):
        usage.web_search_requests = 1
    return usage


# --- stream chunks ------------------------------------------------------------------------------


class GeminiStreamState:
    """What a stream's chunks said so far: the text, whether a candidate finished, the
    latest ``usageMetadata`` and the final one."""

    __slots__ = ("final", "finished", "grounded", "meta", "text")

    def __init__(self) -> None:
        self.text = AnswerText()
        self.finished = False
        self.grounded = False
        self.meta: dict[str, Any] | None = None
        self.final: dict[str, Any] | None = None

    def apply(self, chunk: Any, *, text: bool = True) -> None:
        if not isinstance(chunk, dict):
            return
        for candidate in chunk.get("candidates") or ():
            if not isinstance(candidate, dict):
                continue
            if text:
                gemini_candidate_text(candidate, self.text)
            if candidate.get("finishReason"):
                self.finished = True
        if _grounded(chunk):
            self.grounded = True
        meta = chunk.get("usageMetadata")
        if isinstance(meta, dict):
            self.meta = meta
            if self.finished:
                self.final = meta

    def usage(self, model: str) -> Usage | None:
        """The final usage; before it, the input the chunks reported with the output
        counted from the text seen (None when no chunk reported usage)."""
        if self.final is not None:
            usage = usage_of_metadata(self.final)
            assert usage is not None
            usage.web_search_requests = 1 if self.grounded else 0
            return usage
        usage = usage_of_metadata(self.meta)
        if usage is None:
            return None
        seen, thought = self.text.count(model)
        reasoning = max(usage.reasoning_tokens, thought)
        visible = max(usage.output_tokens - usage.reasoning_tokens, seen - thought)
        usage.output_tokens, usage.reasoning_tokens = visible + reasoning, reasoning
        usage.web_search_requests = 1 if self.grounded else 0
        return usage
