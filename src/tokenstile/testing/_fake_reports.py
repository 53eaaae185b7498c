"""The providers' admin reports, as the fake serves them: computed from what it served.

OpenAI's ``/v1/organization/usage/completions`` and ``/v1/organization/costs`` and
Anthropic's ``/v1/organizations/usage_report/messages`` and ``/v1/organizations/cost_report``,
in their shapes (daily buckets, ``group_by``, ``page`` / ``next_page`` / ``has_more``), from
the fake's own records: every call that reported usage counts, at genai-prices' price for
its model, so a gateway run against the fake reconciles to zero drift. ``Drift`` entries
(``FakeUpstream.seed_drift``) add usage or cost the gateway never saw.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from tokenstile.prices import Pricer
from tokenstile.types import Usage

Json = dict[str, Any]
ADMIN_KEY_PREFIXES = {"openai": "sk-admin-", "anthropic": "sk-ant-admin"}


@dataclass(frozen=True, slots=True)
class Drift:
    """Usage and cost the provider reports on top of what it served (or below: negative)."""

    provider: str
    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    usd: float = 0.0
    day: int | None = None  # days since the epoch; None: the day of the report's end

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Drift:
        allowed = {"provider", "model", "input_tokens", "output_tokens", "usd", "day"}
        unknown = set(data) - allowed
        if unknown:
            raise ValueError(f"unknown drift fields {sorted(unknown)}")
        day = data.get("day")
        if isinstance(day, str):
            day = int(datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp()) // 86400
        return cls(provider=str(data.get("provider", "openai")), model=str(data["model"]),
                   input_tokens=int(data.get("input_tokens", 0)),
                   output_tokens=int(data.get("output_tokens", 0)),
                   usd=float(data.get("usd", 0.0)), day=day)


@dataclass(slots=True)
class _Served:
    day: int
    model: str
    requests: int = 0
    input_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    output_tokens: int = 0
    input_nano: int = 0
    output_nano: int = 0


_PRICER = Pricer()


def _cost(record: Any, provider: str) -> tuple[int, int]:
    """(input part, output part) of a call's cost in nano-USD, at genai-prices' price."""
    usage = Usage(input_tokens=record.input_tokens, output_tokens=record.output_tokens,
                  cached_input_tokens=record.cached_tokens,
                  cache_write_tokens=record.cache_write_tokens,
                  cache_write_1h_tokens=record.cache_write_1h_tokens,
                  reasoning_tokens=record.reasoning_tokens,
                  input_audio_tokens=record.input_audio_tokens,
                  output_audio_tokens=record.output_audio_tokens,
                  cached_audio_tokens=record.cached_audio_tokens,
                  service_tier=record.service_tier)
    price = _PRICER.price_for(record.model, provider)
    if price is None:
        return 0, 0
    total = price.cost_nano(usage)
    inputs = price.cost_nano(Usage(input_tokens=usage.input_tokens,
                                   cached_input_tokens=usage.cached_input_tokens,
                                   cache_write_tokens=usage.cache_write_tokens,
                                   cache_write_1h_tokens=usage.cache_write_1h_tokens,
                                   input_audio_tokens=usage.input_audio_tokens,
                                   cached_audio_tokens=usage.cached_audio_tokens,
                                   service_tier=usage.service_tier))
    return inputs, total - inputs


def provider_of(route: str) -> str:
    return "anthropic" if route.startswith("/v1/messages") else "openai"


def served(records: Iterable[Any], drifts: Sequence[Drift], provider: str,
           start: float, end: float) -> dict[tuple[int, str], _Served]:
    """What the fake served (plus the seeded drift) per day × model in [start, end)."""
    out: dict[tuple[int, str], _Served] = {}
    for rec in records:
        if provider_of(rec.route) != provider or not (rec.input_tokens or rec.output_tokens):
            continue
        if not start <= rec.started_at < end:
            continue
        day = int(rec.started_at // 86400)
        entry = out.setdefault((day, rec.model), _Served(day, rec.model))
        entry.requests += 1
        entry.input_tokens += rec.input_tokens
        entry.cached_tokens += rec.cached_tokens
        entry.cache_write_tokens += rec.cache_write_tokens
        entry.cache_write_1h_tokens += rec.cache_write_1h_tokens
        entry.output_tokens += rec.output_tokens
        inputs, outputs = _cost(rec, provider)
        entry.input_nano += inputs
        entry.output_nano += outputs
    last_day = math.ceil(end / 86400) - 1
    for drift in drifts:
        if drift.provider != provider:
            continue
        day = last_day if drift.day is None else drift.day
        if not start <= day * 86400 < end:
            continue
        entry = out.setdefault((day, drift.model), _Served(day, drift.model))
        entry.input_tokens += drift.input_tokens
        entry.output_tokens += drift.output_tokens
        entry.input_nano += round(drift.usd * 1e9)
    return out


# -- query parameters and pages ----------------------------------------------------------------

def _param(query: Mapping[str, list[str]], name: str) -> str | None:
    values = query.get(name) or query.get(f"{name}[]")
    return values[-1] if values else None


def _list(query: Mapping[str, list[str]], name: str) -> list[str]:
    return [*query.get(name, []), *query.get(f"{name}[]", [])]


def _when(value: str | None, default: float) -> float:
    if value is None:
        return default
    if value.lstrip("-").isdigit():
        return float(value)
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _page(buckets: list[Json], query: Mapping[str, list[str]], default_limit: int) -> Json:
    """One page of buckets: ``limit`` of them from the cursor in ``page``."""
    limit = int(_param(query, "limit") or default_limit)
    cursor = _param(query, "page")
    offset = int(base64.urlsafe_b64decode(cursor.encode()).decode()) if cursor else 0
    chunk = buckets[offset:offset + limit]
    more = offset + limit < len(buckets)
    next_page = base64.urlsafe_b64encode(str(offset + limit).encode()).decode() if more \
        else None
    return {"data": chunk, "has_more": more, "next_page": next_page}


def _days(start: float, end: float) -> list[int]:
    return list(range(int(start // 86400), math.ceil(end / 86400)))


def _iso(day: int) -> str:
    return datetime.fromtimestamp(day * 86400, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _window(query: Mapping[str, list[str]], start_name: str, end_name: str,
            now: float) -> tuple[float, float]:
    start = _when(_param(query, start_name), now - 7 * 86400)
    start = math.floor(start / 86400) * 86400
    end = _when(_param(query, end_name), now)
    return start, max(math.ceil(end / 86400) * 86400, start + 86400)


_WINDOW_PARAMS = {"openai": ("start_time", "end_time"), "anthropic": ("starting_at", "ending_at")}
DayServed = list[tuple[str, _Served]]


def _daily(records: Iterable[Any], drifts: Sequence[Drift], provider: str,
           query: Mapping[str, list[str]], now: float,
           results_of: Callable[[DayServed], list[Json]]) -> Json:
    """One page of ``provider``'s daily buckets over the query's window: each holds
    ``results_of`` the (model, served) pairs of its day, by model, in the provider's shape."""
    start, end = _window(query, *_WINDOW_PARAMS[provider], now)
    data = served(records, drifts, provider, start, end)
    buckets = []
    for day in _days(start, end):
        results = results_of([(model, s) for (d, model), s in sorted(data.items()) if d == day])
        if provider == "openai":
            buckets.append({"object": "bucket", "start_time": day * 86400,
                            "end_time": (day + 1) * 86400, "results": results})
        else:
            buckets.append({"starting_at": _iso(day), "ending_at": _iso(day + 1),
                            "results": results})
    page = _page(buckets, query, 7)
    return {"object": "page", **page} if provider == "openai" else page


def _usage_results(today: DayServed, by_model: bool, blank: Callable[[str | None], Json],
                   add: Callable[[Json, _Served], None]) -> list[Json]:
    """A usage report's results for one day: one per model (``by_model``) or one in all,
    each ``blank(model or None)`` with every served entry ``add``-ed to it."""
    results: dict[str | None, Json] = {}
    for model, s in today:
        key = model if by_model else None
        if key not in results:
            results[key] = blank(key)
        add(results[key], s)
    return list(results.values())


# -- OpenAI ------------------------------------------------------------------------------------

def openai_usage(records: Iterable[Any], drifts: Sequence[Drift],
                 query: Mapping[str, list[str]], now: float) -> Json:
    by_model = "model" in _list(query, "group_by")

    def blank(key: str | None) -> Json:
        return {"object": "organization.usage.completions.result", "input_tokens": 0,
                "output_tokens": 0, "input_cached_tokens": 0, "input_audio_tokens": 0,
                "output_audio_tokens": 0, "num_model_requests": 0, "project_id": None,
                "user_id": None, "api_key_id": None, "model": key, "batch": None}

    def add(r: Json, s: _Served) -> None:
        r["input_tokens"] += s.input_tokens
        r["output_tokens"] += s.output_tokens
        r["input_cached_tokens"] += s.cached_tokens
        r["num_model_requests"] += s.requests

    return _daily(records, drifts, "openai", query, now,
                  lambda today: _usage_results(today, by_model, blank, add))


def openai_costs(records: Iterable[Any], drifts: Sequence[Drift],
                 query: Mapping[str, list[str]], now: float) -> Json:
    by_line = "line_item" in _list(query, "group_by")

    def results_of(today: DayServed) -> list[Json]:
        amounts: dict[str | None, int] = {}
        for model, s in today:
            if by_line:
                amounts[f"{model}, input"] = amounts.get(f"{model}, input", 0) + s.input_nano
                amounts[f"{model}, output"] = amounts.get(f"{model}, output", 0) + s.output_nano
            else:
                amounts[None] = amounts.get(None, 0) + s.input_nano + s.output_nano
        return [{"object": "organization.costs.result",
                 "amount": {"value": float(Decimal(nano) / Decimal(10**9)), "currency": "usd"},
                 "line_item": line, "project_id": None}
                for line, nano in amounts.items()]

    return _daily(records, drifts, "openai", query, now, results_of)


# -- Anthropic ---------------------------------------------------------------------------------

def anthropic_usage(records: Iterable[Any], drifts: Sequence[Drift],
                    query: Mapping[str, list[str]], now: float) -> Json:
    by_model = "model" in _list(query, "group_by")

    def blank(key: str | None) -> Json:
        return {"uncached_input_tokens": 0,
                "cache_creation": {"ephemeral_5m_input_tokens": 0,
                                   "ephemeral_1h_input_tokens": 0},
                "cache_read_input_tokens": 0, "output_tokens": 0,
                "server_tool_use": {"web_search_requests": 0}, "api_key_id": None,
                "workspace_id": None, "model": key, "service_tier": None,
                "context_window": None}

    def add(r: Json, s: _Served) -> None:
        r["uncached_input_tokens"] += s.input_tokens - s.cached_tokens - s.cache_write_tokens
        r["cache_creation"]["ephemeral_5m_input_tokens"] += \
            s.cache_write_tokens - s.cache_write_1h_tokens
        r["cache_creation"]["ephemeral_1h_input_tokens"] += s.cache_write_1h_tokens
        r["cache_read_input_tokens"] += s.cached_tokens
        r["output_tokens"] += s.output_tokens

    return _daily(records, drifts, "anthropic", query, now,
                  lambda today: _usage_results(today, by_model, blank, add))


def anthropic_costs(records: Iterable[Any], drifts: Sequence[Drift],
                    query: Mapping[str, list[str]], now: float) -> Json:
    by_description = "description" in _list(query, "group_by")

    def results_of(today: DayServed) -> list[Json]:
        results = []
        total = 0
        for model, s in today:
            if not by_description:
                total += s.input_nano + s.output_nano
                continue
            for token_type, nano in (("uncached_input_tokens", s.input_nano),
                                     ("output_tokens", s.output_nano)):
                results.append({
                    "currency": "USD", "amount": str(Decimal(nano) / Decimal(10**7)),
                    "workspace_id": None,
                    "description": f"{model} {token_type.replace('_', ' ')}",
                    "cost_type": "tokens", "context_window": "0-200k", "model": model,
                    "service_tier": "standard", "token_type": token_type})
        if not by_description and total:
            results.append({"currency": "USD", "amount": str(Decimal(total) / Decimal(10**7)),
                            "workspace_id": None, "description": None, "cost_type": None,
                            "context_window": None, "model": None, "service_tier": None,
                            "token_type": None})
        return results

    return _daily(records, drifts, "anthropic", query, now, results_of)


REPORTS = {
    "/v1/organization/usage/completions": ("openai", openai_usage),
    "/v1/organization/costs": ("openai", openai_costs),
    "/v1/organizations/usage_report/messages": ("anthropic", anthropic_usage),
    "/v1/organizations/cost_report": ("anthropic", anthropic_costs),
}


def admin_key_ok(provider: str, headers: Mapping[str, str]) -> bool:
    """Admin reports need an admin key (``sk-admin-…`` / ``sk-ant-admin…``), as the
    providers' do: an ordinary API key is refused."""
    if provider == "openai":
        value = headers.get("authorization", "")
        key = value[7:] if value.lower().startswith("bearer ") else ""
    else:
        key = headers.get("x-api-key", "")
    return key.startswith(ADMIN_KEY_PREFIXES[provider])
