"""The providers' own usage and cost reports, read through their admin APIs, summed per UTC
day × model.

OpenAI: ``GET /v1/organization/usage/completions`` (tokens, ``group_by=model``) and
``GET /v1/organization/costs`` (USD, ``group_by=line_item``; a line item names its model,
``"gpt-4o-2024-08-06, input"``), daily buckets ``{start_time, end_time, results}``, paged
with ``page`` / ``next_page`` / ``has_more``. Anthropic: ``GET
/v1/organizations/usage_report/messages`` (``group_by[]=model``) and ``GET
/v1/organizations/cost_report`` (``group_by[]=description``; amounts in cents as decimal
strings), daily buckets ``{starting_at, ending_at, results}``, paged the same way.

The admin key goes only into the request's header: it is never logged, printed, stored or
put in an error message.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, Final

from tokenstile.config import ReconcileProviderConfig
from tokenstile.stores.records import DayTotals

if TYPE_CHECKING:
    import aiohttp

PROVIDERS: Final = ("openai", "anthropic")
DEFAULT_BASE: Final = {"openai": "https://api.openai.com/v1",
                       "anthropic": "https://api.anthropic.com"}
ANTHROPIC_VERSION: Final = "2023-06-01"
MAX_PAGES: Final = 1000
_DATED = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8})$")
_NANO_PER_USD: Final = Decimal(1_000_000_000)
_NANO_PER_CENT: Final = Decimal(10_000_000)


class ReconcileError(Exception):
    """A report could not be read; the message is safe to print (no key in it)."""


def canonical_model(name: str) -> str:
    """A model name without its snapshot date (``gpt-4o-2024-08-06`` → ``gpt-4o``,
    ``claude-3-5-haiku-20241022`` → ``claude-3-5-haiku``), so that a provider's report and
    the ledger name a model the same way whichever of the two names each used."""
    return _DATED.sub("", name.strip().lower())


@dataclass(slots=True)
class ProviderDay(DayTotals):
    """A provider's totals for one UTC day and model; ``cost_nano`` None when its cost
    report says nothing of that model that day."""

    cost_nano: int | None = None


class _Days:
    def __init__(self) -> None:
        self.days: dict[tuple[int, str], ProviderDay] = {}

    def at(self, day: int, model: str) -> ProviderDay:
        key = (day, canonical_model(model))
        found = self.days.get(key)
        if found is None:
            found = self.days[key] = ProviderDay(*key)
        return found

    def add_cost(self, day: int, model: str, nano: int) -> None:
        entry = self.at(day, model)
        entry.cost_nano = (entry.cost_nano or 0) + nano

    def sorted(self) -> list[ProviderDay]:
        return [self.days[k] for k in sorted(self.days)]


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _decimal(value: Any) -> Decimal:
    try:
        return Decimal(str(value)) if value is not None else Decimal(0)
    except InvalidOperation:
        return Decimal(0)


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _day_of(value: Any) -> int | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value) // 86400
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return int(when.timestamp()) // 86400
    return None


# -- reading the pages ---------------------------------------------------------------------

Params = list[tuple[str, str]]


async def _pages(session: aiohttp.ClientSession, url: str, params: Params,
                 headers: Mapping[str, str], timeout_s: float) -> list[dict[str, Any]]:
    """Every bucket of a paged report, following ``next_page`` while ``has_more``."""
    import aiohttp

    buckets: list[dict[str, Any]] = []
    page: str | None = None
    for _ in range(MAX_PAGES):
        query = [*params, *([("page", page)] if page else [])]
        try:
            async with session.get(url, params=query, headers=dict(headers),
                                   timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
                status = resp.status
                try:
                    body = await resp.json(content_type=None)
                except ValueError:
                    body = None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ReconcileError(f"could not reach {url}: {type(exc).__name__}") from None
        if status != 200 or not isinstance(body, dict):
            raise ReconcileError(f"{url} answered {status}: {_error_message(body)}")
        data = body.get("data")
        if isinstance(data, list):
            buckets.extend(b for b in data if isinstance(b, dict))
        next_page = body.get("next_page")
        if not body.get("has_more") or not isinstance(next_page, str) or not next_page:
            return buckets
        page = next_page
    raise ReconcileError(f"{url} kept answering has_more after {MAX_PAGES} pages")


def _error_message(body: Any) -> str:
    if isinstance(body, dict):
        error = body.get("error")
        message = error.get("message") if isinstance(error, dict) else None
        if isinstance(message, str):
            return message[:300]
        if isinstance(error, str):
            return error[:300]
    return "no report"


def _results(bucket: Mapping[str, Any]) -> Iterable[dict[str, Any]]:
    results = bucket.get("results") or bucket.get("result") or []
    return (r for r in results if isinstance(r, dict)) if isinstance(results, list) else ()


def _dated_results(buckets: Iterable[Mapping[str, Any]], start: str,
                   only: Mapping[str, set[str]]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(day, result) for every result of every bucket whose ``start`` is a readable time;
    where ``only`` holds a non-empty set of ids for a field, a result whose id in that field
    is not among them is left out (a project, workspace or key the configuration skips)."""
    for bucket in buckets:
        day = _day_of(bucket.get(start))
        if day is None:
            continue
        for r in _results(bucket):
            if all(not ids or r.get(field) in ids for field, ids in only.items()):
                yield day, r


# -- OpenAI --------------------------------------------------------------------------------

def openai_days(usage: Iterable[Mapping[str, Any]], costs: Iterable[Mapping[str, Any]],
                cfg: ReconcileProviderConfig | None = None) -> list[ProviderDay]:
    """Usage buckets (grouped by model) and cost buckets (grouped by line item), per day ×
    model. Results for project or API key ids the configuration leaves out are skipped."""
    projects = set(cfg.project_ids) if cfg else set()
    keys = set(cfg.api_key_ids) if cfg else set()
    days = _Days()
    for day, r in _dated_results(usage, "start_time",
                                 {"project_id": projects, "api_key_id": keys}):
        entry = days.at(day, str(r.get("model") or "unknown"))
        entry.requests += _int(r.get("num_model_requests"))
        entry.input_tokens += _int(r.get("input_tokens"))
        entry.cached_input_tokens += _int(r.get("input_cached_tokens"))
        entry.output_tokens += _int(r.get("output_tokens"))
    for day, r in _dated_results(costs, "start_time", {"project_id": projects}):
        found = r.get("amount")
        amount: dict[str, Any] = found if isinstance(found, dict) else {}
        currency = str(amount.get("currency") or "usd").lower()
        if currency != "usd":
            raise ReconcileError(f"the cost report is in {currency!r}, not USD")
        line = str(r.get("line_item") or "unknown")
        model = line.split(",", 1)[0].strip() or "unknown"
        nano = int((_decimal(amount.get("value")) * _NANO_PER_USD).to_integral_value())
        days.add_cost(day, model, nano)
    return days.sorted()


async def fetch_openai(session: aiohttp.ClientSession, cfg: ReconcileProviderConfig,
                       since: float, until: float) -> list[ProviderDay]:
    base = (cfg.base_url or DEFAULT_BASE["openai"]).rstrip("/")
    headers = {"authorization": f"Bearer {cfg.admin_key}"}
    window: Params = [("start_time", str(int(since))), ("end_time", str(int(until))),
                      ("bucket_width", "1d"), ("limit", "31")]
    usage_params = [*window, ("group_by", "model")]
    cost_params = [*window, ("group_by", "line_item")]
    if cfg.project_ids:
        usage_params.append(("group_by", "project_id"))
        cost_params.append(("group_by", "project_id"))
        for project in cfg.project_ids:
            usage_params.append(("project_ids", project))
            cost_params.append(("project_ids", project))
    if cfg.api_key_ids:
        usage_params.append(("group_by", "api_key_id"))
        usage_params.extend(("api_key_ids", key) for key in cfg.api_key_ids)
    usage = await _pages(session, f"{base}/organization/usage/completions", usage_params,
                         headers, cfg.timeout_s)
    costs = await _pages(session, f"{base}/organization/costs", cost_params, headers,
                         cfg.timeout_s)
    return openai_days(usage, costs, cfg)


# -- Anthropic -----------------------------------------------------------------------------

def anthropic_days(usage: Iterable[Mapping[str, Any]], costs: Iterable[Mapping[str, Any]],
                   cfg: ReconcileProviderConfig | None = None) -> list[ProviderDay]:
    """Messages usage buckets (grouped by model) and cost buckets (grouped by description:
    each token cost names its model), per day × model. Input is counted as the ledger does:
    uncached + cache writes + cache reads."""
    workspaces = set(cfg.workspace_ids) if cfg else set()
    keys = set(cfg.api_key_ids) if cfg else set()
    days = _Days()
    for day, r in _dated_results(usage, "starting_at",
                                 {"workspace_id": workspaces, "api_key_id": keys}):
        made = r.get("cache_creation")
        created: dict[str, Any] = made if isinstance(made, dict) else {}
        written = _int(created.get("ephemeral_5m_input_tokens")) + \
            _int(created.get("ephemeral_1h_input_tokens"))
        read = _int(r.get("cache_read_input_tokens"))
        entry = days.at(day, str(r.get("model") or "unknown"))
        entry.input_tokens += _int(r.get("uncached_input_tokens")) + written + read
        entry.cached_input_tokens += read
        entry.cache_write_tokens += written
        entry.output_tokens += _int(r.get("output_tokens"))
    for day, r in _dated_results(costs, "starting_at", {"workspace_id": workspaces}):
        currency = str(r.get("currency") or "USD").upper()
        if currency != "USD":
            raise ReconcileError(f"the cost report is in {currency!r}, not USD")
        model = str(r.get("model") or r.get("description") or "unknown")
        nano = int((_decimal(r.get("amount")) * _NANO_PER_CENT).to_integral_value())
        days.add_cost(day, model, nano)
    return days.sorted()


async def fetch_anthropic(session: aiohttp.ClientSession, cfg: ReconcileProviderConfig,
                          since: float, until: float) -> list[ProviderDay]:
    base = (cfg.base_url or DEFAULT_BASE["anthropic"]).rstrip("/")
    if base.endswith("/v1"):
        base = base[:-3]
    headers = {"x-api-key": cfg.admin_key or "", "anthropic-version": ANTHROPIC_VERSION}
    window: Params = [("starting_at", _rfc3339(since)), ("ending_at", _rfc3339(until)),
                      ("bucket_width", "1d"), ("limit", "31")]
    usage_params = [*window, ("group_by[]", "model")]
    cost_params = [*window, ("group_by[]", "description")]
    if cfg.workspace_ids:
        usage_params.append(("group_by[]", "workspace_id"))
        cost_params.append(("group_by[]", "workspace_id"))
        usage_params.extend(("workspace_ids[]", w) for w in cfg.workspace_ids)
    if cfg.api_key_ids:
        usage_params.append(("group_by[]", "api_key_id"))
        usage_params.extend(("api_key_ids[]", k) for k in cfg.api_key_ids)
    usage = await _pages(session, f"{base}/v1/organizations/usage_report/messages",
                         usage_params, headers, cfg.timeout_s)
    costs = await _pages(session, f"{base}/v1/organizations/cost_report", cost_params,
                         headers, cfg.timeout_s)
    return anthropic_days(usage, costs, cfg)


async def fetch_days(provider: str, cfg: ReconcileProviderConfig, since: float,
                     until: float) -> list[ProviderDay]:
    import aiohttp  # here: every command of the CLI imports this module

    fetch = fetch_openai if provider == "openai" else fetch_anthropic
    async with aiohttp.ClientSession() as session:
        return await fetch(session, cfg, since, until)
