"""Policies as the engine applies them: resolved for one scope, compiled, immutable.

Each rule remembers where its setting came from (``source``: a scope such as ``key``, or a
header name) so an error can say "the limit of 10 for this key". A policy that is off is
``None``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from tokenstile.policies.builtin_lists import BUILTIN_LISTS
from tokenstile.policies.scanner import Hit
from tokenstile.policies.schema import (
    AutoReplyRule,
    LimitPolicy,
    MaxTokensPolicy,
    ModelsPolicy,
    ModerationPolicy,
    ReflectionPolicy,
    UserIdsPolicy,
    WordListsPolicy,
)
from tokenstile.policies.wordlists import WordMatcher, list_entries, normalize

ACTION_RANK = {"none": 0, "audit": 1, "redact": 2, "block": 3}


@dataclass(frozen=True, slots=True)
class LimitRule:
    limit: int
    source: str
    shadow: bool = False


@dataclass(frozen=True, slots=True)
class MaxTokensRule:
    limit: int
    source: str
    mode: str = "block"
    shadow: bool = False


@dataclass(frozen=True, slots=True)
class UserIdsRule:
    source: str
    header: str | None = None
    shadow: bool = False


@dataclass(frozen=True, slots=True)
class ModelsRule:
    """A model must match every group in ``allow`` (one group per scope that set one) and
    none of ``block``."""

    source: str
    allow: tuple[tuple[str, ...], ...] = ()
    block: tuple[str, ...] = ()
    shadow: bool = False


@dataclass(frozen=True, slots=True)
class ListSetting:
    name: str
    action: str
    shadow: bool = False


@dataclass(frozen=True, slots=True)
class WordRule:
    lists: tuple[ListSetting, ...]
    source: str
    mask: str = "****"
    matcher: WordMatcher[Hit] = field(compare=False, repr=False, default_factory=lambda:
                                      WordMatcher({}))

    def setting(self, name: str) -> ListSetting | None:
        return next((s for s in self.lists if s.name == name), None)


@dataclass(frozen=True, slots=True)
class ModerationRule:
    source: str
    categories: frozenset[str] | None = None
    failure_mode: str = "open"
    upstream: str | None = None
    model: str = "omni-moderation-latest"
    timeout_s: float = 5.0
    shadow: bool = False


@dataclass(frozen=True, slots=True)
class ReflectionRule:
    source: str
    action: str = "block"
    delimiter: str = "||"
    min_run_chars: int | None = None
    shadow: bool = False


class Rules(NamedTuple):
    """Every policy for one request, in the order the engine runs them (a tuple: copying it
    with one policy changed, as every policy header does, is cheap)."""

    models: ModelsRule | None = None
    enforce_user_ids: UserIdsRule | None = None
    max_prompt_chars: LimitRule | None = None
    max_input_tokens: LimitRule | None = None
    max_tokens: MaxTokensRule | None = None
    request_wordlists: WordRule | None = None
    auto_replies: tuple[AutoReplyRule, ...] = ()
    auto_moderate: ModerationRule | None = None
    retries: int | None = None
    response_wordlists: WordRule | None = None
    prompt_reflection: ReflectionRule | None = None

    @property
    def response_side(self) -> bool:
        return self.response_wordlists is not None or self.prompt_reflection is not None


NO_RULES = Rules()


class WordCompiler:
    """Builds word rules from list settings; one compiled matcher per distinct setting."""

    def __init__(self, custom: Mapping[str, list[str]]) -> None:
        self._custom = {name: tuple(words) for name, words in custom.items()}
        self._cache: dict[tuple[str, tuple[ListSetting, ...], str], WordMatcher[Hit]] = {}

    def known(self, name: str) -> bool:
        return name in self._custom or name in BUILTIN_LISTS

    def rule(self, policy: str, lists: tuple[ListSetting, ...], mask: str,
             source: str) -> WordRule | None:
        if not lists:
            return None
        lists = tuple(sorted(lists, key=lambda s: s.name))
        key = (policy, lists, mask)
        matcher = self._cache.get(key)
        if matcher is None:
            if len(self._cache) > 1024:
                self._cache.clear()
            matcher = self._cache[key] = self._compile(policy, lists, mask)
        return WordRule(lists, source, mask, matcher)

    def _compile(self, policy: str, lists: tuple[ListSetting, ...],
                 mask: str) -> WordMatcher[Hit]:
        entries = list_entries([s.name for s in lists], self._custom)
        owners: dict[str, list[ListSetting]] = {}
        spelled: dict[str, str] = {}
        for setting in lists:
            for word in entries[setting.name]:
                key = normalize(word)
                if not key:
                    continue
                spelled.setdefault(key, word)
                owners.setdefault(key, []).append(setting)
        hits: dict[str, Hit] = {}
        for key, settings in owners.items():
            live = [s.action for s in settings if not s.shadow]
            shadowed = [s.action for s in settings if s.shadow]
            action = max(live, key=ACTION_RANK.__getitem__) if live else None
            would = max(shadowed, key=ACTION_RANK.__getitem__) if shadowed else None
            if would is not None and action is not None and \
                    ACTION_RANK[would] <= ACTION_RANK[action]:
                would = None
            label = ", ".join(sorted({s.name for s in settings}))
            hits[spelled[key]] = Hit(policy, label, action, would, mask)
        return WordMatcher(hits)


# -- from configuration --------------------------------------------------------------------


def to_rule(name: str, value: object, source: str, compiler: WordCompiler) -> Any:
    """One merged configuration value → the rule the engine runs (None when off)."""
    if value is None:
        return None
    if isinstance(value, MaxTokensPolicy):
        return MaxTokensRule(value.limit, source, value.mode, value.shadow) \
            if value.limit else None
    if isinstance(value, LimitPolicy):
        return LimitRule(value.limit, source, value.shadow) if value.limit else None
    if isinstance(value, UserIdsPolicy):
        return UserIdsRule(source, value.header, value.shadow) if value.enabled else None
    if isinstance(value, ModelsPolicy):
        if value.allow is None and not value.block:
            return None
        allow = (tuple(value.allow),) if value.allow is not None else ()
        return ModelsRule(source, allow, tuple(value.block), value.shadow)
    if isinstance(value, WordListsPolicy):
        lists = tuple(ListSetting(n, a, value.shadow) for n, a in value.lists.items())
        return compiler.rule(name, lists, value.mask, source)
    if isinstance(value, ModerationPolicy):
        if not value.enabled:
            return None
        categories = frozenset(value.categories) if value.categories is not None else None
        return ModerationRule(source, categories, value.failure_mode, value.upstream,
                              value.model, value.timeout_s, value.shadow)
    if isinstance(value, ReflectionPolicy):
        if value.action == "none":
            return None
        return ReflectionRule(source, value.action, value.delimiter, value.min_run_chars,
                              value.shadow)
    if name == "auto_replies":
        assert isinstance(value, list)
        return tuple(value)
    return value  # retries


SHADOWABLE = frozenset(Rules._fields) - {"auto_replies", "retries"}


def with_shadow(rules: Rules, forced: Mapping[str, bool], compiler: WordCompiler) -> Rules:
    """``rules`` with the named policies put into shadow mode (True) or out of it (False),
    as a runtime override says."""
    changes: dict[str, Any] = {}
    for name, shadow in forced.items():
        rule = getattr(rules, name)
        if rule is None:
            continue
        if isinstance(rule, WordRule):
            lists = tuple(ListSetting(s.name, s.action, shadow) for s in rule.lists)
            changed: Any = compiler.rule(name, lists, rule.mask, rule.source)
        else:
            changed = replace(rule, shadow=shadow)
        if changed != rule:
            changes[name] = changed
    return rules._replace(**changes) if changes else rules
