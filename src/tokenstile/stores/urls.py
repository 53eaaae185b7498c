"""Store URLs: the scheme picks a backend (``backend_class``), the query carries its options
(``?timeout=2&prefix=x``). Shared by every store kind chosen by URL."""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit


class StoreConfigError(ValueError):
    """A store URL names an unknown scheme or is malformed."""


REDACTED = "[redacted]"
SECRET_NAME = re.compile(r"(^|_)(api_?key|key|secret|password|passwd|token|authorization|"
                         r"credentials?|dsn)$", re.IGNORECASE)


def redact_url(value: str) -> str:
    """``redis://user:pw@host/0?password=x`` → ``redis://user:[redacted]@host/0?password=…``
    with the password and secret-named query values replaced; the rest is left as written."""
    try:
        parts = urlsplit(value)
    except ValueError:
        return REDACTED
    out = value
    if "@" in parts.netloc:
        userinfo = parts.netloc.rsplit("@", 1)[0]
        user, sep, _ = userinfo.partition(":")
        out = out.replace(userinfo + "@", (f"{user}:{REDACTED}" if sep else REDACTED) + "@", 1)
    if parts.query:
        pairs = [(k, REDACTED if SECRET_NAME.search(k) else v)
                 for k, v in parse_qsl(parts.query, keep_blank_values=True)]
        out = out.replace("?" + parts.query, "?" + urlencode(pairs, safe="[]"), 1)
    return out


def url_options(url: str, allowed: Iterable[str], what: str = "store") -> dict[str, str]:
    """The query parameters of a store URL; unknown names are a configuration error."""
    options = dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise StoreConfigError(
            f"unknown option(s) {', '.join(unknown)} in {what} URL {redact_url(url)!r}: "
            f"expected {', '.join(sorted(allowed)) or 'none'}"
        )
    return options


def option_number(options: dict[str, str], name: str, default: float) -> float:
    """A positive number option, or ``default`` when it is absent."""
    if name not in options:
        return default
    try:
        value = float(options[name])
    except ValueError:
        raise StoreConfigError(f"option {name}={options[name]!r} is not a number") from None
    if value <= 0:
        raise StoreConfigError(f"option {name} must be > 0, got {value}")
    return value


_STORES = "tokenstile.stores"

# Every backend of every store kind by URL scheme, as "module:Class" (imported when used).
BACKENDS: dict[str, dict[str, str]] = {
    "counter store": {
        "memory": f"{_STORES}.counters_memory:MemoryCounterStore",
        "sqlite": f"{_STORES}.counters_sqlite:SqliteCounterStore",
        "redis": f"{_STORES}.counters_redis:RedisCounterStore",
        "rediss": f"{_STORES}.counters_redis:RedisCounterStore",
        "redis+cluster": f"{_STORES}.counters_redis_cluster:RedisClusterCounterStore",
        "rediss+cluster": f"{_STORES}.counters_redis_cluster:RedisClusterCounterStore",
    },
    "database": {
        "sqlite": f"{_STORES}.db_sqlite:SqliteDatabase",
        "postgresql": f"{_STORES}.db_postgres:PostgresDatabase",
        "postgres": f"{_STORES}.db_postgres:PostgresDatabase",
    },
    "response cache": {
        "memory": f"{_STORES}.cache_memory:MemoryResponseCache",
        "sqlite": f"{_STORES}.cache_sqlite:SqliteResponseCache",
        "redis": f"{_STORES}.cache_redis:RedisResponseCache",
        "rediss": f"{_STORES}.cache_redis:RedisResponseCache",
    },
    "alert history": {
        "sqlite": f"{_STORES}.alerts_sqlite:SqliteAlertHistory",
        "postgresql": f"{_STORES}.alerts_postgres:PostgresAlertHistory",
        "postgres": f"{_STORES}.alerts_postgres:PostgresAlertHistory",
        "memory": f"{_STORES}.alerts_memory:MemoryAlertHistory",
    },
    "record store": {
        "sqlite": f"{_STORES}.records_sqlite:SqliteRecordStore",
        "postgresql": f"{_STORES}.records_postgres:PostgresRecordStore",
        "postgres": f"{_STORES}.records_postgres:PostgresRecordStore",
    },
}


def backend_class(kind: str, url: str) -> Any:
    """The class of the ``kind`` store (a key of ``BACKENDS``) that ``url``'s scheme names.

    Its module is imported only now, so a backend's driver loads only when it is used.
    """
    registry = BACKENDS[kind]
    scheme = url.split("://", 1)[0] if "://" in url else ""
    target = registry.get(scheme)
    if target is None:
        known = ", ".join(f"{s}://" for s in registry)
        raise StoreConfigError(f"unknown {kind} URL {redact_url(url)!r}: expected one of {known}")
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)
