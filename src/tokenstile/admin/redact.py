"""The effective configuration as it may be shown: provider keys, the admin key, header
values, passwords in store URLs and webhook paths are replaced, so no secret leaves through
the admin API."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from tokenstile.config import Config

REDACTED = "[redacted]"
_SECRET_NAME = re.compile(r"(^|_)(api_?key|key|secret|password|passwd|token|authorization|"
                          r"credentials?|dsn)$", re.IGNORECASE)
_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)


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
        pairs = [(k, REDACTED if _SECRET_NAME.search(k) else v)
                 for k, v in parse_qsl(parts.query, keep_blank_values=True)]
        out = out.replace("?" + parts.query, "?" + urlencode(pairs, safe="[]"), 1)
    return out


def redact_webhook(value: str) -> str:
    """Webhook URLs carry their secret in the path (Slack's do): keep only where they go."""
    try:
        parts = urlsplit(value)
    except ValueError:
        return REDACTED
    host = parts.netloc.rsplit("@", 1)[-1]
    return f"{parts.scheme}://{host}/{REDACTED}" if parts.scheme and host else REDACTED


def redact(node: Any, name: str = "") -> Any:
    if isinstance(node, dict):
        if name == "headers":
            return {k: REDACTED for k in node}
        return {k: redact(v, str(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [redact(v, name) for v in node]
    if isinstance(node, str):
        if _SECRET_NAME.search(name):
            return REDACTED if node else node
        if name == "url":
            return redact_webhook(node)
        if _URL.match(node):
            return redact_url(node)
    return node


def effective_config(config: Config) -> dict[str, Any]:
    data = config.model_dump(mode="json", by_alias=True)
    redacted: dict[str, Any] = redact(data)
    return redacted
