"""Where every budget stands now: amount, usage in the current window, reset time.

Shared by ``tokenstile budgets``, the admin API and the dashboard, so all three show the
same numbers. ``hard`` is what the window allows now: a budget that rolls over or is
prorated shows its amount in this window. Limits that apply to each id of a scope
separately (``match: "*"``, e.g. a per-user daily limit) are reported for the ids given, or
the configured organization.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from tokenstile.limits.allowance import Allowance, first_seen, window_amount
from tokenstile.limits.counter_keys import allowance, counter_key
from tokenstile.limits.model import Limit
from tokenstile.limits.windows import describe_reset, window_end
from tokenstile.stores import shards
from tokenstile.stores.counters import CounterStore
from tokenstile.types import nano_to_usd


@dataclass(slots=True)
class BudgetStatus:
    name: str
    scope: str
    scope_id: str
    window: str
    unit: str
    amount: int
    hard: int
    used: int
    reset_at: float
    resets: str
    thresholds: list[dict[str, Any]]
    shadow: bool
    overridden: bool

    @property
    def utilization(self) -> float:
        return self.used / self.hard if self.hard else 0.0

    def as_dict(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in self.__slots__}
        out["utilization"] = round(self.utilization, 6)
        out["remaining"] = max(0, self.hard - self.used)
        if self.unit == "usd":
            for name in ("amount", "hard", "used", "remaining"):
                out[f"{name}_usd"] = nano_to_usd(out[name])
        return out


def _ids_for(limit: Limit, known: Mapping[str, Sequence[str]]) -> list[str]:
    if limit.scope == "global":
        return ["global"]
    if limit.match is not None:
        return sorted(limit.match)
    return list(known.get(limit.scope, ()))


async def budget_status(limits: Iterable[Limit], counters: CounterStore, now: float,
                        known_ids: Mapping[str, Sequence[str]],
                        overridden: frozenset[str] = frozenset(),
                        tenant: Callable[[str, str], str | None] | None = None
                        ) -> list[BudgetStatus]:
    """``tenant`` says whose counter to read for a (scope, id) on a store sharded by tenant
    (``shards.status_tenants``)."""
    rows: list[tuple[Limit, str, tuple[str, ...], Allowance | None]] = []
    flat: list[str] = []
    for limit in limits:
        if limit.window.kind == "request":
            continue
        hard = limit.hard_at(now)
        for scope_id in _ids_for(limit, known_ids):
            key, window_keys = counter_key(limit, scope_id, now)
            owner = tenant(limit.scope, scope_id) if tenant is not None else None
            keys = tuple(shards.qualify(owner, k) for k in window_keys or (key,))
            rule = allowance(limit, scope_id, hard, now) if limit.varies else None
            if rule is not None and owner is not None:
                rule = replace(rule, seen=shards.qualify(owner, rule.seen),
                               previous=None if rule.previous is None
                               else shards.qualify(owner, rule.previous))
            rows.append((limit, scope_id, keys, rule))
            flat.extend(keys)
            if rule is not None:
                flat.extend(k for k in (rule.seen, rule.previous) if k is not None)
    values = dict(zip(flat, await counters.read(flat), strict=True)) if flat else {}
    out = []
    for limit, scope_id, keys, rule in rows:
        reset_at = window_end(limit.window, now)
        window = limit.window.kind if limit.window.kind != "rolling" else \
            f"rolling:{limit.window.length_s}s"
        used = sum(values.get(k, 0) for k in keys)
        hard = limit.hard_at(now)
        if rule is not None:  # as the next reservation would hold it (limits/allowance.py)
            seen = first_seen(values.get(rule.seen, 0), now, rule.start, used)
            hard = window_amount(hard, seen, rule, values.get(rule.previous or "", 0))
        out.append(BudgetStatus(
            name=limit.name, scope=limit.scope, scope_id=scope_id, window=window,
            unit=limit.unit, amount=limit.amount_at(now), hard=hard,
            used=used, reset_at=reset_at,
            resets=describe_reset(limit.window, now),
            thresholds=[{"threshold": t.fraction, "action": t.action} for t in limit.thresholds],
            shadow=limit.shadow, overridden=limit.name in overridden,
        ))
    return out
