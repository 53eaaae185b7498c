"""The database: the ledger (source of truth for usage), API keys and runtime overrides.

Chosen by URL like the counter store: ``sqlite:///path`` (default) or ``postgresql://…``.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from tokenstile.stores.responses import StoredResponse
from tokenstile.stores.urls import backend_class
from tokenstile.types import Caller, LedgerRow

KEY_PREFIX = "ts-"

# Columns a usage query may group by; anything else is refused before it reaches SQL.
GROUPABLE = (
    "organization", "project", "team", "user", "end_user", "feature", "key_id", "api",
    "requested_model", "served_model", "upstream", "outcome", "status", "service_tier",
)
BUCKETS = ("hour", "day", "month")
# What a listing of runs may filter on.
RUN_FILTERS = ("key_id", "organization", "project", "run_id")
RUN_TOTALS = ("requests", "input_tokens", "output_tokens", "cost_nano", "blocked")
# The ledger's and the keys' columns, in the order both backends store and read them.
LEDGER_COLUMNS = (
    "id", "ts", "key_id", "organization", "project", "team", "user", "end_user", "feature",
    "tags", "api", "requested_model", "served_model", "upstream", "input_tokens",
    "cached_input_tokens", "cache_write_tokens", "output_tokens", "reasoning_tokens",
    "cost_nano", "estimated", "status", "outcome", "block_reason", "flags", "latency_ms",
    "ttfb_ms", "streamed", "trace_id", "degraded", "cache", "saved_nano", "detail",
    "input_audio_tokens", "output_audio_tokens", "cache_write_1h_tokens",
    "web_search_requests", "file_search_calls", "service_tier", "run_id",
)
KEY_COLUMNS = (
    "id", "hash", "prefix", "name", "organization", "project", "team", "user", "tier",
    "feature", "allowed_models", "passthrough", "limits", "created_at", "expires_at",
    "revoked_at",
)
# Key fields a key listing may filter on.
KEY_FILTERS = ("organization", "project", "team", "user", "tier", "feature")


def hash_key(secret: str) -> str:
    """Keys are 256-bit random strings, so one SHA-256 is enough to store them safely."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_key_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def new_key_id() -> str:
    return "key_" + secrets.token_hex(8)


@dataclass(slots=True)
class KeyRecord:
    id: str
    hash: str
    prefix: str
    name: str | None = None
    organization: str = "default"
    project: str | None = None
    team: str | None = None
    user: str | None = None
    tier: str | None = None
    feature: str | None = None
    allowed_models: list[str] | None = None
    passthrough: bool = False
    limits: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0
    expires_at: float | None = None
    revoked_at: float | None = None

    def active(self, now: float) -> bool:
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or now < self.expires_at

    def caller(self) -> Caller:
        return Caller(
            organization=self.organization,
            project=self.project,
            team=self.team,
            user=self.user,
            tier=self.tier,
            key_id=self.id,
            key_name=self.name,
            feature=self.feature,
            allowed_models=tuple(self.allowed_models) if self.allowed_models else None,
            passthrough=self.passthrough,
        )

    def public(self) -> dict[str, Any]:
        """Everything about a key that may be shown: never the secret, never its hash."""
        return {
            "id": self.id, "prefix": self.prefix, "name": self.name,
            "organization": self.organization, "project": self.project, "team": self.team,
            "user": self.user, "tier": self.tier, "feature": self.feature,
            "allowed_models": self.allowed_models, "passthrough": self.passthrough,
            "limits": self.limits, "created_at": self.created_at,
            "expires_at": self.expires_at, "revoked_at": self.revoked_at,
        }


@dataclass(frozen=True, slots=True)
class Override:
    """A runtime change stored in the database: a kill switch, a budget amount, shadow mode.

    ``kind`` is ``switch`` (target ``feature:chat``, ``project:p``, ``key:key_…``,
    ``model:gpt-4o``; value ``{"enabled": false, "reason": …}``), ``limit`` (target a limit
    name; value ``{"amount": n}``) or ``shadow`` (target a limit or policy name; value
    ``{"shadow": true}``).
    """

    kind: str
    target: str
    value: dict[str, Any]
    updated_at: float = 0.0
    author: str | None = None


OVERRIDE_KINDS = ("switch", "limit", "shadow")


@dataclass(slots=True)
class UsageQuery:
    since: float | None = None
    until: float | None = None
    group_by: Sequence[str] = ()
    bucket: str | None = None
    filters: dict[str, str] = field(default_factory=dict)
    tz: str = "UTC"
    limit: int = 1000

    def validate(self) -> None:
        for name in [*self.group_by, *self.filters]:
            if name not in GROUPABLE:
                raise ValueError(f"cannot group or filter by {name!r}; "
                                 f"expected one of {', '.join(GROUPABLE)}")
        if self.bucket is not None and self.bucket not in BUCKETS:
            raise ValueError(f"unknown bucket {self.bucket!r}; expected one of "
                             f"{', '.join(BUCKETS)}")


def runs_sql(since: float | None, filters: Mapping[str, str] | None, limit: int,
             placeholder: Callable[[int], str]) -> tuple[str, list[Any]]:
    """The query behind ``Database.runs``, the same on both backends (value n written as
    ``placeholder(n)``); its columns are ``RUN_COLUMNS``."""
    clauses = ["run_id IS NOT NULL"]
    args: list[Any] = []
    if since is not None:
        args.append(float(since))
        clauses.append(f"ts >= {placeholder(len(args))}")
    for name, value in (filters or {}).items():
        if name not in RUN_FILTERS:
            raise ValueError(f"cannot filter runs by {name!r}; expected one of "
                             f"{', '.join(RUN_FILTERS)}")
        args.append(value)
        clauses.append(f"{name} = {placeholder(len(args))}")
    args.append(int(limit))
    sql = ("SELECT key_id, run_id, max(organization), max(project), count(*), "
           "sum(input_tokens), sum(output_tokens), sum(cost_nano), "
           "sum(CASE WHEN outcome = 'blocked' THEN 1 ELSE 0 END), min(ts), max(ts) "
           f"FROM ledger WHERE {' AND '.join(clauses)} GROUP BY key_id, run_id "
           f"ORDER BY max(ts) DESC, key_id, run_id LIMIT {placeholder(len(args))}")
    return sql, args


RUN_COLUMNS = ("key_id", "run_id", "organization", "project", *RUN_TOTALS, "first_ts",
               "last_ts")


def run_items(records: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    out = []
    for record in records:
        item = dict(zip(RUN_COLUMNS, record, strict=True))
        for name in RUN_TOTALS:
            item[name] = int(item[name] or 0)
        out.append(item)
    return out


class KeyLookups:
    """What both database backends share about keys: lookups by hash and by id through the
    backend's ``_one_key``, and the WHERE clause of a listing."""

    async def _one_key(self, column: str, value: str) -> KeyRecord | None:
        raise NotImplementedError

    async def key_by_hash(self, key_hash: str) -> KeyRecord | None:
        return await self._one_key("hash", key_hash)

    async def key_by_id(self, key_id: str) -> KeyRecord | None:
        return await self._one_key("id", key_id)

    @staticmethod
    def _listing(include_revoked: bool, filters: Mapping[str, str] | None,
                 placeholder: Callable[[int], str]) -> tuple[str, list[str]]:
        """The WHERE clause of a key listing and its values: unrevoked keys unless
        ``include_revoked``, matching ``filters`` (on ``KEY_FILTERS`` only); value n is
        written as ``placeholder(n)``."""
        clauses = [] if include_revoked else ["revoked_at IS NULL"]
        values: list[str] = []
        for name, value in (filters or {}).items():
            if name not in KEY_FILTERS:
                raise ValueError(f"cannot filter keys by {name!r}")
            values.append(value)
            clauses.append(f'"{name}" = {placeholder(len(values))}')
        return ("WHERE " + " AND ".join(clauses)) if clauses else "", values


class Database(Protocol):
    url: str

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def insert_ledger(self, rows: Sequence[LedgerRow]) -> None: ...

    async def ledger_rows(self, limit: int = 100, **filters: Any) -> list[LedgerRow]: ...

    async def usage(self, query: UsageQuery) -> list[dict[str, Any]]: ...

    async def runs(self, since: float | None = None, filters: Mapping[str, str] | None = None,
                   limit: int = 100) -> list[dict[str, Any]]:
        """Agent runs (ledger rows with a ``run_id``) since ``since``, the latest first: per
        key and run id, ``organization``, ``project``, ``RUN_TOTALS``, ``first_ts`` and
        ``last_ts``; ``filters`` match any of ``RUN_FILTERS`` exactly."""
        ...

    async def create_key(self, record: KeyRecord) -> None: ...

    async def key_by_hash(self, key_hash: str) -> KeyRecord | None: ...

    async def key_by_id(self, key_id: str) -> KeyRecord | None: ...

    async def list_keys(self, include_revoked: bool = False,
                        filters: Mapping[str, str] | None = None) -> list[KeyRecord]:
        """Keys by creation; ``filters`` match any of ``KEY_FILTERS`` exactly."""
        ...

    async def key_limits(self) -> list[tuple[str, dict[str, Any]]]:
        """(id, limits) of the unrevoked keys that carry limits of their own."""
        ...

    async def update_key(self, key_id: str, **changes: Any) -> KeyRecord | None: ...

    async def list_overrides(self) -> list[Override]: ...

    async def set_override(self, override: Override) -> None: ...

    async def delete_override(self, kind: str, target: str) -> bool: ...

    # Responses created through the gateway (``tokenstile.stores.responses``).

    async def save_responses(self, items: Sequence[StoredResponse]) -> None:
        """Insert entries; an id already known is left as it is, except that a pending
        one given again as settled becomes settled."""
        ...

    async def get_response(self, response_id: str) -> StoredResponse | None: ...

    async def response_by_rid(self, rid: str) -> StoredResponse | None:
        """The entry a request (its ledger row and reservation id) created, if any."""
        ...

    async def adopt_responses(self, owner: str, now: float, lease_until: float,
                              limit: int = 100) -> list[StoredResponse]:
        """Pending entries whose lease ended before ``now``, now owned by ``owner``."""
        ...

    async def renew_responses(self, owner: str, ids: Sequence[str],
                              lease_until: float) -> list[str]:
        """Extend the lease of ``owner``'s pending entries; return the ids it still owns."""
        ...

    async def settle_response(self, response_id: str) -> bool:
        """``pending`` → ``settled``; True for the one caller that made the change."""
        ...

    async def release_responses(self, owner: str) -> None:
        """End ``owner``'s leases now, so that another gateway adopts its entries at once."""
        ...

    async def prune_responses(self, before: float) -> int:
        """Forget entries created before ``before`` that need nothing more."""
        ...


@runtime_checkable
class LabelUsage(Protocol):
    """An optional capability: usage per tag (``team=search``) or per degradation
    (``trimmed``), as ``usage`` groups by a column. The dashboard's tag breakdown asks for it;
    a database without it shows no tag breakdown."""

    async def usage_by_label(self, query: UsageQuery, label: str) -> list[dict[str, Any]]: ...


def database_from_url(url: str) -> Database:
    db: Database = backend_class("database", url)(url)
    return db
