"""The request policies: pure functions of a rule and the parsed request.

Each returns what it decided (nothing, when the request is fine). None of them does I/O;
the engine runs them in order and carries out the decisions.
"""

from __future__ import annotations

from collections.abc import Mapping
from fnmatch import fnmatchcase
from functools import lru_cache
from typing import Any

import orjson

from tokenstile.limits.caps import output_cap_field, requested_cap
from tokenstile.policies.decisions import Block, Decision, Flag, Rewrite, where
from tokenstile.policies.rules import LimitRule, MaxTokensRule, ModelsRule, UserIdsRule, WordRule
from tokenstile.policies.scanner import Span, WordFinder, scan_whole
from tokenstile.policies.schema import AutoReplyRule
from tokenstile.policies.texts import last_user_text, request_slots
from tokenstile.types import CanonicalRequest

_TEXT_FIELDS = ("messages", "prompt", "input", "contents", "content", "title", "requests",
                "inputText")
_PROMPT_PARAM = {"chat": "messages", "messages": "messages", "converse": "messages",
                 "completions": "prompt", "generate_content": "contents",
                 "embed_content": "content", "batch_embed_contents": "requests"}
# APIs whose requests have no end-user field: only a header can name the end user.
_NO_USER_FIELD = {"converse": "Converse", "generate_content": "Gemini's generateContent",
                  "embed_content": "Gemini's embedContent",
                  "batch_embed_contents": "Gemini's batchEmbedContents"}
# APIs that generate no output, so have no output cap to set.
_NO_OUTPUT = frozenset({"embeddings", "count_tokens", "embed_content", "batch_embed_contents",
                        "files", "batches"})


@lru_cache(maxsize=4096)
def check_models(rule: ModelsRule, model: str) -> Decision | None:
    blocked = any(fnmatchcase(model, pattern) for pattern in rule.block)
    outside = [group for group in rule.allow
               if not any(fnmatchcase(model, pattern) for pattern in group)]
    if not blocked and not outside:
        return None
    message = f"the model {model!r} is not allowed {where(rule.source)}"
    if outside and len(rule.allow) == 1:
        message += f"; use one of: {', '.join(rule.allow[0])}"
    return Block("models", "model_blocked", message, "model", rule.shadow)


def check_user_ids(rule: UserIdsRule, req: CanonicalRequest,
                   headers: Mapping[str, str]) -> Decision | None:
    if req.end_user or (rule.header and headers.get(rule.header, "").strip()):
        return None
    without = "Titan's embedding request" if req.wire == "bedrock" and \
        req.api == "embeddings" else _NO_USER_FIELD.get(req.api)
    if without is not None:  # Bedrock's Converse and Titan, Gemini: no end-user field
        field = rule.header or "enforce_user_ids.header"
        how = f"the {rule.header} header" if rule.header else \
            f"an end-user header ({without} has no field for it; configure " \
            "enforce_user_ids.header)"
    else:
        field = "metadata.user_id" if req.wire != "openai" else "user"
        how = f"the '{field}' field" + (f" or the {rule.header} header" if rule.header else "")
    return Block("enforce_user_ids", "user_required",
                 f"requests {where(rule.source)} must name their end user: set {how} "
                 "on every request", field, rule.shadow)


def check_prompt_chars(rule: LimitRule, req: CanonicalRequest) -> Decision | None:
    size = len(req.input_text) + len(req.system_text)
    if size <= rule.limit:
        return None
    return Block("max_prompt_chars", "prompt_too_long",
                 f"the prompt is {size:,} characters, over the limit of {rule.limit:,} "
                 f"{where(rule.source)}; shorten it", _PROMPT_PARAM.get(req.api, "input"),
                 rule.shadow)


def check_input_tokens(rule: LimitRule, req: CanonicalRequest) -> Decision | None:
    if req.input_tokens <= rule.limit:
        return None
    return Block("max_input_tokens", "input_tokens_exceeded",
                 f"the input is {req.input_tokens:,} tokens, over the limit of "
                 f"{rule.limit:,} {where(rule.source)}; shorten it",
                 _PROMPT_PARAM.get(req.api, "input"), rule.shadow)


def check_max_tokens(rule: MaxTokensRule, req: CanonicalRequest) -> Decision | None:
    """A cap is required and bounded; in ``clamp`` mode a missing or excessive one is set
    to the limit instead."""
    if req.api in _NO_OUTPUT or req.media is not None:
        return None  # no output cap to set: images, audio and batches are bounded apart
    field, value, thinking = requested_cap(req)
    if isinstance(value, int) and value <= rule.limit:
        return None
    if rule.mode == "clamp":
        note = "cap_set" if value is None else "clamped"
        return Rewrite("max_tokens", note, output_cap=rule.limit, shadow=rule.shadow)
    if value is None:
        name = output_cap_field(req)
        return Block("max_tokens", "max_tokens_required",
                     f"{name} is required {where(rule.source)}: set it to {rule.limit} or "
                     "less", name, rule.shadow)
    what = f"{field} {value}" if not thinking else \
        f"{field} {value - thinking} plus up to {thinking} tokens of thinking (set " \
        "thinkingConfig.thinkingBudget to think less)"
    return Block("max_tokens", "max_tokens_exceeded",
                 f"{what} exceeds the limit of {rule.limit} {where(rule.source)}",
                 field, rule.shadow)


def check_request_words(rule: WordRule, api: str, body: dict[str, Any]) -> list[Decision]:
    """Block, redact or audit what the users wrote (the system prompt is not theirs)."""
    finder = WordFinder(rule.matcher)
    slots = request_slots(api, body)
    found: list[Span] = []
    redacting = False
    for owner, key in slots:
        _, spans = scan_whole(owner[key], [finder])
        found.extend(spans)
        redacting = redacting or any(s.hit.action == "redact" for s in spans)
    if not found:
        return []
    decisions = word_decisions("request_wordlists", found, rule.source, "request")
    if redacting:
        copy = orjson.loads(orjson.dumps(body))
        for owner, key in request_slots(api, copy):
            owner[key] = scan_whole(owner[key], [finder])[0]
        patch = {name: copy[name] for name in _TEXT_FIELDS if name in copy}
        decisions.append(Rewrite("request_wordlists", "redacted", patch))
    return decisions


def word_decisions(policy: str, spans: list[Span], source: str,
                   what: str) -> list[Decision]:
    """Blocks, audit flags and shadow notes for matches (redaction is the caller's)."""
    decisions: list[Decision] = []
    blocked = sorted({s.hit.label for s in spans if s.hit.action == "block"})
    if blocked:
        decisions.append(Block(policy, "wordlist_blocked", _words_message(what, blocked,
                                                                          source)))
    audited = sorted({s.hit.label for s in spans if s.hit.action == "audit"})
    if audited:
        decisions.append(Flag(policy, "audit:" + ",".join(audited)))
    for action, done in (("block", "blocked"), ("redact", "redacted"), ("audit", "audit")):
        labels = sorted({s.hit.label for s in spans if s.hit.shadow == action})
        if labels:
            decisions.append(Flag(policy, f"{done}:" + ",".join(labels), True))
    return decisions


def _words_message(what: str, labels: list[str], source: str) -> str:
    lists = ", ".join(f"'{label}'" for label in labels)
    plural = "s" if len(labels) > 1 or "," in labels[0] else ""
    return f"the {what} contains words from the {lists} word list{plural}, blocked " \
           f"{where(source)}"


def match_auto_reply(rules: tuple[AutoReplyRule, ...], api: str,
                     body: dict[str, Any]) -> AutoReplyRule | None:
    if api not in ("chat", "completions", "responses", "messages", "generate_content"):
        return None
    text = last_user_text(api, body)
    if text is None:
        return None
    said = " ".join(text.split()).casefold()
    for rule in rules:
        if rule.apis is not None and api not in rule.apis:
            continue
        if rule.match is not None and said == _folded(rule.match):
            return rule
        if rule.pattern is not None and fnmatchcase(said, _folded(rule.pattern)):
            return rule
    return None


@lru_cache(maxsize=1024)
def _folded(text: str) -> str:
    return " ".join(text.split()).casefold()
