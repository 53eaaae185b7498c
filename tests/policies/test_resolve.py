"""Scopes: the most specific setting wins, field by field; a client-named feature can only
tighten; shorthands and validation of the ``policies`` section."""

from __future__ import annotations

import pytest

from tests.policies.helpers import rules_from
from tokenstile.config import ConfigError, parse_config
from tokenstile.policies.resolve import Resolver
from tokenstile.policies.rules import ListSetting, WordCompiler
from tokenstile.policies.schema import PoliciesConfig
from tokenstile.types import Caller

ALICE = Caller(organization="acme", project="web", key_id="key_a", key_name="alice-laptop")


def test_most_specific_scope_wins_field_by_field() -> None:
    rules, _ = rules_from({
        "max_tokens": {"limit": 1000, "mode": "clamp"},
        "organizations": {"acme": {"max_tokens": 500}},
        "projects": {"web": {"max_tokens": 200}},
        "keys": {"key_a": {"max_tokens": {"limit": 10}}},
    }, ALICE)
    assert rules.max_tokens is not None
    assert (rules.max_tokens.limit, rules.max_tokens.mode, rules.max_tokens.source) == (
        10, "clamp", "key")


def test_source_follows_the_limit_not_the_last_field_touched() -> None:
    rules, _ = rules_from({"projects": {"web": {"max_tokens": 200}},
                           "keys": {"key_a": {"max_tokens": {"shadow": True}}}}, ALICE)
    assert rules.max_tokens is not None
    assert (rules.max_tokens.limit, rules.max_tokens.source, rules.max_tokens.shadow) == (
        200, "project", True)


def test_keys_are_found_by_id_or_name() -> None:
    rules, _ = rules_from({"keys": {"alice-laptop": {"max_prompt_chars": 99}}}, ALICE)
    assert rules.max_prompt_chars is not None and rules.max_prompt_chars.limit == 99


def test_a_narrower_scope_switches_a_policy_off() -> None:
    rules, _ = rules_from({"enforce_user_ids": True, "max_tokens": 100,
                           "projects": {"web": {"enforce_user_ids": False,
                                                "max_tokens": None}}}, ALICE)
    assert rules.enforce_user_ids is None and rules.max_tokens is None


def test_bound_feature_overrides_like_any_scope() -> None:
    bound = Caller(organization="acme", project="web", key_id="key_b", feature="batch")
    rules, loosened = rules_from({"max_tokens": 100,
                                  "features": {"batch": {"max_tokens": 4000}}}, bound, "batch")
    assert rules.max_tokens is not None and rules.max_tokens.limit == 4000 and not loosened


def test_client_named_feature_may_only_tighten() -> None:
    config = {"max_tokens": 100, "enforce_user_ids": True,
              "request_wordlists": "profanity:redact",
              "models": {"allow": ["gpt-4o*"]},
              "features": {"lenient": {"max_tokens": 4000, "enforce_user_ids": False,
                                       "request_wordlists": "profanity:audit"},
                           "strict": {"max_tokens": 10, "request_wordlists": "jailbreak:block",
                                      "models": {"allow": ["*-mini"]}}}}
    rules, loosened = rules_from(config, ALICE, "lenient")
    assert rules.max_tokens is not None and rules.max_tokens.limit == 100
    assert rules.enforce_user_ids is not None
    assert rules.request_wordlists is not None
    assert rules.request_wordlists.setting("profanity") == ListSetting("profanity", "redact")
    assert set(loosened) == {"max_tokens", "enforce_user_ids", "request_wordlists"}
    rules, loosened = rules_from(config, ALICE, "strict")
    assert rules.max_tokens is not None and rules.max_tokens.limit == 10
    assert rules.request_wordlists is not None
    assert {s.name for s in rules.request_wordlists.lists} == {"profanity", "jailbreak"}
    assert rules.models is not None and rules.models.allow == (("gpt-4o*",), ("*-mini",))
    assert not loosened


def test_resolution_is_cached_per_scope() -> None:
    config = PoliciesConfig.model_validate({"max_tokens": 5})
    resolver = Resolver(config, WordCompiler({}))
    first = resolver.rules(ALICE, None)
    assert resolver.rules(ALICE, None) is first
    assert resolver.rules(Caller(project="other"), None) is not first


def test_nothing_configured() -> None:
    assert not PoliciesConfig().configured
    assert not PoliciesConfig.model_validate({"wordlists": {"x": ["y"]}}).configured
    assert PoliciesConfig.model_validate({"keys": {"k": {"retries": 1}}}).configured


def test_shorthands() -> None:
    config = PoliciesConfig.model_validate({
        "max_tokens": 10, "enforce_user_ids": True, "auto_moderate": True,
        "prompt_reflection": "redact", "request_wordlists": "profanity:block,dan:redact",
        "response_wordlists": ["profanity"], "max_input_tokens": 100})
    assert config.max_tokens is not None and config.max_tokens.limit == 10
    assert config.request_wordlists is not None
    assert config.request_wordlists.lists == {"profanity": "block", "jailbreak": "redact"}
    assert config.response_wordlists is not None
    assert config.response_wordlists.lists == {"profanity": "block"}
    assert config.prompt_reflection is not None and config.prompt_reflection.action == "redact"


@pytest.mark.parametrize(("policies", "expected"), [
    ({"request_wordlists": "nope:block"}, "unknown word list 'nope'"),
    ({"projects": {"p": {"response_wordlists": {"lists": {"x": "block"}}}}},
     "projects.p.response_wordlists: unknown word list 'x'"),
    ({"request_wordlists": "profanity:burn"}, "unknown word-list action 'burn'"),
    ({"auto_replies": [{"reply": "hi"}]}, "exactly one of 'match' or 'pattern'"),
    ({"max_tokens": 0}, "greater than or equal to 1"),
    ({"auto_moderate": {"upstream": "nowhere"}}, "unknown upstream 'nowhere'"),
    ({"maxtokens": 1}, "Extra inputs are not permitted"),
])
def test_config_errors_name_the_field(policies: dict[str, object], expected: str) -> None:
    data = {"upstreams": {"openai": {"base_url": "http://127.0.0.1:1/v1"}},
            "policies": policies}
    with pytest.raises(ConfigError) as caught:
        parse_config(data, "<test>", env={})
    assert any(expected in line for line in caught.value.errors), caught.value.errors
