"""Which policies apply to a caller: the configured scopes, most specific last.

The order is the whole gateway, then the caller's organization, project, key (by id, else
by name) and feature. A field set at a scope overrides the same field from a wider one;
``null`` switches a policy off. One exception keeps clients from loosening anything: a
feature the client named itself (a header, not a key bound to the feature) may only
tighten what the other scopes set.

Resolved rules are cached per (organization, project, key, feature), so a request pays one
dictionary lookup for this step.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from tokenstile.policies.rules import NO_RULES, Rules, WordCompiler, to_rule
from tokenstile.policies.schema import POLICY_NAMES, PoliciesConfig, PolicySet
from tokenstile.policies.tighten import tighten
from tokenstile.types import Caller

# The field whose scope an error message names ("the limit of 10 for this key").
_PRIMARY = {"max_tokens": "limit", "max_prompt_chars": "limit", "max_input_tokens": "limit"}
_CACHE_LIMIT = 10_000

Merged = dict[str, tuple[Any, str]]
CacheKey = tuple[str, str | None, str | None, str | None, str | None, bool]


def overlay(layers: list[tuple[str, PolicySet]]) -> Merged:
    """Field by field, the most specific setting of every policy and the scope it came
    from."""
    out: Merged = {}
    for source, policy_set in layers:
        for name in POLICY_NAMES:
            if name not in policy_set.model_fields_set:
                continue
            value = getattr(policy_set, name)
            previous = out.get(name)
            if (value is None or previous is None or previous[0] is None
                    or not isinstance(value, BaseModel)):
                out[name] = (value, source)
                continue
            fields = value.model_fields_set
            merged = previous[0].model_copy(update={f: getattr(value, f) for f in fields})
            primary = _PRIMARY.get(name)
            out[name] = (merged, source if primary is None or primary in fields
                         else previous[1])
    return out


def build(merged: Merged, compiler: WordCompiler) -> Rules:
    values: dict[str, Any] = {name: to_rule(name, value, source, compiler)
              for name, (value, source) in merged.items()}
    if values.get("auto_replies") is None:
        values.pop("auto_replies", None)
    return Rules(**values) if values else NO_RULES


class Resolver:
    def __init__(self, config: PoliciesConfig, compiler: WordCompiler) -> None:
        self._config = config
        self._compiler = compiler
        self._cache: dict[CacheKey, tuple[Rules, tuple[str, ...]]] = {}
        self.configured = config.configured

    def rules(self, caller: Caller, feature: str | None) -> tuple[Rules, tuple[str, ...]]:
        """The rules for this caller and feature, and the policies a client-named feature
        tried to loosen."""
        key: CacheKey = (caller.organization, caller.project, caller.key_id, caller.key_name,
                         feature, caller.feature is not None)
        found = self._cache.get(key)
        if found is None:
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            found = self._cache[key] = self._resolve(caller, feature)
        return found

    def _resolve(self, caller: Caller, feature: str | None) -> tuple[Rules, tuple[str, ...]]:
        config = self._config
        layers: list[tuple[str, PolicySet]] = [("gateway", config)]
        for source, table, name in (
                ("organization", config.organizations, caller.organization),
                ("project", config.projects, caller.project)):
            if name is not None and name in table:
                layers.append((source, table[name]))
        key_set = config.keys.get(caller.key_id or "") or config.keys.get(caller.key_name or "")
        if key_set is not None:
            layers.append(("key", key_set))
        feature_set = config.features.get(feature) if feature else None
        if feature_set is not None and caller.feature is not None:
            layers.append(("feature", feature_set))
        base = build(overlay(layers), self._compiler)
        if feature_set is None or caller.feature is not None:
            return base, ()
        wanted = build(overlay([*layers, ("feature", feature_set)]), self._compiler)
        rules, loosened = tighten(base, wanted, self._compiler)
        return rules, tuple(loosened)
