"""Options in store URLs (``?timeout=2&prefix=x``), shared by every backend chosen by URL."""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import parse_qsl, urlsplit


class StoreConfigError(ValueError):
    """A store URL names an unknown scheme or is malformed."""


def redact_url(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


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
