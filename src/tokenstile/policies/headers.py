"""Per-request policy headers, ``x-tokenstile-*`` and Usage Panda's ``x-usagepanda-*``.

A header can only make a policy stricter than the configuration. One that would loosen it
(a larger limit, ``false`` for a policy that is on, a weaker word-list action) is ignored,
and the request is flagged. A header the gateway cannot read is refused with 400: silently
ignoring it would leave the request less protected than its sender asked for.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from tokenstile.errors import GatewayError, bad_request
from tokenstile.policies.rules import (
    LimitRule,
    ListSetting,
    MaxTokensRule,
    ModerationRule,
    ReflectionRule,
    Rules,
    UserIdsRule,
    WordCompiler,
    WordRule,
)
from tokenstile.policies.schema import parse_list_spec
from tokenstile.policies.tighten import tighten

PREFIXES = ("x-tokenstile-", "x-usagepanda-")
SUFFIXES: dict[str, str] = {
    "max-tokens": "max_tokens",
    "max-prompt-chars": "max_prompt_chars",
    "max-input-tokens": "max_input_tokens",
    "enforce-user-ids": "enforce_user_ids",
    "request-wordlists": "request_wordlists",
    "response-wordlists": "response_wordlists",
    "auto-moderate": "auto_moderate",
    "prompt-reflection": "prompt_reflection",
    "retries": "retries",
    "retry-count": "retries",
}
HEADERS: tuple[tuple[str, str], ...] = tuple(
    (prefix + suffix, policy) for suffix, policy in SUFFIXES.items() for prefix in PREFIXES)
HEADER_NAMES = frozenset(name for name, _ in HEADERS)

_OFF = frozenset({"", "0", "false", "off", "no", "none", "disabled"})
_ON = frozenset({"1", "true", "on", "yes", "enabled"})


@dataclass(frozen=True, slots=True)
class Loosening:
    """A header that asked for less than the configuration, and was ignored."""

    header: str
    value: str
    policy: str


def _invalid(header: str, value: str, expected: str) -> GatewayError:
    shown = value if len(value) <= 64 else value[:61] + "..."
    return bad_request(f"the {header} header must be {expected}, got {shown!r}",
                       param=header, code="invalid_policy_header")


def _number(header: str, value: str, allow_off: bool = True) -> int | None:
    text = value.strip().lower()
    if allow_off and text in _OFF:
        return None
    if text.isdigit() and len(text) <= 12:
        return int(text)
    raise _invalid(header, value, "a whole number" + (" (or 0 / off)" if allow_off else ""))


def _switch(header: str, value: str) -> bool:
    text = value.strip().lower()
    if text in _ON:
        return True
    if text in _OFF:
        return False
    raise _invalid(header, value, "true or false")


def candidate(base: Rules, header: str, policy: str, value: str,
              compiler: WordCompiler) -> Rules:
    """The rules as the header would have them (not yet checked against ``base``)."""
    if policy == "max_tokens":
        n = _number(header, value)
        mode = base.max_tokens.mode if base.max_tokens else "block"
        return replace(base, max_tokens=MaxTokensRule(n, header, mode) if n else None)
    if policy in ("max_prompt_chars", "max_input_tokens"):
        n = _number(header, value)
        limit: dict[str, Any] = {policy: LimitRule(n, header) if n else None}
        return replace(base, **limit)
    if policy == "retries":
        return replace(base, retries=_number(header, value, allow_off=False))
    if policy == "enforce_user_ids":
        on = _switch(header, value)
        current = base.enforce_user_ids
        return replace(base, enforce_user_ids=UserIdsRule(
            header, current.header if current else None) if on else None)
    if policy == "auto_moderate":
        on = _switch(header, value)
        moderation = base.auto_moderate
        rule = replace(moderation, source=header, shadow=False) if moderation \
            else ModerationRule(header)
        return replace(base, auto_moderate=rule if on else None)
    if policy == "prompt_reflection":
        text = value.strip().lower()
        action = "block" if text in _ON else "none" if text in _OFF else text
        if action not in ("none", "audit", "redact", "block"):
            raise _invalid(header, value, "none, audit, redact or block")
        present = base.prompt_reflection
        reflection = replace(present, action=action, source=header, shadow=False) \
            if present else ReflectionRule(header, action)
        return replace(base, prompt_reflection=None if action == "none" else reflection)
    words: dict[str, Any] = {policy: _word_candidate(base, header, policy, value, compiler)}
    return replace(base, **words)


def _word_candidate(base: Rules, header: str, policy: str, value: str,
                    compiler: WordCompiler) -> WordRule | None:
    if value.strip().lower() in _OFF:
        return None
    try:
        spec = parse_list_spec(value)
    except ValueError as exc:
        raise _invalid(header, value, f"lists and actions like 'profanity:block' ({exc})") \
            from None
    unknown = [name for name in spec if not compiler.known(name)]
    if unknown:
        raise _invalid(header, value, f"built-in or configured word lists; unknown: "
                                      f"{', '.join(unknown)}")
    current = getattr(base, policy)
    mask = current.mask if current is not None else "****"
    lists = tuple(ListSetting(name, action) for name, action in spec.items())
    return compiler.rule(policy, lists, mask, header)


def apply_headers(base: Rules, headers: Mapping[str, str],
                  compiler: WordCompiler) -> tuple[Rules, list[Loosening]]:
    """``base`` tightened by every policy header present; the loosening ones listed."""
    rules = base
    loosened: list[Loosening] = []
    for header, policy in HEADERS:
        value = headers.get(header)
        if value is None:
            continue
        wanted = candidate(rules, header, policy, value, compiler)
        rules, looser = tighten(rules, wanted, compiler, (policy,))
        if looser:
            loosened.append(Loosening(header, value[:64], policy))
    return rules, loosened
