"""The ``policies:`` section of the configuration.

One ``PolicySet`` at the top (everyone), and one per organization, project, key (by id or
name) and feature; the most specific scope that sets a field wins. A policy set to ``null``
(or ``false``) at a scope switches it off there. Short forms are accepted where a policy has
one obvious setting: ``max_tokens: 100``, ``enforce_user_ids: true``,
``request_wordlists: "profanity:block,jailbreak:redact"`` (Usage Panda's format).

This module imports nothing from the rest of tokenstile so the configuration can use it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tokenstile.policies.builtin_lists import BUILTIN_LISTS, LIST_ALIASES

WordAction = Literal["audit", "redact", "block"]
ReflectionAction = Literal["none", "audit", "redact", "block"]
WORD_ACTIONS: tuple[WordAction, ...] = ("audit", "redact", "block")
ApiName = Literal["chat", "completions", "responses", "messages", "generate_content"]
POLICY_NAMES = (
    "models", "enforce_user_ids", "max_prompt_chars", "max_input_tokens", "max_tokens",
    "request_wordlists", "auto_replies", "auto_moderate", "retries", "response_wordlists",
    "prompt_reflection",
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Policy(_Strict):
    shadow: bool = Field(False, description="flag and record what would happen; block nothing")


class MaxTokensPolicy(_Policy):
    """A request must name an output cap no larger than ``limit``; ``clamp`` sets a missing
    cap and lowers an excessive one instead of refusing the request."""

    limit: int | None = Field(None, ge=1)
    mode: Literal["block", "clamp"] = "block"

    @model_validator(mode="before")
    @classmethod
    def _short(cls, value: Any) -> Any:
        return {"limit": value} if isinstance(value, int) and not isinstance(value, bool) \
            else value


class LimitPolicy(_Policy):
    """An upper bound on one measure of the request (characters, input tokens)."""

    limit: int | None = Field(None, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _short(cls, value: Any) -> Any:
        return {"limit": value} if isinstance(value, int) and not isinstance(value, bool) \
            else value


class UserIdsPolicy(_Policy):
    """Every request names its end user: the ``user`` field, or ``header`` when set."""

    enabled: bool = True
    header: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _short(cls, value: Any) -> Any:
        return {"enabled": value} if isinstance(value, bool) else value

    @field_validator("header")
    @classmethod
    def _lower(cls, value: str | None) -> str | None:
        return value.strip().lower() if value else None


class ModelsPolicy(_Policy):
    """Exact names or globs (``gpt-4o*``): ``allow`` (when set) lists the only models that
    may be used, ``block`` the ones that may not."""

    allow: list[str] | None = None
    block: list[str] = Field(default_factory=list)


class WordListsPolicy(_Policy):
    """Named word lists and what to do on a match (``audit``, ``redact`` or ``block``)."""

    lists: dict[str, WordAction] = Field(default_factory=dict)
    mask: str = "****"

    @model_validator(mode="before")
    @classmethod
    def _short(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"lists": parse_list_spec(value)}
        if isinstance(value, list):
            return {"lists": {str(name): "block" for name in value}}
        if isinstance(value, dict) and value and not set(value) & {"lists", "mask", "shadow"}:
            return {"lists": value}
        return value

    @field_validator("lists")
    @classmethod
    def _canonical(cls, value: dict[str, WordAction]) -> dict[str, WordAction]:
        return {LIST_ALIASES.get(name, name): action for name, action in value.items()}


class ModerationPolicy(_Policy):
    """Send the input to the upstream's ``/v1/moderations`` first; refuse flagged input."""

    enabled: bool = True
    categories: list[str] | None = Field(
        None, description="categories that block; unset: any category the upstream flags")
    failure_mode: Literal["open", "closed"] = "open"
    upstream: str | None = None
    model: str = "omni-moderation-latest"
    timeout_s: float = Field(5.0, gt=0, le=120)

    @model_validator(mode="before")
    @classmethod
    def _short(cls, value: Any) -> Any:
        return {"enabled": value} if isinstance(value, bool) else value


class ReflectionPolicy(_Policy):
    """An answer that repeats a marked part of the system prompt (``||secret||``) or, with
    ``min_run_chars``, any run that long of it verbatim."""

    action: ReflectionAction = "block"
    delimiter: str = Field("||", min_length=1, max_length=8)
    min_run_chars: int | None = Field(None, ge=16, le=10_000)

    @model_validator(mode="before")
    @classmethod
    def _short(cls, value: Any) -> Any:
        if isinstance(value, bool):
            return {"action": "block" if value else "none"}
        return {"action": value} if isinstance(value, str) else value


class AutoReplyRule(_Strict):
    """Answer a matching last user message with ``reply`` without calling the upstream.

    ``match``: the whole message, ignoring case and surrounding space. ``pattern``: a glob
    over the message (``*`` any text, ``?`` one character), ignoring case.
    """

    match: str | None = None
    pattern: str | None = None
    reply: str
    apis: list[ApiName] | None = None

    @model_validator(mode="after")
    def _one_matcher(self) -> AutoReplyRule:
        if (self.match is None) == (self.pattern is None):
            raise ValueError("an auto-reply needs exactly one of 'match' or 'pattern'")
        return self


class PolicySet(_Strict):
    """The policies of one scope; unset fields are inherited from the wider scope."""

    models: ModelsPolicy | None = None
    enforce_user_ids: UserIdsPolicy | None = None
    max_prompt_chars: LimitPolicy | None = None
    max_input_tokens: LimitPolicy | None = None
    max_tokens: MaxTokensPolicy | None = None
    request_wordlists: WordListsPolicy | None = None
    auto_replies: list[AutoReplyRule] | None = None
    auto_moderate: ModerationPolicy | None = None
    retries: int | None = Field(None, ge=0, le=10)
    response_wordlists: WordListsPolicy | None = None
    prompt_reflection: ReflectionPolicy | None = None

    @model_validator(mode="before")
    @classmethod
    def _false_is_off(cls, value: Any) -> Any:
        """``policy: false`` switches a policy off at this scope, like ``null``."""
        if isinstance(value, dict):
            return {k: (None if v is False and k not in _BOOL_SHORT else v)
                    for k, v in value.items()}
        return value


_BOOL_SHORT = {"enforce_user_ids", "auto_moderate", "prompt_reflection"}


class PoliciesConfig(PolicySet):
    """Policies for everyone, custom word lists, and the per-scope sets."""

    wordlists: dict[str, list[str]] = Field(default_factory=dict)
    organizations: dict[str, PolicySet] = Field(default_factory=dict)
    projects: dict[str, PolicySet] = Field(default_factory=dict)
    keys: dict[str, PolicySet] = Field(default_factory=dict)
    features: dict[str, PolicySet] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_lists(self) -> PoliciesConfig:
        known = set(BUILTIN_LISTS) | set(self.wordlists)
        problems = []
        for where, policy_set in self.scopes():
            for field in ("request_wordlists", "response_wordlists"):
                policy = getattr(policy_set, field)
                for name in policy.lists if policy is not None else ():
                    if name not in known:
                        problems.append(
                            f"{where}{field}: unknown word list {name!r} (known: "
                            f"{', '.join(sorted(known))}; define it under policies.wordlists)")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def scopes(self) -> list[tuple[str, PolicySet]]:
        """Every policy set with the path it was written at (for error messages)."""
        out: list[tuple[str, PolicySet]] = [("", self)]
        for kind in ("organizations", "projects", "keys", "features"):
            for name, policy_set in getattr(self, kind).items():
                out.append((f"{kind}.{name}.", policy_set))
        return out

    @property
    def configured(self) -> bool:
        """Whether any scope sets any policy (when not, requests skip the engine)."""
        return any(policy_set.model_fields_set - _CONTAINERS
                   for _, policy_set in self.scopes())


_CONTAINERS = {"wordlists", "organizations", "projects", "keys", "features"}


def parse_list_spec(text: str) -> dict[str, WordAction]:
    """``"profanity:block, jailbreak:redact, custom"`` → names and actions (default block;
    a list named twice gets the stricter action)."""
    lists: dict[str, WordAction] = {}
    for item in text.split(","):
        name, _, action = item.strip().partition(":")
        name, action = name.strip().lower(), action.strip().lower() or "block"
        if not name:
            continue
        if action not in WORD_ACTIONS:
            raise ValueError(f"unknown word-list action {action!r} for {name!r}; expected "
                             "audit, redact or block")
        name = LIST_ALIASES.get(name, name)
        previous = lists.get(name)
        chosen = next(a for a in WORD_ACTIONS if a == action)
        if previous is None or WORD_ACTIONS.index(chosen) > WORD_ACTIONS.index(previous):
            lists[name] = chosen
    return lists
