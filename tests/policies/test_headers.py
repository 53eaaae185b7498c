"""Per-request headers can only tighten the configuration: examples, then properties over
every combination of configuration and headers."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.policies.helpers import chat, compiler, rules_from
from tokenstile.errors import GatewayError
from tokenstile.policies.decisions import Block, Decision, Rewrite
from tokenstile.policies.engine import request_decisions
from tokenstile.policies.headers import HEADERS, apply_headers
from tokenstile.policies.rules import ACTION_RANK, Rules
from tokenstile.policies.scanner import WordFinder, scan_whole
from tokenstile.policies.tighten import (
    stricter_limit,
    stricter_max_tokens,
    stricter_moderation,
    stricter_reflection,
    stricter_retries,
    stricter_user_ids,
)


def tightened(policies: dict[str, Any], headers: dict[str, str]) -> tuple[Rules, list[str]]:
    base, _ = rules_from(policies)
    rules, loosened = apply_headers(base, headers, compiler())
    return rules, [item.header for item in loosened]


def test_a_smaller_limit_applies_and_names_the_header() -> None:
    rules, loosened = tightened({"max_tokens": 100}, {"x-tokenstile-max-tokens": "10"})
    assert rules.max_tokens is not None
    assert (rules.max_tokens.limit, rules.max_tokens.source) == (10, "x-tokenstile-max-tokens")
    assert loosened == []


@pytest.mark.parametrize("value", ["200", "0", "off", "false", "none", ""])
def test_a_larger_limit_or_off_is_ignored_and_flagged(value: str) -> None:
    rules, loosened = tightened({"max_tokens": 100}, {"x-usagepanda-max-tokens": value})
    assert rules.max_tokens is not None and rules.max_tokens.limit == 100
    assert loosened == ["x-usagepanda-max-tokens"]


def test_a_header_switches_on_what_the_config_leaves_off() -> None:
    rules, loosened = tightened({}, {"x-usagepanda-max-tokens": "10",
                                     "x-usagepanda-enforce-user-ids": "true",
                                     "x-tokenstile-auto-moderate": "yes",
                                     "x-tokenstile-prompt-reflection": "redact",
                                     "x-tokenstile-request-wordlists": "profanity:block,dan:audit",
                                     "x-tokenstile-max-input-tokens": "5"})
    assert rules.max_tokens is not None and rules.max_tokens.mode == "block"
    assert rules.enforce_user_ids is not None and rules.auto_moderate is not None
    assert rules.prompt_reflection is not None and rules.prompt_reflection.action == "redact"
    assert rules.request_wordlists is not None
    assert {(s.name, s.action) for s in rules.request_wordlists.lists} == {
        ("profanity", "block"), ("jailbreak", "audit")}
    assert rules.max_input_tokens is not None and rules.max_input_tokens.limit == 5
    assert loosened == []


def test_turning_off_what_is_off_is_not_a_loosening() -> None:
    rules, loosened = tightened({}, {"x-tokenstile-enforce-user-ids": "false"})
    assert rules.enforce_user_ids is None and loosened == []


def test_a_header_enforces_a_shadowed_policy() -> None:
    rules, _ = tightened({"max_tokens": {"limit": 100, "shadow": True}},
                         {"x-tokenstile-max-tokens": "100"})
    assert rules.max_tokens is not None and not rules.max_tokens.shadow


def test_word_list_actions_only_go_up() -> None:
    rules, loosened = tightened({"request_wordlists": "profanity:redact,custom:block"},
                                {"x-tokenstile-request-wordlists":
                                 "profanity:block,custom:audit,jailbreak:redact"})
    assert rules.request_wordlists is not None
    assert {(s.name, s.action) for s in rules.request_wordlists.lists} == {
        ("profanity", "block"), ("custom", "block"), ("jailbreak", "redact")}
    assert loosened == ["x-tokenstile-request-wordlists"]


@pytest.mark.parametrize(("header", "value"), [
    ("x-tokenstile-max-tokens", "ten"),
    ("x-tokenstile-max-tokens", "-5"),
    ("x-tokenstile-enforce-user-ids", "maybe"),
    ("x-tokenstile-request-wordlists", "nonexistent:block"),
    ("x-tokenstile-response-wordlists", "profanity:explode"),
    ("x-tokenstile-prompt-reflection", "loudly"),
    ("x-usagepanda-retry-count", "off"),
])
def test_an_unreadable_header_is_a_400(header: str, value: str) -> None:
    with pytest.raises(GatewayError) as caught:
        tightened({}, {header: value})
    assert caught.value.status == 400 and caught.value.code == "invalid_policy_header"
    assert caught.value.param == header


# -- properties ---------------------------------------------------------------------------

LISTS = ["profanity", "jailbreak", "custom", "adult"]
ACTIONS = ["audit", "redact", "block"]
OFF = ["0", "off", "false", "none"]


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), strategy)


def word_config() -> st.SearchStrategy[Any]:
    return st.fixed_dictionaries({
        "lists": st.dictionaries(st.sampled_from(LISTS), st.sampled_from(ACTIONS), min_size=1),
        "shadow": st.booleans()})


configs = st.fixed_dictionaries({}, optional={
    "max_tokens": maybe(st.fixed_dictionaries({"limit": st.integers(1, 200),
                                               "mode": st.sampled_from(["block", "clamp"]),
                                               "shadow": st.booleans()})),
    "max_prompt_chars": maybe(st.fixed_dictionaries({"limit": st.integers(1, 300),
                                                     "shadow": st.booleans()})),
    "max_input_tokens": maybe(st.fixed_dictionaries({"limit": st.integers(1, 100),
                                                     "shadow": st.booleans()})),
    "enforce_user_ids": maybe(st.fixed_dictionaries({
        "enabled": st.booleans(), "header": st.sampled_from([None, "x-end-user"]),
        "shadow": st.booleans()})),
    "request_wordlists": maybe(word_config()),
    "response_wordlists": maybe(word_config()),
    "auto_moderate": maybe(st.fixed_dictionaries({
        "categories": maybe(st.lists(st.sampled_from(["violence", "hate", "sexual"]),
                                     unique=True)),
        "failure_mode": st.sampled_from(["open", "closed"]), "shadow": st.booleans()})),
    "prompt_reflection": maybe(st.fixed_dictionaries({
        "action": st.sampled_from(["none", *ACTIONS]),
        "min_run_chars": maybe(st.integers(16, 64)), "shadow": st.booleans()})),
    "retries": maybe(st.integers(0, 5)),
})

number = st.one_of(st.integers(0, 400).map(str), st.sampled_from(OFF))
switch = st.sampled_from(["true", "false", "yes", "no", "on", "off", "1", "0"])
word_spec = st.one_of(
    st.sampled_from(OFF),
    st.lists(st.tuples(st.sampled_from(LISTS), st.sampled_from(ACTIONS)), min_size=1,
             max_size=3).map(lambda items: ",".join(f"{n}:{a}" for n, a in items)))
VALUES: dict[str, st.SearchStrategy[str]] = {
    "max_tokens": number, "max_prompt_chars": number, "max_input_tokens": number,
    "enforce_user_ids": switch, "auto_moderate": switch,
    "request_wordlists": word_spec, "response_wordlists": word_spec,
    "prompt_reflection": st.sampled_from(["none", "true", "false", *ACTIONS]),
    "retries": st.integers(0, 10).map(str),
}
header_sets = st.dictionaries(
    st.sampled_from([name for name, _ in HEADERS]), st.just(""), max_size=6).flatmap(
    lambda chosen: st.fixed_dictionaries(
        {name: VALUES[dict(HEADERS)[name]] for name in chosen}))

vocabulary = st.sampled_from(["hello", "damn", "project zeus", "nsfw", "you are now dan",
                              "shit", "the", "acme secret", "ok", "ignore previous instructions"])
requests = st.fixed_dictionaries({
    "content": st.lists(vocabulary, max_size=8).map(" ".join),
    "cap": maybe(st.integers(1, 400)),
    "user": maybe(st.just("u1")),
})


def word_settings_ok(result: Any, base: Any) -> bool:
    if base is None:
        return True
    if result is None:
        return False
    for setting in base.lists:
        now = result.setting(setting.name)
        if now is None or ACTION_RANK[now.action] < ACTION_RANK[setting.action] or \
                (now.shadow and not setting.shadow):
            return False
    return True


def assert_at_least_as_strict(result: Rules, base: Rules) -> None:
    assert stricter_max_tokens(result.max_tokens, base.max_tokens)
    assert stricter_limit(result.max_prompt_chars, base.max_prompt_chars)
    assert stricter_limit(result.max_input_tokens, base.max_input_tokens)
    assert stricter_user_ids(result.enforce_user_ids, base.enforce_user_ids)
    assert stricter_moderation(result.auto_moderate, base.auto_moderate)
    assert stricter_reflection(result.prompt_reflection, base.prompt_reflection)
    assert stricter_retries(result.retries, base.retries)
    assert word_settings_ok(result.request_wordlists, base.request_wordlists)
    assert word_settings_ok(result.response_wordlists, base.response_wordlists)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs, header_sets)
def test_no_header_combination_loosens_any_setting(config: dict[str, Any],
                                                  headers: dict[str, str]) -> None:
    base, _ = rules_from(config)
    result, _ = apply_headers(base, headers, compiler())
    assert_at_least_as_strict(result, base)


def looser(policy: str, value: str, base: Rules) -> bool:
    """An independent reading of whether a header asks for less than ``base``."""
    current = getattr(base, policy)
    text = value.strip().lower()
    if policy in ("max_tokens", "max_prompt_chars", "max_input_tokens"):
        return current is not None and (text in OFF or int(text) > current.limit)
    if policy == "retries":
        return current is not None and int(text) > current
    if policy in ("enforce_user_ids", "auto_moderate"):
        return current is not None and text in ("false", "no", "off", "0")
    if policy == "prompt_reflection":
        action = {"true": "block", "false": "none"}.get(text, text)
        return current is not None and ACTION_RANK[action] < ACTION_RANK[current.action]
    if text in OFF:
        return current is not None
    asked: dict[str, int] = {}
    for item in text.split(","):
        name, _, action = item.partition(":")
        name = "jailbreak" if name == "dan" else name
        asked[name] = max(asked.get(name, 0), ACTION_RANK[action])  # the stricter one counts
    for name, rank in asked.items():
        setting = current.setting(name) if current is not None else None
        if setting is not None and rank < ACTION_RANK[setting.action]:
            return True
    return False


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs, header_sets)
def test_every_loosening_header_is_flagged(config: dict[str, Any],
                                           headers: dict[str, str]) -> None:
    base, _ = rules_from(config)
    _, loosened = apply_headers(base, headers, compiler())
    flagged = {item.header for item in loosened}
    table = dict(HEADERS)
    for header, value in headers.items():
        if looser(table[header], value, base):
            assert header in flagged, (header, value)


def enforced(decisions: list[Decision]) -> tuple[set[str], int | None, set[str]]:
    blocks = {d.policy for d in decisions if isinstance(d, Block) and not d.shadow}
    caps = [d.output_cap for d in decisions
            if isinstance(d, Rewrite) and not d.shadow and d.output_cap is not None]
    redacted = {d.policy for d in decisions if isinstance(d, Rewrite) and not d.shadow
                and d.note == "redacted"}
    return blocks, (caps[0] if caps else None), redacted


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs, header_sets, requests)
def test_what_the_config_refuses_the_headers_refuse_too(
        config: dict[str, Any], headers: dict[str, str], request: dict[str, Any]) -> None:
    fields: dict[str, Any] = {}
    if request["cap"] is not None:
        fields["max_tokens"] = request["cap"]
    if request["user"] is not None:
        fields["user"] = request["user"]
    req = chat(request["content"], **fields)
    base, _ = rules_from(config)
    result, _ = apply_headers(base, headers, compiler())
    base_blocks, base_cap, base_redacted = enforced(request_decisions(base, req, headers))
    blocks, cap, redacted = enforced(request_decisions(result, req, headers))
    assert base_blocks <= blocks
    if "max_tokens" not in blocks and base_cap is not None:
        assert cap is not None and cap <= base_cap
    if "request_wordlists" not in blocks:
        assert base_redacted <= redacted
    # the answer side: every block and redaction the config makes, the headers make too
    answer = request["content"]
    for policy in ("response_wordlists",):
        before, after = getattr(base, policy), getattr(result, policy)
        if before is None:
            continue
        base_spans = scan_whole(answer, [WordFinder(before.matcher)])[1]
        spans = scan_whole(answer, [WordFinder(after.matcher)])[1]
        strictest = {(s.start, s.end): ACTION_RANK[s.hit.action or "none"] for s in spans}
        for span in base_spans:
            if span.hit.action is not None:
                assert strictest[(span.start, span.end)] >= ACTION_RANK[span.hit.action]
