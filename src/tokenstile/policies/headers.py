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
from tokenstile.policies.tighten import tighten_one

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


def candidate(current: Any, header: str, policy: str, value: str,
              compiler: WordCompiler) -> Any:
    """The policy's setting as the header would have it, given its ``current`` one (not
    yet checked against it)."""
    if policy == "max_tokens":
        n = _number(header, value)
        return MaxTokensRule(n, header, current.mode if current else "block") if n else None
    if policy in ("max_prompt_chars", "max_input_tokens"):
        n = _number(header, value)
        return LimitRule(n, header) if n else None
    if policy == "retries":
        return _number(header, value, allow_off=False)
    if policy == "enforce_user_ids":
        return UserIdsRule(header, current.header if current else None) \
            if _switch(header, value) else None
    if policy == "auto_moderate":
        if not _switch(header, value):
            return None
        return replace(current, source=header, shadow=False) if current \
            else ModerationRule(header)
    if policy == "prompt_reflection":
        text = value.strip().lower()
        action = "block" if text in _ON else "none" if text in _OFF else text
        if action not in ("none", "audit", "redact", "block"):
            raise _invalid(header, value, "none, audit, redact or block")
        if action == "none":
            return None
        return replace(current, action=action, source=header, shadow=False) if current \
            else ReflectionRule(header, action)
    return _word_candidate(current, header, policy, value, compiler)


def _word_candidate(current: WordRule | None, header: str, policy: str, value: str,
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
    mask = current.mask if current is not None else "****"
    lists = tuple(ListSetting(name, action) for name, action in spec.items())
    return compiler.rule(policy, lists, mask, header)


def apply_headers(base: Rules, headers: Mapping[str, str],
                  compiler: WordCompiler) -> tuple[Rules, list[Loosening]]:
    """``base`` tightened by every policy header present; the loosening ones listed."""
    changes: dict[str, Any] = {}
    loosened: list[Loosening] = []
    for header, policy in HEADERS:
        value = headers.get(header)
        if value is None:
            continue
        current = changes[policy] if policy in changes else getattr(base, policy)
        wanted = candidate(current, header, policy, value, compiler)
        result, looser = tighten_one(policy, current, wanted, compiler)
        if looser:
            loosened.append(Loosening(header, value[:64], policy))
        if result is not current:
            changes[policy] = result
    return (base._replace(**changes) if changes else base), loosened
