"""The effective configuration as it may be shown: provider keys, the admin key, header
values, passwords in store URLs and webhook paths are replaced, so no secret leaves through
the admin API."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from tokenstile.config import Config
from tokenstile.stores.urls import REDACTED, redact_url
from tokenstile.stores.urls import SECRET_NAME as _SECRET_NAME

_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)


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
