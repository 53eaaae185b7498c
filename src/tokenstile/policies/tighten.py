"""Combining two settings of a policy so the result is never looser than the first.

Used wherever a setting comes from something the client controls: a request header, or a
feature named by a header. ``tighten(base, candidate)`` takes, policy by policy, the
candidate when it is at least as strict as the base and keeps the base otherwise (and says
so: that candidate was a loosening, which the engine flags). Lists combine: word lists are
joined (an action only ever raised), model lists must all be passed. A shadowed setting is
looser than the same setting enforced.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from tokenstile.policies.rules import (
    ACTION_RANK,
    LimitRule,
    ListSetting,
    MaxTokensRule,
    ModelsRule,
    ModerationRule,
    ReflectionRule,
    Rules,
    UserIdsRule,
    WordCompiler,
    WordRule,
)

POLICIES = Rules._fields


def _shadow_ok(candidate: bool, base: bool) -> bool:
    return not candidate or base


def stricter_limit(c: LimitRule | None, b: LimitRule | None) -> bool:
    if b is None:
        return True
    return c is not None and c.limit <= b.limit and _shadow_ok(c.shadow, b.shadow)


def stricter_max_tokens(c: MaxTokensRule | None, b: MaxTokensRule | None) -> bool:
    if b is None:
        return True
    return (c is not None and c.limit <= b.limit and _shadow_ok(c.shadow, b.shadow)
            and (c.mode == b.mode or c.mode == "block"))


def stricter_user_ids(c: UserIdsRule | None, b: UserIdsRule | None) -> bool:
    if b is None:
        return True
    return c is not None and c.header in (None, b.header) and _shadow_ok(c.shadow, b.shadow)


def stricter_moderation(c: ModerationRule | None, b: ModerationRule | None) -> bool:
    if b is None:
        return True
    if c is None or not _shadow_ok(c.shadow, b.shadow):
        return False
    categories = c.categories is None or (b.categories is not None and
                                          c.categories >= b.categories)
    return categories and (c.failure_mode == "closed" or b.failure_mode == "open")


def stricter_reflection(c: ReflectionRule | None, b: ReflectionRule | None) -> bool:
    if b is None:
        return True
    if c is None or not _shadow_ok(c.shadow, b.shadow) or c.delimiter != b.delimiter:
        return False
    runs = b.min_run_chars is None or (c.min_run_chars is not None and
                                       c.min_run_chars <= b.min_run_chars)
    return runs and ACTION_RANK[c.action] >= ACTION_RANK[b.action]


def stricter_retries(c: int | None, b: int | None) -> bool:
    return b is None or (c is not None and c <= b)


_STRICTER: dict[str, Callable[[Any, Any], bool]] = {
    "enforce_user_ids": stricter_user_ids,
    "max_prompt_chars": stricter_limit,
    "max_input_tokens": stricter_limit,
    "max_tokens": stricter_max_tokens,
    "auto_moderate": stricter_moderation,
    "retries": stricter_retries,
    "prompt_reflection": stricter_reflection,
}


def combine_models(c: ModelsRule | None, b: ModelsRule | None) -> tuple[ModelsRule | None,
                                                                          bool]:
    if c is None or b is None:
        return (b, True) if c is None and b is not None else (c, False)
    allow = b.allow + tuple(group for group in c.allow if group not in b.allow)
    block = b.block + tuple(p for p in c.block if p not in b.block)
    return ModelsRule(c.source, allow, block, b.shadow and c.shadow), False


def combine_words(c: WordRule | None, b: WordRule | None, policy: str,
                  compiler: WordCompiler) -> tuple[WordRule | None, bool]:
    if c is None or b is None:
        return (b, True) if c is None and b is not None else (c, False)
    lists = {s.name: s for s in b.lists}
    loosened = False
    for setting in c.lists:
        current = lists.get(setting.name)
        if current is None or (ACTION_RANK[setting.action] >= ACTION_RANK[current.action]
                               and _shadow_ok(setting.shadow, current.shadow)):
            lists[setting.name] = setting
        elif setting != current:
            loosened = True
    merged: tuple[ListSetting, ...] = tuple(lists.values())
    if set(merged) == set(b.lists) and c.mask == b.mask:
        return b, loosened
    return compiler.rule(policy, merged, c.mask, c.source), loosened


def tighten_one(name: str, b: Any, c: Any, compiler: WordCompiler) -> tuple[Any, bool]:
    """One policy's setting ``b`` tightened by ``c``; and whether ``c`` was looser."""
    if b == c:
        return b, False
    if name == "models":
        return combine_models(c, b)
    if name in ("request_wordlists", "response_wordlists"):
        return combine_words(c, b, name, compiler)
    if name == "auto_replies":
        return b + tuple(rule for rule in c if rule not in b), False
    if _STRICTER[name](c, b):
        return c, False
    return b, True


def tighten(base: Rules, candidate: Rules, compiler: WordCompiler,
            policies: Iterable[str] = POLICIES) -> tuple[Rules, list[str]]:
    """``base`` tightened by ``candidate`` in ``policies``; also the policies where the
    candidate was looser (and was therefore ignored, in whole or in part)."""
    changes: dict[str, Any] = {}
    loosened: list[str] = []
    for name in policies:
        b = getattr(base, name)
        result, looser = tighten_one(name, b, getattr(candidate, name), compiler)
        if looser:
            loosened.append(name)
        if result is not b:
            changes[name] = result
    return (base._replace(**changes) if changes else base), loosened
