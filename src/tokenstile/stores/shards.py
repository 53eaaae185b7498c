"""Which counters go together when the counter store is a Redis Cluster.

A reservation is one Lua script, so it is atomic; in a Redis Cluster every key one script
touches must be in the same hash slot. One admission touches the counters of every limit
that applies to the request, of several scopes at once (its key, user, project,
organization…), and the reservation's own records (the held amounts and the lease). So
all of them need one hash tag. And a counter must get the same tag from every admission
that touches it, or it would exist twice and each copy could fill up to the limit: an
overshoot. The tag therefore has to name a unit that every admission belongs to exactly
one of, and that contains every counter its admissions touch.

That unit is the tenant: the caller's organization (``shard=organization`` in the store
URL). Every counter is kept under its tenant's tag (``{ts:acme}:c:project:search:…``), with
the tenant's held reservations and leases beside them, so one admission is still one
script on one shard and different tenants spread over the shards. The admission names the
tenant in the keys it builds (``qualify``: ``@acme/project:search:…``); the store reads it
back (``split``).

What it costs:

- Scopes that span tenants (``global``, ``feature``, ``model``, ``tier``) would put every
  tenant's admissions on one slot. A configuration with limits of those scopes is refused
  with ``shard=organization`` (``cross_tenant_limits``); keep the default ``shard=none``
  (one tag for every counter: atomic as on one server, but one shard holds them all).
- Inside a tenant, a project, team, user or end-user name is counted within its
  organization: the same name used by keys of two organizations is two counters (with one
  organization, as most gateways have, nothing changes).
- Budget views (``tokenstile budgets``, the dashboard) read a project's counters under
  the project's ``organization`` (else the configured organization), and every other
  scope's under the configured organization.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from tokenstile.stores.urls import StoreConfigError

if TYPE_CHECKING:
    from tokenstile.config import Config
    from tokenstile.limits.model import Limit
    from tokenstile.types import Caller

MODES = ("none", "organization")
CROSS_TENANT = frozenset({"global", "feature", "model", "tier"})
_MARK = "@"


def _escape(tenant: str) -> str:
    return (tenant.replace("%", "%25").replace("/", "%2F").replace("{", "%7B")
            .replace("}", "%7D"))


def _unescape(text: str) -> str:
    return (text.replace("%2F", "/").replace("%7B", "{").replace("%7D", "}")
            .replace("%25", "%"))


def qualify(tenant: str | None, key: str) -> str:
    """``key`` as kept for ``tenant`` (unchanged when there is none)."""
    return key if tenant is None else f"{_MARK}{_escape(tenant)}/{key}"


def split(key: str) -> tuple[str | None, str]:
    """(tenant or None, the key without it)."""
    if not key.startswith(_MARK):
        return None, key
    tenant, _, bare = key[1:].partition("/")
    return _unescape(tenant), bare


def tenant_of(mode: str | None, caller: Caller) -> str | None:
    """The tenant a caller's admissions belong to (None: no sharding)."""
    if mode == "organization":
        return caller.organization or "default"
    return None


def cross_tenant_limits(limits: Iterable[Limit]) -> list[str]:
    """Names of the window limits whose counters every tenant would share."""
    return [limit.name for limit in limits
            if limit.window.kind != "request" and limit.scope in CROSS_TENANT]


def check_config(config: Config) -> None:
    """Refuse ``shard=organization`` with limits that span organizations."""
    if shard_mode(config.storage.counters) != "organization":
        return
    from tokenstile.limits.model import compile_limits

    crossing = cross_tenant_limits(compile_limits(config))
    if crossing:
        raise ValueError(
            "storage.counters shards counters by organization (shard=organization), but "
            f"these limits are shared by every organization: {', '.join(crossing)}; remove "
            "them or use shard=none (one shard for every counter)")


def shard_mode(url: str) -> str | None:
    """The ``shard`` option of a Redis Cluster counter URL (None for other stores)."""
    from urllib.parse import parse_qsl, urlsplit

    scheme = url.split("://", 1)[0] if "://" in url else ""
    if not scheme.endswith("+cluster"):
        return None
    value = dict(parse_qsl(urlsplit(url).query)).get("shard", "none")
    if value not in MODES:
        raise StoreConfigError(f"shard={value!r}: expected one of {', '.join(MODES)}")
    return value


def status_tenants(config: Config, mode: str | None) -> Callable[[str, str], str | None]:
    """For the budget views: the tenant whose counter to read for a (scope, id)."""
    def tenant(scope: str, scope_id: str) -> str | None:
        if mode != "organization":
            return None
        if scope == "organization":
            return scope_id
        project = config.projects.get(scope_id) if scope == "project" else None
        if project is not None and project.organization:
            return project.organization
        return config.organization.name

    return tenant
